// The btrfs driver: every layer volume is a subvolume (the first created empty, the
// next ones snapshots of the layer below with the diff applied), and an image is a
// writable snapshot of its top layer, so no mount is needed at all. init-store (as
// root) makes the filesystem on a loopback file when the store is not already on
// btrfs, mounted with user_subvol_rm_allowed so the user can remove subvolumes.
import { execa } from 'execa';
import { closeSync, existsSync, lstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, open, readdir, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { ExternalFailure, FailedPrecondition, InvalidArgument } from '../../src/errors.js';
import { removeTrees, runCommand, type CommandRunner, type StoreMappings } from './remove.js';
import { runAsNamespaceRoot } from './unpacker.js';
import { requireRootOwnedChain } from './store.js';

export const BTRFS_MAGIC = 0x9123683e;
export const MIN_STORE_BYTES = 200 * 1024 * 1024;
/** Sparse: only what is written takes disk space. */
export const DEFAULT_STORE_BYTES = 10 * 1024 ** 3;
const ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };

async function btrfs(args: string[], run: CommandRunner = runCommand): Promise<string> {
  const r = await run('btrfs', args);
  if (r.exitCode !== 0) {
    const last = r.stderr.trim().split('\n').pop() ?? '';
    throw new ExternalFailure('btrfs', `btrfs ${args.join(' ')}: ${last || `exit status ${r.exitCode}`}`);
  }
  return r.stdout;
}

export async function isBtrfs(path: string): Promise<boolean> {
  try {
    return (await statfs(path)).type === BTRFS_MAGIC;
  } catch {
    return false;
  }
}

async function btrfsAsNamespaceRoot(maps: StoreMappings | undefined, args: string[], run: CommandRunner): Promise<void> {
  const r = await runAsNamespaceRoot(maps, 'btrfs', args, run);
  if (r.exitCode !== 0) {
    const last = r.stderr.trim().split('\n').pop() ?? '';
    throw new ExternalFailure('btrfs', `btrfs ${args.join(' ')}: ${last || `exit status ${r.exitCode}`}`);
  }
}

export async function createSubvolume(path: string, run: CommandRunner = runCommand): Promise<void> {
  await btrfs(['subvolume', 'create', path], run);
}

/**
 * A writable snapshot. The kernel lets the owner of a subvolume's root snapshot it, so
 * when that is the user (a container root's files are the user's) the user does it with
 * one process; a layer whose root belongs to another of the store's mapped ids is
 * snapshotted as the store's namespace root (issue 10: a create on the btrfs store).
 */
export async function snapshot(source: string, dest: string, maps: StoreMappings | undefined, run: CommandRunner = runCommand): Promise<void> {
  const owner = (await lstat(source)).uid;
  if (owner === process.getuid?.()) await btrfs(['subvolume', 'snapshot', source, dest], run);
  else await btrfsAsNamespaceRoot(maps, ['subvolume', 'snapshot', source, dest], run);
}

/**
 * Deletes a subvolume as the user (user_subvol_rm_allowed). A subvolume that holds
 * others (a container may create them) cannot go that way: it is emptied as the
 * namespace root instead, the nested ones included (rmdir removes an empty one).
 */
export async function deleteSubvolume(path: string, maps: StoreMappings | undefined, log: Logger, run: CommandRunner = runCommand): Promise<void> {
  if (!existsSync(path)) return;
  try {
    await btrfs(['subvolume', 'delete', path], run);
    return;
  } catch (err) {
    log.debug({ path, error: (err as Error).message }, 'btrfs.delete-retry-writable');
  }
  // A container may have made its rootfs read-only (`btrfs property set`): undo that, then again.
  await btrfsAsNamespaceRoot(maps, ['property', 'set', '-ts', path, 'ro', 'false'], run).catch(() => undefined);
  try {
    await btrfs(['subvolume', 'delete', path], run);
  } catch (err) {
    log.debug({ path, error: (err as Error).message }, 'btrfs.delete-by-removal');
    await removeTrees([path], maps, { log, run });
  }
}

/** Disk usage as `btrfs filesystem du` sees it: total, and what no other subvolume shares. */
export async function usage(path: string, maps: StoreMappings | undefined, run: CommandRunner = runCommand): Promise<{ total: number; exclusive: number }> {
  const r = await runAsNamespaceRoot(maps, 'btrfs', ['filesystem', 'du', '-s', '--raw', path], run);
  const m = /^\s*(\d+)\s+(\d+)\s+(\d+)\s/m.exec(r.stdout.split('\n').slice(1).join('\n'));
  if (r.exitCode !== 0 || !m) {
    throw new ExternalFailure('btrfs', `btrfs filesystem du ${path}: ${r.stderr.trim().split('\n').pop() || 'no usage reported'}`);
  }
  return { total: Number(m[1]), exclusive: Number(m[2]) };
}

/** btrfs is built in or loadable (the store's mount loads the module). */
export function kernelHasBtrfs(): boolean {
  try {
    if (/\sbtrfs$/m.test(readFileSync('/proc/filesystems', 'utf8'))) return true;
  } catch {
    return false;
  }
  const r = spawnSync('modprobe', ['-n', 'btrfs'], { stdio: 'ignore', env: ENV });
  return r.status === 0;
}

/** As root: quotas (qgroups) on the store's filesystem, so the gate can limit containers. Idempotent. */
export async function enableQuota(store: string): Promise<'already on' | 'enabled'> {
  const before = await btrfs(['qgroup', 'show', store]).then(() => true, () => false);
  if (before) return 'already on';
  await btrfs(['quota', 'enable', store]);
  return 'enabled';
}

function hasBtrfsSignature(file: string): boolean {
  // The superblock sits at 64 KiB; its magic "_BHRfS_M" at offset 0x40 in it.
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(8);
    const n = readSync(fd, buf, 0, 8, 0x10040);
    return n === 8 && buf.toString('latin1') === '_BHRfS_M';
  } finally {
    closeSync(fd);
  }
}

/**
 * As root: make sure `store` is a mounted btrfs filesystem, on a loopback file
 * (grootfs: `<store>.backing-store`) when it is not already one.
 */
export async function prepareBtrfsStore(store: string, storeSizeBytes: number, backing: string, log: Logger): Promise<void> {
  // Parents the user must traverse: 0755 (a recursive mkdir would give them the store's 0700).
  await mkdir(dirname(store), { recursive: true, mode: 0o755 });
  try {
    await mkdir(store, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = lstatSync(store);
  if (!st.isDirectory()) throw new FailedPrecondition('ERR_TRELLIS_STORE_PATH', `store ${store} is not a directory`);
  if (await isBtrfs(store)) return;
  if ((await readdir(store)).length > 0) {
    throw new FailedPrecondition('ERR_TRELLIS_STORE_NOT_EMPTY', `store ${store} is not empty and not on btrfs: mounting a filesystem there would hide it`);
  }
  // nodev: the filesystem is the user's to fill; setuid files stay, as images need them.
  await mountLoopbackStore({
    store,
    backing,
    fsType: 'btrfs',
    mountOptions: 'loop,nodev,user_subvol_rm_allowed,noatime',
    hasSignature: hasBtrfsSignature,
    size: () => {
      if (storeSizeBytes <= 0) {
        // The seed walkthrough's init-store gives no size (its quick-setup made the filesystem): make a sparse one.
        log.info({ backing, storeSizeBytes: DEFAULT_STORE_BYTES }, 'init-store.default-size');
        return DEFAULT_STORE_BYTES;
      }
      if (storeSizeBytes < MIN_STORE_BYTES) throw new InvalidArgument('store size must be at least 200Mb');
      return storeSizeBytes;
    },
  }, log);
}

/**
 * As root: the backing file, made when absent (sparse, root's, 0600, in a directory chain
 * only root can write) and formatted, or checked to hold this filesystem; then mounted on
 * the store. The btrfs and XFS stores share it.
 */
export async function mountLoopbackStore(
  o: { store: string; backing: string; fsType: 'btrfs' | 'xfs'; mountOptions: string; hasSignature: (file: string) => boolean; size: () => number },
  log: Logger,
): Promise<void> {
  const { store, backing, fsType } = o;
  // Root formats and mounts this file: it must be one root made, where only root can write.
  requireRootOwnedChain(dirname(backing));
  let made = false;
  if (!existsSync(backing)) {
    const size = o.size();
    const fh = await open(backing, 'wx', 0o600);
    try {
      await fh.truncate(size);
    } finally {
      await fh.close();
    }
    made = true;
  }
  const bst = lstatSync(backing);
  if (!bst.isFile() || bst.uid !== 0 || (bst.mode & 0o077) !== 0) {
    throw new FailedPrecondition('ERR_TRELLIS_BACKING_FILE', `${backing} must be a regular file owned by root, mode 0600`);
  }
  if (made) {
    log.info({ backing }, `init-store.mkfs-${fsType}`);
    const r = await execa(`mkfs.${fsType}`, ['-q', backing], { reject: false, stdin: 'ignore', env: ENV, extendEnv: false });
    if (r.exitCode !== 0) throw new ExternalFailure(`mkfs.${fsType}`, `mkfs.${fsType} ${backing}: ${r.stderr.trim().split('\n').pop() ?? ''}`);
  } else if (!o.hasSignature(backing)) {
    throw new FailedPrecondition('ERR_TRELLIS_BACKING_FILE', `${backing} exists and holds no ${fsType} filesystem: remove it to have a new one made`);
  }
  log.info({ backing, store }, 'init-store.mount');
  const r = await execa('mount', ['--no-canonicalize', '-o', o.mountOptions, '-t', fsType, backing, store], {
    reject: false,
    stdin: 'ignore',
    env: ENV,
    extendEnv: false,
  });
  if (r.exitCode !== 0) throw new ExternalFailure('mount', `mounting ${backing} on ${store}: ${r.stderr.trim().split('\n').pop() ?? ''}`);
}
