/*
 * trellis-exec: the runtime conmon runs for `run` in a container whose garden-init serves spawn
 * requests (src/runtime/init/spawn-server.c), in place of `runc exec`. conmon calls it as runc:
 *
 *   trellis-exec [--root R] exec --pid-file F --process P --detach [--tty --console-socket S] ID
 *
 * It reads the request gdn wrote beside P (exec-request: the container init's host pid, the
 * identities of its user and network namespaces, then the spawn request), joins those
 * namespaces after checking they are the recorded ones (a recycled pid must not lead into
 * another container), hands the request and its stdio to init, and waits for "started" or
 * "failed". Failed: one line on stderr as runc words it, exit 1, no pid file. Started: the
 * process's host pid goes to F's directory (real-pid), and a proxy that stays (conmon waits for
 * the pid in F, which must be its descendant) to F; the proxy forwards signals to the process
 * and exits as it did. Everything that comes back over the connection is from inside a
 * container: it is checked, and only the fds expected, of the type expected, are taken.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "../init/spawn-request.h"

#define EXEC_MAGIC "TRELLIS-EXEC-1"
#define HEADER_MAX 512
#define START_PREFIX "exec failed: unable to start container process: "

static char file_buf[HEADER_MAX + SPAWN_REQUEST_MAX + 1];
static struct spawn_request request;

__attribute__((format(printf, 1, 2))) static _Noreturn void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("trellis-exec: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* Go's wording of an errno (lower case), as runc prints it. */
static void go_error(int err, char *out, size_t len) {
  snprintf(out, len, "%s", strerror(err));
  if (out[0] >= 'A' && out[0] <= 'Z') out[0] = (char)(out[0] - 'A' + 'a');
}

static _Noreturn void start_failed(int stage, int err) {
  char e[128];
  go_error(err, e, sizeof e);
  const char *prog = request.argv[0];
  switch (stage) {
  case STAGE_EXEC:
    if (err == ENOENT && strchr(prog, '/') == NULL)
      fprintf(stderr, START_PREFIX "exec: \"%s\": executable file not found in $PATH\n", prog);
    else if (err == ENOENT)
      fprintf(stderr, START_PREFIX "exec: \"%s\": stat %s: %s\n", prog, prog, e);
    else
      fprintf(stderr, START_PREFIX "exec: \"%s\": %s\n", prog, e);
    break;
  case STAGE_CHDIR:
    fprintf(stderr, START_PREFIX "chdir to cwd (\"%s\") set in config.json failed: %s\n", request.cwd, e);
    break;
  case STAGE_SETGROUPS:
    if (err == EINVAL) fprintf(stderr, START_PREFIX "setgroups: a group of the user is not mapped in the container's user namespace\n");
    else fprintf(stderr, START_PREFIX "setgroups: %s\n", e);
    break;
  case STAGE_SETGID:
    if (err == EINVAL) fprintf(stderr, START_PREFIX "setresgid: gid %lu is not mapped in the container's user namespace\n", (unsigned long)request.gid);
    else fprintf(stderr, START_PREFIX "setresgid: %s\n", e);
    break;
  case STAGE_SETUID:
    if (err == EINVAL) fprintf(stderr, START_PREFIX "setresuid: uid %lu is not mapped in the container's user namespace\n", (unsigned long)request.uid);
    else fprintf(stderr, START_PREFIX "setresuid: %s\n", e);
    break;
  case STAGE_RLIMIT:
    fprintf(stderr, START_PREFIX "error setting rlimit: %s\n", e);
    break;
  case STAGE_INHERIT:
    fprintf(stderr, START_PREFIX "the container's init no longer has the priority, CPUs or OOM score it started with, and a process cannot get them back: %s\n", e);
    break;
  case STAGE_TTY:
    fprintf(stderr, START_PREFIX "setting up the terminal: %s\n", e);
    break;
  case STAGE_STDIO:
  case STAGE_GIVE_STDIO:
    fprintf(stderr, START_PREFIX "setting up stdio: %s\n", e);
    break;
  case STAGE_FORK:
    fprintf(stderr, START_PREFIX "fork: %s\n", e);
    break;
  case STAGE_REQUEST:
    fprintf(stderr, START_PREFIX "the container's init refused the request\n");
    break;
  default:
    fprintf(stderr, START_PREFIX "the container's init failed to start the process\n");
  }
  exit(1);
}

static int parse_ulong(const char *s, unsigned long long max, unsigned long long *out) {
  if (s == NULL || *s < '0' || *s > '9') return -1;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) return -1;
  *out = v;
  return 0;
}

struct header {
  pid_t init_pid;
  dev_t user_dev, net_dev;
  ino_t user_ino, net_ino;
};

/* exec-request: NUL-terminated header fields (magic, init pid, user ns dev, ino, net ns dev, ino), then the request. */
static void read_request(const char *process_path, struct header *h, const char **body, size_t *body_len) {
  char path[PATH_MAX];
  const char *slash = strrchr(process_path, '/');
  int n = slash == NULL ? snprintf(path, sizeof path, "exec-request")
                        : snprintf(path, sizeof path, "%.*s/exec-request", (int)(slash - process_path), process_path);
  if (n < 0 || (size_t)n >= sizeof path) die("the process file's path is too long: %s", process_path);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) die("cannot open the spawn request %s", path);
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fd, file_buf + len, sizeof file_buf - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("cannot read the spawn request %s", path);
    if (r == 0) break;
    len += (size_t)r;
    if (len == sizeof file_buf - 1) die("the spawn request %s is too large", path);
  }
  close(fd);
  file_buf[len] = '\0';
  struct field_reader fr = {file_buf, file_buf + len};
  const char *f[6];
  for (int i = 0; i < 6; i++)
    if ((f[i] = next_field(&fr)) == NULL) die("the spawn request %s has no complete header", path);
  unsigned long long v[5];
  if (strcmp(f[0], EXEC_MAGIC) != 0) die("the spawn request %s is not one", path);
  for (int i = 0; i < 5; i++)
    if (parse_ulong(f[i + 1], i == 0 ? (unsigned long long)INT_MAX : ~0ULL, &v[i]) != 0) die("the spawn request %s has a bad header", path);
  if (v[0] < 2) die("the spawn request %s names no init", path);
  h->init_pid = (pid_t)v[0];
  h->user_dev = (dev_t)v[1];
  h->user_ino = (ino_t)v[2];
  h->net_dev = (dev_t)v[3];
  h->net_ino = (ino_t)v[4];
  *body = fr.p;
  *body_len = (size_t)(fr.end - fr.p);
  if (*body_len > SPAWN_REQUEST_MAX || parse_spawn_request(*body, *body_len, &request) != 0) die("the spawn request %s is malformed", path);
}

static void join_ns(pid_t pid, const char *name, dev_t dev, ino_t ino, int type) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    fprintf(stderr, START_PREFIX "the container's init (pid %d) is gone\n", (int)pid);
    exit(1);
  }
  if (st.st_dev != dev || st.st_ino != ino) {
    fprintf(stderr, START_PREFIX "pid %d is no longer the container's init (its %s namespace differs)\n", (int)pid, name);
    exit(1);
  }
  if (setns(fd, type) != 0) {
    char e[128];
    go_error(errno, e, sizeof e);
    fprintf(stderr, START_PREFIX "joining the container's %s namespace: %s\n", name, e);
    exit(1);
  }
  close(fd);
}

/*
 * Until "started", every wait on init is bounded: a container can hold its init's queue full or
 * stop the forked child, and nothing may then keep conmon and us forever (gdn's own timer goes
 * with gdn on a restart). The proxy waits without a bound: the process may run for days.
 */
#define START_TIMEOUT_S 20

static void socket_timeouts(int fd, time_t seconds) {
  struct timeval tv = {seconds, 0};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
    die("socket timeouts: %s", strerror(errno));
}

static int connect_init(pid_t init_pid) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) die("SO_PASSCRED: %s", strerror(errno));
  /* connect() on a unix socket waits at most the send timeout for room in a full queue (EAGAIN) */
  socket_timeouts(fd, START_TIMEOUT_S);
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path + 1, SPAWN_SOCKET_NAME, strlen(SPAWN_SOCKET_NAME));
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SPAWN_SOCKET_NAME));
  /* right after create the init may not be listening yet */
  long delay_us = 500;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (connect(fd, (struct sockaddr *)&addr, len) != 0) {
    int err = errno;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((err != ECONNREFUSED && err != ENOENT && err != EAGAIN && err != EINTR) || now.tv_sec - start.tv_sec > 10) {
      char e[128];
      go_error(err, e, sizeof e);
      fprintf(stderr, START_PREFIX "connecting to the container's init: %s\n", e);
      exit(1);
    }
    struct timespec ts = {0, delay_us * 1000};
    nanosleep(&ts, NULL);
    if (delay_us < 20000) delay_us *= 2;
  }
  /* the listener is the container's init, not something else in its network namespace */
  struct ucred cred;
  socklen_t clen = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || clen != sizeof cred || cred.pid != init_pid) {
    fprintf(stderr, START_PREFIX "the spawn socket is not the container init's\n");
    exit(1);
  }
  return fd;
}

static void send_request(int fd, const char *body, size_t len, int with_stdio) {
  static const int stdio[3] = {0, 1, 2};
  if (spawn_send(fd, body, len, stdio, with_stdio ? 3 : 0) != (ssize_t)len) {
    char e[128];
    go_error(errno, e, sizeof e);
    fprintf(stderr, START_PREFIX "sending the request to the container's init: %s\n", e);
    exit(1);
  }
}

/*
 * One reply. Returns its length (0 at EOF); *pid gets the sender's pid when the kernel attached
 * it, *fd the one fd passed when `want_fd`. Anything else passed is closed and is an error.
 */
static ssize_t receive(int sock, struct spawn_msg *m, pid_t *pid, int *fd, int want_fd) {
  union {
    char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = {m, sizeof *m};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    fprintf(stderr, START_PREFIX "the container's init did not answer within %ds\n", START_TIMEOUT_S);
    exit(1);
  }
  if (n < 0) return -1;
  int bad = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  *pid = 0;
  *fd = -1;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET) {
      bad = 1;
    } else if (cm->cmsg_type == SCM_CREDENTIALS && cm->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
      struct ucred c;
      memcpy(&c, CMSG_DATA(cm), sizeof c);
      *pid = c.pid;
    } else if (cm->cmsg_type == SCM_RIGHTS) {
      size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; i++) {
        int got;
        memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof got);
        if (want_fd && *fd < 0) *fd = got;
        else close(got), bad = 1;
      }
    } else {
      bad = 1;
    }
  }
  if (bad || (n != 0 && n != (ssize_t)sizeof *m)) {
    if (*fd >= 0) close(*fd);
    fprintf(stderr, START_PREFIX "the container's init sent a malformed reply\n");
    exit(1);
  }
  return n;
}

/* The parent of `pid` as /proc says; -1 when it is gone, 0 while it is being reaped. */
static pid_t parent_of(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  char *close_paren = strrchr(buf, ')');
  if (close_paren == NULL) return -1;
  char state;
  int ppid;
  if (sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2) return -1;
  return (pid_t)ppid;
}

/* A pty master: the ptmx character device, and TIOCGPTN answers. */
static int is_pty_master(int fd) {
  struct stat st;
  unsigned int n;
  return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 5 && minor(st.st_rdev) == 2 &&
         ioctl(fd, TIOCGPTN, &n) == 0;
}

static void send_console(const char *socket_path, int console, int master) {
  if (spawn_send(console, "/dev/ptmx", 9, &master, 1) < 0) die("sending the terminal to %s", socket_path);
}

static void write_pid_file(const char *path, pid_t pid) {
  char tmp[PATH_MAX], text[32];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) die("path too long: %s", path);
  int len = snprintf(text, sizeof text, "%d", (int)pid);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 || write(fd, text, (size_t)len) != len || close(fd) != 0 || rename(tmp, path) != 0) die("cannot write %s", path);
}

/* Whether a signal's default action ends the process (the proxy dies of it too); stop, continue and ignore do not. */
static int kills_by_default(int sig) {
  switch (sig) {
  case SIGCHLD:
  case SIGCONT:
  case SIGSTOP:
  case SIGTSTP:
  case SIGTTIN:
  case SIGTTOU:
  case SIGURG:
  case SIGWINCH:
    return 0;
  default:
    return sig >= 1 && sig < NSIG;
  }
}

/* Stays for conmon: forwards signals to the process, and ends as it ended. */
static _Noreturn void proxy(int sock) {
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    for (int fd = 0; fd <= 2; fd++) dup2(null, fd);
    if (null > 2) close(null);
  }
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, NULL);
  int sfd = signalfd(-1, &all, SFD_CLOEXEC);
  for (;;) {
    struct pollfd p[2] = {{sock, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (poll(p, sfd >= 0 ? 2 : 1, -1) < 0) continue;
    if (sfd >= 0 && p[1].revents != 0) {
      struct signalfd_siginfo si;
      if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si && si.ssi_signo != SIGCHLD) {
        struct spawn_msg m;
        memset(&m, 0, sizeof m);
        m.type = SPAWN_SIGNAL;
        m.a = (int32_t)si.ssi_signo;
        (void)send(sock, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
    }
    if (p[0].revents == 0) continue;
    struct spawn_msg m;
    ssize_t n = recv(sock, &m, sizeof m, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == (ssize_t)sizeof m && m.type == SPAWN_WAITED) {
      int status = m.a;
      if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
      /* a status that names a stop signal (only a lying init sends one) must not stop us forever */
      if (WIFSIGNALED(status) && kills_by_default(WTERMSIG(status))) {
        int sig = WTERMSIG(status);
        /* die of the same signal (conmon records 128+n), without a core file of our own */
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
        _exit(128 + sig);
      }
      if (WIFSIGNALED(status)) _exit(128 + (WTERMSIG(status) & 0x7f));
      _exit(255);
    }
    if (n > 0) continue; /* nothing else is expected: ignore it */
    /* the init (and with it the process) is gone without a word */
    signal(SIGKILL, SIG_DFL);
    raise(SIGKILL);
    _exit(137);
  }
}

int main(int argc, char **argv) {
  const char *pid_file = NULL, *process = NULL, *console_path = NULL, *id = NULL;
  int tty = 0, in_exec = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has_value = i + 1 < argc;
    if (!in_exec) {
      if (strcmp(a, "--root") == 0 && has_value) i++;
      else if (strcmp(a, "exec") == 0) in_exec = 1;
      else die("usage: trellis-exec [--root R] exec --pid-file F --process P [--detach] [--tty --console-socket S] ID (got %s)", a);
    } else if (strcmp(a, "--pid-file") == 0 && has_value) pid_file = argv[++i];
    else if (strcmp(a, "--process") == 0 && has_value) process = argv[++i];
    else if (strcmp(a, "--console-socket") == 0 && has_value) console_path = argv[++i];
    else if (strcmp(a, "--detach") == 0 || strcmp(a, "-d") == 0) continue;
    else if (strcmp(a, "--tty") == 0 || strcmp(a, "-t") == 0) tty = 1;
    else if (a[0] != '-' && id == NULL && i == argc - 1) id = a;
    else die("unknown argument %s", a);
  }
  if (!in_exec || pid_file == NULL || process == NULL || id == NULL || (tty && console_path == NULL)) die("usage: %s", "trellis-exec [--root R] exec --pid-file F --process P [--detach] [--tty --console-socket S] ID");

  struct header h;
  const char *body;
  size_t body_len;
  read_request(process, &h, &body, &body_len);
  if (request.tty != tty) die("the spawn request and conmon disagree about a terminal (%s)", tty ? "conmon: yes" : "conmon: no");
  if (!tty) {
    for (int fd = 0; fd <= 2; fd++) {
      struct stat st;
      if (fstat(fd, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode))) die("stdio is not a pipe, socket or device (%s)", "fd 0-2");
    }
  }
  int console = -1;
  if (tty) {
    console = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(console_path) >= sizeof addr.sun_path) die("console socket path too long: %s", console_path);
    strcpy(addr.sun_path, console_path);
    if (console < 0 || connect(console, (struct sockaddr *)&addr, sizeof addr) != 0) die("cannot connect to the console socket %s", console_path);
  }
  join_ns(h.init_pid, "user", h.user_dev, h.user_ino, CLONE_NEWUSER);
  join_ns(h.init_pid, "net", h.net_dev, h.net_ino, CLONE_NEWNET);
  int sock = connect_init(h.init_pid);
  send_request(sock, body, body_len, !tty);

  pid_t child = 0;
  int master = -1;
  for (;;) {
    struct spawn_msg m;
    pid_t sender;
    int fd;
    ssize_t n = receive(sock, &m, &sender, &fd, tty && child == 0);
    if (n <= 0) {
      fprintf(stderr, START_PREFIX "the container's init closed the connection\n");
      return 1;
    }
    if (m.type == SPAWN_FAILED) start_failed(m.a, m.b);
    if (m.type == SPAWN_PID && child == 0) {
      /* the kernel's word for the sender: init's own child, not a process that only says so */
      /*
       * Only init and its child before exec hold the connection (init is not dumpable: no
       * pidfd_getfd from inside). A child that already ended may be reaped (no /proc entry),
       * or being reaped (/proc shows ppid 0 once it is unhashed): nothing left to check.
       */
      pid_t parent = parent_of(sender);
      if (sender <= 1 || (parent > 0 && parent != h.init_pid) || (tty && (fd < 0 || !is_pty_master(fd)))) {
        if (fd >= 0) close(fd);
        fprintf(stderr, START_PREFIX "the container's init sent a bad process id or terminal (pid %d, its parent %d, init %d, fd %d)\n", (int)sender, (int)parent, (int)h.init_pid, fd);
        return 1;
      }
      if (!tty && fd >= 0) close(fd);
      child = sender;
      master = fd;
      continue;
    }
    if (fd >= 0) close(fd);
    if (m.type == SPAWN_STARTED && child != 0) break;
    fprintf(stderr, START_PREFIX "the container's init sent an unexpected reply\n");
    return 1;
  }
  if (tty) {
    send_console(console_path, console, master);
    close(master);
    close(console);
  }
  char real[PATH_MAX];
  const char *slash = strrchr(pid_file, '/');
  int n = slash == NULL ? snprintf(real, sizeof real, "real-pid") : snprintf(real, sizeof real, "%.*s/real-pid", (int)(slash - pid_file), pid_file);
  if (n < 0 || (size_t)n >= sizeof real) die("path too long: %s", pid_file);
  write_pid_file(real, child);
  socket_timeouts(sock, 0); /* the proxy waits as long as the process runs */
  pid_t p = fork();
  if (p < 0) die("fork: %s", strerror(errno));
  if (p == 0) proxy(sock);
  write_pid_file(pid_file, p);
  return 0;
}
