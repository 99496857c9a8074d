/*
 * trellis-spawner: starts gdn's child processes (conmon, runc, the CNI gate) on gdn's behalf.
 * A fork of the ~100 MiB gdn Node process blocks its event loop for several milliseconds per
 * spawn, and under parallel load those spawns queue on the one loop (issue #10). This process
 * is small, so starting a child costs little; gdn starts it once and asks it over stdin/stdout.
 * Not setuid: it runs as the daemon's user, for the daemon, and does only what gdn asks.
 *
 *   trellis-spawner PARENT_PID [RUNTIME]
 *
 * With RUNTIME (the OCI runtime's binary, runc), the spawner holds a fully sealed memfd copy
 * of it at fd SEALED_FD, for gdn to run as /proc/<spawner>/fd/SEALED_FD (issue #10): runc 1.1
 * copies itself into a sealed memfd in every `runc init` (CVE-2019-5736) unless it already
 * runs from one, and a sealed copy cannot be written, so one copy serves every container.
 * Without it (or when making it fails) nothing changes: gdn runs RUNTIME itself.
 *
 * Frames, both ways: u32 little-endian length of what follows, u8 type, u32 id, payload.
 * gdn -> spawner:
 *   1 SPAWN  u32 flags, u32 argc, u32 envc, then NUL-terminated: file, cwd, argv[argc], env[envc]
 *            flags: 1 setsid, 2 stdin pipe, 4 stdout pipe, 8 stderr pipe, 16 fd 3 pipe (the child writes)
 *   2 KILL   i32 signal, u8 group (1: the child's process group)
 *   3 WRITE  bytes for the child's stdin (each answered by one WROTE once written, or dropped
 *            because the child's stdin is closed)
 *   4 CLOSE  u8 fd: 0 closes stdin once what is queued is written; 1, 2, 3 stop reading that pipe
 * spawner -> gdn:
 *   1 STARTED i32 pid     2 FAILED i32 errno, text     3 DATA u8 fd, bytes     4 EOF u8 fd
 *   5 EXIT i32 code (-1 if signalled), i32 signal       6 WROTE u32 count
 * An id is gdn's to choose and is forgotten once the child has exited and its pipes are closed.
 * The spawner reaps every child it starts (it is no subreaper: what they daemonise goes to init,
 * as when gdn spawned them), and exits when gdn goes: EOF on stdin, or PR_SET_PDEATHSIG.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <linux/close_range.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { REQ_SPAWN = 1, REQ_KILL = 2, REQ_WRITE = 3, REQ_CLOSE = 4 };
enum { EV_STARTED = 1, EV_FAILED = 2, EV_DATA = 3, EV_EOF = 4, EV_EXIT = 5, EV_WROTE = 6 };
enum { F_SETSID = 1, F_STDIN = 2, F_STDOUT = 4, F_STDERR = 8, F_FD3 = 16 };

#define MAX_FRAME (16u << 20)
#define CHUNK 65536
#define LOW_FD 16 /* every fd of ours sits above the ones a child is given */
#define SEALED_FD 1000 /* the sealed runtime (gdn reads /proc/<pid>/fd/1000) */
#define SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) /* runc's RUNC_MEMFD_SEALS */

struct buf {
	struct buf *next;
	size_t len, off;
	unsigned char data[];
};

struct child {
	struct child *next;
	uint32_t id;
	pid_t pid;
	int exited;
	int out[4];  /* read ends for the child's fd 1, 2, 3 (index = fd), -1 when closed */
	int in;      /* write end of the child's stdin, -1 when closed */
	int in_closing;
	struct buf *queue, *tail;
};

static struct child *children;
static int devnull = -1;

static void die(const char *what)
{
	fprintf(stderr, "trellis-spawner: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int high(int fd)
{
	if (fd < 0 || fd >= LOW_FD)
		return fd;
	int h = fcntl(fd, F_DUPFD_CLOEXEC, LOW_FD);
	if (h < 0)
		die("fcntl");
	close(fd);
	return h;
}

/* The sealed copy of the runtime at SEALED_FD, close-on-exec; on any failure, none (gdn then runs the file). */
static void seal_runtime(const char *path)
{
	int src = open(path, O_RDONLY | O_CLOEXEC);
	if (src < 0) {
		fprintf(stderr, "trellis-spawner: %s: %s (runc will copy itself)\n", path, strerror(errno));
		return;
	}
	int m = memfd_create("trellis-runtime", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	int ok = m >= 0;
	char *b = malloc(CHUNK);
	ok = ok && b != NULL;
	while (ok) {
		ssize_t n = read(src, b, CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ok = n == 0;
			break;
		}
		for (ssize_t off = 0; ok && off < n;) {
			ssize_t w = write(m, b + off, (size_t)(n - off));
			if (w < 0 && errno == EINTR)
				continue;
			ok = w > 0;
			off += w > 0 ? w : 0;
		}
	}
	free(b);
	close(src);
	ok = ok && fcntl(m, F_ADD_SEALS, SEALS) == 0 && fcntl(m, F_GET_SEALS) == SEALS;
	ok = ok && dup3(m, SEALED_FD, O_CLOEXEC) == SEALED_FD;
	if (!ok)
		fprintf(stderr, "trellis-spawner: cannot seal a copy of %s: %s (runc will copy itself)\n", path, strerror(errno));
	if (m >= 0)
		close(m);
}

static void write_all(const void *p, size_t n)
{
	const unsigned char *b = p;
	while (n > 0) {
		ssize_t w = write(STDOUT_FILENO, b, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pf = { .fd = STDOUT_FILENO, .events = POLLOUT };
				poll(&pf, 1, -1);
				continue;
			}
			exit(0); /* gdn is gone */
		}
		b += w;
		n -= (size_t)w;
	}
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void event(uint8_t type, uint32_t id, const void *a, size_t an, const void *b, size_t bn)
{
	unsigned char h[9];
	put32(h, (uint32_t)(5 + an + bn));
	h[4] = type;
	put32(h + 5, id);
	write_all(h, sizeof h);
	if (an)
		write_all(a, an);
	if (bn)
		write_all(b, bn);
}

static void event_i32(uint8_t type, uint32_t id, int32_t v)
{
	unsigned char p[4];
	put32(p, (uint32_t)v);
	event(type, id, p, 4, NULL, 0);
}

static struct child *find(uint32_t id)
{
	for (struct child *c = children; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void drop_queue(struct child *c)
{
	while (c->queue) {
		struct buf *b = c->queue;
		c->queue = b->next;
		unsigned char p[4];
		put32(p, (uint32_t)b->len);
		event(EV_WROTE, c->id, p, 4, NULL, 0);
		free(b);
	}
	c->tail = NULL;
}

static void close_in(struct child *c)
{
	drop_queue(c);
	if (c->in >= 0)
		close(c->in);
	c->in = -1;
	c->in_closing = 0;
}

static void close_out(struct child *c, int fd, int tell)
{
	if (c->out[fd] < 0)
		return;
	close(c->out[fd]);
	c->out[fd] = -1;
	if (tell) {
		uint8_t f = (uint8_t)fd;
		event(EV_EOF, c->id, &f, 1, NULL, 0);
	}
}

/* Forgets a child once nothing more can come from it. */
static void sweep(void)
{
	for (struct child **pp = &children; *pp;) {
		struct child *c = *pp;
		if (c->exited && c->out[1] < 0 && c->out[2] < 0 && c->out[3] < 0) {
			close_in(c);
			*pp = c->next;
			free(c);
		} else
			pp = &c->next;
	}
}

/* The file to execute: FILE itself if it names a path, else the first match on the child's PATH. */
static int resolve(const char *file, char **env, char *out, size_t outn)
{
	if (strchr(file, '/')) {
		if (strlen(file) >= outn)
			return ENAMETOOLONG;
		strcpy(out, file);
		return 0;
	}
	const char *path = "/usr/local/bin:/usr/bin:/bin";
	for (char **e = env; *e; e++)
		if (strncmp(*e, "PATH=", 5) == 0)
			path = *e + 5;
	int err = ENOENT;
	for (const char *p = path;; p++) {
		const char *end = strchrnul(p, ':');
		size_t dl = (size_t)(end - p);
		if (dl > 0 && snprintf(out, outn, "%.*s/%s", (int)dl, p, file) < (int)outn) {
			if (access(out, X_OK) == 0)
				return 0;
			if (errno == EACCES)
				err = EACCES;
		}
		if (*end == '\0')
			break;
		p = end;
	}
	return err;
}

static void spawn_child(uint32_t id, const unsigned char *p, size_t n)
{
	if (n < 12 || find(id)) {
		fprintf(stderr, "trellis-spawner: bad SPAWN request\n");
		exit(2);
	}
	uint32_t flags = get32(p), argc = get32(p + 4), envc = get32(p + 8);
	if (argc < 1 || argc > 1u << 20 || envc > 1u << 20) {
		fprintf(stderr, "trellis-spawner: bad SPAWN counts\n");
		exit(2);
	}
	size_t total = 2 + (size_t)argc + envc;
	char **strs = calloc(total + 2, sizeof *strs);
	if (!strs)
		die("calloc");
	const unsigned char *s = p + 12, *end = p + n;
	for (size_t i = 0; i < total; i++) {
		const unsigned char *z = memchr(s, 0, (size_t)(end - s));
		if (!z) {
			fprintf(stderr, "trellis-spawner: truncated SPAWN request\n");
			exit(2);
		}
		strs[i] = (char *)s;
		s = z + 1;
	}
	const char *file = strs[0], *cwd = strs[1];
	char **argv = calloc((size_t)argc + 1, sizeof *argv), **env = calloc((size_t)envc + 1, sizeof *env);
	if (!argv || !env)
		die("calloc");
	memcpy(argv, strs + 2, argc * sizeof *argv);
	memcpy(env, strs + 2 + argc, envc * sizeof *env);

	struct child *c = calloc(1, sizeof *c);
	if (!c)
		die("calloc");
	c->id = id;
	c->in = -1;
	for (int i = 0; i < 4; i++)
		c->out[i] = -1;
	int theirs[4] = { devnull, devnull, devnull, -1 };
	int pipes_ok = 1;
	if (flags & F_STDIN) {
		int pp[2];
		if (pipe2(pp, O_CLOEXEC) < 0)
			pipes_ok = 0;
		else {
			theirs[0] = high(pp[0]);
			c->in = high(pp[1]);
			fcntl(c->in, F_SETFL, O_NONBLOCK);
		}
	}
	for (int fd = 1; fd <= 3 && pipes_ok; fd++) {
		uint32_t want = fd == 1 ? F_STDOUT : fd == 2 ? F_STDERR : F_FD3;
		if (!(flags & want))
			continue;
		int pp[2];
		if (pipe2(pp, O_CLOEXEC) < 0) {
			pipes_ok = 0;
			break;
		}
		c->out[fd] = high(pp[0]);
		theirs[fd] = high(pp[1]);
		fcntl(c->out[fd], F_SETFL, O_NONBLOCK);
	}

	char exe[PATH_MAX];
	int err = pipes_ok ? resolve(file, env, exe, sizeof exe) : errno;
	pid_t pid = -1;
	if (err == 0) {
		posix_spawn_file_actions_t fa;
		posix_spawnattr_t at;
		posix_spawn_file_actions_init(&fa);
		posix_spawnattr_init(&at);
		for (int fd = 0; fd <= 3; fd++)
			if (theirs[fd] >= 0)
				posix_spawn_file_actions_adddup2(&fa, theirs[fd], fd);
		if (cwd[0])
			posix_spawn_file_actions_addchdir_np(&fa, cwd);
		sigset_t none, all;
		sigemptyset(&none);
		sigfillset(&all);
		posix_spawnattr_setsigmask(&at, &none);
		posix_spawnattr_setsigdefault(&at, &all);
		short sf = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
		if (flags & F_SETSID)
			sf |= POSIX_SPAWN_SETSID;
		posix_spawnattr_setflags(&at, sf);
		err = posix_spawn(&pid, exe, &fa, &at, argv, env);
		posix_spawn_file_actions_destroy(&fa);
		posix_spawnattr_destroy(&at);
	}
	for (int fd = 0; fd <= 3; fd++)
		if (theirs[fd] >= 0 && theirs[fd] != devnull)
			close(theirs[fd]);
	if (err != 0) {
		char text[PATH_MAX + 64];
		int tn = snprintf(text, sizeof text, "%s", strerror(err));
		unsigned char e[4];
		put32(e, (uint32_t)err);
		event(EV_FAILED, id, e, 4, text, tn > 0 ? (size_t)tn : 0);
		c->exited = 1;
		close_in(c);
		for (int fd = 1; fd <= 3; fd++)
			close_out(c, fd, 0);
		free(c);
	} else {
		c->pid = pid;
		c->next = children;
		children = c;
		event_i32(EV_STARTED, id, pid);
	}
	free(argv);
	free(env);
	free(strs);
}

static void request(uint8_t type, uint32_t id, const unsigned char *p, size_t n)
{
	if (type == REQ_SPAWN) {
		spawn_child(id, p, n);
		return;
	}
	struct child *c = find(id);
	switch (type) {
	case REQ_KILL:
		if (n < 5) {
			fprintf(stderr, "trellis-spawner: bad KILL request\n");
			exit(2);
		}
		if (c && !c->exited && c->pid > 0)
			kill(p[4] ? -c->pid : c->pid, (int)get32(p));
		break;
	case REQ_WRITE: {
		if (!c || c->in < 0 || c->in_closing) {
			unsigned char w[4];
			put32(w, (uint32_t)n);
			event(EV_WROTE, id, w, 4, NULL, 0);
			break;
		}
		struct buf *b = malloc(sizeof *b + n);
		if (!b)
			die("malloc");
		b->next = NULL;
		b->len = n;
		b->off = 0;
		memcpy(b->data, p, n);
		if (c->tail)
			c->tail->next = b;
		else
			c->queue = b;
		c->tail = b;
		break;
	}
	case REQ_CLOSE:
		if (n < 1 || p[0] > 3) {
			fprintf(stderr, "trellis-spawner: bad CLOSE request\n");
			exit(2);
		}
		if (!c)
			break;
		if (p[0] == 0) {
			if (c->queue)
				c->in_closing = 1;
			else
				close_in(c);
		} else
			close_out(c, p[0], 1);
		break;
	default:
		fprintf(stderr, "trellis-spawner: unknown request type %u\n", type);
		exit(2);
	}
}

static void flush_in(struct child *c)
{
	while (c->queue) {
		struct buf *b = c->queue;
		ssize_t w = write(c->in, b->data + b->off, b->len - b->off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			close_in(c); /* the child closed its stdin: what is queued is dropped, and said so */
			return;
		}
		b->off += (size_t)w;
		if (b->off < b->len)
			continue;
		c->queue = b->next;
		if (!c->queue)
			c->tail = NULL;
		unsigned char p[4];
		put32(p, (uint32_t)b->len);
		event(EV_WROTE, c->id, p, 4, NULL, 0);
		free(b);
	}
	if (c->in_closing)
		close_in(c);
}

static void reap(void)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			return;
		for (struct child *c = children; c; c = c->next) {
			if (c->pid != pid || c->exited)
				continue;
			c->exited = 1;
			unsigned char p[8];
			put32(p, (uint32_t)(WIFEXITED(st) ? WEXITSTATUS(st) : -1));
			put32(p + 4, (uint32_t)(WIFSIGNALED(st) ? WTERMSIG(st) : 0));
			event(EV_EXIT, c->id, p, 8, NULL, 0);
			close_in(c);
			break;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: trellis-spawner PARENT_PID [RUNTIME] (started by gdn)\n");
		return 1;
	}
	long parent = strtol(argv[1], NULL, 10);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		die("prctl");
	if (getppid() != (pid_t)parent)
		return 0; /* gdn went before we could watch for it */
	signal(SIGPIPE, SIG_IGN);
	/* What gdn's own parent left open is no child's business. */
	if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) < 0)
		for (int fd = 3; fd < 1024; fd++)
			fcntl(fd, F_SETFD, FD_CLOEXEC);
	fcntl(STDIN_FILENO, F_SETFD, FD_CLOEXEC);
	fcntl(STDOUT_FILENO, F_SETFD, FD_CLOEXEC);
	fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
	if (argc == 3)
		seal_runtime(argv[2]);
	devnull = high(open("/dev/null", O_RDWR | O_CLOEXEC));
	if (devnull < 0)
		die("/dev/null");
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	int sfd = high(signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));
	if (sfd < 0)
		die("signalfd");

	size_t cap = CHUNK, have = 0;
	unsigned char *in = malloc(cap);
	unsigned char *chunk = malloc(CHUNK);
	struct pollfd *pf = NULL;
	struct child **owner = NULL;
	int *which = NULL;
	size_t pfcap = 0;
	if (!in || !chunk)
		die("malloc");
	for (;;) {
		size_t want = 2;
		for (struct child *c = children; c; c = c->next)
			want += 4;
		if (want > pfcap) {
			pfcap = want * 2;
			pf = realloc(pf, pfcap * sizeof *pf);
			owner = realloc(owner, pfcap * sizeof *owner);
			which = realloc(which, pfcap * sizeof *which);
			if (!pf || !owner || !which)
				die("realloc");
		}
		size_t np = 0;
		pf[np++] = (struct pollfd){ .fd = STDIN_FILENO, .events = POLLIN };
		pf[np++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		for (struct child *c = children; c; c = c->next) {
			for (int fd = 1; fd <= 3; fd++)
				if (c->out[fd] >= 0) {
					owner[np] = c;
					which[np] = fd;
					pf[np++] = (struct pollfd){ .fd = c->out[fd], .events = POLLIN };
				}
			if (c->in >= 0 && c->queue) {
				owner[np] = c;
				which[np] = 0;
				pf[np++] = (struct pollfd){ .fd = c->in, .events = POLLOUT };
			}
		}
		if (poll(pf, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (pf[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0)
				;
			reap();
		}
		for (size_t i = 2; i < np; i++) {
			if (!pf[i].revents)
				continue;
			struct child *c = owner[i];
			int fd = which[i];
			if (fd == 0) {
				if (c->in >= 0)
					flush_in(c);
				continue;
			}
			if (c->out[fd] != pf[i].fd)
				continue; /* closed meanwhile */
			ssize_t r = read(c->out[fd], chunk, CHUNK);
			if (r > 0) {
				uint8_t f = (uint8_t)fd;
				event(EV_DATA, c->id, &f, 1, chunk, (size_t)r);
			} else if (r == 0 || (errno != EAGAIN && errno != EINTR))
				close_out(c, fd, 1);
		}
		if (pf[0].revents) {
			if (have == cap) {
				cap *= 2;
				in = realloc(in, cap);
				if (!in)
					die("realloc");
			}
			ssize_t r = read(STDIN_FILENO, in + have, cap - have);
			if (r == 0)
				return 0; /* gdn is gone: its children stay, as they would have without us */
			if (r < 0 && errno != EAGAIN && errno != EINTR)
				return 0;
			if (r > 0)
				have += (size_t)r;
			size_t off = 0;
			while (have - off >= 4) {
				uint32_t len = get32(in + off);
				if (len < 5 || len > MAX_FRAME) {
					fprintf(stderr, "trellis-spawner: bad frame length %u\n", len);
					return 2;
				}
				if (have - off - 4 < len) {
					if (4 + (size_t)len > cap) {
						/* room for the whole frame */
						memmove(in, in + off, have - off);
						have -= off;
						off = 0;
						while (cap < 4 + (size_t)len)
							cap *= 2;
						in = realloc(in, cap);
						if (!in)
							die("realloc");
					}
					break;
				}
				request(in[off + 4], get32(in + off + 5), in + off + 9, len - 5);
				off += 4 + len;
			}
			memmove(in, in + off, have - off);
			have -= off;
		}
		sweep();
	}
}
