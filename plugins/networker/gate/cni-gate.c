/*
 * cni-gate: the one setuid-root file of Trellis (issue #4).
 *
 * Ordinary users run the Trellis daemon; container networking needs Debian's CNI
 * plugins (bridge, host-local, portmap in /usr/lib/cni), which must run as root. This
 * program runs them as root for validated requests only. It trusts nothing from the
 * caller but argv and the real uid: the environment is cleared, stdin is ignored,
 * inherited fds, signal state, rlimits, umask and cwd are reset, and every value that
 * reaches a plugin is either a constant, a value parsed from the root-owned
 * /etc/trellis/net/<uid>.conf, a parsed and re-formatted argument, or a file the gate
 * wrote itself into root-owned state.
 *
 *   cni-gate add   <id> <pid> [ip=A.B.C.D | range=A.B.C.D/NN | net=A.B.C.D/NN]
 *   cni-gate del   <id> [<pid>]
 *   cni-gate check <id> <pid>
 *   cni-gate ports <id> <pid> [<hostport>:<containerport>/<tcp|udp> ...]
 *
 * Exit status: 0 done; 1 a plugin (or the gate's own state) failed, after rollback;
 * 2 refused before anything was changed. Any failure prints one line on stderr that
 * starts with "cni-gate: ". See README.md next to this file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/nsfs.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>

#include "gate.h"

#define CONF_DIR "/etc/trellis/net"
#define CNI_DIR "/usr/lib/cni"
#define STATE_PARENT "/var/lib"          /* then trellis/net/<uid>, created on add */
#define STATE_DIR "/var/lib/trellis/net"
#define CHILD_PATH "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_PORTS 64
#define MAX_IPS 8
#define OUT_CAP ((size_t)1 << 20)        /* a plugin's stdout, and a stored result */
#define ERR_CAP ((size_t)64 << 10)       /* the tail of a plugin's stderr we keep */
#define CONF_CAP ((size_t)64 << 10)
#define PORTS_FILE_CAP ((size_t)64 << 10)
#define PLUGIN_TIMEOUT_MS 60000
#define STDOUT_TIMEOUT_MS 5000
#define NETLINK_TIMEOUT_S 5
#define CHILD_NETNS_FD 3

unsigned caller;                         /* the caller's real uid, the only thing we take from the process */

/* ------------------------------------------------------------------ messages */

static void say(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void say(const char *fmt, va_list ap)
{
	char m[2048];
	int k = snprintf(m, sizeof m, "cni-gate: ");
	if (k < 0)
		return;
	int r = vsnprintf(m + k, sizeof m - (size_t)k - 1, fmt, ap);
	if (r < 0)
		return;
	size_t n = strnlen(m, sizeof m - 1);
	/* one line, plain ASCII: no control characters, no terminal escapes */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)m[i];
		if (c < 0x20 || c == 0x7f)
			m[i] = ' ';
		else if (c >= 0x80)
			m[i] = '?';
	}
	m[n++] = '\n';
	ssize_t w = write(2, m, n);
	(void)w;
}

/* Refused: nothing was changed. */
void refuse(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say(fmt, ap);
	va_end(ap);
	exit(2);
}

/* Failed while acting (a plugin, or writing our own state). */
void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say(fmt, ap);
	va_end(ap);
	exit(1);
}

/* ------------------------------------------------------------------ buffers */

struct buf {
	char *p;
	size_t n, cap;
};

static void b_room(struct buf *b, size_t add)
{
	if (add > SIZE_MAX / 4 || b->n > SIZE_MAX / 4)
		fail("out of memory");
	size_t need = b->n + add + 1;
	if (need <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p)
		fail("out of memory");
	b->p = p;
	b->cap = cap;
}

static void b_add(struct buf *b, const void *d, size_t n)
{
	b_room(b, n);
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void b_str(struct buf *b, const char *s) { b_add(b, s, strlen(s)); }

static void b_fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void b_fmt(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (k < 0)
		fail("internal formatting error");
	b_room(b, (size_t)k);
	va_start(ap, fmt);
	vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
	va_end(ap);
	b->n += (size_t)k;
}

static void b_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

/* ------------------------------------------------------------------ strict parsing */

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_lower(char c) { return c >= 'a' && c <= 'z'; }
static int is_alnum(char c) { return is_digit(c) || is_lower(c) || (c >= 'A' && c <= 'Z'); }

/* Decimal in [s,e): no sign, no leading zero, at most max. */
static int parse_num(const char *s, const char *e, unsigned long max, unsigned long *out)
{
	if (s >= e || e - s > 10 || (*s == '0' && e - s > 1))
		return -1;
	unsigned long v = 0;
	for (; s < e; s++) {
		if (!is_digit(*s))
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

static int parse_num_z(const char *s, unsigned long max, unsigned long *out)
{
	return parse_num(s, s + strlen(s), max, out);
}

/* Dotted quad in [s,e): exactly four decimal octets, no leading zeros. */
static int parse_ip(const char *s, const char *e, uint32_t *out)
{
	uint32_t v = 0;
	for (int k = 0; k < 4; k++) {
		const char *d = s;
		while (d < e && *d != '.')
			d++;
		if ((k < 3) != (d < e))
			return -1;
		unsigned long o;
		if (parse_num(s, d, 255, &o))
			return -1;
		v = v << 8 | (uint32_t)o;
		s = d + 1;
	}
	*out = v;
	return 0;
}

static int parse_cidr(const char *s, const char *e, uint32_t *ip, unsigned *prefix)
{
	const char *slash = memchr(s, '/', (size_t)(e - s));
	unsigned long p;
	if (!slash || parse_ip(s, slash, ip) || parse_num(slash + 1, e, 32, &p))
		return -1;
	*prefix = (unsigned)p;
	return 0;
}

static uint32_t mask_of(unsigned prefix) { return prefix ? 0xffffffffu << (32 - prefix) : 0; }

static void fmt_ip(uint32_t v, char out[16])
{
	snprintf(out, 16, "%u.%u.%u.%u", v >> 24, (v >> 16) & 255, (v >> 8) & 255, v & 255);
}

/* <id>: [A-Za-z0-9][A-Za-z0-9_.-]{0,63} */
static int valid_id(const char *s)
{
	size_t n = strnlen(s, 65);
	if (n < 1 || n > 64 || !is_alnum(s[0]))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!is_alnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return 0;
	return 1;
}

/* ------------------------------------------------------------------ JSON (validation and lookup only) */

struct jp {
	const char *s;
	size_t n, i;
};

static void j_ws(struct jp *p)
{
	while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
		p->i++;
}

static int j_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* A string at p->i; decoded (non-ASCII and controls as '?') into out when out != NULL. */
static int j_str(struct jp *p, struct buf *out)
{
	if (p->i >= p->n || p->s[p->i] != '"')
		return -1;
	p->i++;
	while (p->i < p->n) {
		unsigned char c = (unsigned char)p->s[p->i++];
		if (c == '"')
			return 0;
		if (c < 0x20)
			return -1;
		if (c != '\\') {
			if (out)
				b_add(out, c < 0x80 ? (const char *)&c : "?", 1);
			continue;
		}
		if (p->i >= p->n)
			return -1;
		char e = p->s[p->i++], d = 0;
		switch (e) {
		case '"': d = '"'; break;
		case '\\': d = '\\'; break;
		case '/': d = '/'; break;
		case 'b': case 'f': case 'n': case 'r': case 't': d = ' '; break;
		case 'u': {
			if (p->n - p->i < 4)
				return -1;
			unsigned v = 0;
			for (int k = 0; k < 4; k++) {
				char h = p->s[p->i++];
				if (!j_hex(h))
					return -1;
				v = v * 16 + (unsigned)(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
			}
			d = (v >= 0x20 && v < 0x7f) ? (char)v : '?';
			break;
		}
		default:
			return -1;
		}
		if (out)
			b_add(out, &d, 1);
	}
	return -1;
}

static int j_num(struct jp *p)
{
	size_t st;
	if (p->i < p->n && p->s[p->i] == '-')
		p->i++;
	if (p->i >= p->n || !is_digit(p->s[p->i]))
		return -1;
	if (p->s[p->i] == '0')
		p->i++;
	else
		while (p->i < p->n && is_digit(p->s[p->i]))
			p->i++;
	if (p->i < p->n && p->s[p->i] == '.') {
		st = ++p->i;
		while (p->i < p->n && is_digit(p->s[p->i]))
			p->i++;
		if (p->i == st)
			return -1;
	}
	if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
		p->i++;
		if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
			p->i++;
		st = p->i;
		while (p->i < p->n && is_digit(p->s[p->i]))
			p->i++;
		if (p->i == st)
			return -1;
	}
	return 0;
}

static int j_val(struct jp *p, int depth)
{
	if (depth > 64)
		return -1;
	j_ws(p);
	if (p->i >= p->n)
		return -1;
	char c = p->s[p->i];
	if (c == '{' || c == '[') {
		char close = c == '{' ? '}' : ']';
		p->i++;
		j_ws(p);
		if (p->i < p->n && p->s[p->i] == close) {
			p->i++;
			return 0;
		}
		for (;;) {
			if (c == '{') {
				j_ws(p);
				if (j_str(p, NULL))
					return -1;
				j_ws(p);
				if (p->i >= p->n || p->s[p->i++] != ':')
					return -1;
			}
			if (j_val(p, depth + 1))
				return -1;
			j_ws(p);
			if (p->i >= p->n)
				return -1;
			char d = p->s[p->i++];
			if (d == close)
				return 0;
			if (d != ',')
				return -1;
		}
	}
	if (c == '"')
		return j_str(p, NULL);
	if (c == '-' || is_digit(c))
		return j_num(p);
	static const char *const lit[] = {"true", "false", "null"};
	for (size_t k = 0; k < 3; k++) {
		size_t l = strlen(lit[k]);
		if (p->n - p->i >= l && !memcmp(p->s + p->i, lit[k], l)) {
			p->i += l;
			return 0;
		}
	}
	return -1;
}

/* The whole of s[0,n) is one JSON object. */
static int j_object_doc(const char *s, size_t n)
{
	struct jp p = {s, n, 0};
	j_ws(&p);
	if (p.i >= n || s[p.i] != '{' || j_val(&p, 0))
		return -1;
	j_ws(&p);
	return p.i == n ? 0 : -1;
}

/* In the object s[0,n), the value of member key: 1 found (span [*vs,*ve)), 0 absent, -1 bad or duplicated. */
static int j_get(const char *s, size_t n, const char *key, size_t *vs, size_t *ve)
{
	struct jp p = {s, n, 0};
	int found = 0;
	j_ws(&p);
	if (p.i >= n || s[p.i++] != '{')
		return -1;
	j_ws(&p);
	if (p.i < n && s[p.i] == '}')
		return 0;
	for (;;) {
		struct buf k = {0};
		j_ws(&p);
		if (j_str(&p, &k)) {
			b_free(&k);
			return -1;
		}
		int match = k.n == strlen(key) && !memcmp(k.p, key, k.n);
		b_free(&k);
		j_ws(&p);
		if (p.i >= n || s[p.i++] != ':')
			return -1;
		j_ws(&p);
		size_t st = p.i;
		if (j_val(&p, 1))
			return -1;
		if (match) {
			if (found)
				return -1;
			found = 1;
			*vs = st;
			*ve = p.i;
		}
		j_ws(&p);
		if (p.i >= n)
			return -1;
		char d = s[p.i++];
		if (d == '}')
			return found;
		if (d != ',')
			return -1;
	}
}

/* The decoded string member key of object s[0,n): 1 found, 0 absent or not a string. */
static int j_get_str(const char *s, size_t n, const char *key, struct buf *out)
{
	size_t vs, ve;
	if (j_get(s, n, key, &vs, &ve) != 1 || s[vs] != '"')
		return 0;
	struct jp p = {s, ve, vs};
	return j_str(&p, out) ? 0 : 1;
}

/* ------------------------------------------------------------------ the user's network config */

static int nets_overlap(uint32_t a, unsigned ap, uint32_t b, unsigned bp)
{
	unsigned pl = ap < bp ? ap : bp;
	return (a & mask_of(pl)) == (b & mask_of(pl));
}

/* tr<digits>p...: the names the gate gives pool bridges (tr<uid>p<n>), never a config's bridge */
static int pool_bridge_like(const char *v, size_t n)
{
	size_t i = 2;
	if (n < 4 || v[0] != 't' || v[1] != 'r')
		return 0;
	while (i < n && is_digit(v[i]))
		i++;
	return i > 2 && i < n && v[i] == 'p';
}

struct netconf {
	char bridge[16];
	uint32_t net, gw;
	unsigned prefix, port_start, port_end, mtu;
	uint32_t pool_net;                   /* issue #8: the address pool root granted, when has_pool */
	unsigned pool_prefix, has_pool;
};

static uint32_t bcast_of(const struct netconf *c) { return c->net | ~mask_of(c->prefix); }
static int in_subnet(const struct netconf *c, uint32_t ip) { return (ip & mask_of(c->prefix)) == c->net; }

/* NULL when c is a valid config; else why not (and *line). */
static const char *parse_conf(const char *buf, size_t n, struct netconf *c, unsigned *line)
{
	enum { K_BRIDGE = 1, K_SUBNET = 2, K_GATEWAY = 4, K_START = 8, K_END = 16, K_MTU = 32 };
	unsigned seen = 0;
	memset(c, 0, sizeof *c);
	c->mtu = 1500;
	*line = 0;
	if (memchr(buf, 0, n))
		return "contains a NUL byte";
	const char *s = buf, *end = buf + n;
	while (s < end) {
		const char *e = memchr(s, '\n', (size_t)(end - s));
		if (!e)
			e = end;
		++*line;
		const char *t = s;
		while (t < e && (*t == ' ' || *t == '\t'))
			t++;
		if (t == e || *t == '#') {
			s = e + 1;
			continue;
		}
		for (const char *q = s; q < e; q++)
			if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 0x7f)
				return "whitespace or a control character in a key=value line";
		const char *eq = memchr(s, '=', (size_t)(e - s));
		if (!eq)
			return "not a key=value line";
		size_t kl = (size_t)(eq - s);
		const char *v = eq + 1;
		unsigned long num;
#define KEY(name) (kl == sizeof(name) - 1 && !memcmp(s, name, kl))
		unsigned bit;
		if (KEY("bridge")) {
			bit = K_BRIDGE;
			size_t vl = (size_t)(e - v);
			if (vl < 1 || vl > 15 || !is_lower(v[0]))
				return "bridge must match [a-z][a-z0-9]{0,14}";
			for (size_t i = 1; i < vl; i++)
				if (!is_lower(v[i]) && !is_digit(v[i]))
					return "bridge must match [a-z][a-z0-9]{0,14}";
			if (pool_bridge_like(v, vl))
				return "bridge must not be named tr<digits>p...: those are the pool bridges' names";
			memcpy(c->bridge, v, vl);
			c->bridge[vl] = 0;
		} else if (KEY("subnet")) {
			bit = K_SUBNET;
			if (parse_cidr(v, e, &c->net, &c->prefix) || c->prefix < 16 || c->prefix > 28 || (c->net & ~mask_of(c->prefix)))
				return "subnet must be an IPv4 network address a.b.c.d/nn with 16 <= nn <= 28";
			if ((c->net >> 24) == 0 || (c->net >> 24) == 127 || (c->net >> 24) >= 224)
				return "subnet must not be in 0/8, 127/8 or 224.0.0.0/3";
		} else if (KEY("gateway")) {
			bit = K_GATEWAY;
			if (parse_ip(v, e, &c->gw))
				return "gateway must be an IPv4 address";
		} else if (KEY("port_start") || KEY("port_end")) {
			bit = KEY("port_start") ? K_START : K_END;
			if (parse_num(v, e, 65535, &num))
				return "ports must be decimal numbers up to 65535";
			*(bit == K_START ? &c->port_start : &c->port_end) = (unsigned)num;
		} else if (KEY("mtu")) {
			bit = K_MTU;
			if (parse_num(v, e, 9000, &num) || num < 576)
				return "mtu must be a number from 576 to 9000";
			c->mtu = (unsigned)num;
		} else {
			return "unknown key";
		}
#undef KEY
		if (seen & bit)
			return "duplicate key";
		seen |= bit;
		s = e + 1;
	}
	*line = 0;
	if ((seen & (K_BRIDGE | K_SUBNET | K_GATEWAY | K_START | K_END)) != (K_BRIDGE | K_SUBNET | K_GATEWAY | K_START | K_END))
		return "bridge, subnet, gateway, port_start and port_end are required";
	if (!in_subnet(c, c->gw) || c->gw == c->net || c->gw == bcast_of(c))
		return "gateway must be a host address inside subnet";
	if (c->port_start < 1024 || c->port_start > c->port_end)
		return "ports must satisfy 1024 <= port_start <= port_end <= 65535";
	return NULL;
}

/* ------------------------------------------------------------------ trusted files and directories */

char why[600];

static int trusted(const struct stat *st, mode_t type)
{
	return (st->st_mode & S_IFMT) == type && st->st_uid == 0 && (st->st_mode & 022) == 0;
}

static void set_why(const char *path, const struct stat *st, mode_t type)
{
	if ((st->st_mode & S_IFMT) != type)
		snprintf(why, sizeof why, "%s is not a %s", path, type == S_IFDIR ? "directory" : "regular file");
	else if (st->st_uid != 0)
		snprintf(why, sizeof why, "%s is owned by uid %u, not root", path, (unsigned)st->st_uid);
	else
		snprintf(why, sizeof why, "%s is group- or world-writable", path);
}

/*
 * Opens directory name below the verified directory dirfd, never through a symlink, and
 * verifies it (root-owned, not group/world-writable). create: make it (mode, root) when
 * missing. Returns the fd; -1 (errno ENOENT) when missing; -2 refused (why is set).
 */
int open_below(int dirfd, const char *name, const char *path, int create, mode_t mode)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && create) {
		if (mkdirat(dirfd, name, 0700) < 0 && errno != EEXIST) {
			snprintf(why, sizeof why, "cannot create %s: %s", path, strerror(errno));
			return -2;
		}
		fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			struct stat st;
			/* only a directory we made ourselves (root, 0700) gets its mode set */
			if (fstat(fd, &st) == 0 && trusted(&st, S_IFDIR) && (st.st_mode & 07777) == 0700 && fchmod(fd, mode) < 0) {
				snprintf(why, sizeof why, "cannot chmod %s: %s", path, strerror(errno));
				close(fd);
				return -2;
			}
		}
	}
	if (fd < 0) {
		if (errno == ENOENT)
			return -1;
		if (errno == ELOOP || errno == ENOTDIR)
			snprintf(why, sizeof why, "%s is a symlink or not a directory", path);
		else
			snprintf(why, sizeof why, "cannot open %s: %s", path, strerror(errno));
		return -2;
	}
	struct stat st;
	memset(&st, 0, sizeof st);
	if (fstat(fd, &st) < 0 || !trusted(&st, S_IFDIR)) {
		set_why(path, &st, S_IFDIR);
		close(fd);
		return -2;
	}
	return fd;
}

/* The absolute directory path, every component verified. Same returns as open_below. */
int open_trusted_dir(const char *path)
{
	char p[256], sofar[256] = "";
	struct stat st;
	snprintf(p, sizeof p, "%s", path);
	int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || !trusted(&st, S_IFDIR)) {
		snprintf(why, sizeof why, "/ is not root-owned or is group/world-writable");
		return -2;
	}
	char *save = NULL;
	for (char *c = strtok_r(p, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		size_t l = strlen(sofar);
		snprintf(sofar + l, sizeof sofar - l, "/%s", c);
		int next = open_below(fd, c, sofar, 0, 0);
		int e = errno;
		close(fd);
		if (next < 0) {
			errno = e;
			return next;
		}
		fd = next;
	}
	return fd;
}

static int read_fd(int fd, struct buf *b, size_t cap)
{
	char tmp[16384];
	for (;;) {
		ssize_t k = read(fd, tmp, sizeof tmp);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		if (k == 0)
			return 0;
		if (b->n + (size_t)k > cap) {
			errno = EFBIG;
			return -1;
		}
		b_add(b, tmp, (size_t)k);
	}
}

/*
 * Reads the regular file name below the verified dirfd (no symlink, root-owned, not
 * group/world-writable, at most cap bytes). 0 read; 1 missing; -1 refused (why set).
 */
static int read_trusted_file(int dirfd, const char *name, const char *path, struct buf *b, size_t cap)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT)
			return 1;
		if (errno == ELOOP)
			snprintf(why, sizeof why, "%s is a symlink", path);
		else
			snprintf(why, sizeof why, "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	struct stat st;
	memset(&st, 0, sizeof st);
	if (fstat(fd, &st) < 0 || !trusted(&st, S_IFREG)) {
		set_why(path, &st, S_IFREG);
		close(fd);
		return -1;
	}
	if ((size_t)st.st_size > cap || read_fd(fd, b, cap) < 0) {
		snprintf(why, sizeof why, "cannot read %s (or larger than %zu bytes)", path, cap);
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* Atomically replaces name below dirfd with data (root, 0600). */
int write_state_file(int dirfd, const char *name, const char *data, size_t n)
{
	char tmp[128];
	snprintf(tmp, sizeof tmp, ".%s.tmp", name);
	if (unlinkat(dirfd, tmp, 0) < 0 && errno != ENOENT)
		return -1;
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	while (n) {
		ssize_t k = write(fd, data, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			close(fd);
			unlinkat(dirfd, tmp, 0);
			return -1;
		}
		data += k;
		n -= (size_t)k;
	}
	if (fsync(fd) < 0 || close(fd) < 0 || renameat(dirfd, tmp, dirfd, name) < 0) {
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	fsync(dirfd);
	return 0;
}

int remove_state_file(int dirfd, const char *name)
{
	return unlinkat(dirfd, name, 0) < 0 && errno != ENOENT ? -1 : 0;
}

static void load_pool(int dir, unsigned uid, struct netconf *c);

/* Loads /etc/trellis/net/<uid>.conf; refuses on anything but a valid, trusted file. */
static void load_conf(unsigned uid, struct netconf *c)
{
	char name[32], path[96];
	snprintf(name, sizeof name, "%u.conf", uid);
	snprintf(path, sizeof path, CONF_DIR "/%s", name);
	int dir = open_trusted_dir(CONF_DIR);
	if (dir == -1)
		refuse("no network is configured for uid %u: run 'gdn setup' as root", uid);
	if (dir < 0)
		refuse("%s: refusing to trust it", why);
	struct buf b = {0};
	int r = read_trusted_file(dir, name, path, &b, CONF_CAP);
	if (r == 1)
		refuse("no network is configured for uid %u: run 'gdn setup' as root", uid);
	if (r < 0)
		refuse("%s: refusing to trust it", why);
	unsigned line;
	const char *bad = parse_conf(b.p ? b.p : "", b.n, c, &line);
	b_free(&b);
	if (bad && line)
		refuse("%s line %u: %s", path, line, bad);
	if (bad)
		refuse("%s: %s", path, bad);
	load_pool(dir, uid, c);
	close(dir);
}

/*
 * Issue #8: /etc/trellis/net/<uid>.pool, the address pool root granted (beside the config,
 * so that a gate or networker that predates pools reads the config unchanged): one line
 * pool=a.b.c.d/nn, a network address, 12 <= nn <= 30, not in 0/8, 127/8 or 224.0.0.0/3, not
 * overlapping the config's subnet. NULL when valid; else why not.
 */
static const char *parse_pool_conf(const char *buf, size_t n, struct netconf *c)
{
	const char *s = buf, *end = buf + n;
	if (memchr(buf, 0, n))
		return "contains a NUL byte";
	while (s < end) {
		const char *e = memchr(s, '\n', (size_t)(end - s));
		if (!e)
			e = end;
		if (e == s || *s == '#') {
			s = e + 1;
			continue;
		}
		if (c->has_pool)
			return "more than one pool line";
		if ((size_t)(e - s) < 5 || memcmp(s, "pool=", 5) || parse_cidr(s + 5, e, &c->pool_net, &c->pool_prefix) || c->pool_prefix < 12 ||
		    c->pool_prefix > 30 || (c->pool_net & ~mask_of(c->pool_prefix)))
			return "want one line pool=a.b.c.d/nn, a network address with 12 <= nn <= 30";
		if ((c->pool_net >> 24) == 0 || (c->pool_net >> 24) == 127 || (c->pool_net >> 24) >= 224)
			return "the pool must not be in 0/8, 127/8 or 224.0.0.0/3";
		c->has_pool = 1;
		s = e + 1;
	}
	if (c->has_pool && nets_overlap(c->net, c->prefix, c->pool_net, c->pool_prefix))
		return "the pool overlaps the subnet";
	return NULL;
}

/* The pool of uid, when root granted one (no file: none); refuses an untrusted or invalid file. */
static void load_pool(int dir, unsigned uid, struct netconf *c)
{
	char name[32], path[96];
	snprintf(name, sizeof name, "%u.pool", uid);
	snprintf(path, sizeof path, CONF_DIR "/%s", name);
	struct buf b = {0};
	c->has_pool = 0;
	int r = read_trusted_file(dir, name, path, &b, CONF_CAP);
	if (r == 1)
		return;
	if (r < 0)
		refuse("%s: refusing to trust it", why);
	const char *bad = parse_pool_conf(b.p ? b.p : "", b.n, c);
	b_free(&b);
	if (bad)
		refuse("%s: %s", path, bad);
}

/*
 * Isolation between users rests on configs that do not overlap: refuse when another
 * user's valid, trusted config shares the bridge, overlaps the subnet or the port range.
 */
static void check_no_overlap(unsigned uid, const struct netconf *c)
{
	int dir = open_trusted_dir(CONF_DIR);
	if (dir < 0)
		refuse("%s: refusing to trust it", dir == -1 ? CONF_DIR " is missing" : why);
	DIR *d = fdopendir(dir);
	if (!d)
		refuse("cannot list " CONF_DIR ": %s", strerror(errno));
	struct dirent *e;
	while ((e = readdir(d))) {
		const char *dot = strchr(e->d_name, '.');
		unsigned long other;
		if (!dot || strcmp(dot, ".conf") || parse_num(e->d_name, dot, UINT_MAX, &other) || other == uid)
			continue;
		struct buf b = {0};
		struct netconf o;
		unsigned line;
		char path[300];
		snprintf(path, sizeof path, CONF_DIR "/%s", e->d_name);
		if (read_trusted_file(dirfd(d), e->d_name, path, &b, CONF_CAP) == 0 && !parse_conf(b.p ? b.p : "", b.n, &o, &line)) {
			/* their pool, when valid (an invalid one makes their every call refuse: it claims nothing) */
			struct buf pb = {0};
			char pname[32];
			snprintf(pname, sizeof pname, "%lu.pool", other);
			if (read_trusted_file(dirfd(d), pname, path, &pb, CONF_CAP) != 0 || parse_pool_conf(pb.p ? pb.p : "", pb.n, &o))
				o.has_pool = 0;
			b_free(&pb);
			unsigned pl = c->prefix < o.prefix ? c->prefix : o.prefix;
			const char *what = NULL;
			if (!strcmp(o.bridge, c->bridge))
				what = "bridge";
			else if ((c->net & mask_of(pl)) == (o.net & mask_of(pl)))
				what = "subnet";
			else if ((c->has_pool && nets_overlap(c->pool_net, c->pool_prefix, o.net, o.prefix)) ||
			         (o.has_pool && nets_overlap(o.pool_net, o.pool_prefix, c->net, c->prefix)) ||
			         (c->has_pool && o.has_pool && nets_overlap(c->pool_net, c->pool_prefix, o.pool_net, o.pool_prefix)))
				what = "address pool";
			else if (c->port_start <= o.port_end && o.port_start <= c->port_end)
				what = "port range";
			if (what) {
				b_free(&b);
				refuse("the network config of uid %u shares its %s with uid %lu's: fix " CONF_DIR " as root", uid, what, other);
			}
		}
		b_free(&b);
	}
	closedir(d);
}

/* bridge and host-local are the gate's own work now (issue #10): portmap is the one plugin left */
static const char *const plugins[] = {"portmap"};

static void check_plugins(void)
{
	int dir = open_trusted_dir(CNI_DIR);
	if (dir < 0)
		refuse("%s: refusing to run CNI plugins", dir == -1 ? CNI_DIR " is missing" : why);
	for (size_t i = 0; i < sizeof plugins / sizeof plugins[0]; i++) {
		struct stat st;
		char path[64];
		snprintf(path, sizeof path, CNI_DIR "/%s", plugins[i]);
		if (fstatat(dir, plugins[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
			refuse("%s: %s", path, strerror(errno));
		if (!trusted(&st, S_IFREG)) {
			set_why(path, &st, S_IFREG);
			refuse("%s: refusing to run it", why);
		}
		if (!(st.st_mode & S_IXUSR))
			refuse("%s is not executable", path);
	}
	close(dir);
}

/* ------------------------------------------------------------------ the caller's container */

static int same_file(const struct stat *a, const struct stat *b) { return a->st_dev == b->st_dev && a->st_ino == b->st_ino; }

/*
 * The network namespace of process pid, as an fd, if the caller owns it through a user
 * namespace of their own: refuses otherwise.
 */
static int container_netns(long pid)
{
	char path[64];
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0)
		refuse("pid %ld: %s", pid, errno == ESRCH ? "no such process" : errno == EINVAL || errno == ENOENT ? "not a process id (a thread id?)" : strerror(errno));
	snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
	int userns = open(path, O_RDONLY | O_CLOEXEC);
	if (userns < 0)
		refuse("pid %ld: cannot open its user namespace: %s", pid, strerror(errno));
	snprintf(path, sizeof path, "/proc/%ld/ns/net", pid);
	int netns = open(path, O_RDONLY | O_CLOEXEC);
	if (netns < 0)
		refuse("pid %ld: cannot open its network namespace: %s", pid, strerror(errno));
	/* still the process pidfd_open found: the pid was not recycled between the opens */
	if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) != 0)
		refuse("pid %ld exited", pid);
	close(pidfd);

	if (ioctl(userns, NS_GET_NSTYPE) != CLONE_NEWUSER || ioctl(netns, NS_GET_NSTYPE) != CLONE_NEWNET)
		refuse("pid %ld: unexpected namespace types", pid);
	uid_t owner = (uid_t)-1;
	if (ioctl(userns, NS_GET_OWNER_UID, &owner) < 0)
		refuse("pid %ld: cannot read the owner of its user namespace: %s", pid, strerror(errno));
	if (owner != caller)
		refuse("pid %ld is not in a user namespace of uid %u", pid, caller);

	/*
	 * Not the host's: not pid 1's namespaces, not the gate's own (a setuid-root program
	 * only runs as root in the initial user namespace), and the user namespace has a
	 * parent (NS_GET_PARENT fails with EPERM only for the initial one, seen from it).
	 * pid 1's may be unreadable (a sandbox's pid 1): then the other tests stand alone.
	 */
	struct stat u, n, hu, hn, su, sn, nu;
	if (fstat(userns, &u) < 0 || fstat(netns, &n) < 0 || stat("/proc/self/ns/user", &su) < 0 || stat("/proc/self/ns/net", &sn) < 0)
		refuse("pid %ld: cannot stat namespaces: %s", pid, strerror(errno));
	int pid1 = stat("/proc/1/ns/user", &hu) == 0 && stat("/proc/1/ns/net", &hn) == 0;
	if (!pid1 && errno != EACCES && errno != EPERM)
		refuse("cannot stat the namespaces of pid 1: %s", strerror(errno));
	int parent = ioctl(userns, NS_GET_PARENT);
	if (parent < 0 && errno == EPERM)
		refuse("pid %ld is in the host user namespace", pid);
	if (parent < 0)
		refuse("pid %ld: cannot read the parent of its user namespace: %s", pid, strerror(errno));
	close(parent);
	if (same_file(&u, &su) || (pid1 && same_file(&u, &hu)))
		refuse("pid %ld is in the host user namespace", pid);
	if (same_file(&n, &sn) || (pid1 && same_file(&n, &hn)))
		refuse("pid %ld is in the host network namespace", pid);
	int nsuser = ioctl(netns, NS_GET_USERNS);
	if (nsuser < 0)
		refuse("pid %ld: cannot read the owner of its network namespace: %s", pid, strerror(errno));
	if (fstat(nsuser, &nu) < 0 || !same_file(&nu, &u))
		refuse("pid %ld: its network namespace is not owned by its user namespace", pid);
	close(nsuser);
	close(userns);
	return netns;
}

/* ------------------------------------------------------------------ running a plugin */

struct run {
	int status, timed_out, overflow, ok;
	struct buf out, err;
};

static long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/*
 * Runs /usr/lib/cni/<plugin> as root with exactly the CNI environment, conf on its
 * stdin; netns < 0 means CNI_NETNS is empty (DEL only).
 */
static void run_plugin(const char *plugin, const char *cmd, const char *cid, int netns, const char *cni_args, const struct buf *conf, struct run *r)
{
	char path[64], e_cmd[32], e_cid[128], e_ns[48], e_args[96];
	snprintf(path, sizeof path, CNI_DIR "/%s", plugin);
	snprintf(e_cmd, sizeof e_cmd, "CNI_COMMAND=%s", cmd);
	snprintf(e_cid, sizeof e_cid, "CNI_CONTAINERID=%s", cid);
	if (netns >= 0)
		snprintf(e_ns, sizeof e_ns, "CNI_NETNS=/proc/self/fd/%d", CHILD_NETNS_FD);
	else
		snprintf(e_ns, sizeof e_ns, "CNI_NETNS=");
	char *envp[8];
	size_t k = 0;
	envp[k++] = e_cmd;
	envp[k++] = e_cid;
	envp[k++] = e_ns;
	envp[k++] = "CNI_IFNAME=eth0";
	envp[k++] = "CNI_PATH=" CNI_DIR;
	envp[k++] = CHILD_PATH;
	if (cni_args) {
		snprintf(e_args, sizeof e_args, "CNI_ARGS=%s", cni_args);
		envp[k++] = e_args;
	}
	envp[k] = NULL;
	char *argv[] = {path, NULL};

	memset(r, 0, sizeof *r);
	int in[2], out[2], err[2];
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		fail("pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0) {
		/* the child: root in every id, no session or terminal of the caller, clean signals and fds */
		sigset_t none;
		sigemptyset(&none);
		if (setsid() < 0 || setgroups(0, NULL) < 0 || setgid(0) < 0 || setuid(0) < 0)
			_exit(127);
		umask(022);
		for (int s = 1; s < NSIG; s++)
			signal(s, SIG_DFL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
			_exit(127);
		unsigned first_closed = CHILD_NETNS_FD;
		if (netns >= 0) {
			if (dup2(netns, CHILD_NETNS_FD) < 0 || fcntl(CHILD_NETNS_FD, F_SETFD, 0) < 0)
				_exit(127);
			first_closed = CHILD_NETNS_FD + 1;
		}
		if (syscall(SYS_close_range, first_closed, ~0U, 0) < 0)
			for (int fd = (int)first_closed; fd < 65536; fd++)
				close(fd);
		execve(path, argv, envp);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	int fds[3] = {in[1], out[0], err[0]};
	for (int i = 0; i < 3; i++)
		fcntl(fds[i], F_SETFL, O_NONBLOCK);
	size_t off = 0;
	if (conf->n == 0) {
		close(fds[0]);
		fds[0] = -1;
	}
	long deadline = now_ms() + PLUGIN_TIMEOUT_MS;
	char tmp[65536];
	while (fds[0] >= 0 || fds[1] >= 0 || fds[2] >= 0) {
		long left = deadline - now_ms();
		if (left <= 0) {
			r->timed_out = 1;
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			break;
		}
		struct pollfd pf[3];
		nfds_t np = 0;
		int which[3];
		for (int i = 0; i < 3; i++)
			if (fds[i] >= 0) {
				pf[np].fd = fds[i];
				pf[np].events = i == 0 ? POLLOUT : POLLIN;
				pf[np].revents = 0;
				which[np++] = i;
			}
		int pr = poll(pf, np, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0)
			fail("poll: %s", strerror(errno));
		for (nfds_t j = 0; j < np; j++) {
			int i = which[j];
			if (!pf[j].revents)
				continue;
			if (i == 0) {
				ssize_t w = write(fds[0], conf->p + off, conf->n - off);
				if (w > 0)
					off += (size_t)w;
				if ((w < 0 && errno != EAGAIN && errno != EINTR) || off == conf->n) {
					close(fds[0]);
					fds[0] = -1;
				}
				continue;
			}
			ssize_t got = read(fds[i], tmp, sizeof tmp);
			if (got < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (got <= 0) {
				close(fds[i]);
				fds[i] = -1;
				continue;
			}
			if (i == 1) {
				if (r->out.n + (size_t)got > OUT_CAP)
					r->overflow = 1;
				else
					b_add(&r->out, tmp, (size_t)got);
			} else {
				b_add(&r->err, tmp, (size_t)got);
				if (r->err.n > ERR_CAP) {
					memmove(r->err.p, r->err.p + r->err.n - ERR_CAP / 2, ERR_CAP / 2);
					r->err.n = ERR_CAP / 2;
					r->err.p[r->err.n] = 0;
				}
			}
		}
	}
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	while (waitpid(pid, &r->status, 0) < 0)
		if (errno != EINTR)
			fail("waitpid: %s", strerror(errno));
	r->ok = !r->timed_out && !r->overflow && WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0;
}

/* The plugin's error: the CNI error's msg and details, else its stderr's last line. */
static void run_error(const struct run *r, char *m, size_t len)
{
	if (r->timed_out) {
		snprintf(m, len, "timed out after %d s", PLUGIN_TIMEOUT_MS / 1000);
		return;
	}
	if (r->overflow) {
		snprintf(m, len, "more than %zu bytes of output", OUT_CAP);
		return;
	}
	if (r->out.n && j_object_doc(r->out.p, r->out.n) == 0) {
		struct buf msg = {0}, det = {0};
		if (j_get_str(r->out.p, r->out.n, "msg", &msg)) {
			int d = j_get_str(r->out.p, r->out.n, "details", &det) && det.n;
			snprintf(m, len, "%s%s%s", msg.p ? msg.p : "", d ? ": " : "", d ? det.p : "");
			b_free(&msg);
			b_free(&det);
			return;
		}
		b_free(&msg);
	}
	if (r->err.n) {
		size_t e = r->err.n;
		while (e && (r->err.p[e - 1] == '\n' || r->err.p[e - 1] == '\r' || r->err.p[e - 1] == ' '))
			e--;
		size_t s = e;
		while (s && r->err.p[s - 1] != '\n')
			s--;
		if (e > s) {
			snprintf(m, len, "%.*s", (int)(e - s > 1000 ? 1000 : e - s), r->err.p + s);
			return;
		}
	}
	if (WIFEXITED(r->status))
		snprintf(m, len, "exited with status %d", WEXITSTATUS(r->status));
	else if (WIFSIGNALED(r->status))
		snprintf(m, len, "killed by signal %d", WTERMSIG(r->status));
	else
		snprintf(m, len, "failed");
}

static void run_free(struct run *r)
{
	b_free(&r->out);
	b_free(&r->err);
}

/* ------------------------------------------------------------------ plugin configs (validated values only) */

struct mapping {
	unsigned host, cont, udp;
};

struct addr {
	uint32_t ip;
	unsigned prefix;
};

static void conf_portmap(struct buf *b, const struct mapping *m, size_t n, const struct buf *prev)
{
	b_fmt(b,
	      "{\"cniVersion\":\"1.0.0\",\"name\":\"trellis-%u\",\"type\":\"portmap\","
	      "\"capabilities\":{\"portMappings\":true},\"snat\":false,\"runtimeConfig\":{\"portMappings\":[",
	      caller);
	for (size_t i = 0; i < n; i++)
		b_fmt(b, "%s{\"hostPort\":%u,\"containerPort\":%u,\"protocol\":\"%s\"}", i ? "," : "", m[i].host, m[i].cont, m[i].udp ? "udp" : "tcp");
	b_str(b, "]}");
	if (prev) {
		b_str(b, ",\"prevResult\":");
		b_add(b, prev->p, prev->n);
	}
	b_str(b, "}");
}

/* "<host>:<container>/<tcp|udp>" */
static int parse_mapping(const char *s, const char *e, struct mapping *m)
{
	const char *colon = memchr(s, ':', (size_t)(e - s));
	if (!colon)
		return -1;
	const char *slash = memchr(colon, '/', (size_t)(e - colon));
	unsigned long h, c;
	if (!slash || parse_num(s, colon, 65535, &h) || parse_num(colon + 1, slash, 65535, &c) || h < 1 || c < 1)
		return -1;
	size_t pl = (size_t)(e - slash - 1);
	if (pl == 3 && !memcmp(slash + 1, "tcp", 3))
		m->udp = 0;
	else if (pl == 3 && !memcmp(slash + 1, "udp", 3))
		m->udp = 1;
	else
		return -1;
	m->host = (unsigned)h;
	m->cont = (unsigned)c;
	return 0;
}

/* A ports/<id> file: one mapping per line. -1 when malformed. */
static int parse_ports_file(const struct buf *b, struct mapping *m, size_t *n)
{
	*n = 0;
	const char *s = b->p ? b->p : "", *end = s + b->n;
	if (memchr(s, 0, b->n))
		return -1;
	while (s < end) {
		const char *e = memchr(s, '\n', (size_t)(end - s));
		if (!e)
			return -1;
		if (*n >= MAX_PORTS || parse_mapping(s, e, &m[*n]))
			return -1;
		++*n;
		s = e + 1;
	}
	return 0;
}

/*
 * The addresses of a stored bridge result. strict: each must be a host address of the
 * user's subnet, with its prefix (what add accepts); else any IPv4 address/prefix (what
 * del needs to clean up after a config change).
 */
static int result_addrs(const struct buf *res, const struct netconf *c, int strict, struct addr *a, size_t *n)
{
	size_t vs, ve;
	*n = 0;
	if (!res->n || j_object_doc(res->p, res->n))
		return -1;
	if (j_get(res->p, res->n, "ips", &vs, &ve) != 1 || res->p[vs] != '[')
		return -1;
	struct jp p = {res->p, ve, vs + 1};
	j_ws(&p);
	if (p.i < p.n && res->p[p.i] == ']')
		return -1;
	for (;;) {
		j_ws(&p);
		size_t es = p.i;
		if (j_val(&p, 1))
			return -1;
		size_t ee = p.i;
		struct buf s = {0};
		if (res->p[es] != '{' || !j_get_str(res->p + es, ee - es, "address", &s) || *n >= MAX_IPS ||
		    parse_cidr(s.p, s.p + s.n, &a[*n].ip, &a[*n].prefix)) {
			b_free(&s);
			return -1;
		}
		b_free(&s);
		uint32_t ip = a[*n].ip;
		if (strict && (a[*n].prefix != c->prefix || !in_subnet(c, ip) || ip == c->net || ip == c->gw || ip == bcast_of(c)))
			return -1;
		if (!strict && a[*n].prefix < 1)
			return -1;
		++*n;
		j_ws(&p);
		if (p.i >= p.n)
			return -1;
		char d = res->p[p.i++];
		if (d == ']')
			return 0;
		if (d != ',')
			return -1;
	}
}

/* ------------------------------------------------------------------ rtnetlink */

static long now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long)t.tv_sec;
}

static int nl_attr(struct nlmsghdr *h, size_t cap, unsigned short type, const void *data, size_t len, struct rtattr **at)
{
	size_t off = NLMSG_ALIGN(h->nlmsg_len), rl = RTA_LENGTH(len);
	if (off + RTA_ALIGN(rl) > cap)
		return -1;
	struct rtattr *a = (struct rtattr *)(void *)((char *)h + off);
	a->rta_type = type;
	a->rta_len = (unsigned short)rl;
	if (len)
		memcpy(RTA_DATA(a), data, len);
	h->nlmsg_len = (uint32_t)(off + RTA_ALIGN(rl));
	if (at)
		*at = a;
	return 0;
}

/*
 * A NETLINK_ROUTE socket whose replies are bounded in time: a reply that never comes
 * (or that only a forger would send) cannot hold the gate, and the caller's lock, forever.
 */
static int nl_socket(void)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -1;
	struct timeval tv = {NETLINK_TIMEOUT_S, 0};
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Sends h and reads until the kernel's answer to it: NLMSG_ERROR (the ack, or an error),
 * or, when reply is given, the first message of that type (copied into reply, at most
 * cap bytes). Datagrams from any sender but the kernel (port id 0) are ignored.
 */
static int nl_talk(int fd, struct nlmsghdr *h, uint16_t want, void *reply, size_t cap)
{
	static uint32_t seq;
	h->nlmsg_seq = ++seq;
	h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof sa);
	sa.nl_family = AF_NETLINK;
	if (sendto(fd, h, h->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof sa) < 0)
		return -1;
	long deadline = now_s() + NETLINK_TIMEOUT_S;
	int got_reply = 0;
	for (;;) {
		union {
			struct nlmsghdr h;
			char b[8192];
		} r;
		struct sockaddr_nl from;
		socklen_t fl = sizeof from;
		memset(&from, 0, sizeof from);
		ssize_t got = recvfrom(fd, &r, sizeof r, MSG_TRUNC, (struct sockaddr *)&from, &fl);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -1; /* EAGAIN: the timeout */
		if ((size_t)got > sizeof r) {
			/* a reply cut short is never read as "no such link" */
			errno = EMSGSIZE;
			return -1;
		}
		if (now_s() > deadline) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (fl != sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0)
			continue; /* not the kernel */
		char *p = r.b;
		size_t left = (size_t)got;
		while (left >= sizeof(struct nlmsghdr)) {
			struct nlmsghdr *m = (struct nlmsghdr *)(void *)p;
			if (m->nlmsg_len < sizeof *m || m->nlmsg_len > left)
				break;
			if (m->nlmsg_seq == seq && reply && m->nlmsg_type == want && !got_reply) {
				if (m->nlmsg_len > cap) {
					errno = EMSGSIZE;
					return -1;
				}
				memcpy(reply, m, m->nlmsg_len);
				got_reply = 1;
			}
			if (m->nlmsg_seq == seq && m->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr e;
				if (m->nlmsg_len < NLMSG_LENGTH(sizeof e)) {
					errno = EPROTO;
					return -1;
				}
				memcpy(&e, NLMSG_DATA(m), sizeof e);
				if (e.error) {
					errno = -e.error;
					return -1;
				}
				if (reply && !got_reply) {
					/* acked without the reply asked for: an error, never absence (ENODEV is the kernel's own) */
					errno = EPROTO;
					return -1;
				}
				return 0;
			}
			size_t adv = NLMSG_ALIGN(m->nlmsg_len);
			if (adv >= left)
				break;
			p += adv;
			left -= adv;
		}
	}
}

static int nl_do(int fd, struct nlmsghdr *h) { return nl_talk(fd, h, 0, NULL, 0); }

/* ------------------------------------------------------------------ state */

struct state {
	int dir, ipam, res, ports, lock, pool;
};

/* Opens (creating when create) /var/lib/trellis/net/<uid>/{ipam,results,ports} and locks it. 1: missing. */
static int state_open(int create, struct state *s)
{
	char uidname[16], path[96];
	snprintf(uidname, sizeof uidname, "%u", caller);
	int fd = open_trusted_dir(STATE_PARENT);
	if (fd < 0)
		refuse("%s: refusing to keep state there", fd == -1 ? STATE_PARENT " is missing" : why);
	static const char *const chain[] = {"trellis", "net", NULL};
	static const mode_t modes[] = {0755, 0700};
	char sofar[96] = STATE_PARENT;
	for (size_t i = 0; i < 3; i++) {
		const char *name = chain[i] ? chain[i] : uidname;
		size_t l = strlen(sofar);
		snprintf(sofar + l, sizeof sofar - l, "/%s", name);
		int next = open_below(fd, name, sofar, create, i < 2 ? modes[i] : 0700);
		close(fd);
		if (next == -1)
			return 1;
		if (next < 0)
			refuse("%s: refusing to keep state there", why);
		fd = next;
	}
	s->dir = fd;
	/* the subdirectories are harmless to create in a verified root-owned state dir */
	static const char *const subs[] = {"ipam", "results", "ports", "pool"};
	int *dst[] = {&s->ipam, &s->res, &s->ports, &s->pool};
	for (size_t i = 0; i < 4; i++) {
		snprintf(path, sizeof path, STATE_DIR "/%u/%s", caller, subs[i]);
		*dst[i] = open_below(s->dir, subs[i], path, 1, 0700);
		if (*dst[i] < 0)
			refuse("%s: refusing to keep state there", why);
	}
	snprintf(path, sizeof path, STATE_DIR "/%u/lock", caller);
	s->lock = openat(s->dir, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
	struct stat st;
	if (s->lock < 0 || fstat(s->lock, &st) < 0 || !trusted(&st, S_IFREG))
		refuse("%s: not a root-owned regular file", path);
	while (flock(s->lock, LOCK_EX) < 0)
		if (errno != EINTR)
			refuse("cannot lock %s: %s", path, strerror(errno));
	return 0;
}

/* A stored state file (results/<id>.json or ports/<id>): 0 read, 1 missing; refuses when untrustworthy. */
static int read_state(int dirfd, const char *sub, const char *name, struct buf *b, size_t cap)
{
	char path[160];
	snprintf(path, sizeof path, STATE_DIR "/%u/%s/%s", caller, sub, name);
	int r = read_trusted_file(dirfd, name, path, b, cap);
	if (r < 0)
		refuse("%s: refusing to trust it", why);
	return r;
}

/* ------------------------------------------------------------------ the commands */

static struct netconf conf;
static struct netconf user_conf; /* conf as loaded: the user's default subnet and bridge, whatever pool subnet conf holds later */
static char cid[96];          /* u<uid>-<id>: one user can never name another's container */
static const char *cont_id;   /* <id> */
static char res_name[80];     /* <id>.json */

static int plugin(const char *name, const char *cmd, int netns, const char *args, const struct buf *in, char *err, size_t errlen)
{
	struct run r;
	run_plugin(name, cmd, cid, netns, args, in, &r);
	int ok = r.ok;
	if (!ok) {
		char m[1200];
		run_error(&r, m, sizeof m);
		snprintf(err, errlen, "%s %s failed: %s", name, cmd, m);
	}
	run_free(&r);
	return ok ? 0 : -1;
}

/*
 * One netlink request about "eth0" (RTM_GETLINK, RTM_DELLINK) in the container's network
 * namespace, made from a child so that the gate itself never enters a namespace the user
 * controls: 0 done, 1 no such link, 2 any other failure, -1 the child could not run.
 */
static int eth0_request(int netns, uint16_t type)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		union {
			struct nlmsghdr h;
			char b[256];
		} q;
		memset(&q, 0, sizeof q);
		int fd = setns(netns, CLONE_NEWNET) < 0 ? -1 : nl_socket();
		if (fd < 0)
			_exit(2);
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
		q.h.nlmsg_type = type;
		((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_family = AF_UNSPEC;
		if (nl_attr(&q.h, sizeof q, IFLA_IFNAME, "eth0", 5, NULL))
			_exit(2);
		/* with NLM_F_ACK the reply is an ACK (after the link, for GETLINK), or just an error */
		if (nl_do(fd, &q.h) == 0)
			_exit(0);
		_exit(errno == ENODEV ? 1 : 2);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/*
 * The host end of the container's veth, from a stored bridge result: the interface with
 * no sandbox that is not the bridge. 1 found (name), 0 none, -1 unreadable.
 */
static int result_host_veth(const struct buf *res, char name[IFNAMSIZ])
{
	size_t vs, ve;
	if (!res->n || j_object_doc(res->p, res->n) || j_get(res->p, res->n, "interfaces", &vs, &ve) != 1 || res->p[vs] != '[')
		return -1;
	struct jp p = {res->p, ve, vs + 1};
	int found = 0;
	j_ws(&p);
	if (p.i < p.n && res->p[p.i] == ']')
		return 0;
	for (;;) {
		j_ws(&p);
		size_t es = p.i;
		if (j_val(&p, 1))
			return -1;
		size_t ee = p.i, a, b;
		struct buf n = {0};
		if (res->p[es] == '{' && j_get(res->p + es, ee - es, "sandbox", &a, &b) == 0 && j_get_str(res->p + es, ee - es, "name", &n) &&
		    n.n > 0 && n.n < IFNAMSIZ && strcmp(n.p, conf.bridge)) {
			int ok = 1;
			for (size_t i = 0; i < n.n; i++)
				if (!is_alnum(n.p[i]) && n.p[i] != '_' && n.p[i] != '-' && n.p[i] != '.')
					ok = 0;
			if (ok && !found) {
				memcpy(name, n.p, n.n + 1);
				found = 1;
			}
		}
		b_free(&n);
		j_ws(&p);
		if (p.i >= p.n)
			return -1;
		char d = res->p[p.i++];
		if (d == ']')
			return found;
		if (d != ',')
			return -1;
	}
}

/*
 * The MAC of the container's own interface (the one with a "sandbox") in a stored result,
 * re-formatted as six lower-case hex pairs: 1 found, 0 none, -1 unreadable.
 */
static int hexval(char c)
{
	return is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
}

static int result_sandbox_mac(const struct buf *res, char mac[18])
{
	size_t vs, ve;
	if (!res->n || j_object_doc(res->p, res->n) || j_get(res->p, res->n, "interfaces", &vs, &ve) != 1 || res->p[vs] != '[')
		return -1;
	struct jp p = {res->p, ve, vs + 1};
	j_ws(&p);
	if (p.i < p.n && res->p[p.i] == ']')
		return 0;
	for (;;) {
		j_ws(&p);
		size_t es = p.i;
		if (j_val(&p, 1))
			return -1;
		size_t ee = p.i, a, b;
		struct buf m = {0};
		int found = 0;
		if (res->p[es] == '{' && j_get(res->p + es, ee - es, "sandbox", &a, &b) == 1 && j_get_str(res->p + es, ee - es, "mac", &m) &&
		    m.n == 17) {
			unsigned char o[6];
			found = 1;
			for (int i = 0; i < 6 && found; i++) {
				int h = hexval(m.p[3 * i]), l = hexval(m.p[3 * i + 1]);
				if (h < 0 || l < 0 || (i < 5 && m.p[3 * i + 2] != ':'))
					found = 0;
				else
					o[i] = (unsigned char)(h << 4 | l);
			}
			if (found)
				snprintf(mac, 18, "%02x:%02x:%02x:%02x:%02x:%02x", o[0], o[1], o[2], o[3], o[4], o[5]);
		}
		b_free(&m);
		if (found)
			return 1;
		j_ws(&p);
		if (p.i >= p.n)
			return -1;
		char d = res->p[p.i++];
		if (d == ']')
			return 0;
		if (d != ',')
			return -1;
	}
}

/* A link as RTM_GETLINK describes it (link_get). */
struct link_info {
	int index, is_veth, is_bridge, has_mac, operstate;
	unsigned master, flags;
	unsigned char mac[6];
};

static int link_get(int fd, const char *name, struct link_info *li);

/*
 * Deletes the host link name when it is a veth whose master is the user's bridge (that
 * removes both ends, whatever the container renamed its end to): 0 done or no such
 * link, 1 a link of that name that is not ours (left alone), -1 failed.
 */
static int remove_host_veth(const char *name)
{
	unsigned bridge = if_nametoindex(conf.bridge);
	int fd = nl_socket();
	if (fd < 0)
		return -1;
	struct link_info li;
	int r = link_get(fd, name, &li);
	if (r != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return r == 1 ? 0 : -1;
	}
	if (!li.is_veth || !bridge || li.master != bridge) {
		close(fd);
		return 1;
	}
	union {
		struct nlmsghdr h;
		char b[128];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	q.h.nlmsg_type = RTM_DELLINK;
	((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_family = AF_UNSPEC;
	((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_index = li.index;
	int rc = nl_do(fd, &q.h) == 0 || errno == ENODEV ? 0 : -1;
	close(fd);
	return rc;
}

/* Removes "eth0" from the container's network namespace (which removes the veth pair). */
static int remove_container_eth0(int netns)
{
	int r = eth0_request(netns, RTM_DELLINK);
	return r == 0 || r == 1 ? 0 : -1;
}

/*
 * Whether the container's network namespace has an "eth0" (1), not (0), or unknown (-1):
 * add refuses rather than let the bridge plugin fail and its rollback DEL remove an eth0
 * that belongs to another container of the user.
 */
static int container_has_eth0(int netns)
{
	int r = eth0_request(netns, RTM_GETLINK);
	return r == 0 ? 1 : r == 1 ? 0 : -1;
}

/* A link name the gate may act on (a stored result's or intent's): [A-Za-z0-9_.-], 1 to 15 bytes. */
static int link_name_ok(const char *n, size_t len)
{
	if (len == 0 || len >= IFNAMSIZ)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!is_alnum(n[i]) && n[i] != '_' && n[i] != '-' && n[i] != '.')
			return 0;
	return 1;
}

/* Never blocks: a caller that does not read (a full pipe) gets nothing, after a short wait. */
static int write_stdout(const char *p, size_t n)
{
	long deadline = now_ms() + STDOUT_TIMEOUT_MS;
	int fl = fcntl(1, F_GETFL);
	if (fl < 0 || fcntl(1, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	while (n) {
		ssize_t k = write(1, p, n);
		if (k > 0) {
			p += k;
			n -= (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {
			long left = deadline - now_ms();
			struct pollfd pf = {1, POLLOUT, 0};
			if (left <= 0 || poll(&pf, 1, (int)left) < 0)
				return -1;
			continue;
		}
		return -1;
	}
	return 0;
}

/* "<dev>:<ino>" of a network namespace fd: which namespace an add was about. */
static void netns_identity(int netns, char out[64])
{
	struct stat st;
	if (netns < 0 || fstat(netns, &st) < 0)
		snprintf(out, 64, "none");
	else
		snprintf(out, 64, "%lu:%lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino);
}

static int veth_guard(int add, const struct buf *res, const struct addr *a, size_t na, char *err, size_t errlen);
static int veth_list_closed(const char *veth, char *err, size_t errlen);
static void veth_unlist(const char *veth);


/* ------------------------------------------------------------------ the address pool (issue #8) */

/*
 * A container may ask for a subnet of the address pool root granted its user (the
 * config's pool=). Each subnet in use has its own bridge, tr<uid>p<n>, named by the gate:
 * pool/<id> records "<network>/<prefix> <n>" for each container on one, written before
 * the bridge or the container's network is made and removed after them. The bridge goes
 * with the last container of its subnet. While a pool container is handled, conf
 * describes its subnet and bridge instead of the user's default ones.
 */
#define POOL_BRIDGES 100

struct poolnet {
	uint32_t net;
	unsigned prefix, index;
};

struct poolreq {
	int set;
	uint32_t net, ip; /* ip: 0 for any free address of the subnet */
	unsigned prefix;
};

static int pool_bridge_name(unsigned index, char out[16])
{
	int k = snprintf(out, 16, "tr%up%u", caller, index);
	return k > 0 && k < 16 ? 0 : -1;
}

/* "<network>/<prefix> <index>\n", strictly */
static int parse_pool_file(const struct buf *b, struct poolnet *p)
{
	const char *s = b->p ? b->p : "", *end = s + b->n;
	if (b->n < 2 || memchr(s, 0, b->n) || end[-1] != '\n')
		return -1;
	const char *sp = memchr(s, ' ', b->n);
	unsigned long idx;
	if (!sp || parse_cidr(s, sp, &p->net, &p->prefix) || parse_num(sp + 1, end - 1, POOL_BRIDGES - 1, &idx))
		return -1;
	if (p->prefix < 16 || p->prefix > 30 || (p->net & ~mask_of(p->prefix)))
		return -1;
	p->index = (unsigned)idx;
	char name[16];
	return pool_bridge_name(p->index, name);
}

/* conf from here on describes the pool subnet p and its bridge (host ports and mtu stay the user's) */
static void pool_apply(const struct poolnet *p)
{
	pool_bridge_name(p->index, conf.bridge);
	conf.net = p->net;
	conf.prefix = p->prefix;
	conf.gw = p->net + 1;
}

static int pool_inside(const struct poolnet *p)
{
	return conf.has_pool && p->prefix >= conf.pool_prefix && (p->net & mask_of(conf.pool_prefix)) == conf.pool_net;
}

/* pool/<id> of this container: 0 read (p), 1 none; refuses when it is corrupt */
static int pool_record(struct state *s, const char *id, struct poolnet *p)
{
	struct buf b = {0};
	if (read_state(s->pool, "pool", id, &b, 256) == 1)
		return 1;
	int bad = parse_pool_file(&b, p);
	b_free(&b);
	if (bad)
		refuse(STATE_DIR "/%u/pool/%s is corrupt", caller, id);
	return 0;
}

/*
 * The bridge for subnet want: the one a container of this user already has for exactly
 * that subnet (1), else the lowest free index (0). Refuses a subnet that overlaps one in
 * use with a different prefix. Other records are read under the lock.
 */
static int pool_select(struct state *s, const char *id, struct poolnet *want)
{
	unsigned char used[POOL_BRIDGES];
	memset(used, 0, sizeof used);
	int lfd = openat(s->pool, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = lfd < 0 ? NULL : fdopendir(lfd);
	if (!d)
		refuse("cannot list " STATE_DIR "/%u/pool: %s", caller, strerror(errno));
	struct dirent *e;
	int found = 0;
	while ((e = readdir(d))) {
		struct poolnet o;
		if (!valid_id(e->d_name) || !strcmp(e->d_name, id) || pool_record(s, e->d_name, &o) == 1)
			continue;
		used[o.index] = 1;
		if (o.net == want->net && o.prefix == want->prefix) {
			want->index = o.index;
			found = 1;
		} else if (nets_overlap(o.net, o.prefix, want->net, want->prefix)) {
			char a[16], b[16];
			fmt_ip(want->net, a);
			fmt_ip(o.net, b);
			refuse("subnet %s/%u overlaps %s/%u, the subnet of your container %s", a, want->prefix, b, o.prefix, e->d_name);
		}
	}
	closedir(d);
	if (found)
		return 1;
	char name[16];
	for (unsigned i = 0; i < POOL_BRIDGES && pool_bridge_name(i, name) == 0; i++)
		if (!used[i]) {
			want->index = i;
			return 0;
		}
	refuse("no free pool bridge left: at most %d subnets of your pool can be in use at once", POOL_BRIDGES);
}

/* A locally administered MAC fixed per subnet: a bridge left to itself takes its lowest port's (issue #8). */
static int pool_bridge_make(void)
{
	int fd = nl_socket();
	if (fd < 0)
		return -1;
	union {
		struct nlmsghdr h;
		char b[512];
	} q;
	struct rtattr *li = NULL;
	unsigned char mac[6] = {0x02, 0x74, (unsigned char)(conf.net >> 24), (unsigned char)(conf.net >> 16), (unsigned char)(conf.net >> 8),
	                        (unsigned char)conf.net};
	uint32_t mtu = conf.mtu;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	q.h.nlmsg_type = RTM_NEWLINK;
	q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_family = AF_UNSPEC;
	if (nl_attr(&q.h, sizeof q, IFLA_IFNAME, conf.bridge, strlen(conf.bridge) + 1, NULL) || nl_attr(&q.h, sizeof q, IFLA_ADDRESS, mac, 6, NULL) ||
	    nl_attr(&q.h, sizeof q, IFLA_MTU, &mtu, 4, NULL) || nl_attr(&q.h, sizeof q, IFLA_LINKINFO, NULL, 0, &li) ||
	    nl_attr(&q.h, sizeof q, IFLA_INFO_KIND, "bridge", 7, NULL)) {
		close(fd);
		return -1;
	}
	li->rta_len = (unsigned short)((char *)&q.h + q.h.nlmsg_len - (char *)li);
	int rc = nl_do(fd, &q.h) == 0 || errno == EEXIST ? 0 : -1;
	close(fd);
	return rc;
}

/* The pool bridge tr<uid>p<index>, gone (no such link is fine). */
static int pool_bridge_remove(unsigned index)
{
	char name[16];
	if (pool_bridge_name(index, name))
		return -1;
	int fd = nl_socket();
	if (fd < 0)
		return -1;
	union {
		struct nlmsghdr h;
		char b[256];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	q.h.nlmsg_type = RTM_DELLINK;
	((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_family = AF_UNSPEC;
	int rc = -1;
	if (nl_attr(&q.h, sizeof q, IFLA_IFNAME, name, strlen(name) + 1, NULL) == 0)
		rc = nl_do(fd, &q.h) == 0 || errno == ENODEV ? 0 : -1;
	close(fd);
	return rc;
}

/* pool/<id> goes; so does its bridge when no other container of the user is on it. */
static int pool_release(struct state *s, const char *id, const struct poolnet *p)
{
	int lfd = openat(s->pool, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = lfd < 0 ? NULL : fdopendir(lfd);
	if (!d)
		return -1;
	struct dirent *e;
	int in_use = 0;
	while ((e = readdir(d))) {
		struct poolnet o;
		if (valid_id(e->d_name) && strcmp(e->d_name, id) && pool_record(s, e->d_name, &o) == 0 && o.index == p->index)
			in_use = 1;
	}
	closedir(d);
	/* the bridge before the record: a release cut short leaves the record, never a nameless bridge */
	if (!in_use && pool_bridge_remove(p->index))
		return -1;
	return remove_state_file(s->pool, id);
}

/* check and ports: a pool container's subnet and bridge, while its subnet is still inside the pool */
static void pool_use(struct state *s, const char *id)
{
	struct poolnet pn;
	if (pool_record(s, id, &pn) == 1)
		return;
	if (!pool_inside(&pn))
		refuse("the subnet of container %s is no longer inside your address pool", id);
	pool_apply(&pn);
}

static int pool_routes_free(const struct poolnet *p, char *why, size_t whylen);

/* ------------------------------------------------------------------ the container's network, made by the gate itself (issue #10) */

/*
 * The bridge and host-local plugins were two Go processes on every add and del (each
 * bridge run starting host-local): most of the time a container's network took. The gate
 * does their work itself over rtnetlink, with their outcome: the bridge made (name,
 * gateway address, mtu, up) when absent; a veth pair, the host end on the bridge with
 * hairpin on, the other end the container's eth0 with its address and a default route
 * via the gateway; a lease in host-local's files under the same dataDir (so leases of
 * earlier gates are honoured); and the same stored result, which ports, check, del, the
 * veth guard and gdn read. The gate never enters the container's network namespace
 * itself: the veth's peer is created straight into it, and eth0 is configured from a
 * child (as eth0_request does).
 */
static int nl_dump(int fd, struct nlmsghdr *h, void (*fn)(const struct nlmsghdr *, void *), void *ctx);

/* RTM_GETLINK by name in the socket's namespace: 0 found (li), 1 no such link, -1 failed (errno). */
static int link_get(int fd, const char *name, struct link_info *li)
{
	union {
		struct nlmsghdr h;
		char b[256];
	} q;
	union {
		struct nlmsghdr h;
		char b[8192];
	} r;
	memset(&q, 0, sizeof q);
	memset(li, 0, sizeof *li);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	q.h.nlmsg_type = RTM_GETLINK;
	((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_family = AF_UNSPEC;
	if (nl_attr(&q.h, sizeof q, IFLA_IFNAME, name, strlen(name) + 1, NULL))
		return -1;
	if (nl_talk(fd, &q.h, RTM_NEWLINK, &r, sizeof r) < 0)
		return errno == ENODEV ? 1 : -1;
	if (r.h.nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) {
		errno = EPROTO;
		return -1;
	}
	struct ifinfomsg *ifi = NLMSG_DATA(&r.h);
	li->index = ifi->ifi_index;
	li->flags = ifi->ifi_flags;
	size_t len = r.h.nlmsg_len - NLMSG_LENGTH(sizeof *ifi);
	for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == IFLA_MASTER && RTA_PAYLOAD(a) == 4)
			memcpy(&li->master, RTA_DATA(a), 4);
		if (a->rta_type == IFLA_OPERSTATE && RTA_PAYLOAD(a) == 1)
			li->operstate = *(unsigned char *)RTA_DATA(a);
		if (a->rta_type == IFLA_ADDRESS && RTA_PAYLOAD(a) == 6) {
			memcpy(li->mac, RTA_DATA(a), 6);
			li->has_mac = 1;
		}
		if (a->rta_type == IFLA_LINKINFO) {
			size_t il = RTA_PAYLOAD(a);
			for (struct rtattr *i = RTA_DATA(a); RTA_OK(i, il); i = RTA_NEXT(i, il))
				if (i->rta_type == IFLA_INFO_KIND) {
					li->is_veth = RTA_PAYLOAD(i) >= 5 && !memcmp(RTA_DATA(i), "veth", 5);
					li->is_bridge = RTA_PAYLOAD(i) >= 7 && !memcmp(RTA_DATA(i), "bridge", 7);
				}
		}
	}
	return 0;
}

static int link_up(int fd, int index)
{
	union {
		struct nlmsghdr h;
		char b[128];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	q.h.nlmsg_type = RTM_NEWLINK;
	struct ifinfomsg *ifi = NLMSG_DATA(&q.h);
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = index;
	ifi->ifi_flags = IFF_UP;
	ifi->ifi_change = IFF_UP;
	return nl_do(fd, &q.h);
}

/* ip/prefix on link index (no broadcast, as the bridge plugin's netlink library did) */
static int addr_add(int fd, int index, uint32_t ip, unsigned prefix)
{
	union {
		struct nlmsghdr h;
		char b[256];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
	q.h.nlmsg_type = RTM_NEWADDR;
	q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	struct ifaddrmsg *ifa = NLMSG_DATA(&q.h);
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = (unsigned char)prefix;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = (unsigned)index;
	uint32_t be = htonl(ip);
	if (nl_attr(&q.h, sizeof q, IFA_LOCAL, &be, 4, NULL) || nl_attr(&q.h, sizeof q, IFA_ADDRESS, &be, 4, NULL))
		return -1;
	return nl_do(fd, &q.h);
}

static void fmt_mac(const unsigned char m[6], char out[18])
{
	snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* a random unicast, locally administered MAC (what the kernel gives a link left to itself) */
static void random_mac(unsigned char m[6])
{
	if (getrandom(m, 6, 0) != 6)
		fail("getrandom: %s", strerror(errno));
	m[0] = (unsigned char)((m[0] & 0xfe) | 0x02);
}

/* Writes v to a /proc/sys or /sys file named from validated link names. */
static int write_knob(const char *path, const char *v)
{
	int fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t w = write(fd, v, strlen(v));
	return close(fd) < 0 || w != (ssize_t)strlen(v) ? -1 : 0;
}

/* --- the bridge */

struct addr_scan {
	int index, has_gw, other;
	uint32_t gw, other_ip;
	unsigned prefix, other_prefix;
};

static void on_addr(const struct nlmsghdr *m, void *ctx)
{
	struct addr_scan *s = ctx;
	if (m->nlmsg_type != RTM_NEWADDR || m->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifaddrmsg)))
		return;
	const struct ifaddrmsg *ifa = NLMSG_DATA(m);
	if (ifa->ifa_family != AF_INET || (int)ifa->ifa_index != s->index)
		return;
	size_t len = m->nlmsg_len - NLMSG_LENGTH(sizeof *ifa);
	uint32_t be = 0;
	int found = 0;
	for (const struct rtattr *a = IFA_RTA(ifa); RTA_OK(a, len); a = RTA_NEXT(a, len))
		if ((a->rta_type == IFA_LOCAL || (a->rta_type == IFA_ADDRESS && !found)) && RTA_PAYLOAD(a) == 4) {
			memcpy(&be, RTA_DATA(a), 4);
			found = 1;
		}
	if (!found)
		return;
	if (ntohl(be) == s->gw && ifa->ifa_prefixlen == s->prefix) {
		s->has_gw = 1;
	} else if (!s->other) {
		s->other = 1;
		s->other_ip = ntohl(be);
		s->other_prefix = ifa->ifa_prefixlen;
	}
}

/*
 * conf's bridge, as the bridge plugin (isGateway) left it: made when absent (name, mtu,
 * and a MAC set once, so that it keeps it whatever ports come and go; a pool bridge
 * already has its fixed one), accept_ra off, up, the gateway address (another IPv4
 * address there is an error), IPv4 forwarding on.
 */
static int bridge_ensure(int fd, struct link_info *br, char *err, size_t errlen)
{
	int r = link_get(fd, conf.bridge, br);
	if (r == 1) {
		union {
			struct nlmsghdr h;
			char b[512];
		} q;
		struct rtattr *li = NULL;
		unsigned char mac[6];
		uint32_t mtu = conf.mtu;
		random_mac(mac);
		memset(&q, 0, sizeof q);
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
		q.h.nlmsg_type = RTM_NEWLINK;
		q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
		((struct ifinfomsg *)NLMSG_DATA(&q.h))->ifi_family = AF_UNSPEC;
		if (nl_attr(&q.h, sizeof q, IFLA_IFNAME, conf.bridge, strlen(conf.bridge) + 1, NULL) || nl_attr(&q.h, sizeof q, IFLA_ADDRESS, mac, 6, NULL) ||
		    nl_attr(&q.h, sizeof q, IFLA_MTU, &mtu, 4, NULL) || nl_attr(&q.h, sizeof q, IFLA_LINKINFO, NULL, 0, &li) ||
		    nl_attr(&q.h, sizeof q, IFLA_INFO_KIND, "bridge", 7, NULL)) {
			snprintf(err, errlen, "cannot make bridge %s: message too long", conf.bridge);
			return -1;
		}
		li->rta_len = (unsigned short)((char *)&q.h + q.h.nlmsg_len - (char *)li);
		if (nl_do(fd, &q.h) < 0 && errno != EEXIST) {
			snprintf(err, errlen, "cannot make bridge %s: %s", conf.bridge, strerror(errno));
			return -1;
		}
		r = link_get(fd, conf.bridge, br);
	}
	if (r != 0) {
		snprintf(err, errlen, "cannot find bridge %s: %s", conf.bridge, r > 0 ? "no such link" : strerror(errno));
		return -1;
	}
	if (!br->is_bridge || !br->has_mac) {
		snprintf(err, errlen, "%s already exists but is not a bridge", conf.bridge);
		return -1;
	}
	char path[96];
	snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/accept_ra", conf.bridge);
	write_knob(path, "0\n"); /* as the plugin: best effort (IPv6 may be off) */
	if (!(br->flags & IFF_UP) && link_up(fd, br->index) < 0) {
		snprintf(err, errlen, "cannot set bridge %s up: %s", conf.bridge, strerror(errno));
		return -1;
	}
	struct addr_scan s;
	memset(&s, 0, sizeof s);
	s.index = br->index;
	s.gw = conf.gw;
	s.prefix = conf.prefix;
	union {
		struct nlmsghdr h;
		char b[128];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
	q.h.nlmsg_type = RTM_GETADDR;
	((struct ifaddrmsg *)NLMSG_DATA(&q.h))->ifa_family = AF_INET;
	if (nl_dump(fd, &q.h, on_addr, &s) < 0) {
		snprintf(err, errlen, "cannot list the addresses of %s: %s", conf.bridge, strerror(errno));
		return -1;
	}
	char gw[16], o[16];
	fmt_ip(conf.gw, gw);
	if (!s.has_gw && s.other) {
		fmt_ip(s.other_ip, o);
		snprintf(err, errlen, "\"%s\" already has an IP address different from %s/%u (%s/%u)", conf.bridge, gw, conf.prefix, o, s.other_prefix);
		return -1;
	}
	if (!s.has_gw && addr_add(fd, br->index, conf.gw, conf.prefix) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot add %s/%u to %s: %s", gw, conf.prefix, conf.bridge, strerror(errno));
		return -1;
	}
	if (write_knob("/proc/sys/net/ipv4/ip_forward", "1\n") < 0) {
		snprintf(err, errlen, "cannot enable IPv4 forwarding: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* --- leases, in host-local's format: <dataDir>/trellis-<uid>/<address> holds "<CNI container id>\r\neth0" */

#define LAST_RESERVED "last_reserved_ip.0"

/* host-local's dir for this network (made as host-local makes it, 0755), locked with host-local's lock file. */
static int ipam_open(const struct state *s)
{
	char name[32], path[160];
	snprintf(name, sizeof name, "trellis-%u", caller);
	snprintf(path, sizeof path, STATE_DIR "/%u/ipam/%s", caller, name);
	int d = open_below(s->ipam, name, path, 1, 0755);
	if (d < 0)
		refuse("%s: refusing to keep leases there", why);
	/* the gate's own lock covers every call of the user already; host-local's too, for anything else that reads the dir */
	int lk = openat(d, "lock", O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0750);
	struct stat st;
	if (lk < 0 || fstat(lk, &st) < 0 || (st.st_mode & S_IFMT) != S_IFREG || st.st_uid != 0)
		refuse("%s/lock: not a root-owned regular file", path);
	while (flock(lk, LOCK_EX) < 0)
		if (errno != EINTR)
			refuse("cannot lock %s/lock: %s", path, strerror(errno));
	return d; /* lk stays open (and locked) until the gate exits */
}

/* Whose lease the file for ip is: 1 this container's, 0 another's or no such file, -1 unreadable. */
static int lease_is_ours(int d, uint32_t ip)
{
	char name[16], path[200];
	fmt_ip(ip, name);
	snprintf(path, sizeof path, STATE_DIR "/%u/ipam/trellis-%u/%s", caller, caller, name);
	struct buf b = {0};
	int r = read_trusted_file(d, name, path, &b, 512);
	if (r)
		return r > 0 ? 0 : -1;
	/* host-local's match: the content, whitespace trimmed, is "<id>\r\n<ifname>", or "<id>" (older leases) */
	size_t s = 0, e = b.n;
	while (s < e && (b.p[s] == ' ' || b.p[s] == '\t' || b.p[s] == '\r' || b.p[s] == '\n'))
		s++;
	while (e > s && (b.p[e - 1] == ' ' || b.p[e - 1] == '\t' || b.p[e - 1] == '\r' || b.p[e - 1] == '\n'))
		e--;
	char want[128];
	int wl = snprintf(want, sizeof want, "%s\r\neth0", cid);
	size_t cl = strlen(cid);
	int ours = (e - s == (size_t)wl && !memcmp(b.p + s, want, (size_t)wl)) || (e - s == cl && !memcmp(b.p + s, cid, cl));
	b_free(&b);
	return ours;
}

/* Takes the lease of ip: 0 taken, 1 already someone's, -1 failed. Then records it as the last one reserved. */
static int lease_take(int d, uint32_t ip)
{
	char name[16], text[128];
	fmt_ip(ip, name);
	/* host-local's modes (the gate's umask is 077) */
	int n = snprintf(text, sizeof text, "%s\r\neth0", cid);
	/*
	 * The lease appears whole or not at all: written unnamed, then linked in (EEXIST: it is
	 * someone's). A gate killed mid-way leaves no empty lease that no release would match.
	 */
	int fd = openat(d, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
	if (fd >= 0) {
		ssize_t w = fchmod(fd, 0644) < 0 ? -1 : write(fd, text, (size_t)n);
		if (w != n) {
			close(fd);
			return -1;
		}
		if (linkat(fd, "", d, name, AT_EMPTY_PATH) < 0) {
			int e = errno;
			close(fd);
			errno = e;
			return e == EEXIST ? 1 : -1;
		}
		close(fd);
	} else {
		/* no O_TMPFILE on this filesystem: host-local's own way */
		fd = openat(d, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (fd < 0)
			return errno == EEXIST ? 1 : -1;
		ssize_t w = fchmod(fd, 0644) < 0 ? -1 : write(fd, text, (size_t)n);
		if (close(fd) < 0 || w != n) {
			unlinkat(d, name, 0);
			return -1;
		}
	}
	/* where the next search starts, nothing more: best effort, so a lease taken is never one failed */
	fd = openat(d, LAST_RESERVED, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd >= 0) {
		if (fchmod(fd, 0644) == 0 && write(fd, name, strlen(name)) < 0) {
			/* ignored */
		}
		close(fd);
	}
	return 0;
}

/*
 * An address for this container, by host-local's rules: ip= exactly that one; else the
 * range (range=, or the subnet without network and broadcast) round-robin from the one
 * after the last reserved, the gateway never. host-local also refuses an id that already
 * holds a lease: add refuses an id with any record, and a lease never outlives its
 * record (del and every rollback release it first).
 */
static int lease_alloc(int d, uint32_t req, uint32_t rs, uint32_t re, uint32_t *out, char *err, size_t errlen)
{
	uint32_t start = rs ? rs : conf.net + 1, end = rs ? re : bcast_of(&conf) - 1;
	char a[16], b[16];
	fmt_ip(start, a);
	fmt_ip(end, b);
	if (req) {
		int r = lease_take(d, req);
		fmt_ip(req, a);
		if (r == 1)
			snprintf(err, errlen, "requested IP address %s is not available", a);
		else if (r < 0)
			snprintf(err, errlen, "cannot store the lease of %s: %s", a, strerror(errno));
		*out = req;
		return r ? -1 : 0;
	}
	uint32_t first = start;
	char path[200];
	snprintf(path, sizeof path, STATE_DIR "/%u/ipam/trellis-%u/" LAST_RESERVED, caller, caller);
	struct buf last = {0};
	uint32_t lip;
	if (read_trusted_file(d, LAST_RESERVED, path, &last, 64) == 0 && last.n && parse_ip(last.p, last.p + last.n, &lip) == 0 && lip >= start && lip <= end)
		first = lip == end ? start : lip + 1;
	b_free(&last);
	uint32_t n = end - start + 1;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t ip = start + (first - start + k) % n;
		if (ip == conf.gw)
			continue;
		int r = lease_take(d, ip);
		if (r == 0) {
			*out = ip;
			return 0;
		}
		if (r < 0) {
			fmt_ip(ip, a);
			snprintf(err, errlen, "cannot store the lease of %s: %s", a, strerror(errno));
			return -1;
		}
	}
	snprintf(err, errlen, "no IP addresses available in range set: %s-%s", a, b);
	return -1;
}

/*
 * Releases this container's leases: those of the addresses given when they are its own;
 * when none is (or none given), every lease of the directory that names it (host-local's
 * release by id). A lease of another container is never touched. 0 done, -1 failed.
 */
static int lease_release(int d, const struct addr *a, size_t na)
{
	char name[16];
	int found = 0;
	/* a file that is not a root-owned regular one is nobody's lease (only root writes here): left alone, as host-local does */
	for (size_t i = 0; i < na; i++) {
		int r = lease_is_ours(d, a[i].ip);
		if (r < 0)
			continue;
		fmt_ip(a[i].ip, name);
		if (r == 1 && unlinkat(d, name, 0) < 0 && errno != ENOENT)
			return -1;
		found |= r;
	}
	if (found)
		return 0;
	int lfd = openat(d, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *dir = lfd < 0 ? NULL : fdopendir(lfd);
	if (!dir)
		return -1;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(dir))) {
		uint32_t ip;
		if (parse_ip(e->d_name, e->d_name + strlen(e->d_name), &ip))
			continue; /* lock, last_reserved_ip.* */
		if (lease_is_ours(d, ip) == 1 && unlinkat(d, e->d_name, 0) < 0 && errno != ENOENT)
			rc = -1;
	}
	closedir(dir);
	return rc;
}

/* --- the veth pair */

/*
 * One request: the host end (name, MAC, mtu, on the bridge, up) and its peer made
 * straight in the container's namespace as eth0 (MAC, mtu). NLM_F_EXCL: an existing
 * link of either name fails it, and nothing is made.
 */
static int veth_make(int fd, const char *host, const unsigned char hmac[6], const unsigned char cmac[6], int bridge, int netns)
{
	union {
		struct nlmsghdr h;
		char b[1024];
	} q;
	struct rtattr *li = NULL, *data = NULL, *peer = NULL;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	q.h.nlmsg_type = RTM_NEWLINK;
	q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	struct ifinfomsg *ifi = NLMSG_DATA(&q.h);
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_flags = IFF_UP;
	ifi->ifi_change = IFF_UP;
	struct ifinfomsg pi;
	memset(&pi, 0, sizeof pi);
	pi.ifi_family = AF_UNSPEC; /* not up yet: a veth cannot open before its peer is linked (ENOTCONN); the child sets it up */
	uint32_t mtu = conf.mtu, master = (uint32_t)bridge;
	int32_t ns = netns;
	if (nl_attr(&q.h, sizeof q, IFLA_IFNAME, host, strlen(host) + 1, NULL) || nl_attr(&q.h, sizeof q, IFLA_ADDRESS, hmac, 6, NULL) ||
	    nl_attr(&q.h, sizeof q, IFLA_MTU, &mtu, 4, NULL) || nl_attr(&q.h, sizeof q, IFLA_MASTER, &master, 4, NULL) ||
	    nl_attr(&q.h, sizeof q, IFLA_LINKINFO, NULL, 0, &li) || nl_attr(&q.h, sizeof q, IFLA_INFO_KIND, "veth", 5, NULL) ||
	    nl_attr(&q.h, sizeof q, IFLA_INFO_DATA, NULL, 0, &data) || nl_attr(&q.h, sizeof q, VETH_INFO_PEER, &pi, sizeof pi, &peer) ||
	    nl_attr(&q.h, sizeof q, IFLA_IFNAME, "eth0", 5, NULL) || nl_attr(&q.h, sizeof q, IFLA_ADDRESS, cmac, 6, NULL) ||
	    nl_attr(&q.h, sizeof q, IFLA_MTU, &mtu, 4, NULL) || nl_attr(&q.h, sizeof q, IFLA_NET_NS_FD, &ns, 4, NULL)) {
		errno = EMSGSIZE;
		return -1;
	}
	char *end = (char *)&q.h + q.h.nlmsg_len;
	peer->rta_len = (unsigned short)(end - (char *)peer);
	data->rta_len = (unsigned short)(end - (char *)data);
	li->rta_len = (unsigned short)(end - (char *)li);
	return nl_do(fd, &q.h);
}

/* As the bridge plugin, the add returns once the host end is operationally up (the port forwards): 0, or -1. */
static int port_wait_up(int fd, const char *veth)
{
	static const int waits_ms[] = {0, 5, 10, 20, 50, 100, 200, 500, 1000};
	char path[96];
	snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/accept_ra", veth);
	write_knob(path, "0\n"); /* as the plugin: best effort */
	for (size_t i = 0; i < sizeof waits_ms / sizeof waits_ms[0]; i++) {
		struct timespec t = {0, (long)waits_ms[i] * 1000000L};
		while (nanosleep(&t, &t) < 0 && errno == EINTR)
			;
		struct link_info li;
		if (link_get(fd, veth, &li) != 0)
			return -1;
		if (li.operstate == 6) /* IF_OPER_UP of <linux/if.h>, which clashes with <net/if.h> */
			return 0;
	}
	return -1;
}

/* The host's neighbour entry for ip on the bridge goes: it may still hold the MAC of the address's last container. */
static void neigh_forget(int fd, int bridge, uint32_t ip)
{
	union {
		struct nlmsghdr h;
		char b[128];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
	q.h.nlmsg_type = RTM_DELNEIGH;
	struct ndmsg *nd = NLMSG_DATA(&q.h);
	nd->ndm_family = AF_INET;
	nd->ndm_ifindex = bridge;
	uint32_t be = htonl(ip);
	if (nl_attr(&q.h, sizeof q, NDA_DST, &be, 4, NULL) == 0)
		nl_do(fd, &q.h); /* ENOENT: there was none */
}

/* --- inside the container, from a child */

struct route_want {
	int index, found;
	uint32_t gw;
};

static void on_default_route(const struct nlmsghdr *m, void *ctx)
{
	struct route_want *w = ctx;
	if (m->nlmsg_type != RTM_NEWROUTE || m->nlmsg_len < NLMSG_LENGTH(sizeof(struct rtmsg)))
		return;
	const struct rtmsg *rt = NLMSG_DATA(m);
	if (rt->rtm_family != AF_INET || rt->rtm_dst_len != 0)
		return;
	size_t len = m->nlmsg_len - NLMSG_LENGTH(sizeof *rt);
	uint32_t gw = 0, table = rt->rtm_table;
	int oif = 0;
	for (const struct rtattr *a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == RTA_GATEWAY && RTA_PAYLOAD(a) == 4)
			memcpy(&gw, RTA_DATA(a), 4);
		if (a->rta_type == RTA_OIF && RTA_PAYLOAD(a) == 4)
			memcpy(&oif, RTA_DATA(a), 4);
		if (a->rta_type == RTA_TABLE && RTA_PAYLOAD(a) == 4)
			memcpy(&table, RTA_DATA(a), 4);
	}
	if (table == RT_TABLE_MAIN && ntohl(gw) == w->gw && oif == w->index)
		w->found = 1;
}

enum { IN_OK, IN_FAILED, IN_NO_ETH0, IN_MAC, IN_ADDRESS, IN_ROUTE };

/*
 * In the container's network namespace, from a child (the gate never enters it): set up
 * eth0 with ip/prefix and the default route via gw (configure), or verify that eth0 has
 * the MAC, that address and that route (verify). One of IN_*, or -1 when the child could not run.
 */
static int in_container(int netns, int verify, const char *mac, uint32_t ip, unsigned prefix, uint32_t gw)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = setns(netns, CLONE_NEWNET) < 0 ? -1 : nl_socket();
		struct link_info li;
		if (fd < 0)
			_exit(IN_FAILED);
		int r = link_get(fd, "eth0", &li);
		if (r)
			_exit(r > 0 ? IN_NO_ETH0 : IN_FAILED);
		union {
			struct nlmsghdr h;
			char b[256];
		} q;
		if (verify) {
			char have[18];
			fmt_mac(li.mac, have);
			if (!li.has_mac || strcmp(have, mac))
				_exit(IN_MAC);
			struct addr_scan s;
			memset(&s, 0, sizeof s);
			s.index = li.index;
			s.gw = ip;
			s.prefix = prefix;
			memset(&q, 0, sizeof q);
			q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
			q.h.nlmsg_type = RTM_GETADDR;
			((struct ifaddrmsg *)NLMSG_DATA(&q.h))->ifa_family = AF_INET;
			if (nl_dump(fd, &q.h, on_addr, &s) < 0)
				_exit(IN_FAILED);
			if (!s.has_gw)
				_exit(IN_ADDRESS);
		} else {
			/*
			 * As the bridge plugin: no IPv6 DAD (hairpin mode would echo its probes back),
			 * and a gratuitous ARP when eth0 comes up, which it does after its address is
			 * on (neighbours may remember the address's last container).
			 */
			write_knob("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0\n");
			write_knob("/proc/sys/net/ipv4/conf/eth0/arp_notify", "1\n");
			if (addr_add(fd, li.index, ip, prefix) < 0)
				_exit(IN_ADDRESS);
			if (!(li.flags & IFF_UP) && link_up(fd, li.index) < 0)
				_exit(IN_FAILED);
		}
		struct route_want w = {li.index, 0, gw};
		memset(&q, 0, sizeof q);
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
		struct rtmsg *rt = NLMSG_DATA(&q.h);
		rt->rtm_family = AF_INET;
		if (verify) {
			q.h.nlmsg_type = RTM_GETROUTE;
			if (nl_dump(fd, &q.h, on_default_route, &w) < 0)
				_exit(IN_FAILED);
			_exit(w.found ? IN_OK : IN_ROUTE);
		}
		q.h.nlmsg_type = RTM_NEWROUTE;
		q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
		rt->rtm_table = RT_TABLE_MAIN;
		rt->rtm_protocol = RTPROT_BOOT;
		rt->rtm_scope = RT_SCOPE_UNIVERSE;
		rt->rtm_type = RTN_UNICAST;
		uint32_t be = htonl(gw), oif = (uint32_t)li.index;
		if (nl_attr(&q.h, sizeof q, RTA_GATEWAY, &be, 4, NULL) || nl_attr(&q.h, sizeof q, RTA_OIF, &oif, 4, NULL) || nl_do(fd, &q.h) < 0)
			_exit(IN_ROUTE);
		_exit(IN_OK);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *in_container_error(int r)
{
	switch (r) {
	case IN_NO_ETH0:
		return "the container has no eth0";
	case IN_MAC:
		return "the container's eth0 does not have the MAC of the stored result";
	case IN_ADDRESS:
		return "the container's eth0 does not have its address";
	case IN_ROUTE:
		return "the container has no default route via the gateway on eth0";
	default:
		return "cannot work in the container's network namespace";
	}
}

/*
 * The result the bridge plugin printed (and the gate stores): the bridge, the host veth,
 * eth0 (with the sandbox the plugin was given), the address with the gateway, the route.
 */
static void result_json(struct buf *b, const unsigned char brmac[6], const char *veth, const unsigned char hmac[6], const unsigned char cmac[6], uint32_t ip)
{
	char bm[18], hm[18], cm[18], a[16], gw[16];
	fmt_mac(brmac, bm);
	fmt_mac(hmac, hm);
	fmt_mac(cmac, cm);
	fmt_ip(ip, a);
	fmt_ip(conf.gw, gw);
	b_fmt(b,
	      "{\n    \"cniVersion\": \"1.0.0\",\n    \"interfaces\": [\n"
	      "        {\n            \"name\": \"%s\",\n            \"mac\": \"%s\"\n        },\n"
	      "        {\n            \"name\": \"%s\",\n            \"mac\": \"%s\"\n        },\n"
	      "        {\n            \"name\": \"eth0\",\n            \"mac\": \"%s\",\n            \"sandbox\": \"/proc/self/fd/%d\"\n        }\n"
	      "    ],\n    \"ips\": [\n        {\n            \"interface\": 2,\n            \"address\": \"%s/%u\",\n            \"gateway\": \"%s\"\n        }\n"
	      "    ],\n    \"routes\": [\n        {\n            \"dst\": \"0.0.0.0/0\"\n        }\n    ],\n    \"dns\": {}\n}",
	      conf.bridge, bm, veth, hm, cm, CHILD_NETNS_FD, a, conf.prefix, gw);
}


static void cmd_add(int netns, uint32_t req_ip, uint32_t rs, uint32_t re, const struct poolreq *pr)
{
	int has = container_has_eth0(netns);
	if (has != 0)
		refuse(has > 0 ? "the container's network namespace already has an eth0" : "cannot inspect the container's network namespace");
	struct state s;
	state_open(1, &s);
	struct stat st;
	if (fstatat(s.res, res_name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT)
		refuse("container %s already has a network: del it first", cont_id);
	int ipam = ipam_open(&s); /* before anything changes: it may refuse */
	struct poolnet pn = {0, 0, 0};
	if (!pr->set) {
		/* a pool record without a result is what an add or del cut short left: it goes first */
		struct poolnet old;
		if (pool_record(&s, cont_id, &old) == 0 && pool_release(&s, cont_id, &old))
			fail("cannot remove " STATE_DIR "/%u/pool/%s: %s", caller, cont_id, strerror(errno));
	}
	if (pr->set) {
		pn.net = pr->net;
		pn.prefix = pr->prefix;
		/*
		 * The pool was free when root granted it; the host's routes may have changed since
		 * (a VPN, a container engine, DHCP). A subnet that a route of anything but this
		 * user's own pool bridges covers, or that holds the default route's gateway, would
		 * take that traffic: refused.
		 */
		char why[200], sn[16];
		if (pool_routes_free(&pn, why, sizeof why)) {
			fmt_ip(pn.net, sn);
			refuse("subnet %s/%u is not free on this host: %s", sn, pn.prefix, why);
		}
		int shared = pool_select(&s, cont_id, &pn);
		char rec[64], na[16];
		fmt_ip(pn.net, na);
		int k = snprintf(rec, sizeof rec, "%s/%u %u\n", na, pn.prefix, pn.index);
		/* the record first: del finds the subnet and bridge of an add cut short */
		if (write_state_file(s.pool, cont_id, rec, (size_t)k))
			fail("cannot store " STATE_DIR "/%u/pool/%s: %s", caller, cont_id, strerror(errno));
		pool_apply(&pn);
		/* a bridge of this name that no record names is debris (a del cut short): it goes, addresses and all */
		if ((!shared && pool_bridge_remove(pn.index)) || pool_bridge_make()) {
			int e = errno;
			pool_release(&s, cont_id, &pn);
			fail("cannot make bridge %s: %s", conf.bridge, strerror(e));
		}
		req_ip = pr->ip;
	}

	/* the host veth's name, free now: a random one, as the bridge plugin's */
	int fd = nl_socket();
	if (fd < 0)
		fail("rtnetlink: %s", strerror(errno));
	char veth[IFNAMSIZ];
	struct link_info li;
	for (int tries = 0;; tries++) {
		unsigned char rnd[4];
		if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
			fail("getrandom: %s", strerror(errno));
		snprintf(veth, sizeof veth, "veth%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
		int r = link_get(fd, veth, &li);
		if (r == 1)
			break;
		if (r < 0 || tries > 8)
			fail("cannot find a free name for the host veth: %s", r < 0 ? strerror(errno) : "all taken");
	}

	/*
	 * The intent first, naming the namespace and the host veth to be: an add cut short
	 * (killed, frozen) is undone by del or refused by the next add.
	 */
	char ident[64];
	struct buf intent = {0};
	netns_identity(netns, ident);
	b_fmt(&intent, "{\"intent\":\"add\",\"netns\":\"%s\",\"veth\":\"%s\"}", ident, veth);
	if (write_state_file(s.res, res_name, intent.p, intent.n))
		fail("cannot store " STATE_DIR "/%u/results/%s: %s", caller, res_name, strerror(errno));
	b_free(&intent);

	char err[1400], rb[1400];
	const char *problem = err;
	uint32_t ip = 0;
	int leased = 0, made = 0;
	struct link_info br;
	unsigned char hmac[6], cmac[6];
	struct buf res = {0};
	struct addr a[MAX_IPS];
	size_t na = 0;
	random_mac(hmac);
	random_mac(cmac);
	/*
	 * The veth's name goes into @veths before the veth exists, with no address or MAC of
	 * its own: every frame from it is dropped until its entries come. An add cut short
	 * (frozen, killed through its cgroup) leaves a veth that can send nothing.
	 */
	int listed = veth_list_closed(veth, err, sizeof err) == 0;
	if (listed && lease_alloc(ipam, req_ip, rs, re, &ip, err, sizeof err) == 0) {
		leased = 1;
		if (bridge_ensure(fd, &br, err, sizeof err) == 0) {
			if (veth_make(fd, veth, hmac, cmac, br.index, netns) < 0) {
				snprintf(err, sizeof err, "cannot make the veth pair %s and the container's eth0: %s", veth, strerror(errno));
			} else {
				made = 1;
				char path[96];
				int r;
				snprintf(path, sizeof path, "/sys/class/net/%s/brport/hairpin_mode", veth);
				if (write_knob(path, "1\n") < 0) {
					snprintf(err, sizeof err, "cannot set hairpin mode on %s: %s", veth, strerror(errno));
				} else if (neigh_forget(fd, br.index, ip), (r = in_container(netns, 0, NULL, ip, conf.prefix, conf.gw)) != IN_OK) {
					snprintf(err, sizeof err, "cannot set up the container's eth0: %s", in_container_error(r));
				} else if (port_wait_up(fd, veth)) {
					snprintf(err, sizeof err, "bridge port %s did not come up", veth);
				} else {
					result_json(&res, br.mac, veth, hmac, cmac, ip);
					if (result_addrs(&res, &conf, 1, a, &na)) {
						problem = "the result holds no usable address of the subnet";
					} else if (write_state_file(s.res, res_name, res.p, res.n)) {
						snprintf(err, sizeof err, "cannot store " STATE_DIR "/%u/results/%s: %s", caller, res_name, strerror(errno));
					} else if (veth_guard(1, &res, a, na, err, sizeof err)) {
						/* err says why */
					} else if (write_stdout(res.p, res.n)) {
						problem = "cannot write the result to stdout";
					} else {
						exit(0);
					}
				}
			}
		}
	}
	/* roll back: no lease, veth or rule is left; the record goes only when that worked */
	if (na)
		veth_guard(0, &res, a, na, rb, sizeof rb);
	int bad = 0;
	if (made && remove_host_veth(veth) < 0) {
		snprintf(rb, sizeof rb, "cannot remove the host veth %s: %s", veth, strerror(errno));
		bad = 1;
	}
	if (listed && !bad)
		veth_unlist(veth);
	struct addr mine = {ip, conf.prefix};
	if (!bad && leased && lease_release(ipam, &mine, 1) < 0) {
		snprintf(rb, sizeof rb, "cannot release the lease: %s", strerror(errno));
		bad = 1;
	}
	if (bad)
		fail("%s; rollback also failed: %s", problem, rb);
	remove_state_file(s.res, res_name);
	if (pr->set && pool_release(&s, cont_id, &pn))
		fail("%s; rollback could not remove bridge %s", problem, conf.bridge);
	fail("%s (rolled back)", problem);
}

/*
 * Everything of the container's network but its records: the stored host veth (its
 * peer, the container's eth0, goes with it; never whatever the container now calls
 * eth0), else eth0 in the namespace given; then its lease. 0 done, -1 (err).
 */
static int net_teardown(int netns, const struct buf *res, const struct addr *a, size_t na, int ipam, char *err, size_t errlen)
{
	char veth[IFNAMSIZ];
	if (res && result_host_veth(res, veth) == 1) {
		if (remove_host_veth(veth) < 0) {
			snprintf(err, errlen, "cannot remove the host veth %s: %s", veth, strerror(errno));
			return -1;
		}
	} else if (netns >= 0 && remove_container_eth0(netns) < 0) {
		snprintf(err, errlen, "cannot remove eth0 from the container's network namespace");
		return -1;
	}
	if (lease_release(ipam, a, na) < 0) {
		snprintf(err, errlen, "cannot release the lease of container %s: %s", cont_id, strerror(errno));
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ UDP mappings (issue #13) */

/*
 * UDP mappings do not go through portmap: its ADD deletes every UDP conntrack entry whose
 * destination port is the mapped one, on any address, so one user's mapping would cut
 * other users' and the host's flows to remote hosts on that port. The gate installs the
 * UDP DNAT itself, with portmap's semantics (any local address but loopback, the host
 * port, to the container's address and port), in the nat chain TRELLIS-UDP-<uid>. gdn
 * setup makes that chain and the only way into it: from TRELLIS-UDP (entered from
 * PREROUTING and OUTPUT for local destinations, loopback excluded) for the user's own
 * port block. The chain is rebuilt whole, from the user's ports/ records, in one
 * iptables-restore transaction on every ports and del: a call cut short is finished
 * (or undone) by the next one, and no rule of another user can ever be touched. Then
 * only the conntrack entries the mapping applies to are deleted: UDP, original
 * destination a local, non-loopback address of the host, original destination port the
 * mapped one (never a flow to a remote host).
 */
#define IPT_RESTORE "/usr/sbin/iptables-restore"
#define EXEC_TIMEOUT_MS 30000
#define MAX_LOCAL 1024
#define NLA_HDR sizeof(struct nlattr)

static size_t al4(size_t n) { return (n + 3) & ~(size_t)3; }

/*
 * Runs path (root in every id, a clean environment, no fd of ours) with input on stdin:
 * 0 it exited 0; else -1 with its last stderr line (or why) in err.
 */
static int run_exec(const char *path, char *const argv[], const struct buf *input, char *err, size_t errlen)
{
	struct stat st;
	if (stat(path, &st) < 0 || !trusted(&st, S_IFREG) || !(st.st_mode & S_IXUSR)) {
		snprintf(err, errlen, "%s is missing, not root-owned or writable by others", path);
		return -1;
	}
	int in = (int)syscall(SYS_memfd_create, "in", 1U /* MFD_CLOEXEC */);
	int out = (int)syscall(SYS_memfd_create, "err", 1U);
	if (in < 0 || out < 0) {
		snprintf(err, errlen, "memfd_create: %s", strerror(errno));
		return -1;
	}
	for (size_t off = 0; off < input->n;) {
		ssize_t w = write(in, input->p + off, input->n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			snprintf(err, errlen, "cannot buffer the input of %s: %s", path, strerror(errno));
			close(in);
			close(out);
			return -1;
		}
		off += (size_t)w;
	}
	lseek(in, 0, SEEK_SET);
	char *envp[] = {CHILD_PATH, NULL};
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		if (setsid() < 0 || setgroups(0, NULL) < 0 || setgid(0) < 0 || setuid(0) < 0)
			_exit(127);
		umask(022);
		for (int s = 1; s < NSIG; s++)
			signal(s, SIG_DFL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
			_exit(127);
		if (syscall(SYS_close_range, 3U, ~0U, 0) < 0)
			for (int fd = 3; fd < 65536; fd++)
				close(fd);
		execve(path, argv, envp);
		_exit(127);
	}
	close(in);
	int status = 0, timed_out = 0;
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd >= 0) {
		long deadline = now_ms() + EXEC_TIMEOUT_MS;
		for (;;) {
			long left = deadline - now_ms();
			struct pollfd pf = {pidfd, POLLIN, 0};
			int pr = left > 0 ? poll(&pf, 1, (int)left) : 0;
			if (pr < 0 && errno == EINTR)
				continue;
			if (pr == 0) {
				timed_out = 1;
				kill(-pid, SIGKILL);
				kill(pid, SIGKILL);
			}
			break;
		}
		close(pidfd);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			break;
	if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		close(out);
		return 0;
	}
	char tail[1024];
	off_t size = lseek(out, 0, SEEK_END);
	off_t from = size > (off_t)sizeof tail - 1 ? size - (off_t)sizeof tail + 1 : 0;
	ssize_t k = pread(out, tail, sizeof tail - 1, from);
	close(out);
	size_t e = k > 0 ? (size_t)k : 0, s;
	while (e && (tail[e - 1] == '\n' || tail[e - 1] == ' '))
		e--;
	for (s = e; s && tail[s - 1] != '\n'; s--)
		;
	if (timed_out)
		snprintf(err, errlen, "%s timed out after %d s", path, EXEC_TIMEOUT_MS / 1000);
	else if (e > s)
		snprintf(err, errlen, "%s failed: %.*s", path, (int)(e - s), tail + s);
	else
		snprintf(err, errlen, "%s failed (status %d)", path, status);
	return -1;
}

/* The caller's UDP chain, from every ports/ record (but skip's) with a usable stored result: 0 done, -1 (err). */
static int udp_sync(const struct state *s, const char *skip, char *err, size_t errlen)
{
	struct buf in = {0};
	b_fmt(&in, "*nat\n:TRELLIS-UDP-%u - [0:0]\n", caller);
	int lfd = openat(s->ports, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = lfd < 0 ? NULL : fdopendir(lfd);
	if (!d) {
		snprintf(err, errlen, "cannot list " STATE_DIR "/%u/ports: %s", caller, strerror(errno));
		b_free(&in);
		return -1;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!valid_id(e->d_name) || (skip && !strcmp(e->d_name, skip)))
			continue;
		struct buf pf = {0}, res = {0};
		struct mapping m[MAX_PORTS];
		struct addr a[MAX_IPS];
		size_t nm = 0, na = 0;
		char rn[300], ip[16];
		snprintf(rn, sizeof rn, "%s.json", e->d_name);
		/* a corrupt record or a result that is not (yet) a real one maps nothing */
		/* each container against its own subnet: the user's default one, or its pool subnet (conf may hold another) */
		struct netconf c = user_conf;
		struct buf pb = {0};
		struct poolnet pn;
		if (read_state(s->pool, "pool", e->d_name, &pb, 256) == 0 && parse_pool_file(&pb, &pn) == 0 && pool_inside(&pn)) {
			pool_bridge_name(pn.index, c.bridge);
			c.net = pn.net;
			c.prefix = pn.prefix;
			c.gw = pn.net + 1;
		}
		b_free(&pb);
		if (read_state(s->ports, "ports", e->d_name, &pf, PORTS_FILE_CAP) == 0 && parse_ports_file(&pf, m, &nm) == 0 &&
		    read_state(s->res, "results", rn, &res, OUT_CAP) == 0 && result_addrs(&res, &c, 1, a, &na) == 0) {
			fmt_ip(a[0].ip, ip);
			for (size_t i = 0; i < nm; i++)
				if (m[i].udp && m[i].host >= conf.port_start && m[i].host <= conf.port_end)
					b_fmt(&in, "-A TRELLIS-UDP-%u -p udp -m udp --dport %u -m comment --comment \"u%u-%s\" -j DNAT --to-destination %s:%u\n",
					      caller, m[i].host, caller, e->d_name, ip, m[i].cont);
		}
		b_free(&pf);
		b_free(&res);
	}
	closedir(d);
	b_str(&in, "COMMIT\n");
	char *argv[] = {"iptables-restore", "--noflush", "--wait", NULL};
	int rc = run_exec(IPT_RESTORE, argv, &in, err, errlen);
	b_free(&in);
	return rc;
}

/* --- conntrack, through ctnetlink (no tool, no package: the gate reads and deletes the entries itself) */

static int nf_socket(int proto)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
	if (fd < 0)
		return -1;
	struct timeval tv = {NETLINK_TIMEOUT_S, 0};
	int big = 1 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Sends the dump request h and hands each answer of the kernel's (sequence, type) to fn
 * until NLMSG_DONE: 0 done, -1 failed (errno). Datagrams from anyone but the kernel are ignored.
 */
static int nl_dump(int fd, struct nlmsghdr *h, void (*fn)(const struct nlmsghdr *, void *), void *ctx)
{
	static uint32_t dseq = 1u << 20;
	h->nlmsg_seq = ++dseq;
	h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_DUMP;
	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof sa);
	sa.nl_family = AF_NETLINK;
	if (sendto(fd, h, h->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof sa) < 0)
		return -1;
	long deadline = now_s() + 4 * NETLINK_TIMEOUT_S;
	static union {
		struct nlmsghdr h;
		char b[65536];
	} r;
	for (;;) {
		struct sockaddr_nl from;
		socklen_t fl = sizeof from;
		memset(&from, 0, sizeof from);
		ssize_t got = recvfrom(fd, &r, sizeof r, 0, (struct sockaddr *)&from, &fl);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -1;
		if (now_s() > deadline) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (fl != sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0)
			continue;
		size_t left = (size_t)got;
		for (struct nlmsghdr *m = &r.h; NLMSG_OK(m, left); m = NLMSG_NEXT(m, left)) {
			if (m->nlmsg_seq != dseq)
				continue;
			if (m->nlmsg_type == NLMSG_DONE)
				return 0;
			if (m->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr e;
				if (m->nlmsg_len < NLMSG_LENGTH(sizeof e)) {
					errno = EPROTO;
					return -1;
				}
				memcpy(&e, NLMSG_DATA(m), sizeof e);
				errno = e.error ? -e.error : EPROTO;
				return -1;
			}
			fn(m, ctx);
		}
	}
}

static const struct nlattr *nla_find(const void *p, size_t len, unsigned short type)
{
	const char *s = p, *e = s + len;
	while ((size_t)(e - s) >= NLA_HDR) {
		const struct nlattr *a = (const void *)s;
		if (a->nla_len < NLA_HDR || a->nla_len > (size_t)(e - s))
			return NULL;
		if ((a->nla_type & NLA_TYPE_MASK) == type)
			return a;
		s += al4(a->nla_len);
	}
	return NULL;
}

static const void *nla_data(const struct nlattr *a) { return (const char *)a + NLA_HDR; }
static size_t nla_len(const struct nlattr *a) { return (size_t)a->nla_len - NLA_HDR; }

struct local_nets {
	uint32_t net[MAX_LOCAL];
	unsigned prefix[MAX_LOCAL];
	size_t n;
	int overflow;
};

/* Each route of type local (what "-m addrtype --dst-type LOCAL" matches) but loopback's. */
static void on_route(const struct nlmsghdr *m, void *ctx)
{
	struct local_nets *l = ctx;
	if (m->nlmsg_type != RTM_NEWROUTE || m->nlmsg_len < NLMSG_LENGTH(sizeof(struct rtmsg)))
		return;
	const struct rtmsg *rt = NLMSG_DATA(m);
	if (rt->rtm_family != AF_INET || rt->rtm_type != RTN_LOCAL || rt->rtm_dst_len > 32)
		return;
	uint32_t dst = 0;
	const char *at = (const char *)rt + NLMSG_ALIGN(sizeof *rt);
	size_t len = m->nlmsg_len - NLMSG_LENGTH(sizeof *rt);
	/* the kernel's own local table only: a policy-routing table (e.g. local 0.0.0.0/0 for a
	   transparent proxy) would make every address look local */
	const struct nlattr *t = nla_find(at, len, RTA_TABLE);
	uint32_t table = rt->rtm_table;
	if (t && nla_len(t) == 4)
		memcpy(&table, nla_data(t), 4);
	if (table != RT_TABLE_LOCAL)
		return;
	const struct nlattr *a = nla_find(at, len, RTA_DST);
	if (a && nla_len(a) == 4)
		memcpy(&dst, nla_data(a), 4);
	uint32_t net = ntohl(dst) & mask_of(rt->rtm_dst_len);
	if ((net >> 24) == 127)
		return;
	if (l->n >= MAX_LOCAL) {
		l->overflow = 1;
		return;
	}
	l->net[l->n] = net;
	l->prefix[l->n++] = rt->rtm_dst_len;
}

/* --- the host's routes against a pool subnet (issue #8) */

struct route_scan {
	uint32_t net;
	unsigned prefix;
	int bad, failed;
	char why[200];
};

/* oif is one of the caller's pool bridges, tr<uid>p<digits> */
static int own_pool_bridge(uint32_t oif)
{
	char name[IF_NAMESIZE + 1], pre[32];
	if (!oif || !if_indextoname(oif, name))
		return 0;
	int k = snprintf(pre, sizeof pre, "tr%up", caller);
	if (k <= 0 || strncmp(name, pre, (size_t)k) || !name[k])
		return 0;
	for (const char *d = name + k; *d; d++)
		if (!is_digit(*d))
			return 0;
	return 1;
}

static void on_any_route(const struct nlmsghdr *m, void *ctx)
{
	struct route_scan *r = ctx;
	if (r->bad || m->nlmsg_type != RTM_NEWROUTE || m->nlmsg_len < NLMSG_LENGTH(sizeof(struct rtmsg)))
		return;
	const struct rtmsg *rt = NLMSG_DATA(m);
	if (rt->rtm_family != AF_INET || rt->rtm_dst_len > 32)
		return;
	const char *at = (const char *)rt + NLMSG_ALIGN(sizeof *rt);
	size_t len = m->nlmsg_len - NLMSG_LENGTH(sizeof *rt);
	uint32_t dst = 0, gw = 0, oif = 0;
	const struct nlattr *a = nla_find(at, len, RTA_DST);
	if (a && nla_len(a) == 4)
		memcpy(&dst, nla_data(a), 4);
	if ((a = nla_find(at, len, RTA_GATEWAY)) && nla_len(a) == 4)
		memcpy(&gw, nla_data(a), 4);
	if ((a = nla_find(at, len, RTA_OIF)) && nla_len(a) == 4)
		memcpy(&oif, nla_data(a), 4);
	dst = ntohl(dst);
	gw = ntohl(gw);
	int own = own_pool_bridge(oif);
	char d[16], g[16];
	if (gw && (gw & mask_of(r->prefix)) == r->net && !own) {
		fmt_ip(gw, g);
		snprintf(r->why, sizeof r->why, "it holds %s, the gateway of a route of this host", g);
		r->bad = 1;
		return;
	}
	if (rt->rtm_dst_len == 0)
		return; /* a default route covers everything: only its gateway counts */
	unsigned p = rt->rtm_dst_len < r->prefix ? rt->rtm_dst_len : r->prefix;
	if ((dst & mask_of(p)) == (r->net & mask_of(p)) && !own) {
		fmt_ip(dst & mask_of(rt->rtm_dst_len), d);
		snprintf(r->why, sizeof r->why, "it overlaps %s/%u, a route or address of this host", d, rt->rtm_dst_len);
		r->bad = 1;
	}
}

/* 0 no route of the host's (any table) but the caller's own pool bridges' touches p; -1 why says */
static int pool_routes_free(const struct poolnet *p, char *why, size_t whylen)
{
	struct route_scan r;
	memset(&r, 0, sizeof r);
	r.net = p->net;
	r.prefix = p->prefix;
	int fd = nl_socket();
	if (fd < 0) {
		snprintf(why, whylen, "cannot list the host's routes: %s", strerror(errno));
		return -1;
	}
	union {
		struct nlmsghdr h;
		char b[256];
	} q;
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	q.h.nlmsg_type = RTM_GETROUTE;
	((struct rtmsg *)NLMSG_DATA(&q.h))->rtm_family = AF_INET;
	int rc = nl_dump(fd, &q.h, on_any_route, &r);
	close(fd);
	if (rc < 0) {
		snprintf(why, whylen, "cannot list the host's routes: %s", strerror(errno));
		return -1;
	}
	if (r.bad) {
		snprintf(why, whylen, "%s", r.why);
		return -1;
	}
	return 0;
}

struct ct_scan {
	const struct local_nets *local;
	const unsigned *ports;
	size_t nports;
	struct buf del; /* matching entries: [u32 length][CTA_TUPLE_ORIG attribute][CTA_ID attribute or nothing] */
	size_t found;
};

static void on_conntrack(const struct nlmsghdr *m, void *ctx)
{
	struct ct_scan *c = ctx;
	if (m->nlmsg_type != ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW) || m->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg)))
		return;
	const struct nfgenmsg *g = NLMSG_DATA(m);
	if (g->nfgen_family != AF_INET)
		return;
	const char *attrs = (const char *)g + NLMSG_ALIGN(sizeof *g);
	size_t alen = m->nlmsg_len - NLMSG_LENGTH(NLMSG_ALIGN(sizeof *g));
	const struct nlattr *orig = nla_find(attrs, alen, CTA_TUPLE_ORIG);
	if (!orig)
		return;
	const struct nlattr *ip = nla_find(nla_data(orig), nla_len(orig), CTA_TUPLE_IP);
	const struct nlattr *pr = nla_find(nla_data(orig), nla_len(orig), CTA_TUPLE_PROTO);
	if (!ip || !pr)
		return;
	const struct nlattr *dst = nla_find(nla_data(ip), nla_len(ip), CTA_IP_V4_DST);
	const struct nlattr *num = nla_find(nla_data(pr), nla_len(pr), CTA_PROTO_NUM);
	const struct nlattr *dport = nla_find(nla_data(pr), nla_len(pr), CTA_PROTO_DST_PORT);
	if (!dst || nla_len(dst) != 4 || !num || nla_len(num) != 1 || !dport || nla_len(dport) != 2)
		return;
	if (*(const uint8_t *)nla_data(num) != IPPROTO_UDP)
		return;
	uint16_t p;
	uint32_t d;
	memcpy(&p, nla_data(dport), 2);
	memcpy(&d, nla_data(dst), 4);
	unsigned port = ntohs(p);
	uint32_t addr = ntohl(d);
	int want = 0;
	for (size_t i = 0; i < c->nports && !want; i++)
		want = c->ports[i] == port;
	int local = 0;
	for (size_t i = 0; i < c->local->n && !local; i++)
		local = (addr & mask_of(c->local->prefix[i])) == c->local->net[i];
	if (!want || !local || (addr >> 24) == 127)
		return;
	const struct nlattr *id = nla_find(attrs, alen, CTA_ID);
	uint32_t len = (uint32_t)(al4(orig->nla_len) + (id && nla_len(id) == 4 ? al4(id->nla_len) : 0));
	b_add(&c->del, &len, sizeof len);
	b_add(&c->del, orig, orig->nla_len);
	b_add(&c->del, "\0\0\0", al4(orig->nla_len) - orig->nla_len);
	if (id && nla_len(id) == 4)
		b_add(&c->del, id, al4(id->nla_len));
	c->found++;
}

/*
 * Deletes the host's IPv4 UDP conntrack entries whose original destination is a local,
 * non-loopback address and whose original destination port is one of ports: those
 * that a UDP mapping of these ports applies to (set up before it, they would bypass
 * its DNAT; made by it, they would outlive it). 0 done, -1 (err).
 */
static int ct_flush_udp(const unsigned *ports, size_t nports, char *err, size_t errlen)
{
	if (nports == 0)
		return 0;
	static struct local_nets local;
	memset(&local, 0, sizeof local);
	union {
		struct nlmsghdr h;
		char b[256];
	} q;
	int fd = nf_socket(NETLINK_ROUTE);
	if (fd < 0) {
		snprintf(err, errlen, "rtnetlink: %s", strerror(errno));
		return -1;
	}
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	q.h.nlmsg_type = RTM_GETROUTE;
	((struct rtmsg *)NLMSG_DATA(&q.h))->rtm_family = AF_INET;
	int rc = nl_dump(fd, &q.h, on_route, &local);
	close(fd);
	if (rc < 0 || local.overflow) {
		snprintf(err, errlen, "cannot list the host's local addresses: %s", rc < 0 ? strerror(errno) : "too many");
		return -1;
	}
	fd = nf_socket(NETLINK_NETFILTER);
	if (fd < 0) {
		snprintf(err, errlen, "ctnetlink: %s", strerror(errno));
		return -1;
	}
	struct ct_scan scan = {&local, ports, nports, {0}, 0};
	memset(&q, 0, sizeof q);
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
	q.h.nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
	struct nfgenmsg *g = NLMSG_DATA(&q.h);
	g->nfgen_family = AF_INET;
	g->version = NFNETLINK_V0;
	if (nl_dump(fd, &q.h, on_conntrack, &scan) < 0) {
		snprintf(err, errlen, "cannot list the host's conntrack entries: %s", strerror(errno));
		close(fd);
		b_free(&scan.del);
		return -1;
	}
	/* each one by its original tuple and id: never a delete without a tuple, which would flush the table */
	rc = 0;
	for (size_t off = 0; off + 4 <= scan.del.n && rc == 0;) {
		uint32_t len;
		memcpy(&len, scan.del.p + off, 4);
		off += 4;
		union {
			struct nlmsghdr h;
			char b[1024];
		} dq;
		if (len == 0 || len > scan.del.n - off || NLMSG_LENGTH(NLMSG_ALIGN(sizeof(struct nfgenmsg))) + len > sizeof dq) {
			off += len;
			continue;
		}
		memset(&dq, 0, sizeof dq);
		dq.h.nlmsg_len = NLMSG_LENGTH(NLMSG_ALIGN(sizeof(struct nfgenmsg))) + len;
		dq.h.nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
		struct nfgenmsg *dg = NLMSG_DATA(&dq.h);
		dg->nfgen_family = AF_INET;
		dg->version = NFNETLINK_V0;
		memcpy((char *)dg + NLMSG_ALIGN(sizeof *dg), scan.del.p + off, len);
		off += len;
		/* gone already (it timed out, or a reply deleted it): fine */
		if (nl_do(fd, &dq.h) < 0 && errno != ENOENT) {
			snprintf(err, errlen, "cannot delete a conntrack entry: %s", strerror(errno));
			rc = -1;
		}
	}
	close(fd);
	b_free(&scan.del);
	return rc;
}

/* Whether gdn setup made the way into the caller's UDP chain (else its rules would be dead: refuse). */
static int udp_jump_present(void)
{
	char range[32], chain[32], err[256];
	snprintf(range, sizeof range, "%u:%u", conf.port_start, conf.port_end);
	snprintf(chain, sizeof chain, "TRELLIS-UDP-%u", caller);
	char *argv[] = {"iptables", "-w", "-t", "nat", "-C", "TRELLIS-UDP", "-p", "udp", "-m", "udp", "--dport", range, "-j", chain, NULL};
	struct buf none = {0};
	return run_exec("/usr/sbin/iptables", argv, &none, err, sizeof err) == 0;
}

/* The UDP host ports of m inside the caller's current block (deduplicated into out, which holds 2 * MAX_PORTS). */
static size_t udp_ports_of(const struct mapping *m, size_t n, unsigned *out, size_t have)
{
	for (size_t i = 0; i < n; i++) {
		int dup = 0;
		for (size_t j = 0; j < have && !dup; j++)
			dup = out[j] == m[i].host;
		if (m[i].udp && !dup && m[i].host >= conf.port_start && m[i].host <= conf.port_end && have < 2 * MAX_PORTS)
			out[have++] = m[i].host;
	}
	return have;
}

/* The TCP mappings of m, the ones portmap makes (into out). */
static size_t tcp_only(const struct mapping *m, size_t n, struct mapping *out)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (!m[i].udp)
			out[k++] = m[i];
	return k;
}

/* ------------------------------------------------------------------ per-veth anti-spoofing (issue #13) */

/*
 * A container's host veth carries only its own addresses: frames that enter the bridge
 * from it are dropped unless they are IPv4 or ARP (a VLAN tag would hide the rest from the
 * rules) with the container's own MAC and IPv4 address as sender. gdn setup makes the
 * nftables table "bridge trellis" (bridge family: no br_netfilter, no sysctl) with the
 * sets veths (ifname), own (ifname . ipv4_addr) and ownmac (ifname . ether_addr) and, in
 * its prerouting chain, the drops for "iifname @veths" whose (iifname, sender) pairs are
 * not in @own and @ownmac. The gate adds
 * the veth and its addresses at add, and takes them out at del; veths the gate never
 * listed (containers from before) are left alone. One nft -f transaction each way,
 * built from the stored result (a veth name of [A-Za-z0-9_.-] and parsed addresses).
 */
#define NFT "/usr/sbin/nft"

/*
 * The same elements over nf_tables netlink, without exec'ing nft (issue #10: nft was two
 * process starts per lifecycle): one batch, one transaction, each operation acknowledged.
 * Keys as nft lays them out: ifname 16 bytes, each field of a concatenation padded to 4
 * (ipv4_addr 4, ether_addr 6 + 2). -1 (errno) when it cannot (the table or a set missing:
 * a gate newer than the last gdn setup), and the caller runs nft, which declares them.
 */
struct nb {
	char b[8192];
	size_t n;
	int bad;
};

static size_t nb_put(struct nb *x, uint16_t type, const void *d, size_t len)
{
	size_t at = x->n, tot = NLA_HDR + len;
	if (x->bad || at + al4(tot) > sizeof x->b) {
		x->bad = 1;
		return at;
	}
	struct nlattr *a = (struct nlattr *)(void *)(x->b + at);
	a->nla_type = type;
	a->nla_len = (uint16_t)tot;
	if (len)
		memcpy(x->b + at + NLA_HDR, d, len);
	memset(x->b + at + tot, 0, al4(tot) - tot);
	x->n += al4(tot);
	return at;
}

/* closes the nested attribute started at at */
static void nb_nest_end(struct nb *x, size_t at)
{
	if (!x->bad)
		((struct nlattr *)(void *)(x->b + at))->nla_len = (uint16_t)(x->n - at);
}

static size_t nb_msg(struct nb *x, uint16_t type, uint16_t flags, uint8_t family, uint16_t res_id, uint32_t seq)
{
	size_t at = x->n, hl = NLMSG_LENGTH(sizeof(struct nfgenmsg));
	if (x->bad || at + NLMSG_ALIGN(hl) > sizeof x->b) {
		x->bad = 1;
		return at;
	}
	memset(x->b + at, 0, NLMSG_ALIGN(hl));
	struct nlmsghdr *h = (struct nlmsghdr *)(void *)(x->b + at);
	h->nlmsg_type = type;
	h->nlmsg_flags = flags;
	h->nlmsg_seq = seq;
	struct nfgenmsg *g = NLMSG_DATA(h);
	g->nfgen_family = family;
	g->version = NFNETLINK_V0;
	g->res_id = htons(res_id);
	x->n += NLMSG_ALIGN(hl);
	return at;
}

static void nb_msg_end(struct nb *x, size_t at)
{
	if (!x->bad)
		((struct nlmsghdr *)(void *)(x->b + at))->nlmsg_len = (uint32_t)(x->n - at);
}

struct nft_key {
	unsigned char k[24];
	size_t len;
};

static void nb_elems(struct nb *x, int del, const char *set, const struct nft_key *keys, size_t n, uint32_t seq)
{
	size_t m = nb_msg(x, (uint16_t)((NFNL_SUBSYS_NFTABLES << 8) | (del ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM)),
	                  (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | (del ? 0 : NLM_F_CREATE)), NFPROTO_BRIDGE, 0, seq);
	nb_put(x, NFTA_SET_ELEM_LIST_TABLE, "trellis", 8);
	nb_put(x, NFTA_SET_ELEM_LIST_SET, set, strlen(set) + 1);
	size_t l = nb_put(x, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, NULL, 0);
	for (size_t i = 0; i < n; i++) {
		size_t e = nb_put(x, NFTA_LIST_ELEM | NLA_F_NESTED, NULL, 0);
		size_t k = nb_put(x, NFTA_SET_ELEM_KEY | NLA_F_NESTED, NULL, 0);
		nb_put(x, NFTA_DATA_VALUE, keys[i].k, keys[i].len);
		nb_nest_end(x, k);
		nb_nest_end(x, e);
	}
	nb_nest_end(x, l);
	nb_msg_end(x, m);
}

static int guard_netlink(int add, const char *veth, const struct addr *a, size_t na, const unsigned char *mac)
{
	struct nft_key own[MAX_IPS], name, om;
	memset(&name, 0, sizeof name);
	memcpy(name.k, veth, strlen(veth)); /* < IFNAMSIZ: the rest stays zero */
	name.len = IFNAMSIZ;
	for (size_t i = 0; i < na; i++) {
		uint32_t be = htonl(a[i].ip);
		own[i] = name;
		memcpy(own[i].k + IFNAMSIZ, &be, 4);
		own[i].len = IFNAMSIZ + 4;
	}
	om = name;
	if (mac) {
		memcpy(om.k + IFNAMSIZ, mac, 6);
		om.len = IFNAMSIZ + 8;
	}
	static struct nb x;
	memset(&x, 0, sizeof x);
	static uint32_t seq = 1u << 24;
	uint32_t first = seq + 1;
	size_t b = nb_msg(&x, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq);
	nb_msg_end(&x, b);
	/* unlisting adds first, in the same transaction: deleting an absent element fails */
	unsigned ops = 0;
	for (int pass = 0; pass < (add ? 1 : 2); pass++) {
		if (na) {
			nb_elems(&x, pass, "own", own, na, ++seq);
			ops++;
		}
		if (mac) {
			nb_elems(&x, pass, "ownmac", &om, 1, ++seq);
			ops++;
		}
		nb_elems(&x, pass, "veths", &name, 1, ++seq);
		ops++;
	}
	size_t e = nb_msg(&x, NFNL_MSG_BATCH_END, NLM_F_REQUEST, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq);
	nb_msg_end(&x, e);
	if (x.bad) {
		errno = EMSGSIZE;
		return -1;
	}
	int fd = nf_socket(NETLINK_NETFILTER);
	if (fd < 0)
		return -1;
	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof sa);
	sa.nl_family = AF_NETLINK;
	if (sendto(fd, x.b, x.n, 0, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	/* one answer per operation (each asked for an ack); the first error fails it all */
	unsigned got = 0;
	int error = 0;
	long deadline = now_s() + NETLINK_TIMEOUT_S;
	while (got < ops) {
		union {
			struct nlmsghdr h;
			char b[8192];
		} r;
		struct sockaddr_nl from;
		socklen_t fl = sizeof from;
		memset(&from, 0, sizeof from);
		ssize_t k = recvfrom(fd, &r, sizeof r, 0, (struct sockaddr *)&from, &fl);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 || now_s() > deadline) {
			if (k >= 0)
				errno = ETIMEDOUT;
			close(fd);
			return -1;
		}
		if (fl != sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0)
			continue; /* not the kernel */
		size_t left = (size_t)k;
		for (struct nlmsghdr *m = &r.h; NLMSG_OK(m, left); m = NLMSG_NEXT(m, left)) {
			if (m->nlmsg_type != NLMSG_ERROR || m->nlmsg_seq < first || m->nlmsg_seq > seq)
				continue;
			struct nlmsgerr er;
			if (m->nlmsg_len < NLMSG_LENGTH(sizeof er))
				continue;
			memcpy(&er, NLMSG_DATA(m), sizeof er);
			if (er.error && !error)
				error = -er.error;
			got++;
		}
	}
	close(fd);
	if (error) {
		errno = error;
		return -1;
	}
	return 0;
}

/* Writes v to /proc/sys/net/<family>/conf/<veth>/<key> (a link the gate names: [A-Za-z0-9_.-]). */
static int veth_sysctl(const char *family, const char *veth, const char *key, const char *v)
{
	char path[128];
	snprintf(path, sizeof path, "/proc/sys/net/%s/conf/%s/%s", family, veth, key);
	int fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t w = write(fd, v, strlen(v));
	return close(fd) < 0 || w != (ssize_t)strlen(v) ? -1 : 0;
}

static int veth_guard(int add, const struct buf *res, const struct addr *a, size_t na, char *err, size_t errlen)
{
	char veth[IFNAMSIZ], ip[16], mac[18];
	if (result_host_veth(res, veth) != 1) {
		snprintf(err, errlen, "the result names no host veth");
		return add ? -1 : 0;
	}
	int has_mac = result_sandbox_mac(res, mac) == 1;
	if (add && !has_mac) {
		snprintf(err, errlen, "the result names no MAC address of the container's interface");
		return -1;
	}
	/*
	 * Frames to the bridge's link-local group addresses (01:80:c2:00:00:0x) are passed to
	 * the host stack as received on the veth itself, past every bridge hook: strict
	 * reverse-path filtering there drops any IPv4 of theirs (the way back to a container
	 * is the bridge, never the veth), and the veth gets no IPv6 at all.
	 */
	if (add && (veth_sysctl("ipv4", veth, "rp_filter", "1\n") || veth_sysctl("ipv6", veth, "disable_ipv6", "1\n"))) {
		snprintf(err, errlen, "cannot set reverse-path filtering on %s: %s", veth, strerror(errno));
		return -1;
	}
	unsigned char macb[6];
	for (int i = 0; has_mac && i < 6; i++)
		macb[i] = (unsigned char)(hexval(mac[3 * i]) << 4 | hexval(mac[3 * i + 1]));
	if (guard_netlink(add, veth, a, na, has_mac ? macb : NULL) == 0)
		return 0;
	struct buf in = {0};
	/* table and sets too (idempotent): a gate newer than the last gdn setup still works */
	b_str(&in, "add table bridge trellis\nadd set bridge trellis veths { type ifname; }\n"
		   "add set bridge trellis own { type ifname . ipv4_addr; }\n"
		   "add set bridge trellis ownmac { type ifname . ether_addr; }\n");
	/* added either way: nft 1.0.6 has no "destroy", and deleting an absent element fails */
	for (int pass = 0; pass < (add ? 1 : 2); pass++) {
		const char *verb = pass ? "delete" : "add";
		for (size_t i = 0; i < na; i++) {
			fmt_ip(a[i].ip, ip);
			b_fmt(&in, "%s element bridge trellis own { \"%s\" . %s }\n", verb, veth, ip);
		}
		if (has_mac)
			b_fmt(&in, "%s element bridge trellis ownmac { \"%s\" . %s }\n", verb, veth, mac);
		b_fmt(&in, "%s element bridge trellis veths { \"%s\" }\n", verb, veth);
	}
	char *argv[] = {"nft", "-f", "-", NULL};
	int rc = run_exec(NFT, argv, &in, err, errlen);
	b_free(&in);
	return rc;
}

/* Lists the name alone in @veths (nothing of its own allowed): 0, or -1 with err. */
static int veth_list_closed(const char *veth, char *err, size_t errlen)
{
	if (guard_netlink(1, veth, NULL, 0, NULL) == 0)
		return 0;
	struct buf in = {0};
	b_str(&in, "add table bridge trellis\nadd set bridge trellis veths { type ifname; }\n");
	b_fmt(&in, "add element bridge trellis veths { \"%s\" }\n", veth);
	char *argv[] = {"nft", "-f", "-", NULL};
	int rc = run_exec(NFT, argv, &in, err, errlen);
	b_free(&in);
	return rc;
}

/* Unlists the name from @veths once its veth is gone (best effort: a stale name only names a veth that is gone). */
static void veth_unlist(const char *veth)
{
	if (guard_netlink(0, veth, NULL, 0, NULL) == 0)
		return;
	struct buf in = {0};
	char err[256];
	b_fmt(&in, "add element bridge trellis veths { \"%s\" }\ndelete element bridge trellis veths { \"%s\" }\n", veth, veth);
	char *argv[] = {"nft", "-f", "-", NULL};
	run_exec(NFT, argv, &in, err, sizeof err);
	b_free(&in);
}

/* portmap DEL of everything of this container id (any non-empty list of mappings does). */
static int portmap_del_all(int netns, const struct mapping *m, size_t nm, const struct buf *res, char *err, size_t errlen)
{
	struct mapping any = {conf.port_start, 1, 0};
	struct buf c = {0};
	conf_portmap(&c, nm ? m : &any, nm ? nm : 1, res);
	int rc = plugin("portmap", "DEL", netns, NULL, &c, err, errlen);
	b_free(&c);
	return rc;
}

static void cmd_del(int netns)
{
	struct state s;
	if (state_open(0, &s) == 1)
		exit(0); /* nothing was ever stored for this user */
	int ipam = ipam_open(&s); /* before anything changes: it may refuse */
	struct poolnet pn;
	int pooled = pool_record(&s, cont_id, &pn) == 0;
	if (pooled)
		pool_apply(&pn);
	struct buf res = {0}, ports = {0};
	int have_res = read_state(s.res, "results", res_name, &res, OUT_CAP) == 0;
	int have_ports = read_state(s.ports, "ports", cont_id, &ports, PORTS_FILE_CAP) == 0;
	size_t vs, ve;
	int intent = have_res && j_object_doc(res.p, res.n) == 0 && j_get(res.p, res.n, "intent", &vs, &ve) == 1;
	struct addr a[MAX_IPS];
	size_t na = 0;
	if (have_res && !intent && result_addrs(&res, &conf, 0, a, &na)) {
		/* unreadable result: still release what DEL can find by container id */
		have_res = 0;
		na = 0;
	}
	char err[1400];
	struct mapping m[MAX_PORTS];
	size_t nm = 0;
	if (have_ports && parse_ports_file(&ports, m, &nm))
		nm = 0;
	/*
	 * portmap only when there is a ports record (issue #10: portmap DEL runs ~16 iptables
	 * and is most of a lifecycle's cost). Safe because cmd_ports keeps "portmap rules for
	 * an id => its ports record exists" on every path: the record is written before any
	 * portmap ADD, and removed only after a portmap DEL of the id that succeeded. A
	 * record, even a corrupt one, still gets the DEL of the id's whole chain.
	 */
	if (have_ports && portmap_del_all(netns, m, nm, have_res && !intent ? &res : NULL, err, sizeof err))
		fail("%s", err);
	/* the user's UDP rules without this id's, then its record (a del cut short between them is redone) */
	if (have_ports && udp_sync(&s, cont_id, err, sizeof err))
		fail("%s", err);
	if (have_ports && remove_state_file(s.ports, cont_id))
		fail("cannot remove " STATE_DIR "/%u/ports/%s: %s", caller, cont_id, strerror(errno));
	unsigned flush[2 * MAX_PORTS];
	ct_flush_udp(flush, udp_ports_of(m, nm, flush, 0), err, sizeof err); /* best effort, as portmap's own */
	if (intent) {
		/*
		 * An add that never finished: the host veth it named, if it made it (eth0 goes with
		 * it); eth0 in the namespace it was about when the pid given is still in it (an add
		 * of an earlier gate named no veth); its lease, found by container id.
		 */
		struct buf want = {0}, v = {0};
		char ident[64];
		netns_identity(netns, ident);
		int same = j_get_str(res.p, res.n, "netns", &want) && netns >= 0 && !strcmp(want.p ? want.p : "", ident);
		b_free(&want);
		if (j_get_str(res.p, res.n, "veth", &v) && link_name_ok(v.p, v.n)) {
			if (remove_host_veth(v.p) < 0)
				fail("cannot remove the host veth %s: %s", v.p, strerror(errno));
			veth_unlist(v.p); /* listed closed before it was made */
		}
		b_free(&v);
		if (same && remove_container_eth0(netns) < 0)
			fail("cannot remove eth0 from the container's network namespace");
		if (lease_release(ipam, NULL, 0) < 0)
			fail("cannot release the lease of container %s: %s", cont_id, strerror(errno));
	} else if (net_teardown(have_res ? netns : -1, have_res ? &res : NULL, a, na, ipam, err, sizeof err)) {
		/*
		 * Without a stored result this id never had a network (or it is gone): release the
		 * lease that names it, and never touch the namespace of the pid given, which may
		 * be another container's.
		 */
		fail("%s", err);
	}
	/* the veth's anti-spoofing entries, once it is gone (best effort: a stale one only names a veth that is gone) */
	if (have_res && !intent && na)
		veth_guard(0, &res, a, na, err, sizeof err);
	if (remove_state_file(s.res, res_name))
		fail("cannot remove " STATE_DIR "/%u/results/%s: %s", caller, res_name, strerror(errno));
	if (pooled && pool_release(&s, cont_id, &pn))
		fail("cannot remove pool bridge %s: %s", conf.bridge, strerror(errno));
	exit(0);
}

static void cmd_check(int netns)
{
	struct state s;
	struct buf res = {0};
	if (state_open(0, &s) == 1 || read_state(s.res, "results", res_name, &res, OUT_CAP) == 1)
		refuse("container %s has no network", cont_id);
	pool_use(&s, cont_id);
	struct addr a[MAX_IPS];
	size_t na;
	if (result_addrs(&res, &conf, 1, a, &na))
		refuse("the stored result of container %s does not fit the current network config", cont_id);
	char err[1400], veth[IFNAMSIZ], mac[18], ip[16];
	/* what the bridge plugin's CHECK saw: the bridge, the host veth on it, the lease, eth0 as stored */
	int fd = nl_socket();
	struct link_info br, v;
	if (fd < 0)
		fail("rtnetlink: %s", strerror(errno));
	if (link_get(fd, conf.bridge, &br) != 0 || !br.is_bridge)
		fail("bridge %s is missing", conf.bridge);
	if (result_host_veth(&res, veth) != 1 || result_sandbox_mac(&res, mac) != 1)
		refuse("the stored result of container %s names no host veth or no MAC of eth0", cont_id);
	if (link_get(fd, veth, &v) != 0 || !v.is_veth || (int)v.master != br.index)
		fail("the host veth %s of container %s is missing or not on bridge %s", veth, cont_id, conf.bridge);
	int ipam = ipam_open(&s);
	for (size_t i = 0; i < na; i++)
		if (lease_is_ours(ipam, a[i].ip) != 1) {
			fmt_ip(a[i].ip, ip);
			fail("the lease of %s is not container %s's", ip, cont_id);
		}
	int r = in_container(netns, 1, mac, a[0].ip, a[0].prefix, conf.gw);
	if (r != IN_OK)
		fail("%s", in_container_error(r));
	/* an add cut short after storing its result left the veth unlisted: list it (idempotent) */
	if (veth_guard(1, &res, a, na, err, sizeof err))
		fail("%s", err);
	exit(0);
}

/*
 * portmap 1.1.1 with snat sets route_localnet=1 on the bridge (so the host's own
 * 127.0.0.1:<hostport> reaches the container). That also lets a container reach every
 * service bound to the host's 127.0.0.1 (CVE-2020-8558), even for the moment the
 * plugin runs: the gate sends snat:false, and still makes sure it is off afterwards,
 * whether the ADD worked or not. (Masquerading is one static rule per user that
 * gdn setup installs: ipMasq:false, so no per-container chain can be left behind.)
 * Cost: the host reaches mapped ports through the gateway or another host address.
 */
static int no_route_localnet(void)
{
	char path[96];
	snprintf(path, sizeof path, "/proc/sys/net/ipv4/conf/%s/route_localnet", conf.bridge);
	int fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t w = write(fd, "0\n", 2);
	return close(fd) < 0 || w != 2 ? -1 : 0;
}

/* portmap ADD, then route_localnet off again (else the ADD counts as failed) */
static int portmap_add(int netns, const struct buf *c, char *err, size_t errlen)
{
	if (plugin("portmap", "ADD", netns, NULL, c, err, errlen)) {
		no_route_localnet();
		return -1;
	}
	if (no_route_localnet() == 0)
		return 0;
	snprintf(err, errlen, "cannot reset route_localnet on %s: %s", conf.bridge, strerror(errno));
	return -1;
}

/*
 * A socket on the host (any address, IPv4 or IPv6) that holds local port port/proto and
 * is not the caller's: portmap DNATs every host address, so mapping the port would take
 * that socket's traffic (and a UDP add flushes its flows). 1 found (*uid), 0 none, -1
 * unreadable. TCP TIME_WAIT entries hold nothing (and carry no owner).
 */
static int port_held_by_other(unsigned port, int udp, unsigned *uid)
{
	static const char *const tcp[] = {"/proc/self/net/tcp", "/proc/self/net/tcp6"};
	static const char *const udpf[] = {"/proc/self/net/udp", "/proc/self/net/udp6"};
	for (int f = 0; f < 2; f++) {
		const char *path = udp ? udpf[f] : tcp[f];
		FILE *fp = fopen(path, "re");
		if (!fp) {
			if (errno == ENOENT && f == 1)
				continue; /* no IPv6 */
			return -1;
		}
		char *line = NULL;
		size_t cap = 0;
		int first = 1, found = 0;
		while (!found && getline(&line, &cap, fp) > 0) {
			if (first) {
				first = 0;
				continue;
			}
			/* sl local rem st queues tr:when retrnsmt uid ... */
			char local[64], st[8];
			unsigned long u;
			if (sscanf(line, " %*s %63s %*s %7s %*s %*s %*s %lu", local, st, &u) != 3)
				continue;
			const char *colon = strrchr(local, ':');
			if (!colon)
				continue;
			unsigned long lp = strtoul(colon + 1, NULL, 16);
			if (lp != port || (!udp && !strcmp(st, "06")) || u == caller)
				continue;
			*uid = (unsigned)u;
			found = 1;
		}
		free(line);
		fclose(fp);
		if (found)
			return 1;
	}
	return 0;
}

static void cmd_ports(const char *id, int netns, const struct mapping *m, size_t nm)
{
	struct state s;
	struct buf res = {0}, old = {0};
	if (state_open(0, &s) == 1 || read_state(s.res, "results", res_name, &res, OUT_CAP) == 1)
		refuse("container %s has no network: add it first", id);
	pool_use(&s, id);
	struct addr a[MAX_IPS];
	size_t na;
	if (result_addrs(&res, &conf, 1, a, &na))
		refuse("the stored result of container %s does not fit the current network config", id);

	/* an add cut short after storing its result left the veth unlisted: list it (idempotent) */
	{
		char gerr[1400];
		if (veth_guard(1, &res, a, na, gerr, sizeof gerr))
			fail("cannot list the veth of container %s for anti-spoofing: %s", id, gerr);
	}

	/* no host port+protocol mapped by another container of this user */
	int lfd = openat(s.ports, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = lfd < 0 ? NULL : fdopendir(lfd);
	if (!d)
		refuse("cannot list " STATE_DIR "/%u/ports: %s", caller, strerror(errno));
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!valid_id(e->d_name) || !strcmp(e->d_name, id))
			continue;
		struct buf b = {0};
		struct mapping om[MAX_PORTS];
		size_t on;
		if (read_state(s.ports, "ports", e->d_name, &b, PORTS_FILE_CAP) == 1)
			continue;
		if (parse_ports_file(&b, om, &on))
			refuse(STATE_DIR "/%u/ports/%s is corrupt", caller, e->d_name);
		b_free(&b);
		for (size_t i = 0; i < nm; i++)
			for (size_t j = 0; j < on; j++)
				if (m[i].host == om[j].host && m[i].udp == om[j].udp)
					refuse("host port %u/%s is already mapped by container %s", m[i].host, m[i].udp ? "udp" : "tcp", e->d_name);
	}
	closedir(d);

	/* UDP mappings are the gate's own rules, reached only through gdn setup's jump for this user's block */
	for (size_t i = 0; i < nm; i++)
		if (m[i].udp) {
			if (!udp_jump_present())
				refuse("UDP mappings need the host rules of a newer gdn setup (nat TRELLIS-UDP to TRELLIS-UDP-%u): run 'gdn setup' as root", caller);
			break;
		}

	/* no host port+protocol that a socket of another user, or of the host, holds */
	for (size_t i = 0; i < nm; i++) {
		unsigned holder = 0;
		int r = port_held_by_other(m[i].host, (int)m[i].udp, &holder);
		if (r < 0)
			refuse("cannot read the host's sockets: %s", strerror(errno));
		if (r > 0)
			refuse("host port %u/%s is in use on this host by a socket of uid %u: not mapped", m[i].host, m[i].udp ? "udp" : "tcp", holder);
	}

	struct mapping om[MAX_PORTS];
	size_t on = 0;
	int have_old = read_state(s.ports, "ports", id, &old, PORTS_FILE_CAP) == 0;
	int old_valid = have_old && parse_ports_file(&old, om, &on) == 0 && on > 0;
	if (!old_valid)
		on = 0;

	/* no mappings asked and none recorded: no portmap or UDP rule of this id exists to remove */
	if (nm == 0 && !have_old)
		exit(0);
	char err[1400], err2[1400];
	struct buf file = {0};
	for (size_t i = 0; i < nm; i++)
		b_fmt(&file, "%u:%u/%s\n", m[i].host, m[i].cont, m[i].udp ? "udp" : "tcp");
	/* the intent first: a call cut short leaves a record that del (and the next ports) undoes */
	if (nm > 0 && write_state_file(s.ports, id, file.p, file.n))
		fail("cannot store " STATE_DIR "/%u/ports/%s: %s", caller, id, strerror(errno));
	/*
	 * Whatever an earlier call (cut short or not) mapped goes too. Without an old record
	 * there is nothing: a portmap ADD only ever runs with the record in place, and the
	 * record goes only after a portmap DEL that succeeded (see cmd_del).
	 */
	if (have_old && portmap_del_all(netns, om, on, &res, err, sizeof err))
		fail("%s", err);
	/* UDP: the entries of every port this call maps or unmaps go (only those of local destinations) */
	unsigned flush[2 * MAX_PORTS];
	size_t nflush = udp_ports_of(m, nm, flush, udp_ports_of(om, on, flush, 0));
	if (nm == 0) {
		/* the UDP rules before the record: a call cut short here leaves the record, for the next one */
		if (udp_sync(&s, id, err, sizeof err))
			fail("%s", err);
		if (remove_state_file(s.ports, id))
			fail("cannot remove " STATE_DIR "/%u/ports/%s: %s", caller, id, strerror(errno));
		ct_flush_udp(flush, nflush, err, sizeof err); /* best effort, as portmap's own */
		exit(0);
	}
	/* TCP through portmap, UDP by the gate (portmap's UDP ADD would flush other users' flows) */
	struct mapping t[MAX_PORTS];
	size_t nt = tcp_only(m, nm, t);
	struct buf c = {0};
	conf_portmap(&c, t, nt, &res);
	if ((nt == 0 || portmap_add(netns, &c, err, sizeof err) == 0) && udp_sync(&s, NULL, err, sizeof err) == 0 &&
	    ct_flush_udp(flush, nflush, err, sizeof err) == 0)
		exit(0);
	/* roll back to the old mappings: remove what ADD made, re-add the old set */
	if (nt && plugin("portmap", "DEL", netns, NULL, &c, err2, sizeof err2))
		fail("%s; rollback failed: %s", err, err2);
	b_free(&c);
	if (old_valid && write_state_file(s.ports, id, old.p, old.n) == 0) {
		nt = tcp_only(om, on, t);
		conf_portmap(&c, t, nt, &res);
		if ((nt == 0 || portmap_add(netns, &c, err2, sizeof err2) == 0) && udp_sync(&s, NULL, err2, sizeof err2) == 0) {
			ct_flush_udp(flush, nflush, err2, sizeof err2);
			fail("%s (the previous mappings are restored)", err);
		}
		/* the record stays until portmap's rules are gone: del, or the next ports, finishes the job */
		if (nt && plugin("portmap", "DEL", netns, NULL, &c, err2, sizeof err2))
			fail("%s; rollback failed: %s", err, err2);
	}
	if (udp_sync(&s, id, err2, sizeof err2) == 0)
		remove_state_file(s.ports, id);
	ct_flush_udp(flush, nflush, err2, sizeof err2);
	fail("%s (the container has no port mappings now)", err);
}

/* ------------------------------------------------------------------ setup and argument validation */

static void harden(void)
{
	/* fds 0-2 exist (so nothing of ours lands on them); nothing else is inherited */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
			_exit(2);
	if (syscall(SYS_close_range, 3U, ~0U, 0) < 0)
		for (int fd = 3; fd < 65536; fd++)
			close(fd);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	struct rlimit zero = {0, 0};
	setrlimit(RLIMIT_CORE, &zero);

	caller = (unsigned)getuid();
	if (geteuid() != 0)
		refuse("not running as root: install me root-owned with mode 4755");
	/*
	 * Root in every id from here on: the caller can no longer signal (kill or stop) the
	 * gate half-way through an operation. Plugin runs are bounded by a timeout instead.
	 */
	if (setresgid(0, 0, 0) < 0 || setgroups(0, NULL) < 0 || setresuid(0, 0, 0) < 0)
		refuse("cannot become root: %s", strerror(errno));
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

	/* the caller's scheduling (SCHED_IDLE, nice 19) must not starve a half-done operation */
	struct sched_param sp = {0};
	sched_setscheduler(0, SCHED_OTHER, &sp);
	setpriority(PRIO_PROCESS, 0, 0);

	/* resource limits of our own choosing, not the caller's (children inherit them) */
	struct {
		int res;
		rlim_t soft, hard;
	} lim[] = {
	    {RLIMIT_CORE, 0, 0},
	    {RLIMIT_CPU, RLIM_INFINITY, RLIM_INFINITY},
	    {RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY},
	    {RLIMIT_DATA, RLIM_INFINITY, RLIM_INFINITY},
	    {RLIMIT_AS, RLIM_INFINITY, RLIM_INFINITY},
	    {RLIMIT_RSS, RLIM_INFINITY, RLIM_INFINITY},
	    {RLIMIT_STACK, 8 << 20, RLIM_INFINITY},
	    {RLIMIT_NOFILE, 1024, 4096},
	    {RLIMIT_NPROC, RLIM_INFINITY, RLIM_INFINITY},
	    {RLIMIT_MEMLOCK, 8 << 20, 8 << 20},
	    {RLIMIT_LOCKS, RLIM_INFINITY, RLIM_INFINITY},
	};
	for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
		__rlimit_resource_t res = (__rlimit_resource_t)lim[i].res;
		struct rlimit l = {lim[i].soft, lim[i].hard}, cur;
		if (setrlimit(res, &l) == 0)
			continue;
		/* raising a hard limit needs CAP_SYS_RESOURCE: else as close as the caller's hard limit allows */
		if (getrlimit(res, &cur) < 0)
			refuse("getrlimit: %s", strerror(errno));
		l.rlim_max = cur.rlim_max;
		if (l.rlim_cur > l.rlim_max)
			l.rlim_cur = l.rlim_max;
		if (setrlimit(res, &l) < 0)
			refuse("setrlimit: %s", strerror(errno));
	}
	umask(077);
	if (chdir("/") < 0)
		refuse("chdir /: %s", strerror(errno));

	/* signals: default, none blocked; terminal and pipe signals ignored */
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	static const int ign[] = {SIGPIPE, SIGHUP, SIGINT, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU, SIGXFSZ, SIGALRM, SIGVTALRM, SIGPROF, SIGUSR1, SIGUSR2};
	for (size_t i = 0; i < sizeof ign / sizeof ign[0]; i++)
		signal(ign[i], SIG_IGN);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	struct statfs sf;
	if (statfs("/proc", &sf) < 0 || sf.f_type != PROC_SUPER_MAGIC)
		refuse("/proc is not procfs");
}

static const char usage[] =
    "usage: cni-gate add <id> <pid> [ip=A.B.C.D|range=A.B.C.D/NN|net=A.B.C.D/NN] | del <id> [<pid>] | check <id> <pid> | "
    "ports <id> <pid> [<hostport>:<containerport>/<tcp|udp> ...]";

static long parse_pid(const char *s)
{
	unsigned long v;
	if (parse_num_z(s, INT_MAX, &v) || v < 2)
		refuse("bad pid '%.20s': a decimal process id greater than 1", s);
	return (long)v;
}

/*
 * Before anything else: interval timers survive a setuid exec, and SIGALRM, SIGVTALRM
 * and SIGPROF terminate by default, so the caller could end the gate half-way through.
 */
static void no_timers(void)
{
	static const int sigs[] = {SIGALRM, SIGVTALRM, SIGPROF};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		signal(sigs[i], SIG_IGN);
	struct itimerval zero;
	memset(&zero, 0, sizeof zero);
	setitimer(ITIMER_REAL, &zero, NULL);
	setitimer(ITIMER_VIRTUAL, &zero, NULL);
	setitimer(ITIMER_PROF, &zero, NULL);
}

int main(int argc, char **argv)
{
	no_timers();
	clearenv();
	harden();

	if (argc < 2 || !argv[1])
		refuse("%s", usage);
	if (!strcmp(argv[1], "quota"))
		quota_main(argc, argv); /* issue #11: quota.c */
	const char *cmd = argv[1];
	enum { ADD, DEL, CHECK, PORTS } op;
	int min, max;
	if (!strcmp(cmd, "add"))
		op = ADD, min = 4, max = 5;
	else if (!strcmp(cmd, "del"))
		op = DEL, min = 3, max = 4;
	else if (!strcmp(cmd, "check"))
		op = CHECK, min = 4, max = 4;
	else if (!strcmp(cmd, "ports"))
		op = PORTS, min = 4, max = 4 + MAX_PORTS;
	else
		refuse("unknown command '%.20s': %s", cmd, usage);
	if (argc < min)
		refuse("too few arguments: %s", usage);
	if (argc > max && op == PORTS)
		refuse("too many arguments: at most %d port mappings", MAX_PORTS);
	if (argc > max)
		refuse("too many arguments: %s", usage);
	const char *id = argv[2];
	if (!valid_id(id))
		refuse("bad container id '%.70s': [A-Za-z0-9][A-Za-z0-9_.-]{0,63}", id);
	long pid = argc > 3 ? parse_pid(argv[3]) : 0;
	cont_id = id;
	snprintf(cid, sizeof cid, "u%u-%s", caller, id);
	snprintf(res_name, sizeof res_name, "%s.json", id);

	/* the syntax of the rest */
	uint32_t req_ip = 0, rnet = 0, nip = 0;
	unsigned rprefix = 0, nprefix = 0;
	int has_range = 0, has_net = 0;
	struct mapping m[MAX_PORTS];
	size_t nm = 0;
	if (op == ADD && argc == 5) {
		const char *a = argv[4];
		if (!strncmp(a, "ip=", 3)) {
			if (parse_ip(a + 3, a + strlen(a), &req_ip))
				refuse("bad ip= '%.40s': an IPv4 address", a + 3);
		} else if (!strncmp(a, "range=", 6)) {
			if (parse_cidr(a + 6, a + strlen(a), &rnet, &rprefix) || (rnet & ~mask_of(rprefix)))
				refuse("bad range= '%.40s': an IPv4 network a.b.c.d/nn", a + 6);
			has_range = 1;
		} else if (!strncmp(a, "net=", 4)) {
			if (parse_cidr(a + 4, a + strlen(a), &nip, &nprefix))
				refuse("bad net= '%.40s': an IPv4 subnet a.b.c.d/nn, or an address in one", a + 4);
			has_net = 1;
		} else {
			refuse("bad argument '%.40s': ip=A.B.C.D, range=A.B.C.D/NN or net=A.B.C.D/NN", a);
		}
	}
	if (op == PORTS)
		for (int i = 4; i < argc; i++) {
			const char *a = argv[i];
			if (parse_mapping(a, a + strlen(a), &m[nm]))
				refuse("bad port mapping '%.40s': <hostport>:<containerport>/<tcp|udp>", a);
			nm++;
		}

	/* the root-owned inputs */
	load_conf(caller, &conf);
	user_conf = conf;
	check_no_overlap(caller, &conf);
	check_plugins();

	/* the rest against the config */
	uint32_t rs = 0, re = 0;
	if (req_ip && (!in_subnet(&conf, req_ip) || req_ip == conf.net || req_ip == conf.gw || req_ip == bcast_of(&conf)))
		refuse("ip=%s is not a host address of your subnet (or is the gateway)", argv[4] + 3);
	if (has_range) {
		if (rprefix < conf.prefix || (rnet & mask_of(conf.prefix)) != conf.net)
			refuse("range=%s is not inside your subnet", argv[4] + 6);
		rs = rnet;
		re = rnet | ~mask_of(rprefix);
		/* network, broadcast and gateway are never handed out */
		while (rs <= re && (rs == conf.net || rs == conf.gw))
			rs++;
		while (re >= rs && (re == bcast_of(&conf) || re == conf.gw))
			re--;
		if (rs > re)
			refuse("range=%s holds no usable address", argv[4] + 6);
	}
	struct poolreq pr = {0, 0, 0, 0};
	if (has_net) {
		const char *a = argv[4] + 4;
		if (!conf.has_pool)
			refuse("net=%s: uid %u has no address pool (root grants one: gdn setup --network-pool CIDR)", a, caller);
		if (nprefix < 16 || nprefix > 30)
			refuse("net=%s: the subnet must be a /16 to a /30", a);
		struct poolnet t = {nip & mask_of(nprefix), nprefix, 0};
		char pa[16];
		fmt_ip(conf.pool_net, pa);
		if (!pool_inside(&t))
			refuse("net=%s is not inside your address pool %s/%u", a, pa, conf.pool_prefix);
		if (nip != t.net && (nip == t.net + 1 || nip == (t.net | ~mask_of(nprefix))))
			refuse("net=%s is the gateway or the broadcast address of its subnet", a);
		pr.set = 1;
		pr.net = t.net;
		pr.prefix = nprefix;
		pr.ip = nip != t.net ? nip : 0;
	}
	for (size_t i = 0; i < nm; i++) {
		if (m[i].host < conf.port_start || m[i].host > conf.port_end)
			refuse("host port %u is outside your range %u-%u", m[i].host, conf.port_start, conf.port_end);
		for (size_t j = 0; j < i; j++)
			if (m[j].host == m[i].host && m[j].udp == m[i].udp)
				refuse("host port %u/%s is mapped twice", m[i].host, m[i].udp ? "udp" : "tcp");
	}

	/* the container */
	int netns = pid ? container_netns(pid) : -1;

	switch (op) {
	case ADD:
		cmd_add(netns, req_ip, rs, re, &pr);
		break;
	case DEL:
		cmd_del(netns);
		break;
	case CHECK:
		cmd_check(netns);
		break;
	case PORTS:
		cmd_ports(id, netns, m, nm);
		break;
	}
	return 1;
}
