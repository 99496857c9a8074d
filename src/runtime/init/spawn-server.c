/*
 * garden-init --spawn-server: pid 1 of a container that also starts the container's processes
 * when the host asks (src/runtime/exec/trellis-exec.c is the asker), so `run` needs no
 * `runc exec`. A process it forks is already in every namespace, the cgroup, under the seccomp
 * filter and with the container's capability bounding set; it only has to become the process.
 *
 * The socket is an abstract name in the container's network namespace: no host path and no
 * host directory fd ever enter the container (CVE-2024-21626). Only a peer outside the
 * container's pid namespace (pid 0 here) that is root in its user namespace (the daemon's own
 * user, after setns) is answered: a process inside the container, root or not, cannot get a
 * process started by asking. One poll loop, no threads: the listening socket, a signalfd
 * (SIGCHLD, SIGTERM, SIGINT), the connections and each child's exec-status pipe.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include "garden-init.h"
#include "spawn-request.h"

/* processes running at once through the server (one connection each, until they exit) */
#define MAX_CONNS 4096

struct conn {
  int fd;        /* -1: a free slot */
  pid_t child;   /* 0 until a request was served */
  int status_fd; /* the child's exec-status pipe, -1 once "started" or "failed" was sent */
};

static struct conn conns[MAX_CONNS];
/*
 * What init had from runc when it started, before any process of the container existed: every
 * child gets it back, as a `runc exec` process gets it from the host. Root in the container can
 * change pid 1's limits, nice value, CPUs and OOM score later; that must not carry over to the
 * processes of every user started after (security review, issue 10).
 */
static struct {
  struct rlimit limits[RLIM_NLIMITS];
  int nice;
  int oom_score_adj;
  cpu_set_t cpus;
  int have_cpus;
} inherited;
/* kept free so that a full fd table still lets init accept and close what waits (EMFILE) */
static int reserve_fd = -1;

static int read_oom_score_adj(void) {
  char buf[16];
  int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return INT_MIN;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return INT_MIN;
  buf[n] = '\0';
  return atoi(buf);
}

static void record_inherited(void) {
  for (int r = 0; r < RLIM_NLIMITS; r++)
    if (getrlimit((__rlimit_resource_t)r, &inherited.limits[r]) != 0) inherited.limits[r].rlim_cur = inherited.limits[r].rlim_max = RLIM_INFINITY;
  errno = 0;
  inherited.nice = getpriority(PRIO_PROCESS, 0);
  if (errno != 0) inherited.nice = 0;
  inherited.oom_score_adj = read_oom_score_adj();
  inherited.have_cpus = sched_getaffinity(0, sizeof inherited.cpus, &inherited.cpus) == 0;
}

/* In the child: init's settings as it started (each only where it changed since). */
static int restore_inherited(int *stage) {
  *stage = STAGE_RLIMIT;
  for (int r = 0; r < RLIM_NLIMITS; r++) {
    struct rlimit now;
    if (getrlimit((__rlimit_resource_t)r, &now) != 0) continue;
    if (now.rlim_cur == inherited.limits[r].rlim_cur && now.rlim_max == inherited.limits[r].rlim_max) continue;
    if (setrlimit((__rlimit_resource_t)r, &inherited.limits[r]) != 0) return errno;
  }
  *stage = STAGE_INHERIT;
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, 0);
  if (errno == 0 && nice != inherited.nice && setpriority(PRIO_PROCESS, 0, inherited.nice) != 0) return errno;
  if (inherited.have_cpus) {
    cpu_set_t now;
    if (sched_getaffinity(0, sizeof now, &now) == 0 && !CPU_EQUAL(&now, &inherited.cpus) &&
        sched_setaffinity(0, sizeof inherited.cpus, &inherited.cpus) != 0)
      return errno;
  }
  if (inherited.oom_score_adj != INT_MIN && read_oom_score_adj() != inherited.oom_score_adj) {
    char text[16];
    int len = snprintf(text, sizeof text, "%d", inherited.oom_score_adj);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int ok = write(fd, text, (size_t)len) == len;
    int err = errno;
    close(fd);
    if (!ok) return err;
  }
  return 0;
}
static char request_buf[SPAWN_REQUEST_MAX + 1];
static struct spawn_request request;

static void send_msg(int fd, char type, int32_t a, int32_t b) {
  struct spawn_msg m;
  memset(&m, 0, sizeof m);
  m.type = type;
  m.a = a;
  m.b = b;
  /* a requester that does not read loses its answer, never blocks init */
  (void)send(fd, &m, sizeof m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void drop(struct conn *c) {
  if (c->fd >= 0) close(c->fd);
  if (c->status_fd >= 0) close(c->status_fd);
  c->fd = -1;
  c->status_fd = -1;
  c->child = 0;
}

static _Noreturn void child_fail(int status_fd, int stage, int err) {
  int32_t rec[2] = {stage, err};
  (void)!write(status_fd, rec, sizeof rec);
  _exit(127);
}

/* The forked child: becomes the requested process, or reports where it could not. */
static _Noreturn void become(int conn, int status_fd, const struct spawn_request *q, const int stdio[3]) {
  sigset_t none;
  sigemptyset(&none);
  for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (setsid() < 0) child_fail(status_fd, STAGE_TTY, errno);
  int stage;
  int err = restore_inherited(&stage);
  if (err != 0) child_fail(status_fd, stage, err);
  int master = -1;
  if (q->tty) {
    /* the container's own devpts: /dev/ptmx resolves in the container's mount namespace */
    master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) child_fail(status_fd, STAGE_TTY, errno);
    int unlock = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) != 0) child_fail(status_fd, STAGE_TTY, errno);
    int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
    if (slave < 0) child_fail(status_fd, STAGE_TTY, errno);
    if (ioctl(slave, TIOCSCTTY, 0) != 0) child_fail(status_fd, STAGE_TTY, errno);
    if (q->rows > 0 && q->columns > 0) {
      struct winsize ws;
      memset(&ws, 0, sizeof ws);
      ws.ws_row = q->rows;
      ws.ws_col = q->columns;
      if (ioctl(slave, TIOCSWINSZ, &ws) != 0) child_fail(status_fd, STAGE_TTY, errno);
    }
    for (int fd = 0; fd <= 2; fd++)
      if (dup2(slave, fd) < 0) child_fail(status_fd, STAGE_TTY, errno);
    if (slave > 2) close(slave);
  } else {
    /* received fds are never 0-2: init's own stdio stays open */
    for (int fd = 0; fd <= 2; fd++)
      if (dup2(stdio[fd], fd) < 0) child_fail(status_fd, STAGE_STDIO, errno);
    for (int fd = 0; fd <= 2; fd++)
      if (stdio[fd] > 2) close(stdio[fd]);
  }
  /* the pid (the kernel attaches it: the requester has SO_PASSCRED) and the terminal's master */
  struct spawn_msg m;
  memset(&m, 0, sizeof m);
  m.type = SPAWN_PID;
  if (spawn_send(conn, &m, sizeof m, &master, master >= 0 ? 1 : 0) != (ssize_t)sizeof m) child_fail(status_fd, STAGE_STDIO, errno);
  if (master >= 0) close(master);
  close(conn);
  for (size_t i = 0; i < q->nrlimits; i++)
    if (setrlimit((__rlimit_resource_t)q->rlimits[i].resource, &q->rlimits[i].limit) != 0)
      child_fail(status_fd, STAGE_RLIMIT, errno);
  umask(022);
  /* as runc: the directory as root first (the user may not reach it), else as the user */
  int chdir_err = chdir(q->cwd) == 0 ? 0 : errno;
  if (q->setgroups && setgroups(q->ngroups, q->groups) != 0) child_fail(status_fd, STAGE_SETGROUPS, errno);
  if (setresgid(q->gid, q->gid, q->gid) != 0) child_fail(status_fd, STAGE_SETGID, errno);
  int given = give_stdio(q->uid);
  if (given != 0) child_fail(status_fd, STAGE_GIVE_STDIO, given);
  if (setresuid(q->uid, q->uid, q->uid) != 0) child_fail(status_fd, STAGE_SETUID, errno);
  if (chdir_err != 0 && chdir(q->cwd) != 0) child_fail(status_fd, STAGE_CHDIR, errno);
  const char *path = NULL;
  for (size_t i = 0; i < q->envc; i++)
    if (strncmp(q->envp[i], "PATH=", 5) == 0) path = q->envp[i] + 5;
  char exe[PATH_MAX];
  err = resolve(q->argv[0], path, exe, sizeof exe);
  if (err != 0) child_fail(status_fd, STAGE_EXEC, err);
  execve(exe, (char *const *)q->argv, (char *const *)q->envp);
  child_fail(status_fd, STAGE_EXEC, errno);
}

/* What a received stdio fd may be: a pipe, a socket or a character device; never a directory. */
static int acceptable_stdio(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  return S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode);
}

/* The child's exec status, once known: "started" (the pipe closed at exec) or "failed". */
static void settle(struct conn *c) {
  if (c->status_fd < 0) return;
  int32_t rec[2];
  ssize_t n = read(c->status_fd, rec, sizeof rec);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n == (ssize_t)sizeof rec) send_msg(c->fd, SPAWN_FAILED, rec[0], rec[1]);
  else if (n == 0) send_msg(c->fd, SPAWN_STARTED, 0, 0);
  else send_msg(c->fd, SPAWN_FAILED, STAGE_EXEC, EIO);
  close(c->status_fd);
  c->status_fd = -1;
}

static void serve_request(struct conn *c, const char *buf, size_t len, int *fds, size_t nfds) {
  int ok = len > 0 && buf[len - 1] == '\0' && parse_spawn_request(buf, len, &request) == 0 &&
           nfds == (request.tty ? 0u : 3u);
  for (size_t i = 0; ok && i < nfds; i++) ok = acceptable_stdio(fds[i]);
  if (!ok) {
    send_msg(c->fd, SPAWN_FAILED, STAGE_REQUEST, EINVAL);
    drop(c);
    return;
  }
  int status[2];
  if (pipe2(status, O_CLOEXEC) != 0) {
    send_msg(c->fd, SPAWN_FAILED, STAGE_FORK, errno);
    drop(c);
    return;
  }
  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    close(status[0]);
    close(status[1]);
    send_msg(c->fd, SPAWN_FAILED, STAGE_FORK, err);
    drop(c);
    return;
  }
  if (pid == 0) {
    close(status[0]);
    become(c->fd, status[1], &request, fds);
  }
  close(status[1]);
  if (fcntl(status[0], F_SETFL, O_NONBLOCK) != 0) {
    /* a blocking read could stall init: give up on this one (the child reports nothing) */
    close(status[0]);
    status[0] = -1;
  }
  c->child = pid;
  c->status_fd = status[0];
}

/* One message on a connection: the request, or later a signal for its child. */
static void on_message(struct conn *c) {
  union {
    char buf[CMSG_SPACE(3 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = {request_buf, SPAWN_REQUEST_MAX};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  int fds[3] = {-1, -1, -1};
  size_t nfds = 0;
  int bad = n <= 0 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  if (n >= 0) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
        bad = 1;
        continue;
      }
      size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
        if (nfds < 3) fds[nfds++] = fd;
        else close(fd), bad = 1;
      }
    }
  }
  if (!bad && c->child == 0) {
    serve_request(c, request_buf, (size_t)n, fds, nfds);
  } else if (!bad && nfds == 0 && n == (ssize_t)sizeof(struct spawn_msg) && request_buf[0] == SPAWN_SIGNAL) {
    struct spawn_msg m;
    memcpy(&m, request_buf, sizeof m);
    if (m.a >= 1 && m.a < NSIG) (void)kill(c->child, m.a);
  } else if (n == 0 && c->child != 0) {
    /* the requester is gone: the process runs on, reaped as any orphan */
    drop(c);
  } else {
    drop(c);
  }
  for (size_t i = 0; i < nfds; i++) close(fds[i]);
}

/* A bounded round: the poll loop serves everything else in between (security review, issue 10). */
#define ACCEPTS_PER_ROUND 32

static void on_accept(int lfd) {
  for (int round = 0; round < ACCEPTS_PER_ROUND; round++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
      /* no fd left (root in the container may lower init's limit): take the waiting one and close it, so poll does not spin */
      close(reserve_fd);
      fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) close(fd);
      reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      continue;
    }
    if (fd < 0) return;
    struct ucred cred;
    socklen_t len = sizeof cred;
    /* pid 0: the peer is outside this pid namespace (the host); uid 0: the daemon's user */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred || cred.pid != 0 || cred.uid != 0) {
      close(fd);
      continue;
    }
    struct conn *slot = NULL;
    for (size_t i = 0; i < MAX_CONNS && slot == NULL; i++)
      if (conns[i].fd < 0) slot = &conns[i];
    if (slot == NULL) {
      send_msg(fd, SPAWN_FAILED, STAGE_FORK, EAGAIN);
      close(fd);
      continue;
    }
    slot->fd = fd;
    slot->child = 0;
    slot->status_fd = -1;
  }
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (size_t i = 0; i < MAX_CONNS; i++) {
      struct conn *c = &conns[i];
      if (c->fd < 0 || c->child != pid) continue;
      settle(c);
      send_msg(c->fd, SPAWN_WAITED, status, 0);
      drop(c);
    }
  }
}

static int listen_abstract(void) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path + 1, SPAWN_SOCKET_NAME, strlen(SPAWN_SOCKET_NAME));
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SPAWN_SOCKET_NAME));
  if (bind(fd, (struct sockaddr *)&addr, len) != 0 || listen(fd, 128) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

int spawn_server(void) {
  /*
   * Not dumpable: a process of the container (root in it has no CAP_SYS_PTRACE) can neither
   * ptrace init nor take its fds (pidfd_getfd), so the listening socket and the connections
   * stay init's and its children's until they exec. The daemon owns the user namespace and
   * keeps its access (/proc/<init>/root, ns).
   */
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    fprintf(stderr, "garden-init: PR_SET_DUMPABLE: %s\n", strerror(errno));
    return 1;
  }
  record_inherited();
  /* a connection per running process: room for them all */
  struct rlimit *nofile = &inherited.limits[RLIMIT_NOFILE];
  if (nofile->rlim_cur < nofile->rlim_max) {
    struct rlimit raised = {nofile->rlim_max, nofile->rlim_max};
    (void)setrlimit(RLIMIT_NOFILE, &raised);
  }
  reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, NULL);
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGCHLD);
  sigaddset(&wanted, SIGTERM);
  sigaddset(&wanted, SIGINT);
  int sfd = signalfd(-1, &wanted, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    fprintf(stderr, "garden-init: signalfd: %s\n", strerror(errno));
    return 1;
  }
  int lfd = listen_abstract();
  /* still an init without it: the daemon's run then fails and says why */
  if (lfd < 0) fprintf(stderr, "garden-init: spawn server: %s\n", strerror(errno));
  for (size_t i = 0; i < MAX_CONNS; i++) conns[i] = (struct conn){-1, 0, -1};
  static struct pollfd pfds[2 + 2 * MAX_CONNS];
  static struct conn *owner[2 + 2 * MAX_CONNS];
  for (;;) {
    nfds_t n = 0;
    pfds[n] = (struct pollfd){sfd, POLLIN, 0};
    owner[n++] = NULL;
    if (lfd >= 0) {
      pfds[n] = (struct pollfd){lfd, POLLIN, 0};
      owner[n++] = NULL;
    }
    nfds_t first_conn = n;
    for (size_t i = 0; i < MAX_CONNS; i++) {
      struct conn *c = &conns[i];
      if (c->fd < 0) continue;
      pfds[n] = (struct pollfd){c->fd, POLLIN, 0};
      owner[n++] = c;
      if (c->status_fd >= 0) {
        pfds[n] = (struct pollfd){c->status_fd, POLLIN, 0};
        owner[n++] = c;
      }
    }
    if (poll(pfds, n, -1) < 0) continue;
    if (pfds[0].revents != 0) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) return 0;
      }
      reap();
    }
    if (lfd >= 0 && pfds[1].revents != 0) on_accept(lfd);
    for (nfds_t i = first_conn; i < n; i++) {
      struct conn *c = owner[i];
      if (pfds[i].revents == 0 || (c->fd != pfds[i].fd && c->status_fd != pfds[i].fd)) continue;
      if (pfds[i].fd == c->status_fd) settle(c);
      else if (c->fd >= 0) on_message(c);
    }
  }
}
