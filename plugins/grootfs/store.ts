// A grootfs-compatible image store (cli.md §6.10 layout) with the overlay driver
// and local directory images. The gdn server calls this in-process; the grootfs
// command line is a thin layer over it.
import { lstat, mkdir, readFile, readdir, rm, rmdir, stat, writeFile, chmod, chown } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pino, type Logger } from 'pino';
import { AlreadyExists, FailedPrecondition, InvalidArgument, TrellisError, errorMessage } from '../../src/errors.js';
import { formatMapping, parseMappingFlag, type IdMapping } from '../../src/idmap/subid.js';
import { makeOverlayDirs, openWorkDir, overlayDirs, overlayMount } from './overlay.js';
import { removeTrees, type CommandRunner, type StoreMappings } from './remove.js';
import { OVERLAY_UNSAFE, resolveImageSource } from './sources.js';
import { treeBytes } from './usage.js';
import { ensureDir } from '../../src/mkdirp.js';

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface CreateResult {
  root: { path: string };
  process: { env: string[] };
  mounts: OciMount[];
}

export interface StoreOptions {
  storePath: string;
  driver?: 'overlay';
  /** Defaults to a silent logger. */
  logger?: Logger;
  /** Runs `unshare` for removals the plain user is denied; tests hand a fake. */
  run?: CommandRunner;
}

export interface CreateOptions {
  image: string;
  id: string;
  diskLimitBytes?: number;
  excludeImageFromQuota?: boolean;
  username?: string;
  password?: string;
}

export interface DiskStats {
  disk_usage: { total_bytes_used: number; exclusive_bytes_used: number };
}

/** What `<image>/image.json` records. */
export interface ImageRecord {
  source: string;
  lowerDirs: string[];
  created: string;
  diskLimitBytes: number;
  excludeImageFromQuota: boolean;
}

// A directory image carries no image config, so no env: gdn then gives each process
// the PATH Garden gives its user (root's, or the shorter non-root one).
export const DEFAULT_ENV: string[] = [];

/** Made by init-store (0755, owned by the store owner); all must exist for the store to count as initialised. */
export const STORE_DIRS = ['images', 'volumes', 'meta', 'locks', 'tmp', 'meta/dependencies', 'l'];

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

export class ImageStore {
  readonly storePath: string;
  readonly imagesDir: string;
  private readonly log: Logger;
  private readonly run?: CommandRunner;
  private initialised = false;
  /** Lower dirs never change (they are read-only sources), so their size is computed once per mtime. */
  private readonly lowerBytes = new Map<string, number>();

  constructor(opts: StoreOptions) {
    if (opts.driver !== undefined && opts.driver !== 'overlay') throw new InvalidArgument(`unsupported driver \`${String(opts.driver)}\``);
    this.storePath = opts.storePath;
    this.imagesDir = join(opts.storePath, 'images');
    this.log = opts.logger ?? pino({ level: 'silent' });
    this.run = opts.run;
  }

  async initStore(opts: { uidMappings: IdMapping[]; gidMappings: IdMapping[]; storeSizeBytes?: number }): Promise<void> {
    const log = this.log.child({ session: 'init-store', store: this.storePath });
    if (process.getuid?.() !== 0) {
      throw new FailedPrecondition('ERR_TRELLIS_NOT_ROOT', `store ${this.storePath} can only be initialized by Root user`);
    }
    if (opts.storeSizeBytes !== undefined && opts.storeSizeBytes < 0) {
      throw new InvalidArgument('invalid argument: store size cannot be negative');
    }
    log.info({ uidMappings: opts.uidMappings.map(formatMapping), gidMappings: opts.gidMappings.map(formatMapping) }, 'init-store.start');
    const wanted = { uidMappings: opts.uidMappings, gidMappings: opts.gidMappings };
    ensureDir(join(this.storePath, 'meta'));
    const nsPath = join(this.storePath, NAMESPACE_FILE);
    let existing: string | undefined;
    try {
      existing = await readFile(nsPath, 'utf8');
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    }
    if (existing === undefined) {
      await writeFile(nsPath, JSON.stringify(namespaceFileFor(wanted)), { mode: 0o644 });
    } else {
      let have: StoreMappings;
      try {
        have = parseNamespaceFile(existing);
      } catch (err) {
        throw new FailedPrecondition('ERR_TRELLIS_STORE_NAMESPACE', `invalid namespace file ${nsPath}: ${errorMessage(err)}`);
      }
      const which = mappingsMismatch(have, wanted);
      if (which !== undefined) {
        throw new FailedPrecondition(
          'ERR_TRELLIS_STORE_NAMESPACE',
          `provided ${which} mappings do not match those already configured in the store`,
        );
      }
    }
    const uid = storeOwner(opts.uidMappings) ?? -1;
    const gid = storeOwner(opts.gidMappings) ?? -1;
    await chown(this.storePath, uid, gid);
    await chmod(this.storePath, 0o700);
    for (const d of STORE_DIRS) {
      const p = join(this.storePath, d);
      ensureDir(p);
      await chown(p, uid, gid);
      await chmod(p, 0o755);
    }
    await chown(nsPath, uid, gid);
    if (opts.storeSizeBytes) log.info({ storeSizeBytes: opts.storeSizeBytes }, 'init-store.size-not-applied');
    log.info('init-store.finished');
  }

  async create(opts: CreateOptions): Promise<CreateResult> {
    const log = this.log.child({ session: 'create', id: opts.id });
    validateImageId(opts.id);
    const diskLimitBytes = opts.diskLimitBytes ?? 0;
    if (!Number.isFinite(diskLimitBytes) || diskLimitBytes < 0) {
      throw new InvalidArgument('invalid argument: disk limit cannot be negative');
    }
    await this.ensureInitialised();
    log.info({ image: opts.image, diskLimitBytes, hasCredentials: opts.username !== undefined && opts.username !== '' }, 'create.start');
    try {
      const source = await resolveImageSource(opts.image);
      const dirs = overlayDirs(join(this.imagesDir, opts.id));
      if (OVERLAY_UNSAFE.test(dirs.imageDir)) {
        throw new InvalidArgument(`image dir \`${dirs.imageDir}\` contains \`,\`, \`:\` or \`\\\`, which an overlay mount cannot take`);
      }
      try {
        await makeOverlayDirs(dirs);
      } catch (err) {
        // The image dir is made first, so EEXIST can only mean the id is taken: leave it alone.
        if (errno(err) === 'EEXIST') throw new AlreadyExists(`image for id \`${opts.id}\` already exists`);
        await removeTrees([dirs.imageDir], undefined).catch(() => undefined);
        throw err;
      }
      const lowerDirs = [source.path];
      const record: ImageRecord = {
        source: source.path,
        lowerDirs,
        created: new Date().toISOString(),
        diskLimitBytes,
        excludeImageFromQuota: opts.excludeImageFromQuota ?? false,
      };
      try {
        await writeFile(join(dirs.imageDir, 'image.json'), JSON.stringify(record), { mode: 0o600 });
      } catch (err) {
        await removeTrees([dirs.imageDir], undefined).catch(() => undefined);
        throw err;
      }
      if (diskLimitBytes > 0) {
        log.warn(
          { diskLimitBytes, reason: 'the overlay driver records disk limits but cannot enforce them without a quota-capable filesystem' },
          'create.disk-limit-not-enforced',
        );
      }
      log.info('create.finished');
      return { root: { path: dirs.rootfs }, process: { env: [...DEFAULT_ENV] }, mounts: [overlayMount(lowerDirs, dirs)] };
    } catch (err) {
      log.error({ error: errorMessage(err) }, 'create.failed');
      throw err;
    }
  }

  async delete(idOrPath: string): Promise<'deleted' | 'not-found'> {
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
        log.info('delete.not-found');
        return 'not-found';
      }
      throw err;
    }
    log.info('delete.start');
    try {
      await openWorkDir(overlayDirs(imageDir));
      await removeTrees([imageDir], await this.mappings(), { run: this.run, log });
      await rm(join(this.storePath, 'meta', 'dependencies', `image:${id}.json`), { force: true });
    } catch (err) {
      log.error({ error: errorMessage(err) }, 'delete.failed');
      throw err;
    }
    log.info('delete.finished');
    return 'deleted';
  }

  async stats(idOrPath: string): Promise<DiskStats> {
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
    let lower = 0;
    for (const dir of record.lowerDirs ?? [record.source]) lower += await this.lowerDirBytes(dir);
    const upper = await treeBytes(join(imageDir, 'diff'));
    return { disk_usage: { total_bytes_used: lower + upper, exclusive_bytes_used: upper } };
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

  /** Returns the line grootfs prints. Directory images have no layers, so there is nothing to collect yet. */
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
    if (threshold > 0) {
      const committed = (await this.committedQuota()) + (await treeBytes(join(this.storePath, 'volumes')));
      if (committed < threshold) {
        log.info({ committed, threshold }, 'clean.threshold-not-reached');
        return 'threshold not reached: skipping clean';
      }
    }
    log.info('clean.finished');
    return 'clean completed';
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
    // meta (holding the mappings) goes last, so a failed run can be retried.
    const order = names.filter((n) => n !== 'meta').concat(names.includes('meta') ? ['meta'] : []);
    await removeTrees(order.map((n) => join(this.storePath, n)), maps, { run: this.run, log });
    try {
      await rmdir(this.storePath);
    } catch (err) {
      if (errno(err) !== 'EACCES' && errno(err) !== 'EPERM') throw err;
      // The store's parent is often root's (made by setup): its contents are gone, the empty dir stays.
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
