/*
 * The spawn server's wire protocol: garden-init (pid 1 of a container, --spawn-server) and
 * trellis-exec (the runtime conmon runs for `run`) speak it over an AF_UNIX SOCK_SEQPACKET
 * socket bound on an abstract name in the container's network namespace.
 *
 * Request (trellis-exec -> init), one message: NUL-terminated fields, in this order
 *   SPAWN_MAGIC, uid, gid, setgroups(0|1), ngroups, gid..., tty(0|1), rows, columns,
 *   nrlimits, (resource, soft, hard)..., cwd, argc, arg..., envc, env...
 * numbers in decimal; with SCM_RIGHTS exactly three fds (stdin, stdout, stderr) when tty is 0
 * and none when it is 1. Then only SPAWN_SIGNAL messages.
 * Replies (init, and the child before it execs) are struct spawn_msg, nothing else:
 *   'P' from the child (the kernel attaches its pid: SO_PASSCRED), with the pty master if tty
 *   'S' started (the program was exec'd), or 'F' failed (a = stage, b = errno)
 *   'W' the wait status (a), then the connection closes.
 */
#ifndef TRELLIS_SPAWN_PROTOCOL_H
#define TRELLIS_SPAWN_PROTOCOL_H
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define SPAWN_SOCKET_NAME "trellis-garden-init" /* abstract: a leading NUL */
#define SPAWN_MAGIC "TRELLIS-SPAWN-1"
#define SPAWN_REQUEST_MAX (128 * 1024)
#define SPAWN_MAX_ARGS 4096
#define SPAWN_MAX_ENV 4096
#define SPAWN_MAX_GROUPS 256
#define SPAWN_MAX_RLIMITS 16

struct spawn_msg {
  char type;
  char pad[3];
  int32_t a;
  int32_t b;
};

/* requester -> init after the request: signal the child (a = signal number) */
#define SPAWN_SIGNAL 'K'
#define SPAWN_PID 'P'
#define SPAWN_STARTED 'S'
#define SPAWN_FAILED 'F'
#define SPAWN_WAITED 'W'

/* where a spawn failed ('F'.a) */
enum spawn_stage {
  STAGE_REQUEST = 1, /* the request was refused */
  STAGE_FORK,
  STAGE_TTY,
  STAGE_STDIO,
  STAGE_RLIMIT,
  STAGE_CHDIR,
  STAGE_SETGROUPS,
  STAGE_SETGID,
  STAGE_SETUID,
  STAGE_GIVE_STDIO,
  STAGE_EXEC,
  STAGE_INHERIT, /* init's scheduling or OOM settings as the process started could not be given back */
  STAGE_LAST = STAGE_INHERIT,
};

/* One message of `len` bytes with `nfds` (at most 3) fds attached by SCM_RIGHTS; sendmsg's result. */
static inline ssize_t spawn_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds) {
  struct iovec iov = {(void *)buf, len};
  union {
    char buf[CMSG_SPACE(3 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 3) return -1;
  if (nfds > 0) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
  }
  return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

#endif
