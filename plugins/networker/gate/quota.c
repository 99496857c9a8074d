/*
 * cni-gate quota: the root part of disk limits (issue #11). Setting a btrfs qgroup
 * limit needs CAP_SYS_ADMIN; everything else about a store (subvolumes, snapshots,
 * deletion with user_subvol_rm_allowed, reading usage in /sys/fs/btrfs) the user does.
 *
 *   cni-gate quota limit   <store> <id> exclusive|total <bytes> [<inodes>]
 *   cni-gate quota release <store> <id>
 *   cni-gate quota usage   <store> <id>     (XFS: "<bytes> <inodes>" of the id's project)
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
 * XFS (a store on XFS mounted with prjquota): the container's writable dirs are
 * <store>/images/<id> and its diff, workdir and rootfs (overlay's upper and work dirs
 * must share one project, or a copy-up's rename fails with EXDEV), each opened the same
 * way, owned by the caller, on the store's filesystem. The gate picks a project id from
 * the range root gave the caller (projects=FIRST-LAST in the conf), one no record of the
 * caller holds and that owns nothing on the filesystem, records it, sets its block and
 * inode hard limits (Q_XSETQLIM through quotactl_fd on the store's own descriptor, so
 * the filesystem is the store's and no device path is involved) and tags the dirs
 * (FS_IOC_FSSETXATTR: the id, PROJINHERIT). XFS counts only the writes: a total limit is
 * the caller's to turn into an exclusive one (it knows the image's size). release zeroes
 * the limits and drops the record, which frees the id; usage reads Q_XGETQUOTA (project
 * quotas are root's to read).
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
#include <dirent.h>
#include <sys/syscall.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <linux/dqblk_xfs.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/quota.h>

#include "gate.h"

#define QUOTA_CONF_DIR "/etc/trellis/quota"
#define QUOTA_STATE_PARENT "/var/lib"    /* then trellis/quota/<uid>/<store key> */
#define QUOTA_CONF_CAP 16384
#define QUOTA_MAX_STORES 16
#define QUOTA_PATH_MAX 200
/* 1 PiB: far above any store, far below anything that could wrap */
#define QUOTA_MAX_BYTES (1ULL << 50)
/* inodes: 2^32, what an XFS inode limit sensibly takes */
#define QUOTA_MAX_INODES (1ULL << 32)
/* a project range: at most this many ids, never 0, never the all-ones id */
#define QUOTA_MAX_PROJECTS (1U << 20)
#ifndef XFS_SUPER_MAGIC
#define XFS_SUPER_MAGIC 0x58465342
#endif
#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

static const char quota_usage[] =
    "usage: cni-gate quota limit <store> <id> exclusive|total <bytes> [<inodes>] | quota release <store> <id> | quota usage <store> <id>";

/* The caller's project range, from projects=FIRST-LAST in its conf (XFS stores); 0 0 when none. */
static uint32_t proj_first, proj_last;

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
		if (!strncmp(l, "projects=", 9)) {
			unsigned long long a = 0, b = 0;
			int used = 0;
			if (proj_first || sscanf(l + 9, "%10llu-%10llu%n", &a, &b, &used) != 2 || l[9 + used] != 0 || l[9] < '1' || l[9] > '9' ||
			    a == 0 || b < a || b >= 0xffffffffULL || b - a >= QUOTA_MAX_PROJECTS)
				refuse("%s line %u: want one projects=FIRST-LAST (1 <= FIRST <= LAST < 2^32-1, at most %u ids)", path, line, QUOTA_MAX_PROJECTS);
			proj_first = (uint32_t)a;
			proj_last = (uint32_t)b;
			continue;
		}
		if (strncmp(l, "store=", 6) || !valid_store_path(l + 6))
			refuse("%s line %u: want store=/absolute/path or projects=FIRST-LAST", path, line);
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
	int xfs; /* the store is on XFS (project quotas), not btrfs */
	dev_t dev;
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

static int on_xfs(int fd)
{
	struct statfs sf;
	return fstatfs(fd, &sf) == 0 && sf.f_type == XFS_SUPER_MAGIC;
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
	s->dev = st.st_dev;
	s->xfs = on_xfs(s->fd);
	if (s->xfs) {
		s->id = 0;
		memset(s->fsid, 0, sizeof s->fsid);
		return;
	}
	if (!on_btrfs(s->fd) || fs_id(s->fd, s->fsid) < 0 || (s->id = subvol_id(s->fd)) == 0)
		refuse("store %s is not on btrfs or XFS", store);
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

/* The caller's /var/lib/trellis/quota/<uid> (records_open sets it): every store's records, for the project ids in use. */
static int uid_records = -1;

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
			uid_records = dup(fd);
			if (uid_records < 0)
				fail("dup: %s", strerror(errno));
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
	int xfs = !strncmp(b, "xfs ", 4);
	if (xfs) {
		strcpy(fsid, "xfs");
		if (sscanf(b + 4, "%10llu %511[0-9a-f]\n%n", &v, got, &used) != 2 || used != n - 4 || v == 0 || v >= 0xffffffffULL)
			refuse("the quota record of %.70s is malformed", id);
	} else if (sscanf(b, "%32[0-9a-f] %20llu %511[0-9a-f]\n%n", fsid, &v, got, &used) != 3 || used != n || strlen(fsid) != 32 || v < 256 || v > (1ULL << 48))
		refuse("the quota record of %.70s is malformed", id);
	if (strcmp(got, want))
		refuse("the quota record of %.70s belongs to another id (a hash collision): refusing", id);
	*sv = v;
	return 0;
}

/* ------------------------------------------------------------------ XFS project quotas */

static int xquota(int fd, int cmd, uint32_t id, void *addr)
{
	return (int)syscall(SYS_quotactl_fd, (unsigned)fd, (unsigned)QCMD(cmd, PRJQUOTA), (unsigned)id, addr);
}

/* The store's filesystem accounts and enforces project quotas (mounted prjquota). */
static void xfs_require_enforced(const struct subvol *s, const char *store)
{
	struct fs_quota_stat q;
	memset(&q, 0, sizeof q);
	if (xquota(s->fd, Q_XGETQSTAT, 0, &q) < 0)
		fail("cannot read the quota state of %s: %s", store, errno == ENOSYS ? "this kernel has no XFS quota support" : strerror(errno));
	if ((q.qs_flags & (FS_QUOTA_PDQ_ACCT | FS_QUOTA_PDQ_ENFD)) != (FS_QUOTA_PDQ_ACCT | FS_QUOTA_PDQ_ENFD))
		fail("project quotas are not enforced on the filesystem of %s (mount it with prjquota: run 'gdn setup' as root)", store);
}

/* What a project owns on the store's filesystem: 0 when nothing (or no dquot yet). */
static int xfs_owned(const struct subvol *s, uint32_t proj, uint64_t *bytes, uint64_t *inodes)
{
	struct fs_disk_quota d;
	memset(&d, 0, sizeof d);
	*bytes = *inodes = 0;
	if (xquota(s->fd, Q_XGETQUOTA, proj, &d) < 0) {
		if (errno == ENOENT || errno == ESRCH)
			return 0;
		fail("reading the quota of project %u: %s", proj, strerror(errno));
	}
	*bytes = d.d_bcount * 512;
	*inodes = d.d_icount;
	return *bytes != 0 || *inodes != 0;
}

static int xfs_set_limits(const struct subvol *s, uint32_t proj, uint64_t bytes, uint64_t inodes)
{
	struct fs_disk_quota d;
	memset(&d, 0, sizeof d);
	d.d_version = FS_DQUOT_VERSION;
	d.d_flags = FS_PROJ_QUOTA;
	d.d_id = proj;
	d.d_fieldmask = FS_DQ_BHARD | FS_DQ_BSOFT | FS_DQ_IHARD | FS_DQ_ISOFT;
	/* basic blocks of 512 bytes, rounded down (XFS allocates whole filesystem blocks anyway); 0 means none */
	d.d_blk_hardlimit = bytes ? (bytes / 512 ? bytes / 512 : 1) : 0;
	d.d_ino_hardlimit = inodes;
	return xquota(s->fd, Q_XSETQLIM, proj, &d);
}

/* The project ids the caller's records hold, in any of its stores, as a bitmap over its range. */
static void xfs_used_ids(uint8_t *used)
{
	int dup1 = dup(uid_records);
	DIR *top = dup1 < 0 ? NULL : fdopendir(dup1);
	if (!top)
		fail("cannot list the quota records: %s", strerror(errno));
	for (struct dirent *e; (e = readdir(top));) {
		if (e->d_name[0] != 's' || strlen(e->d_name) != 17)
			continue;
		int sd = openat(uid_records, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		struct stat st;
		if (sd < 0 || fstat(sd, &st) < 0 || st.st_uid != 0 || (st.st_mode & 022))
			fail("the quota records %s are not root's", e->d_name);
		DIR *recs = fdopendir(sd);
		if (!recs)
			fail("cannot list the quota records: %s", strerror(errno));
		for (struct dirent *r; (r = readdir(recs));) {
			if (r->d_name[0] != 'r' || strlen(r->d_name) != 17)
				continue;
			int fd = openat(dirfd(recs), r->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
			char b[32];
			ssize_t n = -1;
			if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0)
				n = read(fd, b, sizeof b - 1);
			if (fd >= 0)
				close(fd);
			if (n < 0)
				continue; /* vanished meanwhile, or not a record */
			b[n] = 0;
			unsigned long long v = 0;
			if (strncmp(b, "xfs ", 4) || sscanf(b + 4, "%10llu ", &v) != 1)
				continue;
			if (v >= proj_first && v <= proj_last)
				used[(v - proj_first) / 8] |= (uint8_t)(1u << ((v - proj_first) % 8));
		}
		closedir(recs);
	}
	closedir(top);
}

/* A fresh project id: in the caller's range, in no record, owning nothing on the filesystem. */
static uint32_t xfs_allocate(const struct subvol *s)
{
	if (proj_first == 0)
		refuse("no project id range is configured for uid %u (projects= in %s/%u.conf): run 'gdn setup' as root", caller, QUOTA_CONF_DIR, caller);
	static uint8_t used[QUOTA_MAX_PROJECTS / 8];
	xfs_used_ids(used);
	/* XFS frees unlinked inodes in the background; statfs (as getquota) waits for that first, so a released project's files count as gone */
	struct statfs sf;
	(void)fstatfs(s->fd, &sf);
	for (uint64_t p = proj_first; p <= proj_last; p++) {
		if (used[(p - proj_first) / 8] & (1u << ((p - proj_first) % 8)))
			continue;
		uint64_t b, i;
		if (xfs_owned(s, (uint32_t)p, &b, &i))
			continue; /* something left from before: never handed out again until it is gone */
		return (uint32_t)p;
	}
	fail("all %u project ids of uid %u are in use", proj_last - proj_first + 1, caller);
}

/* <store>/images/<id> and its diff, workdir and rootfs: the caller's, real dirs, on the store's filesystem. */
#define XFS_DIRS 4
static int xfs_open_dirs(const struct subvol *s, const char *id, int fds[XFS_DIRS])
{
	static const char *const names[XFS_DIRS] = {NULL, "diff", "workdir", "rootfs"};
	for (int i = 0; i < XFS_DIRS; i++)
		fds[i] = -1;
	int images = below(s->fd, "images", caller, "the store's images dir");
	if (images < 0)
		return -1;
	fds[0] = below(images, id, caller, "the image dir");
	close(images);
	if (fds[0] < 0)
		return -1;
	for (int i = 0; i < XFS_DIRS; i++) {
		if (i > 0)
			fds[i] = below(fds[0], names[i], caller, "the image's diff, workdir or rootfs");
		if (i > 0 && fds[i] < 0)
			refuse("the image %s has no %s", id, names[i]);
		struct stat st;
		if (fstat(fds[i], &st) < 0 || st.st_dev != s->dev || !on_xfs(fds[i]))
			refuse("the image dir of %s is not on the store's filesystem", id);
	}
	return 0;
}

static void xfs_tag(int fd, uint32_t proj)
{
	struct fsxattr a;
	memset(&a, 0, sizeof a);
	if (ioctl(fd, FS_IOC_FSGETXATTR, &a) < 0)
		fail("reading a dir's attributes: %s", strerror(errno));
	a.fsx_projid = proj;
	a.fsx_xflags |= FS_XFLAG_PROJINHERIT;
	if (ioctl(fd, FS_IOC_FSSETXATTR, &a) < 0)
		fail("setting a dir's project id: %s", strerror(errno));
}

static void xfs_limit(struct subvol *s, const char *store, const char *id, int exclusive, uint64_t bytes, uint64_t inodes) __attribute__((noreturn));
static void xfs_limit(struct subvol *s, const char *store, const char *id, int exclusive, uint64_t bytes, uint64_t inodes)
{
	if (!exclusive)
		refuse("an XFS project quota counts the container's writes only: give the exclusive share of a total limit");
	xfs_require_enforced(s, store);
	int lock = -1, rec = records_open(store, &lock);
	int fds[XFS_DIRS];
	if (xfs_open_dirs(s, id, fds) < 0)
		refuse("no image %s in store %s", id, store);
	char name[20], idh[2 * QUOTA_ID_MAX + 1], kind[33];
	static char line[64 + 2 * QUOTA_ID_MAX + 2];
	record_name(id, name);
	id_hex(id, idh);
	uint64_t proj = 0;
	/* a limit again on the same id keeps its project; another kind of record is refused as the btrfs path does */
	if (record_read(rec, id, kind, &proj) == 0 && strcmp(kind, "xfs"))
		refuse("the quota record of %.70s is not an XFS one", id);
	if (proj != 0 && (proj < proj_first || proj > proj_last))
		refuse("the recorded project of %.70s is outside uid %u's range", id, caller);
	if (proj == 0)
		proj = xfs_allocate(s);
	/* the record first: a limit root set is always one release can find */
	int k = snprintf(line, sizeof line, "xfs %llu %s\n", (unsigned long long)proj, idh);
	if (k < 0 || (size_t)k >= sizeof line || write_state_file(rec, name, line, (size_t)k) < 0)
		fail("cannot record the quota of %s: %s", id, strerror(errno));
	if (xfs_set_limits(s, (uint32_t)proj, bytes, inodes) < 0)
		fail("setting the limit of %s: %s", id, strerror(errno));
	for (int i = 0; i < XFS_DIRS; i++) {
		xfs_tag(fds[i], (uint32_t)proj);
		close(fds[i]);
	}
	printf("xfs %llu\n", (unsigned long long)proj);
	if (fflush(stdout) != 0)
		fail("cannot write the result: %s", strerror(errno));
	exit(0);
}

static void xfs_release(struct subvol *s, const char *store, const char *id) __attribute__((noreturn));
static void xfs_release(struct subvol *s, const char *store, const char *id)
{
	int lock = -1, rec = records_open(store, &lock);
	char kind[33], name[20];
	uint64_t proj = 0;
	record_name(id, name);
	if (record_read(rec, id, kind, &proj) == 1)
		exit(0); /* never limited, or released already */
	/* only a project of the caller's range is ever touched; another (a btrfs record of a store made anew) just goes */
	if (!strcmp(kind, "xfs") && proj_first != 0 && proj >= proj_first && proj <= proj_last) {
		xfs_require_enforced(s, store);
		if (xfs_set_limits(s, (uint32_t)proj, 0, 0) < 0)
			fail("clearing the limit of %s: %s", id, strerror(errno));
	}
	/* the id is free again once its record is gone; allocation still skips it while it owns anything */
	if (remove_state_file(rec, name) < 0)
		fail("cannot remove the quota record of %s: %s", id, strerror(errno));
	exit(0);
}

static void xfs_usage(struct subvol *s, const char *store, const char *id) __attribute__((noreturn));
static void xfs_usage(struct subvol *s, const char *store, const char *id)
{
	int lock = -1, rec = records_open(store, &lock);
	char kind[33];
	uint64_t proj = 0;
	if (record_read(rec, id, kind, &proj) == 1 || strcmp(kind, "xfs"))
		refuse("%.70s has no XFS quota in store %s", id, store);
	if (proj < proj_first || proj > proj_last)
		refuse("the recorded project of %.70s is outside uid %u's range", id, caller);
	uint64_t b, i;
	xfs_owned(s, (uint32_t)proj, &b, &i);
	printf("%llu %llu\n", (unsigned long long)b, (unsigned long long)i);
	if (fflush(stdout) != 0)
		fail("cannot write the result: %s", strerror(errno));
	exit(0);
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

static void quota_limit(const char *store, const char *id, int exclusive, uint64_t bytes, int with_inodes, uint64_t inodes) __attribute__((noreturn));
static void quota_limit(const char *store, const char *id, int exclusive, uint64_t bytes, int with_inodes, uint64_t inodes)
{
	struct subvol s, r;
	open_store(store, &s);
	if (s.xfs)
		xfs_limit(&s, store, id, exclusive, bytes, inodes);
	if (with_inodes)
		refuse("inode limits need an XFS store: btrfs qgroups count bytes only");
	if (bytes == 0)
		refuse("bad limit '0': bytes, 1 to %llu", (unsigned long long)QUOTA_MAX_BYTES);
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
	if (s.xfs)
		xfs_release(&s, store, id);
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

/* Decimal, no sign, no leading zero, 0..max ("0" alone is 0). */
static int parse_count(const char *s, uint64_t max, uint64_t *out)
{
	size_t n = strlen(s);
	if (n == 0 || n > 16 || (s[0] == '0' && n > 1))
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

void quota_main(int argc, char **argv)
{
	if (argc < 3)
		refuse("%s", quota_usage);
	const char *sub = argv[2];
	int limit = !strcmp(sub, "limit"), usage = !strcmp(sub, "usage");
	if (!limit && !usage && strcmp(sub, "release"))
		refuse("unknown quota command '%.20s': %s", sub, quota_usage);
	if (limit ? argc != 7 && argc != 8 : argc != 5)
		refuse("wrong number of arguments: %s", quota_usage);
	const char *store = argv[3], *id = argv[4];
	if (!valid_store_path(store))
		refuse("bad store '%.70s': an absolute path of [A-Za-z0-9._-] components", store);
	if (!valid_image_id(id))
		refuse("bad id '%.70s': one path component of 1 to %d bytes, no control characters", id, QUOTA_ID_MAX);
	int exclusive = 0, with_inodes = argc == 8;
	uint64_t bytes = 0, inodes = 0;
	if (limit) {
		if (!strcmp(argv[5], "exclusive"))
			exclusive = 1;
		else if (strcmp(argv[5], "total"))
			refuse("bad scope '%.20s': exclusive or total", argv[5]);
		if (parse_count(argv[6], QUOTA_MAX_BYTES, &bytes) || (bytes == 0 && !with_inodes))
			refuse("bad limit '%.30s': bytes, 1 to %llu (0 only beside an inode limit)", argv[6], (unsigned long long)QUOTA_MAX_BYTES);
		if (with_inodes && (parse_count(argv[7], QUOTA_MAX_INODES, &inodes) || inodes == 0))
			refuse("bad inode limit '%.30s': 1 to %llu", argv[7], (unsigned long long)QUOTA_MAX_INODES);
	}
	check_configured(store);
	if (limit)
		quota_limit(store, id, exclusive, bytes, with_inodes, inodes);
	if (usage) {
		struct subvol s;
		open_store(store, &s);
		if (!s.xfs)
			refuse("quota usage is for XFS stores: a btrfs store's qgroup counters are in /sys/fs/btrfs");
		xfs_usage(&s, store, id);
	}
	quota_release(store, id);
}
