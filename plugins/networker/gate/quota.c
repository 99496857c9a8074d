/*
 * cni-gate quota: the root part of disk limits (issue #11). Setting a btrfs qgroup
 * limit needs CAP_SYS_ADMIN; everything else about a store (subvolumes, snapshots,
 * deletion with user_subvol_rm_allowed, reading usage in /sys/fs/btrfs) the user does.
 *
 *   cni-gate quota limit   <store> <id> exclusive|total <bytes>
 *   cni-gate quota release <store> <id>
 *
 * <store> only selects one of the stores root listed for the caller in
 * /etc/trellis/quota/<uid>.conf (byte-equal); the gate opens it itself, from /, every
 * parent root-owned, the store dir the caller's, on btrfs. The container's directory is
 * <store>/images/<id>/rootfs, reached by openat(O_NOFOLLOW) one component at a time from
 * that fd: it must be a subvolume root (inode 256) of the same filesystem, not the
 * store's own subvolume. The limit goes on that fd's own qgroup (qgroupid 0: the kernel
 * takes the subvolume of the fd), so no qgroup id ever comes from the caller. Each limit
 * is recorded in /var/lib/trellis/quota/<uid>/<store key>/<id>; release acts only on a
 * recorded subvolume, and deletes a qgroup only once its subvolume is gone.
 *
 * Exit status and messages as the rest of the gate: 0 done, 1 failed, 2 refused.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <linux/magic.h>

#include "gate.h"

#define QUOTA_CONF_DIR "/etc/trellis/quota"
#define QUOTA_STATE_PARENT "/var/lib"    /* then trellis/quota/<uid>/<store key> */
#define QUOTA_CONF_CAP 16384
#define QUOTA_MAX_STORES 16
#define QUOTA_PATH_MAX 200
/* 1 PiB: far above any store, far below anything that could wrap */
#define QUOTA_MAX_BYTES (1ULL << 50)

static const char quota_usage[] =
    "usage: cni-gate quota limit <store> <id> exclusive|total <bytes> | quota release <store> <id>";

/* ------------------------------------------------------------------ the root-owned config */

/*
 * An image id is whatever a Garden handle may be, as one path component: 1 to 255 bytes,
 * no '/', no control character, not "." or "..". It is only ever used with openat below
 * the store's descriptor; its record in root's directory is named by a hash of it.
 */
#define QUOTA_ID_MAX 255
static int valid_image_id(const char *s)
{
	size_t n = strnlen(s, QUOTA_ID_MAX + 1);
	if (n == 0 || n > QUOTA_ID_MAX || !strcmp(s, ".") || !strcmp(s, ".."))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '/' || (unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (const char *c = s; *c; c++)
		h = (h ^ (uint8_t)*c) * 1099511628211ULL;
	return h;
}

/* The id in hex: what a record holds, so a hash collision is found, not acted on. */
static void id_hex(const char *id, char out[2 * QUOTA_ID_MAX + 1])
{
	size_t n = strlen(id);
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", (unsigned char)id[i]);
	out[2 * n] = 0;
}

static void record_name(const char *id, char out[20])
{
	snprintf(out, 20, "r%016llx", (unsigned long long)fnv1a(id));
}

/* An absolute path of [A-Za-z0-9._-] components, none empty, '.' or '..'. */
static int valid_store_path(const char *s)
{
	size_t n = strlen(s);
	if (n < 2 || n > QUOTA_PATH_MAX || s[0] != '/' || s[n - 1] == '/')
		return 0;
	const char *c = s + 1;
	while (*c) {
		const char *e = strchr(c, '/');
		size_t l = e ? (size_t)(e - c) : strlen(c);
		if (l == 0 || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
			return 0;
		for (size_t i = 0; i < l; i++) {
			char ch = c[i];
			if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
				return 0;
		}
		c += l;
		if (*c == '/')
			c++;
	}
	return 1;
}

/* Is want one of the store= lines of /etc/trellis/quota/<caller>.conf? Refuses on anything untrusted or malformed. */
static void check_configured(const char *want)
{
	char name[32], path[96];
	snprintf(name, sizeof name, "%u.conf", caller);
	snprintf(path, sizeof path, QUOTA_CONF_DIR "/%s", name);
	int dir = open_trusted_dir(QUOTA_CONF_DIR);
	if (dir == -1)
		refuse("no quota store is configured for uid %u: run 'gdn setup' as root", caller);
	if (dir < 0)
		refuse("%s: refusing to trust it", why);
	int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	close(dir);
	if (fd < 0 && errno == ENOENT)
		refuse("no quota store is configured for uid %u: run 'gdn setup' as root", caller);
	if (fd < 0)
		refuse("cannot open %s: %s", path, errno == ELOOP ? "a symlink" : strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022) || st.st_size > QUOTA_CONF_CAP)
		refuse("%s must be a root-owned regular file, writable by root only, at most %d bytes", path, QUOTA_CONF_CAP);
	static char text[QUOTA_CONF_CAP + 1];
	size_t n = 0;
	for (;;) {
		ssize_t k = read(fd, text + n, QUOTA_CONF_CAP - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			refuse("cannot read %s: %s", path, strerror(errno));
		if (k == 0)
			break;
		n += (size_t)k;
		if (n == QUOTA_CONF_CAP)
			refuse("%s is larger than %d bytes", path, QUOTA_CONF_CAP);
	}
	close(fd);
	text[n] = 0;
	if (memchr(text, 0, n))
		refuse("%s holds a NUL byte", path);
	unsigned line = 0, stores = 0;
	int found = 0;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		line++;
		if (l[0] == '#' || l[0] == 0)
			continue;
		if (strncmp(l, "store=", 6) || !valid_store_path(l + 6))
			refuse("%s line %u: want store=/absolute/path", path, line);
		if (++stores > QUOTA_MAX_STORES)
			refuse("%s: more than %d stores", path, QUOTA_MAX_STORES);
		if (!strcmp(l + 6, want))
			found = 1;
	}
	if (!found)
		refuse("%.200s is not a quota store of uid %u (see %s)", want, caller, path);
}

/* ------------------------------------------------------------------ the store and the container's subvolume */

struct subvol {
	int fd;
	uint64_t id;
	uint8_t fsid[BTRFS_FSID_SIZE];
};

static uint64_t subvol_id(int fd)
{
	struct btrfs_ioctl_ino_lookup_args a;
	memset(&a, 0, sizeof a);
	a.treeid = 0;
	a.objectid = BTRFS_FIRST_FREE_OBJECTID;
	if (ioctl(fd, BTRFS_IOC_INO_LOOKUP, &a) < 0)
		return 0;
	return a.treeid;
}

static int fs_id(int fd, uint8_t out[BTRFS_FSID_SIZE])
{
	struct btrfs_ioctl_fs_info_args a;
	memset(&a, 0, sizeof a);
	if (ioctl(fd, BTRFS_IOC_FS_INFO, &a) < 0)
		return -1;
	memcpy(out, a.fsid, BTRFS_FSID_SIZE);
	return 0;
}

static int on_btrfs(int fd)
{
	struct statfs sf;
	return fstatfs(fd, &sf) == 0 && sf.f_type == BTRFS_SUPER_MAGIC;
}

/* The store dir: the parents root's (verified from /), the dir itself the caller's, on btrfs. */
static void open_store(const char *store, struct subvol *s)
{
	char parent[QUOTA_PATH_MAX + 1];
	snprintf(parent, sizeof parent, "%s", store);
	char *slash = strrchr(parent, '/');
	const char *base = store + (slash - parent) + 1;
	if (slash == parent)
		refuse("a store cannot be a top-level directory");
	*slash = 0;
	int pfd = open_trusted_dir(parent);
	if (pfd == -1)
		refuse("%s is missing", parent);
	if (pfd < 0)
		refuse("%s: refusing the store below it", why);
	s->fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	close(pfd);
	if (s->fd < 0)
		refuse("cannot open store %s: %s", store, errno == ELOOP || errno == ENOTDIR ? "a symlink or not a directory" : strerror(errno));
	struct stat st;
	if (fstat(s->fd, &st) < 0 || st.st_uid != caller)
		refuse("store %s is not yours", store);
	if (!on_btrfs(s->fd) || fs_id(s->fd, s->fsid) < 0 || (s->id = subvol_id(s->fd)) == 0)
		refuse("store %s is not on btrfs", store);
}

/* One directory below dirfd, never through a link; owned by owner unless owner is -1. */
static int below(int dirfd, const char *name, long owner, const char *what)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return -1;
	if (fd < 0)
		refuse("%s: %s", what, errno == ELOOP || errno == ENOTDIR ? "a symlink or not a directory" : strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || (owner >= 0 && st.st_uid != (uid_t)owner))
		refuse("%s is not yours", what);
	return fd;
}

/* <store>/images/<id>/rootfs: a subvolume of the store's filesystem, not the store itself. -1 fd when missing. */
static void open_rootfs(const struct subvol *store, const char *id, struct subvol *r)
{
	r->fd = -1;
	int images = below(store->fd, "images", caller, "the store's images dir");
	if (images < 0)
		return;
	int dir = below(images, id, caller, "the image dir");
	close(images);
	if (dir < 0)
		return;
	r->fd = below(dir, "rootfs", -1, "the image's rootfs");
	close(dir);
	if (r->fd < 0)
		return;
	struct stat st;
	if (fstat(r->fd, &st) < 0 || st.st_ino != BTRFS_FIRST_FREE_OBJECTID || !on_btrfs(r->fd))
		refuse("the rootfs of %s is not a btrfs subvolume", id);
	if (fs_id(r->fd, r->fsid) < 0 || memcmp(r->fsid, store->fsid, BTRFS_FSID_SIZE))
		refuse("the rootfs of %s is not on the store's filesystem", id);
	r->id = subvol_id(r->fd);
	if (r->id == 0 || r->id == store->id || r->id == BTRFS_FS_TREE_OBJECTID)
		refuse("the rootfs of %s is the store's own subvolume", id);
}

/* ------------------------------------------------------------------ root-side records */

/* FNV-1a: a stable, short directory name per store path (the config already named it). */
static void store_key(const char *store, char out[20])
{
	snprintf(out, 20, "s%016llx", (unsigned long long)fnv1a(store));
}

/* /var/lib/trellis/quota/<uid>/<key>, made root 0700 component by component, and locked. */
static int records_open(const char *store, int *lock)
{
	char uidname[16], key[20], sofar[160] = QUOTA_STATE_PARENT;
	snprintf(uidname, sizeof uidname, "%u", caller);
	store_key(store, key);
	int fd = open_trusted_dir(QUOTA_STATE_PARENT);
	if (fd < 0)
		refuse("%s: refusing to keep state there", fd == -1 ? QUOTA_STATE_PARENT " is missing" : why);
	const char *chain[] = {"trellis", "quota", uidname, key};
	const mode_t modes[] = {0755, 0700, 0700, 0700};
	for (size_t i = 0; i < 4; i++) {
		size_t l = strlen(sofar);
		snprintf(sofar + l, sizeof sofar - l, "/%s", chain[i]);
		int next = open_below(fd, chain[i], sofar, 1, modes[i]);
		close(fd);
		if (next < 0)
			refuse("%s: refusing to keep state there", next == -1 ? sofar : why);
		fd = next;
		if (i == 2) {
			*lock = openat(fd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
			struct stat st;
			if (*lock < 0 || fstat(*lock, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0)
				refuse("%s/lock: not a root-owned regular file", sofar);
			while (flock(*lock, LOCK_EX) < 0)
				if (errno != EINTR)
					refuse("cannot lock %s/lock: %s", sofar, strerror(errno));
		}
	}
	return fd;
}

static void fsid_hex(const uint8_t f[BTRFS_FSID_SIZE], char out[33])
{
	for (size_t i = 0; i < BTRFS_FSID_SIZE; i++)
		snprintf(out + 2 * i, 3, "%02x", f[i]);
}

/* A record "<fsid hex> <subvolume id> <id hex>\n" for id: 0 read, 1 missing. Refuses a malformed, untrusted or colliding one. */
static int record_read(int dir, const char *id, char fsid[33], uint64_t *sv)
{
	char name[20], want[2 * QUOTA_ID_MAX + 1];
	record_name(id, name);
	id_hex(id, want);
	int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0 && errno == ENOENT)
		return 1;
	struct stat st;
	static char b[64 + 2 * QUOTA_ID_MAX + 2];
	ssize_t n = -1;
	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0 && st.st_size < (off_t)sizeof b)
		n = read(fd, b, sizeof b - 1);
	if (fd >= 0)
		close(fd);
	if (n < 0)
		refuse("the quota record of %.70s is not a root-owned file", id);
	b[n] = 0;
	unsigned long long v = 0;
	int used = 0;
	static char got[2 * QUOTA_ID_MAX + 2];
	if (sscanf(b, "%32[0-9a-f] %20llu %511[0-9a-f]\n%n", fsid, &v, got, &used) != 3 || used != n || strlen(fsid) != 32 || v < 256 || v > (1ULL << 48))
		refuse("the quota record of %.70s is malformed", id);
	if (strcmp(got, want))
		refuse("the quota record of %.70s belongs to another id (a hash collision): refusing", id);
	*sv = v;
	return 0;
}

/* ------------------------------------------------------------------ the commands */

static int set_limit(int fd, uint64_t qgroupid, int exclusive, uint64_t bytes)
{
	struct btrfs_ioctl_qgroup_limit_args a;
	memset(&a, 0, sizeof a);
	a.qgroupid = qgroupid;
	/* both flags: the one asked for gets its value, the other is cleared (all ones) */
	a.lim.flags = BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL;
	a.lim.max_rfer = exclusive ? UINT64_MAX : bytes;
	a.lim.max_excl = exclusive ? bytes : UINT64_MAX;
	return ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &a);
}

static void quota_limit(const char *store, const char *id, int exclusive, uint64_t bytes) __attribute__((noreturn));
static void quota_limit(const char *store, const char *id, int exclusive, uint64_t bytes)
{
	struct subvol s, r;
	open_store(store, &s);
	int lock = -1, rec = records_open(store, &lock);
	open_rootfs(&s, id, &r);
	if (r.fd < 0)
		refuse("no image %s in store %s", id, store);
	char hex[33], name[20], idh[2 * QUOTA_ID_MAX + 1];
	static char line[64 + 2 * QUOTA_ID_MAX + 2];
	fsid_hex(s.fsid, hex);
	record_name(id, name);
	id_hex(id, idh);
	/* a record of another id under this name (a hash collision) is never overwritten */
	char old_fsid[33];
	uint64_t old_sv;
	record_read(rec, id, old_fsid, &old_sv);
	/* the record first: a limit root set is always one release can find */
	int k = snprintf(line, sizeof line, "%s %020llu %s\n", hex, (unsigned long long)r.id, idh);
	if (k < 0 || (size_t)k >= sizeof line || write_state_file(rec, name, line, (size_t)k) < 0)
		fail("cannot record the quota of %s: %s", id, strerror(errno));
	if (set_limit(r.fd, 0, exclusive, bytes) < 0) {
		if (errno == ENOTCONN || errno == ENOENT)
			fail("quotas are not enabled on the filesystem of %s: run 'gdn setup' as root", store);
		fail("setting the limit of %s: %s", id, strerror(errno));
	}
	printf("%s %llu\n", hex, (unsigned long long)r.id);
	if (fflush(stdout) != 0)
		fail("cannot write the result: %s", strerror(errno));
	close(r.fd);
	close(rec);
	close(lock);
	close(s.fd);
	exit(0);
}

static void quota_release(const char *store, const char *id) __attribute__((noreturn));
static void quota_release(const char *store, const char *id)
{
	struct subvol s, r;
	open_store(store, &s);
	int lock = -1, rec = records_open(store, &lock);
	char want[33], have[33], name[20];
	record_name(id, name);
	uint64_t sv = 0;
	if (record_read(rec, id, want, &sv) == 1)
		exit(0); /* never limited, or released already */
	fsid_hex(s.fsid, have);
	if (strcmp(want, have)) {
		/* a store made anew since: that qgroup went with the old filesystem */
		if (remove_state_file(rec, name) < 0)
			fail("cannot remove the quota record of %s: %s", id, strerror(errno));
		exit(0);
	}
	open_rootfs(&s, id, &r);
	if (r.fd >= 0 && r.id == sv) {
		if (set_limit(r.fd, 0, 1, UINT64_MAX) < 0 && errno != ENOTCONN)
			fail("clearing the limit of %s: %s", id, strerror(errno));
	} else {
		/* the subvolume is gone (the usual case: deleted before release): its qgroup may linger on older kernels */
		struct btrfs_ioctl_ino_lookup_args a;
		memset(&a, 0, sizeof a);
		a.treeid = sv;
		a.objectid = BTRFS_FIRST_FREE_OBJECTID;
		if (ioctl(s.fd, BTRFS_IOC_INO_LOOKUP, &a) < 0 && errno == ENOENT) {
			struct btrfs_ioctl_qgroup_create_args c = {.create = 0, .qgroupid = sv};
			if (ioctl(s.fd, BTRFS_IOC_QGROUP_CREATE, &c) < 0 && errno != ENOENT && errno != ENOTCONN && errno != EBUSY)
				fail("removing the qgroup of %s: %s", id, strerror(errno));
		}
		/* a subvolume that still exists elsewhere (renamed) keeps its limit: it is not ours to find by id */
	}
	if (remove_state_file(rec, name) < 0)
		fail("cannot remove the quota record of %s: %s", id, strerror(errno));
	exit(0);
}

/* Decimal, no sign, no leading zero, 1..QUOTA_MAX_BYTES. */
static int parse_bytes(const char *s, uint64_t *out)
{
	size_t n = strlen(s);
	if (n == 0 || n > 16 || (s[0] == '0'))
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > QUOTA_MAX_BYTES)
		return -1;
	*out = v;
	return 0;
}

void quota_main(int argc, char **argv)
{
	if (argc < 3)
		refuse("%s", quota_usage);
	const char *sub = argv[2];
	int limit = !strcmp(sub, "limit");
	if (!limit && strcmp(sub, "release"))
		refuse("unknown quota command '%.20s': %s", sub, quota_usage);
	if (argc != (limit ? 7 : 5))
		refuse("wrong number of arguments: %s", quota_usage);
	const char *store = argv[3], *id = argv[4];
	if (!valid_store_path(store))
		refuse("bad store '%.70s': an absolute path of [A-Za-z0-9._-] components", store);
	if (!valid_image_id(id))
		refuse("bad id '%.70s': one path component of 1 to %d bytes, no control characters", id, QUOTA_ID_MAX);
	int exclusive = 0;
	uint64_t bytes = 0;
	if (limit) {
		if (!strcmp(argv[5], "exclusive"))
			exclusive = 1;
		else if (strcmp(argv[5], "total"))
			refuse("bad scope '%.20s': exclusive or total", argv[5]);
		if (parse_bytes(argv[6], &bytes))
			refuse("bad limit '%.30s': bytes, 1 to %llu", argv[6], (unsigned long long)QUOTA_MAX_BYTES);
	}
	check_configured(store);
	if (limit)
		quota_limit(store, id, exclusive, bytes);
	quota_release(store, id);
}
