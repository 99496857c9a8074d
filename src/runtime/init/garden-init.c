/*
 * garden-init: pid 1 of every Trellis container, and the launcher of its non-root processes.
 *
 *   garden-init                                  init: reap zombies, wait for SIGTERM/SIGINT
 *   garden-init --spawn-server                   init, and it starts processes asked for by the
 *                                                host (spawn-server.c): `run` without `runc exec`
 *   garden-init --run UID GID GIDS -- PROG ARG.. launcher: setgroups(GIDS), setresgid(GID),
 *                                                setresuid(UID), then exec PROG (searched in PATH)
 *
 * GIDS is a comma-separated list of group ids, or empty for none. Rootless runc never calls
 * setgroups (its euid is not 0 on the host), so a process it starts as a user keeps the
 * daemon's groups; `runc exec` starts the launcher as container root instead and the launcher
 * gives the process exactly its own groups. The pid, stdio and exit status stay the program's.
 * When PROG cannot be executed the launcher writes one line starting "garden-init: " to stderr
 * and exits 127: the daemon reports that line as Run's error.
 */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "garden-init.h"

#define MAX_GROUPS 256

static int init_mode(void) {
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, NULL);
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;
    if (sig == SIGCHLD) {
      while (waitpid(-1, NULL, WNOHANG) > 0) {
      }
    } else if (sig == SIGTERM || sig == SIGINT) {
      return 0;
    }
  }
}

static int parse_id(const char *s, unsigned long *out) {
  char *end = NULL;
  if (*s < '0' || *s > '9') return -1;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > (unsigned long)UINT_MAX - 1) return -1;
  *out = v;
  return 0;
}

static int parse_groups(const char *s, gid_t *gids, size_t *n) {
  *n = 0;
  if (*s == '\0') return 0;
  char buf[MAX_GROUPS * 11];
  if (strlen(s) >= sizeof buf) return -1;
  strcpy(buf, s);
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
    unsigned long v;
    if (*n >= MAX_GROUPS || parse_id(tok, &v) != 0) return -1;
    gids[(*n)++] = (gid_t)v;
  }
  return 0;
}

static _Noreturn void fail(const char *what, const char *prog, int err) {
  if (err == ENOENT && strchr(prog, '/') == NULL)
    fprintf(stderr, "garden-init: exec: \"%s\": executable file not found in $PATH\n", prog);
  else
    fprintf(stderr, "garden-init: %s \"%s\": %s\n", what, prog, strerror(err));
  _exit(127);
}

static _Noreturn void unmapped(const char *kind, unsigned long id) {
  fprintf(stderr, "garden-init: setres%s: %s %lu is not mapped in the container's user namespace\n", kind, kind, id);
  _exit(127);
}

/* Finds PROG as execvp would (PATH from the environment), as the user the process now is. */
int resolve(const char *prog, const char *path, char *out, size_t outlen) {
  if (strchr(prog, '/') != NULL) {
    if (strlen(prog) >= outlen) return ENAMETOOLONG;
    strcpy(out, prog);
    return access(out, X_OK) == 0 ? 0 : errno;
  }
  if (path == NULL) path = "/usr/local/bin:/usr/bin:/bin";
  int last = ENOENT;
  while (*path != '\0') {
    const char *colon = strchr(path, ':');
    size_t len = colon ? (size_t)(colon - path) : strlen(path);
    if (len > 0 && len + 1 + strlen(prog) < outlen) {
      memcpy(out, path, len);
      out[len] = '/';
      strcpy(out + len + 1, prog);
      struct stat st;
      if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
        if (access(out, X_OK) == 0) return 0;
        last = EACCES;
      }
    }
    if (colon == NULL) break;
    path = colon + 1;
  }
  return last;
}

/*
 * As runc does for a user: stdio (conmon's pipes, or the terminal) becomes the user's, so
 * /dev/stdout and the like can be reopened; /dev/null and what cannot change are left alone.
 * The group stays (a terminal keeps devpts's tty group).
 */
int give_stdio(uid_t uid) {
  struct stat null;
  int have_null = stat("/dev/null", &null) == 0;
  for (int fd = 0; fd <= 2; fd++) {
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_uid == uid) continue;
    if (have_null && S_ISCHR(st.st_mode) && st.st_rdev == null.st_rdev) continue;
    if (fchown(fd, uid, (gid_t)-1) != 0 && errno != EINVAL && errno != EPERM && errno != EROFS) return errno;
  }
  return 0;
}

static int run_mode(int argc, char **argv) {
  /* argv: garden-init --run UID GID GIDS -- PROG [ARG...] */
  unsigned long uid, gid;
  gid_t gids[MAX_GROUPS];
  size_t ngids;
  if (argc < 7 || strcmp(argv[5], "--") != 0 || parse_id(argv[2], &uid) != 0 || parse_id(argv[3], &gid) != 0 ||
      parse_groups(argv[4], gids, &ngids) != 0) {
    fprintf(stderr, "garden-init: usage: garden-init --run UID GID GIDS -- PROG [ARG...]\n");
    return 127;
  }
  const char *prog = argv[6];
  if (setgroups(ngids, gids) != 0) {
    if (errno == EINVAL) fprintf(stderr, "garden-init: setgroups: a group of the user is not mapped in the container's user namespace\n"), _exit(127);
    fail("setgroups for", prog, errno);
  }
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) {
    if (errno == EINVAL) unmapped("gid", gid);
    fail("setresgid for", prog, errno);
  }
  int given = give_stdio((uid_t)uid);
  if (given != 0) {
    fprintf(stderr, "garden-init: giving stdio to uid %lu: %s\n", uid, strerror(given));
    _exit(127);
  }
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) {
    if (errno == EINVAL) unmapped("uid", uid);
    fail("setresuid for", prog, errno);
  }
  char path[PATH_MAX];
  int err = resolve(prog, getenv("PATH"), path, sizeof path);
  if (err != 0) fail("exec", prog, err);
  execv(path, &argv[6]);
  fail("exec", prog, errno);
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--run") == 0) return run_mode(argc, argv);
  if (argc == 2 && strcmp(argv[1], "--spawn-server") == 0) return spawn_server();
  if (argc > 1) {
    fprintf(stderr, "garden-init: unknown arguments; usage: garden-init [--spawn-server] | garden-init --run UID GID GIDS -- PROG [ARG...]\n");
    return 2;
  }
  return init_mode();
}
