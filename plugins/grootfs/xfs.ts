// The XFS store (issue #11): an overlay store on an XFS filesystem mounted with project
// quotas, for kernels with XFS quota (CONFIG_XFS_QUOTA). init-store (as root) makes the
// filesystem on a loopback file when the store is not already on XFS; the gate then puts
// each limited container's dirs in a project of its own (plugins/networker/gate/quota.c).
import { closeSync, existsSync, lstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { FailedPrecondition, InvalidArgument } from '../../src/errors.js';
import { DEFAULT_STORE_BYTES, mountLoopbackStore } from './btrfs.js';

export const XFS_MAGIC = 0x58465342;
/** mkfs.xfs refuses filesystems under 300 MiB. */
export const MIN_XFS_STORE_BYTES = 300 * 1024 * 1024;
/** How the store's filesystem is mounted: project quotas enforced, no devices, no setuid. */
export const XFS_MOUNT_OPTIONS = 'loop,prjquota,nodev,nosuid,noatime';
const ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };

export async function isXfs(path: string): Promise<boolean> {
  try {
    return (await statfs(path)).type === XFS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * XFS with quota support: the module loaded (or loadable), and its quota manager present
 * (/proc/fs/xfs/xqmstat exists only with CONFIG_XFS_QUOTA).
 */
export function kernelHasXfsQuota(): boolean {
  if (!existsSync('/proc/fs/xfs')) spawnSync('modprobe', ['-q', 'xfs'], { stdio: 'ignore', env: ENV });
  return existsSync('/proc/fs/xfs/xqmstat');
}

/**
 * The type and options (mount and superblock) of the filesystem `path` is on: the mount
 * at it, or the deepest one above it (undefined when none matches, as for `/nowhere` with no `/`).
 */
export function mountOptionsAt(path: string, mountinfo: string): { fstype: string; options: string[] } | undefined {
  let found: { fstype: string; options: string[]; point: string } | undefined;
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const f = pre.split(' ');
    const point = (f[4] ?? '').replace(/\\040/g, ' ');
    if (!(point === '/' || path === point || path.startsWith(`${point}/`))) continue;
    if (found && point.length < found.point.length) continue;
    const [fstype, , superOpts] = post.split(' ');
    found = { point, fstype: fstype ?? '', options: [...(f[5] ?? '').split(','), ...(superOpts ?? '').split(',')] };
  }
  return found && { fstype: found.fstype, options: found.options };
}

function hasXfsSignature(file: string): boolean {
  // The superblock is at offset 0; its magic "XFSB" first.
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(4);
    return readSync(fd, buf, 0, 4, 0) === 4 && buf.toString('latin1') === 'XFSB';
  } finally {
    closeSync(fd);
  }
}

/**
 * As root: make sure `store` is a mounted XFS filesystem with project quotas, on a
 * loopback file when it is not already one. Idempotent: an existing backing file is
 * mounted again (the boot unit does this after a reboot).
 */
export async function prepareXfsStore(store: string, storeSizeBytes: number, backing: string, log: Logger): Promise<void> {
  await mkdir(dirname(store), { recursive: true, mode: 0o755 });
  try {
    await mkdir(store, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (!lstatSync(store).isDirectory()) throw new FailedPrecondition('ERR_TRELLIS_STORE_PATH', `store ${store} is not a directory`);
  if (await isXfs(store)) {
    // An XFS already there (ours from before, or the host's): only with project quotas enforced.
    const m = mountOptionsAt(store, readFileSync('/proc/self/mountinfo', 'utf8'));
    if (m?.fstype !== 'xfs' || !m.options.includes('prjquota')) {
      throw new FailedPrecondition('ERR_TRELLIS_NO_XFS_QUOTA', `store ${store} is on an XFS mounted without prjquota: project quotas cannot limit its containers`);
    }
    return;
  }
  if ((await readdir(store)).length > 0) {
    throw new FailedPrecondition('ERR_TRELLIS_STORE_NOT_EMPTY', `store ${store} is not empty and not on XFS: mounting a filesystem there would hide it`);
  }
  if (!kernelHasXfsQuota()) {
    throw new FailedPrecondition('ERR_TRELLIS_NO_XFS_QUOTA', 'this kernel has no XFS quota support (CONFIG_XFS_QUOTA): an XFS store could not enforce disk limits');
  }
  await mountLoopbackStore({
    store,
    backing,
    fsType: 'xfs',
    mountOptions: XFS_MOUNT_OPTIONS,
    hasSignature: hasXfsSignature,
    size: () => {
      const size = storeSizeBytes > 0 ? storeSizeBytes : DEFAULT_STORE_BYTES;
      if (size < MIN_XFS_STORE_BYTES) throw new InvalidArgument('an XFS store must be at least 300Mb');
      return size;
    },
  }, log);
}
