// Unpacks one layer blob into a layer directory. Runs inside a user namespace that
// carries the store's mappings (see unpack-main.ts), as that namespace's root, so
// files keep their owners as mapped ids, and setuid bits, hard links and xattrs
// survive. Both digests are computed while reading; the caller keeps the result
// only when they match.
import { spawnSync } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import {
  closeSync,
  fstatSync,
  constants as fsc,
  createReadStream,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  rmSync,
  symlinkSync,
  chmodSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { extract as tarExtract, type Header } from 'tar-stream';
import { InvalidArgument } from '../../src/errors.js';
import {
  DirCache,
  OPAQUE_WHITEOUT,
  WHITEOUT_PREFIX,
  droppedXattr,
  entryComponents,
  joinUnder,
  resolveDir,
  type PathKind,
  type PathProbe,
} from './layerpath.js';

/**
 * overlay: the layer dir holds only this layer's changes; whiteouts become 0:0
 * character devices and opaque dirs get `user.overlay.opaque` (mounted with
 * `userxattr`). btrfs: the layer dir is a snapshot of the layer below, so
 * whiteouts delete and opaque dirs are emptied.
 */
export type WhiteoutMode = 'overlay' | 'btrfs';

export interface UnpackJob {
  blob: string;
  /** The layer dir; entries land under `<target><baseDirectory>`. */
  target: string;
  baseDirectory?: string;
  mode: WhiteoutMode;
  /** `sha256:<hex>` the blob must hash to. */
  digest?: string;
  /** `sha256:<hex>` the uncompressed tar must hash to. */
  diffID?: string;
}

export interface UnpackResult {
  bytesWritten: number;
  digest: string;
  diffID: string;
  /** Entries skipped (device nodes), for the log. */
  skipped: string[];
}

/** Host-side id translation when unpacking as real root (no user namespace). */
export interface IdTranslation {
  uid(id: number): number;
  gid(id: number): number;
}

class Hasher extends Transform {
  readonly hash: Hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

function compression(fd: number): 'gzip' | 'none' {
  const head = Buffer.alloc(4);
  const n = readSync(fd, head, 0, 4, 0);
  if (n >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (n === 4 && head.readUInt32LE(0) === 0xfd2fb528) throw new InvalidArgument('zstd-compressed layers are not supported');
  return 'none';
}

const fsProbe: PathProbe = {
  kind(p: string): PathKind {
    try {
      const st = lstatSync(p);
      if (st.isSymbolicLink()) return 'symlink';
      return st.isDirectory() ? 'dir' : 'other';
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
      throw err;
    }
  },
  readlink: (p: string) => readlinkSync(p),
};

interface DirAttrs {
  /** Relative to the layer root: checked again before use, since later entries may have replaced a parent. */
  rel: string[];
  path: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: Date;
}

/** Commands Node has no call for (mknod, mkfifo, setfattr), run after the tar is read. */
type Deferred = { file: string; args: string[]; rel: string[] };

export class LayerWriter {
  private readonly root: string;
  private readonly cache = new DirCache();
  private readonly dirs: DirAttrs[] = [];
  private readonly deferred: Deferred[] = [];
  private readonly written = new Set<string>();
  private readonly opaque: string[] = [];
  readonly skipped: string[] = [];
  /** How many entries were skipped in all (`skipped` keeps the first 100). */
  skippedCount = 0;
  bytesWritten = 0;

  constructor(
    root: string,
    private readonly mode: WhiteoutMode,
    private readonly ids?: IdTranslation,
  ) {
    this.root = root;
  }

  private uid(id: number): number {
    return this.ids ? this.ids.uid(id) : id;
  }

  private gid(id: number): number {
    return this.ids ? this.ids.gid(id) : id;
  }

  private template?: string;

  private skip(what: string): void {
    this.skippedCount++;
    if (this.skipped.length < 100) this.skipped.push(what);
  }

  /** A 0:0 character device at the layer root, made once per layer, removed by finish(). */
  private whiteoutTemplate(): string {
    if (this.template) return this.template;
    const path = joinUnder(this.root, [`.trellis-whiteout-${process.pid}-${Date.now()}`]);
    const r = spawnSync('mknod', ['-m', '0', path, 'c', '0', '0'], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.error || r.status !== 0) throw new Error(`mknod ${path}: ${r.error?.message ?? (r.stderr ?? '').trim()}`);
    lchownSync(path, this.uid(0), this.gid(0));
    this.template = path;
    return path;
  }

  /** Resolves the parent of an entry, creating missing directories; returns [parent comps, last name]. */
  private place(name: string): { parent: string[]; base: string; rel: string } | undefined {
    const comps = entryComponents(name);
    if (comps.length === 0) return undefined;
    const base = comps.pop() as string;
    const key = comps.join('/');
    let parent = this.cache.get(key);
    if (parent === undefined) {
      parent = resolveDir(this.root, comps, fsProbe, name);
      this.ensureDirs(parent);
      this.cache.set(key, parent);
    }
    return { parent, base, rel: [...parent, base].join('/') };
  }

  private ensureDirs(comps: string[]): void {
    for (let i = 1; i <= comps.length; i++) {
      const p = joinUnder(this.root, comps.slice(0, i));
      try {
        mkdirSync(p, { mode: 0o755 });
        if (this.ids) lchownSync(p, this.uid(0), this.gid(0));
        this.written.add(comps.slice(0, i).join('/'));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
  }

  /** Removes whatever is at `rel` unless it is a directory and `keepDir` is set. */
  private clear(rel: string, keepDir: boolean): void {
    const p = joinUnder(this.root, rel.split('/'));
    let st;
    try {
      st = lstatSync(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    if (keepDir && st.isDirectory()) return;
    rmSync(p, { recursive: true, force: true });
    // Only a directory or a symlink can have been a step of a cached resolution (every
    // step exists once place() has run). Replacing one is rare: forget everything.
    if (st.isDirectory() || st.isSymbolicLink()) this.cache.clear();
  }

  async entry(header: Header, body: AsyncIterable<Buffer>): Promise<void> {
    const name = header.name;
    const at = this.place(name);
    if (at === undefined) {
      // The layer root itself: only its attributes.
      if (header.type === 'directory') this.dirs.push(this.dirAttrs([], header));
      return drain(body);
    }
    const { parent, base, rel } = at;
    const path = joinUnder(this.root, [...parent, base]);

    if (base === OPAQUE_WHITEOUT) {
      this.opaque.push(parent.join('/'));
      return drain(body);
    }
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const hidden = base.slice(WHITEOUT_PREFIX.length);
      if (hidden === '' || hidden === '.' || hidden === '..') throw new InvalidArgument(`tar entry \`${name}\` is not a valid whiteout`);
      const hiddenRel = [...parent, hidden].join('/');
      this.clear(hiddenRel, false);
      if (this.mode === 'overlay') {
        // overlay reads any 0:0 character device as a whiteout; links of one device cost no process each.
        linkSync(this.whiteoutTemplate(), joinUnder(this.root, [...parent, hidden]));
        this.written.add(hiddenRel);
      }
      return drain(body);
    }

    const { uid: rawUid, gid: rawGid, mtime } = ownerAndTime(header);
    const uid = this.uid(rawUid);
    const gid = this.gid(rawGid);
    const mode = (header.mode ?? 0o644) & 0o7777;
    const xattrs = paxXattrs(header, (what) => this.skip(what));

    switch (header.type) {
      case 'directory': {
        this.clear(rel, true);
        try {
          mkdirSync(path, { mode: 0o700 });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
        this.written.add(rel);
        this.dirs.push({ rel: [...parent, base], path, mode, uid, gid, mtime });
        this.setXattrs([...parent, base], xattrs);
        return drain(body);
      }
      case 'file':
      case 'contiguous-file': {
        this.clear(rel, false);
        const fd = openSync(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
        try {
          for await (const chunk of body) {
            let off = 0;
            while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
            this.bytesWritten += chunk.length;
          }
        } finally {
          closeSync(fd);
        }
        lchownSync(path, uid, gid);
        chmodSync(path, mode); // after chown, which clears setuid and setgid
        utimesSync(path, mtime, mtime);
        this.written.add(rel);
        this.setXattrs([...parent, base], xattrs);
        return;
      }
      case 'symlink': {
        this.clear(rel, false);
        symlinkSync(header.linkname ?? '', path);
        lchownSync(path, uid, gid);
        lutimesSync(path, mtime, mtime);
        this.written.add(rel);
        return drain(body);
      }
      case 'link': {
        const target = this.place(header.linkname ?? '');
        if (target === undefined) throw new InvalidArgument(`tar entry \`${name}\`: hard link to the layer root`);
        const targetPath = joinUnder(this.root, [...target.parent, target.base]);
        if (targetPath === path) return drain(body);
        this.clear(rel, false);
        try {
          linkSync(targetPath, path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            throw new InvalidArgument(`tar entry \`${name}\`: hard link target \`${header.linkname ?? ''}\` does not exist in the layer`);
          }
          throw err;
        }
        this.written.add(rel);
        return drain(body);
      }
      case 'fifo': {
        this.clear(rel, false);
        const frel = [...parent, base];
        this.deferred.push({ file: 'mkfifo', args: ['-m', mode.toString(8), path], rel: frel });
        this.deferred.push({ file: 'chown', args: ['-h', `${uid}:${gid}`, path], rel: frel });
        this.written.add(rel);
        return drain(body);
      }
      case 'character-device':
      case 'block-device':
        // grootfs skips device nodes: a user namespace cannot make them, and /dev comes from the runtime.
        this.skip(name);
        return drain(body);
      default:
        // pax headers are consumed by tar-stream; anything else (sparse, GNU dumpdir, …) is skipped.
        this.skip(`${name} (${header.type ?? 'unknown'})`);
        return drain(body);
    }
  }

  private dirAttrs(rel: string[], header: Header): DirAttrs {
    const o = ownerAndTime(header);
    return { rel, path: joinUnder(this.root, rel), mode: (header.mode ?? 0o755) & 0o7777, uid: this.uid(o.uid), gid: this.gid(o.gid), mtime: o.mtime };
  }

  private setXattrs(rel: string[], xattrs: [string, Buffer][]): void {
    for (const [name, value] of xattrs) {
      if (droppedXattr(name)) continue;
      this.deferred.push({ file: 'setfattr', args: ['-h', '-n', name, '-v', `0s${value.toString('base64')}`, joinUnder(this.root, rel)], rel });
    }
  }

  /**
   * True when every parent of `rel` is still a real directory. A later entry may
   * have turned a parent into a symlink; work recorded before that is dropped
   * rather than done through the link.
   */
  private plainParents(rel: string[]): boolean {
    for (let i = 1; i < rel.length; i++) {
      const st = lstatSync(joinUnder(this.root, rel.slice(0, i)), { throwIfNoEntry: false });
      if (!st || !st.isDirectory()) return false;
    }
    return true;
  }

  /** Every path this layer wrote, and every directory on the way to one. */
  private writtenPrefixes(): Set<string> {
    const out = new Set<string>();
    for (const w of this.written) {
      const parts = w.split('/');
      for (let i = 1; i <= parts.length; i++) out.add(parts.slice(0, i).join('/'));
    }
    return out;
  }

  private pruneOpaque(rel: string, keep: Set<string>): void {
    const dir = rel === '' ? this.root : joinUnder(this.root, rel.split('/'));
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && (err as NodeJS.ErrnoException).code !== 'ENOTDIR') throw err;
    }
    for (const n of names) {
      const childRel = rel === '' ? n : `${rel}/${n}`;
      const child = joinUnder(this.root, childRel.split('/'));
      if (!keep.has(childRel)) {
        rmSync(child, { recursive: true, force: true });
        continue;
      }
      const st = lstatSync(child, { throwIfNoEntry: false });
      if (st?.isDirectory()) this.pruneOpaque(childRel, keep);
    }
  }

  /** Opaque dirs, deferred commands, then directory attributes deepest first. */
  finish(): void {
    for (const rel of this.opaque) {
      const dir = rel === '' ? this.root : joinUnder(this.root, rel.split('/'));
      const relc = rel === '' ? [] : rel.split('/');
      if (!this.plainParents([...relc, '.'])) continue;
      if (this.mode === 'overlay') {
        this.deferred.push({ file: 'setfattr', args: ['-h', '-n', 'user.overlay.opaque', '-v', 'y', dir], rel: relc });
        continue;
      }
      // btrfs: whatever the layers below put anywhere under here goes; what this layer wrote stays.
      this.pruneOpaque(rel, this.writtenPrefixes());
    }
    for (const d of this.deferred) {
      if (!this.plainParents(d.rel)) continue;
      const r = spawnSync(d.file, d.args, { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
      if (r.error) throw new Error(`${d.file}: ${r.error.message}`);
      if (r.status !== 0) throw new Error(`${d.file} ${d.args.join(' ')}: ${(r.stderr ?? '').trim() || `exit status ${r.status}`}`);
    }
    if (this.template) rmSync(this.template, { force: true });
    for (const d of this.dirs.reverse()) {
      if (!this.plainParents([...d.rel, '.'])) continue;
      lchownSync(d.path, d.uid, d.gid);
      chmodSync(d.path, d.mode);
      utimesSync(d.path, d.mtime, d.mtime);
    }
  }
}

type Pax = Record<string, string> | null | undefined;

/** tar-stream applies only path, linkpath and size from PAX records; uid, gid and mtime are read here. */
function ownerAndTime(header: Header): { uid: number; gid: number; mtime: Date } {
  const pax = header.pax as Pax;
  const num = (v: string | undefined, fallback: number): number => {
    if (v === undefined || !/^\d+$/.test(v)) return fallback;
    return Number(v);
  };
  let mtime = header.mtime ?? new Date(0);
  if (pax?.mtime !== undefined && /^-?\d+(\.\d+)?$/.test(pax.mtime)) mtime = new Date(Number(pax.mtime) * 1000);
  return { uid: num(pax?.uid, header.uid ?? 0), gid: num(pax?.gid, header.gid ?? 0), mtime };
}

/**
 * `SCHILY.xattr.*` records. tar-stream decodes PAX values as UTF-8, so a binary
 * value (a file capability, say) cannot be recovered: it is reported as skipped
 * rather than written wrong.
 */
function paxXattrs(header: Header, skipped: (what: string) => void): [string, Buffer][] {
  const pax = header.pax as Pax;
  if (!pax) return [];
  const out: [string, Buffer][] = [];
  for (const [k, v] of Object.entries(pax)) {
    if (!k.startsWith('SCHILY.xattr.')) continue;
    const name = k.slice('SCHILY.xattr.'.length);
    if (v.includes('\uFFFD')) {
      skipped(`${header.name} (xattr ${name}: binary value)`);
      continue;
    }
    out.push([name, Buffer.from(v, 'utf8')]);
  }
  return out;
}

async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  for await (const _ of body) {
    // skip the entry's data
  }
}

/**
 * Passes a tar stream through up to its end-of-archive marker (two zero blocks),
 * as Go's archive/tar reads it: entries hidden after the marker are never
 * extracted (the digests upstream still cover every byte). One zero block followed
 * by anything but another is a malformed archive.
 */
export class TarEnd extends Transform {
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes of entry data (padded to 512) still to pass before the next header. */
  private data = 0;
  private zeroBlocks = 0;
  private ended = false;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.ended) return cb();
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    try {
      while (!this.ended) {
        if (this.data > 0) {
          const n = Math.min(this.data, this.pending.length);
          if (n === 0) break;
          out.push(this.pending.subarray(0, n));
          this.pending = this.pending.subarray(n);
          this.data -= n;
          continue;
        }
        if (this.pending.length < 512) break;
        const block = this.pending.subarray(0, 512);
        this.pending = this.pending.subarray(512);
        if (block.every((b) => b === 0)) {
          out.push(block);
          if (++this.zeroBlocks === 2) this.ended = true;
          continue;
        }
        if (this.zeroBlocks > 0) throw new InvalidArgument('invalid layer: a tar header follows a single zero block');
        out.push(block);
        const size = tarSize(block);
        this.data = Math.ceil(size / 512) * 512;
      }
    } catch (err) {
      return cb(err as Error);
    }
    cb(null, out.length === 0 ? undefined : Buffer.concat(out));
  }
}

/** The size field of a tar header: octal, or GNU base-256 for large values. */
function tarSize(block: Buffer): number {
  const field = block.subarray(124, 136);
  if ((field[0] as number) & 0x80) {
    let n = 0;
    for (let i = 1; i < 12; i++) n = n * 256 + (field[i] as number);
    if (!Number.isSafeInteger(n)) throw new InvalidArgument('invalid layer: a tar entry is too large');
    return n;
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/g, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new InvalidArgument('invalid layer: a tar header has a malformed size');
  return parseInt(text, 8);
}

/**
 * The image's base-directory annotation names where the layer goes; it is
 * resolved like an entry (a btrfs snapshot below may hold symlinks on the way).
 */
function layerRoot(target: string, baseDirectory: string | undefined): string {
  if (!baseDirectory) return target;
  const resolved = resolveDir(target, entryComponents(baseDirectory), fsProbe, baseDirectory);
  for (let i = 1; i <= resolved.length; i++) {
    try {
      mkdirSync(joinUnder(target, resolved.slice(0, i)), { mode: 0o755 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  return joinUnder(target, resolved);
}

export async function unpackLayer(job: UnpackJob, ids?: IdTranslation): Promise<UnpackResult> {
  // A layer blob is a regular file (layouts may link to one): a FIFO or a device would
  // block or never end. O_NONBLOCK keeps the open of a FIFO from waiting for a writer.
  const fd = openSync(job.blob, fsc.O_RDONLY | fsc.O_NONBLOCK);
  let kind: 'gzip' | 'none';
  try {
    if (!fstatSync(fd).isFile()) throw new InvalidArgument(`layer blob ${job.blob} is not a regular file`);
    kind = compression(fd);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  const writer = new LayerWriter(layerRoot(job.target, job.baseDirectory), job.mode, ids);
  const compressed = new Hasher();
  const plain = new Hasher();
  const ex = tarExtract();
  const source = createReadStream('', { fd, highWaterMark: 1 << 20 });
  const sink = ex as unknown as NodeJS.WritableStream;
  const piped =
    kind === 'gzip'
      ? pipeline(source, compressed, createGunzip({ chunkSize: 256 * 1024 }), plain, new TarEnd(), sink)
      : pipeline(source, compressed, plain, new TarEnd(), sink);
  const consume = (async () => {
    for await (const entry of ex) {
      await writer.entry(entry.header, entry as unknown as AsyncIterable<Buffer>);
    }
  })();
  // If the writer fails, stop reading; if reading fails, the iterator throws too.
  await Promise.all([piped, consume.catch((err: unknown) => { source.destroy(err as Error); throw err; })]);
  const digest = `sha256:${compressed.hash.digest('hex')}`;
  const diffID = `sha256:${plain.hash.digest('hex')}`;
  if (job.digest !== undefined && job.digest !== digest) {
    throw new InvalidArgument(`layer ${job.digest} failed verification: got ${digest}`);
  }
  if (job.diffID !== undefined && job.diffID !== diffID) {
    throw new InvalidArgument(`layer ${job.digest ?? job.blob} failed verification: its uncompressed content is ${diffID}, the image config says ${job.diffID}`);
  }
  writer.finish();
  return { bytesWritten: writer.bytesWritten, digest, diffID, skipped: writer.skipped };
}
