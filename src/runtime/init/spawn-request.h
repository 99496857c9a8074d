/*
 * Parsing a spawn request (spawn-protocol.h): shared by garden-init, which trusts nothing in
 * it, and trellis-exec, which checks what gdn wrote before sending it. Every field is bounded;
 * the strings point into the request buffer, which must end with a NUL.
 */
#ifndef TRELLIS_SPAWN_REQUEST_H
#define TRELLIS_SPAWN_REQUEST_H
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include "spawn-protocol.h"

struct spawn_request {
  uint32_t uid, gid;
  int setgroups;
  size_t ngroups;
  gid_t groups[SPAWN_MAX_GROUPS];
  int tty;
  unsigned short rows, columns;
  size_t nrlimits;
  struct {
    int resource;
    struct rlimit limit;
  } rlimits[SPAWN_MAX_RLIMITS];
  const char *cwd;
  size_t argc;
  const char *argv[SPAWN_MAX_ARGS + 1];
  size_t envc;
  const char *envp[SPAWN_MAX_ENV + 1];
};

struct field_reader {
  const char *p, *end;
};

static const char *next_field(struct field_reader *r) {
  if (r->p >= r->end) return NULL;
  const char *nul = memchr(r->p, '\0', (size_t)(r->end - r->p));
  if (nul == NULL) return NULL;
  const char *f = r->p;
  r->p = nul + 1;
  return f;
}

static int field_u64(struct field_reader *r, uint64_t max, uint64_t *out) {
  const char *f = next_field(r);
  if (f == NULL || *f < '0' || *f > '9' || strlen(f) > 20) return -1;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(f, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) return -1;
  *out = v;
  return 0;
}

/* 0, or -1 when the request is malformed in any way. */
static int parse_spawn_request(const char *buf, size_t len, struct spawn_request *q) {
  struct field_reader r = {buf, buf + len};
  uint64_t v;
  const char *magic = next_field(&r);
  if (magic == NULL || strcmp(magic, SPAWN_MAGIC) != 0) return -1;
  /* (uint32_t)-1 is "no id" to the kernel: never a valid request */
  if (field_u64(&r, UINT32_MAX - 1, &v) != 0) return -1;
  q->uid = (uint32_t)v;
  if (field_u64(&r, UINT32_MAX - 1, &v) != 0) return -1;
  q->gid = (uint32_t)v;
  if (field_u64(&r, 1, &v) != 0) return -1;
  q->setgroups = (int)v;
  if (field_u64(&r, SPAWN_MAX_GROUPS, &v) != 0) return -1;
  q->ngroups = (size_t)v;
  for (size_t i = 0; i < q->ngroups; i++) {
    if (field_u64(&r, UINT32_MAX - 1, &v) != 0) return -1;
    q->groups[i] = (gid_t)v;
  }
  if (field_u64(&r, 1, &v) != 0) return -1;
  q->tty = (int)v;
  if (field_u64(&r, 65535, &v) != 0) return -1;
  q->rows = (unsigned short)v;
  if (field_u64(&r, 65535, &v) != 0) return -1;
  q->columns = (unsigned short)v;
  if (field_u64(&r, SPAWN_MAX_RLIMITS, &v) != 0) return -1;
  q->nrlimits = (size_t)v;
  for (size_t i = 0; i < q->nrlimits; i++) {
    if (field_u64(&r, RLIMIT_NLIMITS - 1, &v) != 0) return -1;
    q->rlimits[i].resource = (int)v;
    if (field_u64(&r, UINT64_MAX, &v) != 0) return -1;
    q->rlimits[i].limit.rlim_cur = (rlim_t)v;
    if (field_u64(&r, UINT64_MAX, &v) != 0) return -1;
    q->rlimits[i].limit.rlim_max = (rlim_t)v;
  }
  q->cwd = next_field(&r);
  if (q->cwd == NULL || q->cwd[0] != '/') return -1;
  if (field_u64(&r, SPAWN_MAX_ARGS, &v) != 0 || v == 0) return -1;
  q->argc = (size_t)v;
  for (size_t i = 0; i < q->argc; i++)
    if ((q->argv[i] = next_field(&r)) == NULL) return -1;
  q->argv[q->argc] = NULL;
  if (q->argv[0][0] == '\0') return -1;
  if (field_u64(&r, SPAWN_MAX_ENV, &v) != 0) return -1;
  q->envc = (size_t)v;
  for (size_t i = 0; i < q->envc; i++)
    if ((q->envp[i] = next_field(&r)) == NULL || strchr(q->envp[i], '=') == NULL) return -1;
  q->envp[q->envc] = NULL;
  return r.p == r.end ? 0 : -1;
}

#endif
