// A grootfs-compatible image store (cli.md §6.10 layout) with overlay and btrfs
// drivers. Images come from directories, tarballs, OCI layouts and registries;
// each layer is unpacked once into a volume named by its chain id and shared by
// every image that uses it. The gdn server calls this in-process; the grootfs
// command line is a thin layer over it.
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, rename, rm, rmdir, stat, writeFile, chmod, chown, symlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pino, type Logger } from 'pino';
import { AlreadyExists, FailedPrecondition, InvalidArgument, TrellisError, errorMessage } from '../../src/errors.js';
import { formatMapping, parseMappingFlag, type IdMapping } from '../../src/idmap/subid.js';
import { ensureDir } from '../../src/mkdirp.js';
import { asUser } from '../../src/setup/host-files.js';
import { closeSync, existsSync, constants as fsc, fchmodSync, fchownSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as btrfs from './btrfs.js';
import * as xfs from './xfs.js';
import type { Platform, ResolvedImage } from './image.js';
import { withLock } from './locks.js';
import { chainIDs } from './oci.js';
import { resolveOciLayout } from './oci.js';
import { makeOverlayDirs, openWorkDir, overlayDirs, overlayMount } from './overlay.js';
import { redactUrl, resolveRegistryImage } from './registry.js';
import { removeTrees, runCommand, type CommandRunner, type StoreMappings } from './remove.js';
import { OVERLAY_UNSAFE, parseImageUrl, resolvePath, type ResolvedSource } from './sources.js';
import { runAsNamespaceRoot, runUnpack } from './unpacker.js';
import { treeBytes } from './usage.js';
import { fsUuidOf, qgroupUsage, QuotaGate, subvolumeId, type QuotaRecord } from './quota.js';
import { DEFAULT_GATE } from '../networker/config.js';

export type DriverName = 'overlay' | 'btrfs';

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface CreateResult {
  root: { path: string };
  /** `user.username` and `cwd` carry the image's USER and WORKDIR when it sets them. */
  process: { env: string[]; user?: { username: string }; cwd?: string };
  mounts: OciMount[];
}

export interface StoreOptions {
  storePath: string;
  /** The driver the caller asks for; by default the one init-store recorded in the store. */
  driver?: DriverName;
  /** Registry for `docker:///repo` URLs (no host). */
  defaultRegistry?: string;
  /** `host[:port]` entries reached without TLS verification, or over plain HTTP. */
  insecureRegistries?: string[];
  platform?: Platform;
  /** Defaults to a silent logger. */
  logger?: Logger;
  /** Runs `unshare` for removals the plain user is denied; tests hand a fake. */
  run?: CommandRunner;
  /** The setuid gate that sets disk limits on a btrfs store (issue #11); default the installed one. */
  gate?: string;
}

export interface CreateOptions {
  image: string;
  id: string;
  diskLimitBytes?: number;
  /** Garden's inode_hard: enforced on an XFS store; btrfs qgroups count bytes only (logged, not enforced). */
  diskLimitInodes?: number;
  excludeImageFromQuota?: boolean;
  username?: string;
  password?: string;
  /** Per-call additions to the store's insecure registries (grootfs --insecure-registry). */
  insecureRegistries?: string[];
}

export interface DiskStats {
  disk_usage: { total_bytes_used: number; exclusive_bytes_used: number };
}

/** What the daemon's metrics take: bytes, and the inodes the container made where the store counts them (XFS). */
export interface DiskUsage {
  total: number;
  exclusive: number;
  exclusiveInodes?: number;
}

/** What `<image>/image.json` records. */
export interface ImageRecord {
  source: string;
  driver?: DriverName;
  /** Overlay lower dirs, top first (absolute). */
  lowerDirs: string[];
  /** The volumes the image is made of, base first; empty for an overlay directory image. */
  chainIDs?: string[];
  /** Bytes of the layers below the container's own writes. */
  baseBytes?: number;
  created: string;
  diskLimitBytes: number;
  diskLimitInodes?: number;
  excludeImageFromQuota: boolean;
  /** btrfs: the qgroup the gate limited; XFS: the project (issue #11); absent when no limit was set. */
  quota?: QuotaRecord;
}

// A directory image carries no image config, so no env: gdn then gives each process
// the PATH Garden gives its user (root's, or the shorter non-root one).
export const DEFAULT_ENV: string[] = [];

/** Made by init-store (0755, owned by the store owner); all must exist for the store to count as initialised. */
export const STORE_DIRS = ['images', 'volumes', 'meta', 'locks', 'tmp', 'meta/dependencies', 'l'];

const DRIVER_FILE = 'meta/driver';
/** `xfs`: an overlay store on XFS with project quotas, whose limits the gate sets (issue #11). */
const QUOTA_FILE = 'meta/quota';
const GLOBAL_LOCK = 'global-groot-lock';
const INCOMPLETE = '-incomplete-';

const NAMESPACE_FILE = 'meta/namespace.json';

export interface NamespaceFile {
  'uid-mappings': string[];
  'gid-mappings': string[];
}

export function namespaceFileFor(maps: StoreMappings): NamespaceFile {
  return { 'uid-mappings': maps.uidMappings.map(formatMapping), 'gid-mappings': maps.gidMappings.map(formatMapping) };
}

export function parseNamespaceFile(text: string): StoreMappings {
  const raw = JSON.parse(text) as Partial<Record<keyof NamespaceFile, unknown>>;
  const list = (v: unknown): IdMapping[] => {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw new Error('mappings must be an array of strings');
    return (v as string[]).map(parseMappingFlag);
  };
  return { uidMappings: list(raw['uid-mappings']), gidMappings: list(raw['gid-mappings']) };
}

function sameMappings(a: IdMapping[], b: IdMapping[]): boolean {
  const key = (l: IdMapping[]): string => l.map(formatMapping).sort().join(' ');
  return key(a) === key(b);
}

/** Which mappings (if any) differ between a store's namespace file and the ones given; order does not matter. */
export function mappingsMismatch(existing: StoreMappings, wanted: StoreMappings): 'UID' | 'GID' | undefined {
  if (!sameMappings(existing.uidMappings, wanted.uidMappings)) return 'UID';
  if (!sameMappings(existing.gidMappings, wanted.gidMappings)) return 'GID';
  return undefined;
}

/**
 * True when every id `old` maps is mapped the same way by `wanted` (which may map
 * more): a store recorded with `old` owns nothing that changes meaning under
 * `wanted`. Issue #8: a user's subordinate range that grew in place (same start).
 */
export function mappingsExtend(old: IdMapping[], wanted: IdMapping[]): boolean {
  return old.every((o) =>
    wanted.some((w) => w.containerID <= o.containerID && o.containerID + o.size <= w.containerID + w.size && w.hostID - w.containerID === o.hostID - o.containerID),
  );
}

/** The host id of the `0:<host>:1` mapping: the store's owner. */
export function storeOwner(maps: IdMapping[]): number | undefined {
  return maps.find((m) => m.containerID === 0 && m.size === 1)?.hostID;
}

/** grootfs rejects only `/`; `.`, `..` and '' are refused too since they would name the images dir or the store. */
export function validateImageId(id: string): void {
  if (id.includes('/')) throw new InvalidArgument(`id \`${id}\` contains invalid characters: \`/\``);
  if (id === '' || id === '.' || id === '..') throw new InvalidArgument(`invalid id \`${id}\``);
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** `meta/dependencies/image:<id>.json`, with `/` escaped as grootfs does. */
/** A file's text, never through a symlink (root reads files the owner controls); undefined when absent. */
function readNoFollow(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    throw new FailedPrecondition('ERR_TRELLIS_STORE_FILE', `cannot read ${path}: ${errno(err) ?? 'error'} (a link or not a file?)`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > 65536) throw new FailedPrecondition('ERR_TRELLIS_STORE_FILE', `${path} is not a small regular file`);
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}

/** Every directory from `dir` up to `/` is root's, a real directory, and writable by nobody else. */
export function requireRootOwnedChain(dir: string): void {
  for (let p = dir; ; p = dirname(p)) {
    const st = lstatSync(p);
    // World-writable is fine with the sticky bit (/tmp): nobody can replace another's entry there.
    if (!st.isDirectory() || st.uid !== 0 || ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0)) {
      throw new FailedPrecondition(
        'ERR_TRELLIS_STORE_PARENT',
        `${p} must be a directory owned by root and writable by nobody else: root prepares the store below it`,
      );
    }
    if (p === '/') return;
  }
}

function dependencyFile(storePath: string, id: string): string {
  return join(storePath, 'meta', 'dependencies', `image:${id.replace(/\//g, '__')}.json`);
}

function shortID(): string {
  return randomBytes(8).toString('base64url').replace(/[-_]/g, 'x').slice(0, 10);
}

export class ImageStore {
  readonly storePath: string;
  readonly imagesDir: string;
  private readonly volumesDir: string;
  private readonly locksDir: string;
  private readonly log: Logger;
  private readonly run: CommandRunner;
  private readonly wantedDriver?: DriverName;
  private driverName?: DriverName;
  private readonly defaultRegistry: string;
  private readonly insecureRegistries: string[];
  private readonly platform?: Platform;
  private initialised = false;
  /** Lower dirs never change (they are read-only sources), so their size is computed once per mtime. */
  private readonly lowerBytes = new Map<string, number>();
  private readonly gate: QuotaGate;
  /** btrfs: the store filesystem's uuid in /sys/fs/btrfs, and each image's subvolume id (for usage). */
  private fsUuid?: Promise<string | undefined>;
  private readonly subvolumes = new Map<string, number>();
  private xfsQuota?: Promise<boolean>;

  constructor(opts: StoreOptions) {
    if (opts.driver !== undefined && opts.driver !== 'overlay' && opts.driver !== 'btrfs') {
      throw new InvalidArgument(`unsupported driver \`${String(opts.driver)}\``);
    }
    this.storePath = opts.storePath;
    this.imagesDir = join(opts.storePath, 'images');
    this.volumesDir = join(opts.storePath, 'volumes');
    this.locksDir = join(opts.storePath, 'locks');
    this.log = opts.logger ?? pino({ level: 'silent' });
    this.run = opts.run ?? runCommand;
    this.wantedDriver = opts.driver;
    this.defaultRegistry = opts.defaultRegistry ?? 'registry-1.docker.io';
    this.insecureRegistries = opts.insecureRegistries ?? [];
    this.platform = opts.platform;
    this.gate = new QuotaGate(opts.gate ?? DEFAULT_GATE, this.run);
  }

  /** Verified manifests and configs by digest (`meta/content/<hex>`): they never change. */
  private readonly contentCache = {
    get: async (digest: string): Promise<Uint8Array | undefined> => {
      const hex = /^sha256:([0-9a-f]{64})$/.exec(digest)?.[1];
      if (hex === undefined) return undefined;
      return readFile(join(this.storePath, 'meta', 'content', hex)).catch(() => undefined);
    },
    put: async (digest: string, data: Uint8Array): Promise<void> => {
      const hex = /^sha256:([0-9a-f]{64})$/.exec(digest)?.[1];
      if (hex === undefined) return;
      const dir = join(this.storePath, 'meta', 'content');
      await mkdir(dir, { recursive: true, mode: 0o755 });
      const tmp = join(dir, `${hex}.${process.pid}.${randomBytes(4).toString('hex')}`);
      await writeFile(tmp, data, { mode: 0o644 });
      await rename(tmp, join(dir, hex));
    },
  };

  /** The store's driver: recorded by init-store; stores made before that are overlay. */
  async driver(): Promise<DriverName> {
    if (this.driverName) return this.driverName;
    let recorded: DriverName = 'overlay';
    try {
      const text = (await readFile(join(this.storePath, DRIVER_FILE), 'utf8')).trim();
      if (text === 'btrfs' || text === 'overlay') recorded = text;
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    }
    if (this.wantedDriver !== undefined && this.wantedDriver !== recorded) {
      throw new FailedPrecondition(
        'ERR_TRELLIS_STORE_DRIVER',
        `store ${this.storePath} was initialised for the ${recorded} driver, not ${this.wantedDriver}`,
      );
    }
    this.driverName = recorded;
    return recorded;
  }

  /** An overlay store made on XFS with project quotas (init-store's `xfs`): limits go through the gate. */
  async quotaXfs(): Promise<boolean> {
    this.xfsQuota ??= readFile(join(this.storePath, QUOTA_FILE), 'utf8').then((t) => t.trim() === 'xfs', () => false);
    return this.xfsQuota;
  }

  /**
   * As root: prepares the store for its owner (the host id of the `0:<host>:1`
   * mapping). Root only makes the store directory itself (its parents must be
   * root's, so nobody else can swap it for a link) and, for btrfs, the filesystem;
   * everything inside is made with the owner's identity and never through a link.
   * `growMappings` (gdn setup only; grootfs's init-store keeps grootfs's refusal): a
   * store recorded with mappings that `opts`' extend (mappingsExtend) is re-recorded
   * with the larger ones instead of refused.
   */
  async initStore(opts: { uidMappings: IdMapping[]; gidMappings: IdMapping[]; storeSizeBytes?: number; backingFile?: string; growMappings?: boolean; xfs?: boolean }): Promise<void> {
    const log = this.log.child({ session: 'init-store', store: this.storePath });
    if (process.getuid?.() !== 0) {
      throw new FailedPrecondition('ERR_TRELLIS_NOT_ROOT', `store ${this.storePath} can only be initialized by Root user`);
    }
    if (opts.storeSizeBytes !== undefined && opts.storeSizeBytes < 0) {
      throw new InvalidArgument('invalid argument: store size cannot be negative');
    }
    if (!this.storePath.startsWith('/') || this.storePath.split('/').includes('..')) {
      throw new InvalidArgument(`store path must be absolute without '..', got ${this.storePath}`);
    }
    const driver = this.wantedDriver ?? 'overlay';
    log.info({ driver, uidMappings: opts.uidMappings.map(formatMapping), gidMappings: opts.gidMappings.map(formatMapping) }, 'init-store.start');
    const owner = { uid: storeOwner(opts.uidMappings) ?? 0, gid: storeOwner(opts.gidMappings) ?? 0 };
    let existingParent = dirname(this.storePath);
    while (!existsSync(existingParent)) existingParent = dirname(existingParent);
    requireRootOwnedChain(existingParent);
    ensureDir(dirname(this.storePath), 0o755);
    requireRootOwnedChain(dirname(this.storePath));

    const recordedNow = (): string | undefined => {
      const d = readNoFollow(join(this.storePath, DRIVER_FILE));
      if (d !== undefined) return d.trim();
      // Stores made before the driver was recorded are overlay stores.
      return readNoFollow(join(this.storePath, NAMESPACE_FILE)) !== undefined ? 'overlay' : undefined;
    };
    const mismatch = (r: string): FailedPrecondition =>
      new FailedPrecondition('ERR_TRELLIS_STORE_DRIVER', `store ${this.storePath} was initialised for the ${r === 'btrfs' ? 'btrfs' : 'overlay'} driver, not ${driver}`);
    let recorded = recordedNow();
    if (recorded !== undefined && recorded !== driver) throw mismatch(recorded);
    if (driver === 'btrfs') {
      await btrfs.prepareBtrfsStore(this.storePath, opts.storeSizeBytes ?? 0, opts.backingFile ?? `${this.storePath}.backing-store`, log);
      recorded = recordedNow();
      if (recorded !== undefined && recorded !== driver) throw mismatch(recorded);
    }
    if (opts.xfs === true) {
      if (driver !== 'overlay') throw new InvalidArgument('an XFS store is an overlay store');
      await xfs.prepareXfsStore(this.storePath, opts.storeSizeBytes ?? 0, opts.backingFile ?? `${this.storePath}.backing-store`, log);
      recorded = recordedNow();
      if (recorded !== undefined && recorded !== driver) throw mismatch(recorded);
    }
    // The store dir: a real directory (never a link), handed to its owner through a descriptor.
    try {
      mkdirSync(this.storePath, { mode: 0o700 });
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
    const fd = openSync(this.storePath, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
    try {
      fchownSync(fd, owner.uid, owner.gid);
      fchmodSync(fd, 0o700);
    } finally {
      closeSync(fd);
    }

    const wanted = { uidMappings: opts.uidMappings, gidMappings: opts.gidMappings };
    const nsPath = join(this.storePath, NAMESPACE_FILE);
    const inside = (): void => {
      for (const d of STORE_DIRS) {
        const p = join(this.storePath, d);
        try {
          mkdirSync(p, { mode: 0o755 });
        } catch (err) {
          if (errno(err) !== 'EEXIST') throw err;
        }
        const dfd = openSync(p, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
        try {
          fchmodSync(dfd, 0o755);
        } finally {
          closeSync(dfd);
        }
      }
      const existing = readNoFollow(nsPath);
      if (existing === undefined) {
        writeFileSync(nsPath, JSON.stringify(namespaceFileFor(wanted)), { mode: 0o644, flag: 'wx' });
      } else {
        let have: StoreMappings;
        try {
          have = parseNamespaceFile(existing);
        } catch {
          throw new FailedPrecondition('ERR_TRELLIS_STORE_NAMESPACE', `invalid namespace file ${nsPath}`);
        }
        const which = mappingsMismatch(have, wanted);
        if (which !== undefined && opts.growMappings === true && mappingsExtend(have.uidMappings, wanted.uidMappings) && mappingsExtend(have.gidMappings, wanted.gidMappings)) {
          const tmp = `${nsPath}.${randomBytes(6).toString('hex')}.tmp`;
          writeFileSync(tmp, JSON.stringify(namespaceFileFor(wanted)), { mode: 0o644, flag: 'wx' });
          renameSync(tmp, nsPath);
          log.info({ from: namespaceFileFor(have), to: namespaceFileFor(wanted) }, 'init-store.mappings-grown');
        } else if (which !== undefined) {
          throw new FailedPrecondition('ERR_TRELLIS_STORE_NAMESPACE', `provided ${which} mappings do not match those already configured in the store`);
        }
      }
      if (readNoFollow(join(this.storePath, DRIVER_FILE)) === undefined) {
        writeFileSync(join(this.storePath, DRIVER_FILE), `${driver}\n`, { mode: 0o644, flag: 'wx' });
      }
      if (opts.xfs === true && readNoFollow(join(this.storePath, QUOTA_FILE)) === undefined) {
        writeFileSync(join(this.storePath, QUOTA_FILE), 'xfs\n', { mode: 0o644, flag: 'wx' });
      }
    };
    if (owner.uid === 0) inside();
    else asUser(owner, inside);
    if (opts.storeSizeBytes && driver === 'overlay') log.info({ storeSizeBytes: opts.storeSizeBytes }, 'init-store.size-only-reported');
    log.info('init-store.finished');
  }

  async create(opts: CreateOptions): Promise<CreateResult> {
    const log = this.log.child({ session: 'create', id: opts.id });
    validateImageId(opts.id);
    const diskLimitBytes = opts.diskLimitBytes ?? 0;
    if (!Number.isFinite(diskLimitBytes) || diskLimitBytes < 0) {
      throw new InvalidArgument('invalid argument: disk limit cannot be negative');
    }
    const diskLimitInodes = opts.diskLimitInodes ?? 0;
    if (!Number.isSafeInteger(diskLimitInodes) || diskLimitInodes < 0) {
      throw new InvalidArgument('invalid argument: inode limit cannot be negative');
    }
    await this.ensureInitialised();
    const driver = await this.driver();
    const onXfs = driver === 'overlay' && (await this.quotaXfs());
    log.info({ image: redactUrl(opts.image), driver, diskLimitBytes, hasCredentials: Boolean(opts.username) }, 'create.start');
    const imageDir = join(this.imagesDir, opts.id);
    if (OVERLAY_UNSAFE.test(imageDir)) {
      throw new InvalidArgument(`image dir \`${imageDir}\` contains \`,\`, \`:\` or \`\\\`, which an overlay mount cannot take`);
    }
    if (await lstat(imageDir).then(() => true, () => false)) throw new AlreadyExists(`image for id \`${opts.id}\` already exists`);
    let claimed = false;
    try {
      const source = await this.resolve(opts, log);
      const chains = this.chainsOf(source);
      // Claim the layers before making them, so a concurrent clean leaves them alone.
      await withLock(this.locksDir, GLOBAL_LOCK, async () => {
        const dep = dependencyFile(this.storePath, opts.id);
        await writeFile(`${dep}.tmp`, JSON.stringify(chains), { mode: 0o644 });
        await rename(`${dep}.tmp`, dep);
      });
      claimed = true;
      if (source.kind === 'layers') await this.ensureVolumes(source.image, chains, driver, log);
      else if (driver === 'btrfs') await this.ensureDirectoryVolume(source.path, chains[0] as string, log);

      const baseBytes = source.kind === 'layers' || driver === 'btrfs' ? await this.volumeBytes(chains) : await this.lowerDirBytes(source.path);
      const exclude = opts.excludeImageFromQuota ?? false;
      if (diskLimitBytes > 0 && !exclude && baseBytes > diskLimitBytes) {
        throw new InvalidArgument(`layers exceed disk quota ${baseBytes}/${diskLimitBytes} bytes`);
      }
      const lowerDirs =
        driver === 'btrfs' ? [] : source.kind === 'directory' ? [source.path] : await Promise.all([...chains].reverse().map((c) => this.shortLink(c)));
      const result = driver === 'btrfs' ? await this.makeBtrfsImage(imageDir, chains) : await this.makeOverlayImage(imageDir, lowerDirs);
      const record: ImageRecord = {
        source: redactUrl(opts.image),
        driver,
        lowerDirs,
        chainIDs: chains,
        baseBytes,
        created: new Date().toISOString(),
        diskLimitBytes,
        ...(diskLimitInodes > 0 ? { diskLimitInodes } : {}),
        excludeImageFromQuota: exclude,
      };
      let limitTried = false;
      try {
        if (onXfs && (diskLimitBytes > 0 || diskLimitInodes > 0)) {
          limitTried = true;
          // XFS counts the container's writes only: a total limit leaves them what the image does not take (at least a byte).
          const bytes = diskLimitBytes === 0 ? 0 : exclude ? diskLimitBytes : Math.max(1, diskLimitBytes - baseBytes);
          record.quota = await this.gate.limit(this.storePath, opts.id, 'exclusive', bytes, diskLimitInodes);
          log.info({ diskLimitBytes, diskLimitInodes, writeBytes: bytes, scope: exclude ? 'exclusive' : 'total', project: record.quota.project }, 'create.disk-limit-set');
        }
        if (driver === 'btrfs' && diskLimitBytes > 0) {
          limitTried = true;
          // Garden's scopes: exclusive counts the container's writes, total its image too (the snapshot's referenced bytes).
          record.quota = await this.gate.limit(this.storePath, opts.id, exclude ? 'exclusive' : 'total', diskLimitBytes);
          this.subvolumes.set(opts.id, record.quota.subvolume);
          log.info({ diskLimitBytes, scope: exclude ? 'exclusive' : 'total', subvolume: record.quota.subvolume }, 'create.disk-limit-set');
        }
        await writeFile(join(imageDir, 'image.json'), JSON.stringify(record), { mode: 0o600 });
      } catch (err) {
        await this.removeImageDir(imageDir, driver, log).catch(() => undefined);
        // A limit that failed half-way may have left the gate's record: release drops it (a no-op when there is none).
        if (limitTried) await this.gate.release(this.storePath, opts.id).catch(() => undefined);
        this.subvolumes.delete(opts.id);
        throw err;
      }
      if (diskLimitInodes > 0 && driver === 'btrfs') {
        // Garden's grootfs btrfs driver ignored inode limits too: the create succeeds, the bytes stay limited.
        log.warn({ diskLimitInodes, reason: 'btrfs qgroups count bytes only: the inode limit is recorded, not enforced' }, 'create.inode-limit-not-enforced');
      }
      if ((diskLimitBytes > 0 || diskLimitInodes > 0) && driver !== 'btrfs' && !onXfs) {
        log.warn(
          { diskLimitBytes, reason: `the ${driver} driver cannot enforce disk limits without root; the limit is recorded and reported only` },
          'create.disk-limit-not-enforced',
        );
      }
      const config = source.kind === 'layers' ? source.image.config : { env: [], user: '', workingDir: '' };
      const process: CreateResult['process'] = { env: [...config.env] };
      if (config.user !== '') process.user = { username: config.user };
      if (config.workingDir !== '') process.cwd = config.workingDir;
      log.info('create.finished');
      return { root: { path: result.rootfs }, process, mounts: result.mounts };
    } catch (err) {
      if (claimed && !(err instanceof AlreadyExists)) await rm(dependencyFile(this.storePath, opts.id), { force: true }).catch(() => undefined);
      log.error({ error: errorMessage(err) }, 'create.failed');
      throw err;
    }
  }

  private async resolve(opts: CreateOptions, log: Logger): Promise<ResolvedSource> {
    const url = parseImageUrl(opts.image);
    if (url.kind === 'path') return resolvePath(url.path);
    if (url.kind === 'oci') return { kind: 'layers', image: await resolveOciLayout(url.url, { platform: this.platform }) };
    const image = await resolveRegistryImage(url.url, {
      defaultRegistry: this.defaultRegistry,
      insecureRegistries: [...this.insecureRegistries, ...(opts.insecureRegistries ?? [])],
      username: opts.username,
      password: opts.password,
      platform: this.platform,
      log,
      tmpDir: join(this.storePath, 'tmp'),
      contentCache: this.contentCache,
    });
    return { kind: 'layers', image };
  }

  /** Volume names, base first. */
  private chainsOf(source: ResolvedSource): string[] {
    if (source.kind === 'directory') return [`dir-${btrfsDirKey(source.path, source.mtimeNs)}`];
    if (source.image.chainIDOverride !== undefined) return [source.image.chainIDOverride];
    return chainIDs(source.image.config.diffIDs);
  }

  private volumePath(chain: string): string {
    return join(this.volumesDir, chain);
  }

  private async exists(path: string): Promise<boolean> {
    return lstat(path).then(() => true, () => false);
  }

  /** Makes every missing layer volume, each exactly once however many creates race for it. */
  private async ensureVolumes(image: ResolvedImage, chains: string[], driver: DriverName, log: Logger): Promise<void> {
    const missing: number[] = [];
    for (let i = 0; i < chains.length; i++) if (!(await this.exists(this.volumePath(chains[i] as string)))) missing.push(i);
    if (missing.length === 0) return;
    // Locks are taken base first: two images sharing a layer share every layer below it, so the order agrees.
    const lockAll = async (k: number): Promise<void> => {
      if (k < missing.length) {
        await withLock(this.locksDir, chains[missing[k] as number] as string, () => lockAll(k + 1));
        return;
      }
      const still: number[] = [];
      for (const i of missing) if (!(await this.exists(this.volumePath(chains[i] as string)))) still.push(i);
      if (still.length === 0) return;
      if (driver === 'btrfs') {
        for (const i of still) await this.makeVolumes(image, chains, [i], driver, log);
      } else {
        await this.makeVolumes(image, chains, still, driver, log);
      }
    };
    await lockAll(0);
  }

  private async makeVolumes(image: ResolvedImage, chains: string[], indices: number[], driver: DriverName, log: Logger): Promise<void> {
    const tmpDir = join(this.storePath, 'tmp');
    const maps = await this.mappings();
    const work = indices.map((i) => ({
      i,
      chain: chains[i] as string,
      layer: image.layers[i]!,
      incomplete: join(this.volumesDir, `${chains[i] as string}${INCOMPLETE}${Date.now()}-${randomBytes(4).toString('hex')}`),
    }));
    const blobs: { release(): Promise<void> }[] = [];
    try {
      for (const w of work) {
        if (driver === 'btrfs') {
          if (w.i === 0) await btrfs.createSubvolume(w.incomplete, this.run);
          else await btrfs.snapshot(this.volumePath(chains[w.i - 1] as string), w.incomplete, maps, this.run);
        } else {
          await mkdirMode(w.incomplete, 0o755);
        }
      }
      // Every download is waited for, so none lands after the cleanup below has run.
      const settled = await Promise.allSettled(
        work.map(async (w) => {
          const t0 = Date.now();
          const blob = await w.layer.fetch(tmpDir);
          blobs.push(blob);
          log.debug({ chain: w.chain, digest: w.layer.digest, ms: Date.now() - t0 }, 'create.layer-fetched');
          return blob;
        }),
      );
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      const fetched = settled.map((r) => (r as PromiseFulfilledResult<{ path: string }>).value);
      const t0 = Date.now();
      const results = await runUnpack(
        work.map((w, k) => ({
          blob: (fetched[k] as { path: string }).path,
          target: w.incomplete,
          baseDirectory: w.layer.baseDirectory,
          mode: driver,
          digest: w.layer.digest,
          diffID: image.config.diffIDs[w.i],
        })),
        maps,
      );
      log.info({ layers: work.map((w) => w.chain), ms: Date.now() - t0 }, 'create.layers-unpacked');
      for (const [k, w] of work.entries()) {
        const r = results[k]!;
        if (r.skipped.length > 0) log.info({ chain: w.chain, skipped: r.skipped.slice(0, 20), count: r.skipped.length }, 'create.entries-skipped');
        await writeFile(join(this.storePath, 'meta', `volume-${w.chain}`), JSON.stringify({ Size: r.bytesWritten }), { mode: 0o644 });
        await rename(w.incomplete, this.volumePath(w.chain));
      }
    } catch (err) {
      for (const w of work) await this.removeVolumePath(w.incomplete, driver, log).catch(() => undefined);
      throw err;
    } finally {
      for (const b of blobs) await b.release().catch(() => undefined);
    }
  }

  /** btrfs: a directory image is copied once into a subvolume named after its path and mtime. */
  private async ensureDirectoryVolume(path: string, chain: string, log: Logger): Promise<void> {
    if (await this.exists(this.volumePath(chain))) return;
    await withLock(this.locksDir, chain, async () => {
      if (await this.exists(this.volumePath(chain))) return;
      const incomplete = join(this.volumesDir, `${chain}${INCOMPLETE}${Date.now()}-${randomBytes(4).toString('hex')}`);
      try {
        await btrfs.createSubvolume(incomplete, this.run);
        const r = await runAsNamespaceRoot(await this.mappings(), 'cp', ['-a', '--reflink=auto', `${path}/.`, `${incomplete}/`], this.run);
        if (r.exitCode !== 0) throw new TrellisError('ERR_TRELLIS_IMAGE_COPY', `copying ${path}: ${r.stderr.trim().split('\n').pop() ?? ''}`);
        const bytes = await this.lowerDirBytes(path);
        await writeFile(join(this.storePath, 'meta', `volume-${chain}`), JSON.stringify({ Size: bytes }), { mode: 0o644 });
        await rename(incomplete, this.volumePath(chain));
      } catch (err) {
        await this.removeVolumePath(incomplete, 'btrfs', log).catch(() => undefined);
        throw err;
      }
    });
  }

  /** `l/<short>` → the volume, so overlay's option string stays short. */
  private async shortLink(chain: string): Promise<string> {
    const idFile = join(this.storePath, 'l', chain);
    try {
      return join(this.storePath, 'l', (await readFile(idFile, 'utf8')).trim());
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    }
    const short = shortID();
    await symlink(join('..', 'volumes', chain), join(this.storePath, 'l', short));
    const tmp = `${idFile}.${short}`;
    await writeFile(tmp, short, { mode: 0o644 });
    await rename(tmp, idFile);
    // Two creates may race here: whichever rename landed last names the link both use.
    const winner = (await readFile(idFile, 'utf8')).trim();
    if (winner !== short) await rm(join(this.storePath, 'l', short), { force: true });
    return join(this.storePath, 'l', winner);
  }

  private async makeOverlayImage(imageDir: string, lowerDirs: string[]): Promise<{ rootfs: string; mounts: OciMount[] }> {
    const dirs = overlayDirs(imageDir);
    try {
      await makeOverlayDirs(dirs);
    } catch (err) {
      if (errno(err) === 'EEXIST') throw new AlreadyExists(`image for id \`${basename(imageDir)}\` already exists`);
      await removeTrees([imageDir], undefined).catch(() => undefined);
      throw err;
    }
    return { rootfs: dirs.rootfs, mounts: [overlayMount(lowerDirs, dirs)] };
  }

  private async makeBtrfsImage(imageDir: string, chains: string[]): Promise<{ rootfs: string; mounts: OciMount[] }> {
    try {
      await mkdirMode(imageDir, 0o700);
    } catch (err) {
      if (errno(err) === 'EEXIST') throw new AlreadyExists(`image for id \`${basename(imageDir)}\` already exists`);
      throw err;
    }
    const rootfs = join(imageDir, 'rootfs');
    try {
      await btrfs.snapshot(this.volumePath(chains[chains.length - 1] as string), rootfs, await this.mappings(), this.run);
    } catch (err) {
      await rm(imageDir, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    return { rootfs, mounts: [] };
  }

  private async removeVolumePath(path: string, driver: DriverName, log: Logger): Promise<void> {
    if (driver === 'btrfs') await btrfs.deleteSubvolume(path, await this.mappings(), log, this.run);
    else await removeTrees([path], await this.mappings(), { run: this.run, log });
  }

  private async removeImageDir(imageDir: string, driver: DriverName, log: Logger): Promise<void> {
    if (driver === 'btrfs') await btrfs.deleteSubvolume(join(imageDir, 'rootfs'), await this.mappings(), log, this.run);
    else await openWorkDir(overlayDirs(imageDir));
    await removeTrees([imageDir], await this.mappings(), { run: this.run, log });
  }

  private async volumeBytes(chains: string[]): Promise<number> {
    let total = 0;
    for (const c of chains) {
      try {
        const meta = JSON.parse(await readFile(join(this.storePath, 'meta', `volume-${c}`), 'utf8')) as { Size?: number };
        total += typeof meta.Size === 'number' ? meta.Size : 0;
      } catch {
        // a volume without metadata counts as empty
      }
    }
    // btrfs volumes are whole trees, so the top one holds the image's size.
    return (await this.driver()) === 'btrfs' && chains.length > 0
      ? await readFile(join(this.storePath, 'meta', `volume-${chains[chains.length - 1] as string}`), 'utf8')
          .then((t) => (JSON.parse(t) as { Size?: number }).Size ?? total, () => total)
      : total;
  }

  async delete(idOrPath: string): Promise<'deleted' | 'not-found'> {
    await this.ensureInitialised();
    const id = this.idFrom(idOrPath);
    const log = this.log.child({ session: 'delete', id });
    try {
      validateImageId(id);
    } catch {
      return 'not-found';
    }
    const imageDir = join(this.imagesDir, id);
    try {
      await lstat(imageDir);
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') {
        await rm(dependencyFile(this.storePath, id), { force: true }).catch(() => undefined);
        log.info('delete.not-found');
        return 'not-found';
      }
      throw err;
    }
    log.info('delete.start');
    const record = await readFile(join(imageDir, 'image.json'), 'utf8').then((t) => JSON.parse(t) as Partial<ImageRecord>, () => undefined);
    try {
      await this.removeImageDir(imageDir, await this.driver(), log);
      // After the subvolume is gone, so the gate may drop a qgroup the kernel kept.
      if (record?.quota) {
        // A release that fails leaves only root's record behind (the kernel drops the qgroup with the subvolume).
        await this.gate.release(this.storePath, id).catch((err: unknown) => log.warn({ error: errorMessage(err) }, 'delete.quota-release-failed'));
      }
      this.subvolumes.delete(id);
      await rm(dependencyFile(this.storePath, id), { force: true });
    } catch (err) {
      log.error({ error: errorMessage(err) }, 'delete.failed');
      throw err;
    }
    log.info('delete.finished');
    return 'deleted';
  }

  async stats(idOrPath: string): Promise<DiskStats> {
    const u = await this.usage(idOrPath);
    return { disk_usage: { total_bytes_used: u.total, exclusive_bytes_used: u.exclusive } };
  }

  /** An image's disk usage: from the quota where there is one (no tree walk), else from the tree. */
  async usage(idOrPath: string): Promise<DiskUsage> {
    const id = this.idFrom(idOrPath);
    validateImageId(id);
    const imageDir = join(this.imagesDir, id);
    let record: ImageRecord;
    try {
      record = JSON.parse(await readFile(join(imageDir, 'image.json'), 'utf8')) as ImageRecord;
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') {
        throw new TrellisError('ERR_TRELLIS_IMAGE_NOT_FOUND', `image \`${id}\` not found`);
      }
      throw err;
    }
    if ((record.driver ?? 'overlay') === 'btrfs') {
      const q = await this.qgroupStats(id, record);
      if (q) return q;
      return btrfs.usage(join(imageDir, 'rootfs'), await this.mappings(), this.run);
    }
    let lower = record.baseBytes;
    if (lower === undefined) {
      lower = 0;
      for (const dir of record.lowerDirs ?? [record.source]) lower += await this.lowerDirBytes(dir);
    }
    if (record.quota?.project !== undefined) {
      // XFS: the project's counters (what the container wrote, in blocks, and its inodes).
      const q = await this.gate.usage(this.storePath, id);
      return { total: lower + q.bytes, exclusive: q.bytes, exclusiveInodes: q.inodes };
    }
    const upper = await treeBytes(join(imageDir, 'diff'));
    return { total: lower + upper, exclusive: upper };
  }

  /** btrfs with quotas on: the image's qgroup counters (no tree walk); undefined when quotas are off. */
  private async qgroupStats(id: string, record: ImageRecord): Promise<{ total: number; exclusive: number } | undefined> {
    this.fsUuid ??= fsUuidOf(this.storePath);
    const uuid = await this.fsUuid;
    if (uuid === undefined) return undefined;
    let subvolume = record.quota?.subvolume ?? this.subvolumes.get(id);
    if (subvolume === undefined) {
      subvolume = await subvolumeId(join(this.imagesDir, id, 'rootfs'), this.run).catch(() => undefined);
      if (subvolume === undefined) return undefined;
      this.subvolumes.set(id, subvolume);
    }
    return qgroupUsage(uuid, subvolume);
  }

  async list(): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(this.imagesDir, { withFileTypes: true });
    } catch (err) {
      if (errno(err) === 'ENOENT') throw new FailedPrecondition('ERR_TRELLIS_NO_STORE', `no store found at ${this.storePath}`);
      throw err;
    }
    return entries
      .filter((e) => e.isDirectory())
      .map((e) => join(this.imagesDir, e.name))
      .sort();
  }

  /** Volumes no image depends on, and what they hold. */
  private async unusedVolumes(): Promise<string[]> {
    const used = new Set<string>();
    const depDir = join(this.storePath, 'meta', 'dependencies');
    for (const f of await readdir(depDir).catch(() => [] as string[])) {
      try {
        const list = JSON.parse(await readFile(join(depDir, f), 'utf8')) as unknown;
        if (Array.isArray(list)) for (const c of list) if (typeof c === 'string') used.add(c);
      } catch {
        // an unreadable dependency file protects nothing
      }
    }
    const names = await readdir(this.volumesDir).catch(() => [] as string[]);
    return names.filter((n) => !used.has(n) && !n.startsWith('gc.') && !n.includes(INCOMPLETE));
  }

  /** Returns the line grootfs prints. Removes exactly the volumes no image uses. */
  async clean(opts: { thresholdBytes?: number } = {}): Promise<string> {
    const threshold = opts.thresholdBytes ?? 0;
    if (!Number.isFinite(threshold) || threshold < 0) throw new InvalidArgument('invalid argument: clean threshold cannot be negative');
    const log = this.log.child({ session: 'clean', store: this.storePath });
    try {
      await stat(this.storePath);
    } catch (err) {
      if (errno(err) === 'ENOENT') return `no store found at ${this.storePath}`;
      throw err;
    }
    await this.ensureInitialised();
    const driver = await this.driver();
    if (threshold > 0) {
      const volumes = (await readdir(this.volumesDir).catch(() => [] as string[])).filter((n) => !n.includes(INCOMPLETE) && !n.startsWith('gc.'));
      const committed = (await this.committedQuota()) + (await this.volumeBytesAll(volumes));
      if (committed < threshold) {
        log.info({ committed, threshold }, 'clean.threshold-not-reached');
        return 'threshold not reached: skipping clean';
      }
    }
    const marked = await withLock(
      this.locksDir,
      GLOBAL_LOCK,
      async () => {
        const unused = await this.unusedVolumes();
        for (const v of unused) await rename(this.volumePath(v), this.volumePath(`gc.${v}`));
        return unused;
      },
      10_000,
    );
    await this.removeAbandoned(driver, log);
    // gc.* left by an earlier clean that failed half-way go too; a failure is logged and the rest carries on.
    const stale = (await readdir(this.volumesDir).catch(() => [] as string[])).filter((n) => n.startsWith('gc.')).map((n) => n.slice(3));
    let failures = 0;
    for (const v of new Set([...marked, ...stale])) {
      try {
        await this.removeVolumePath(this.volumePath(`gc.${v}`), driver, log);
      } catch (err) {
        failures++;
        log.error({ volume: v, error: errorMessage(err) }, 'clean.remove-failed');
        continue;
      }
      await rm(join(this.storePath, 'meta', `volume-${v}`), { force: true });
      const idFile = join(this.storePath, 'l', v);
      const short = await readFile(idFile, 'utf8').then((t) => t.trim(), () => undefined);
      if (short !== undefined && /^[A-Za-z0-9]+$/.test(short)) await rm(join(this.storePath, 'l', short), { force: true });
      await rm(idFile, { force: true });
    }
    if (failures > 0) throw new TrellisError('ERR_TRELLIS_CLEAN', `clean removed ${marked.length + stale.length - failures} volumes; ${failures} could not be removed (see the log)`);
    log.info({ removed: marked }, 'clean.finished');
    return 'clean completed';
  }

  /**
   * Half-made volumes left by a create that was killed: only those whose layer lock
   * nobody holds (a create at work keeps its lock fresh). Downloads in tmp go after a day.
   */
  private async removeAbandoned(driver: DriverName, log: Logger): Promise<void> {
    for (const n of await readdir(this.volumesDir).catch(() => [] as string[])) {
      const i = n.indexOf(INCOMPLETE);
      if (i <= 0) continue;
      const chain = n.slice(0, i);
      await withLock(this.locksDir, chain, () => this.removeVolumePath(this.volumePath(n), driver, log), 0).catch(() => undefined);
    }
    const cutoff = Date.now() - 24 * 60 * 60_000;
    const tmp = join(this.storePath, 'tmp');
    for (const n of await readdir(tmp).catch(() => [] as string[])) {
      const st = await lstat(join(tmp, n)).catch(() => undefined);
      if (st && st.mtimeMs < cutoff) await removeTrees([join(tmp, n)], await this.mappings(), { run: this.run, log }).catch(() => undefined);
    }
  }

  private async volumeBytesAll(names: string[]): Promise<number> {
    let total = 0;
    for (const n of names) {
      total += await readFile(join(this.storePath, 'meta', `volume-${n}`), 'utf8').then(
        (t) => (JSON.parse(t) as { Size?: number }).Size ?? 0,
        () => 0,
      );
    }
    return total;
  }

  async deleteStore(): Promise<void> {
    const log = this.log.child({ session: 'delete-store', store: this.storePath });
    let names: string[];
    try {
      names = await readdir(this.storePath);
    } catch (err) {
      if (errno(err) === 'ENOENT') return;
      throw err;
    }
    log.info('delete-store.start');
    const maps = await this.mappings();
    const release = (img: string): Promise<void> =>
      this.gate.release(this.storePath, img).catch((err: unknown) => log.warn({ image: img, error: errorMessage(err) }, 'delete-store.quota-release-failed'));
    const limited: string[] = [];
    for (const img of await readdir(this.imagesDir).catch(() => [] as string[])) {
      const has = await readFile(join(this.imagesDir, img, 'image.json'), 'utf8').then((t) => (JSON.parse(t) as Partial<ImageRecord>).quota !== undefined, () => false);
      if (has) limited.push(img);
    }
    if ((await this.driver().catch(() => 'overlay')) === 'btrfs') {
      for (const img of await readdir(this.imagesDir).catch(() => [] as string[])) {
        await btrfs.deleteSubvolume(join(this.imagesDir, img, 'rootfs'), maps, log, this.run).catch(() => undefined);
        if (limited.includes(img)) await release(img);
      }
      for (const v of await readdir(this.volumesDir).catch(() => [] as string[])) {
        await btrfs.deleteSubvolume(this.volumePath(v), maps, log, this.run).catch(() => undefined);
      }
    }
    // meta (holding the mappings) goes last, so a failed run can be retried.
    const order = names.filter((n) => n !== 'meta').concat(names.includes('meta') ? ['meta'] : []);
    await removeTrees(order.map((n) => join(this.storePath, n)), maps, { run: this.run, log });
    // XFS: each project is released once its files are gone, so its id is free and owns nothing.
    if ((await this.driver().catch(() => 'overlay')) !== 'btrfs') for (const img of limited) await release(img);
    try {
      await rmdir(this.storePath);
    } catch (err) {
      if (errno(err) !== 'EACCES' && errno(err) !== 'EPERM' && errno(err) !== 'EBUSY') throw err;
      // The store's parent is often root's (made by setup), or the store is a mount point: its contents are gone, the dir stays.
      log.warn({ error: errorMessage(err) }, 'delete-store.store-dir-kept');
    }
    this.initialised = false;
    log.info('delete-store.finished');
  }

  /** The store's id mappings, or undefined when the namespace file is missing or unreadable. */
  async mappings(): Promise<StoreMappings | undefined> {
    try {
      return parseNamespaceFile(await readFile(join(this.storePath, NAMESPACE_FILE), 'utf8'));
    } catch {
      return undefined;
    }
  }

  private async ensureInitialised(): Promise<void> {
    if (this.initialised) return;
    if (process.getuid?.() === 0) {
      const owner = (await stat(this.storePath).catch(() => undefined))?.uid;
      if (owner !== undefined && owner !== 0) {
        // Root writing into a store its owner controls could be led anywhere, and would write ids unmapped.
        throw new FailedPrecondition('ERR_TRELLIS_STORE_OWNER', `store ${this.storePath} belongs to uid ${owner}: run grootfs as that user, not as root`);
      }
    }
    const wanted = [...STORE_DIRS, NAMESPACE_FILE].map((d) => join(this.storePath, d));
    const ok = await Promise.all(wanted.map((p) => stat(p).then(() => true, () => false)));
    if (!ok.every(Boolean)) {
      throw new FailedPrecondition(
        'ERR_TRELLIS_STORE_NOT_INITIALIZED',
        'Store path is not initialized. Please run init-store.',
        `as root: grootfs --store ${this.storePath} init-store --uid-mapping 0:UID:1 --uid-mapping 1:SUBUID:COUNT ... (gdn setup does this)`,
      );
    }
    this.initialised = true;
  }

  /** Accepts an id or an absolute image path under the store's images dir. */
  private idFrom(idOrPath: string): string {
    if (!idOrPath.startsWith('/')) return idOrPath;
    const p = idOrPath.replace(/\/+$/, '');
    if (dirname(p) !== this.imagesDir) throw new InvalidArgument(`path \`${idOrPath}\` is outside store path`);
    return basename(p);
  }

  private async lowerDirBytes(dir: string): Promise<number> {
    const mtime = await stat(dir).then((s) => s.mtimeMs, () => -1);
    const key = `${dir}\0${mtime}`;
    const cached = this.lowerBytes.get(key);
    if (cached !== undefined) return cached;
    const bytes = await treeBytes(dir);
    this.lowerBytes.set(key, bytes);
    return bytes;
  }

  private async committedQuota(): Promise<number> {
    let total = 0;
    for (const dir of await this.list().catch(() => [] as string[])) {
      try {
        const r = JSON.parse(await readFile(join(dir, 'image.json'), 'utf8')) as Partial<ImageRecord>;
        total += typeof r.diskLimitBytes === 'number' ? r.diskLimitBytes : 0;
      } catch {
        // a half-made image commits nothing
      }
    }
    return total;
  }
}

function btrfsDirKey(path: string, mtimeNs: bigint): string {
  return createHashHex(`${path}-${mtimeNs}`);
}

function createHashHex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

async function mkdirMode(path: string, mode: number): Promise<void> {
  await mkdir(path, { mode });
  await chmod(path, mode);
}
