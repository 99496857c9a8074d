/*
 * What cni-gate.c shares with the gate's other subcommands (quota.c, issue #11): the
 * caller's uid, the one-line messages, and the trusted-directory helpers. Everything
 * else in cni-gate.c stays private to it.
 */
#ifndef TRELLIS_GATE_H
#define TRELLIS_GATE_H

#include <sys/types.h>

extern unsigned caller;                  /* the caller's real uid */
extern char why[600];                    /* why open_below/open_trusted_dir refused */

void refuse(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
int open_below(int dirfd, const char *name, const char *path, int create, mode_t mode);
int open_trusted_dir(const char *path);
int write_state_file(int dirfd, const char *name, const char *data, size_t n);
int remove_state_file(int dirfd, const char *name);

/* cni-gate quota ...: runs after harden(); never returns */
void quota_main(int argc, char **argv) __attribute__((noreturn));

#endif
