// Unpacks one layer blob into a layer directory. Runs inside a user namespace that
// carries the store's mappings (see unpack-main.ts), as that namespace's root, so
// files keep their owners as mapped ids, and setuid bits, hard links and xattrs
// survive. Both digests are computed while reading; the caller keeps the result
// only when they match.
import { spawnSync } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import {
  closeSync,
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

function compression(blob: string): 'gzip' | 'none' {
  const fd = openSync(blob, 'r');
  const head = Buffer.alloc(4);
  let n: number;
  try {
    n = readSync(fd, head, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
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
    this.cache.invalidate(rel);
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
        const wrel = [...parent, hidden];
        const wpath = joinUnder(this.root, wrel);
        this.deferred.push({ file: 'mknod', args: ['-m', '0', wpath, 'c', '0', '0'], rel: wrel });
        this.deferred.push({ file: 'chown', args: ['-h', `${this.uid(0)}:${this.gid(0)}`, wpath], rel: wrel });
      }
      return drain(body);
    }

    const { uid: rawUid, gid: rawGid, mtime } = ownerAndTime(header);
    const uid = this.uid(rawUid);
    const gid = this.gid(rawGid);
    const mode = (header.mode ?? 0o644) & 0o7777;
    const xattrs = paxXattrs(header, this.skipped);

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
        this.skipped.push(name);
        return drain(body);
      default:
        // pax headers are consumed by tar-stream; anything else (sparse, GNU dumpdir, …) is skipped.
        this.skipped.push(`${name} (${header.type ?? 'unknown'})`);
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
      // btrfs: what the layers below put here goes; what this layer wrote stays.
      let names: string[] = [];
      try {
        names = readdirSync(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      for (const n of names) {
        const childRel = rel === '' ? n : `${rel}/${n}`;
        if (!this.written.has(childRel)) rmSync(joinUnder(this.root, childRel.split('/')), { recursive: true, force: true });
      }
    }
    for (const d of this.deferred) {
      if (!this.plainParents(d.rel)) continue;
      const r = spawnSync(d.file, d.args, { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
      if (r.error) throw new Error(`${d.file}: ${r.error.message}`);
      if (r.status !== 0) throw new Error(`${d.file} ${d.args.join(' ')}: ${(r.stderr ?? '').trim() || `exit status ${r.status}`}`);
    }
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
function paxXattrs(header: Header, skipped: string[]): [string, Buffer][] {
  const pax = header.pax as Pax;
  if (!pax) return [];
  const out: [string, Buffer][] = [];
  for (const [k, v] of Object.entries(pax)) {
    if (!k.startsWith('SCHILY.xattr.')) continue;
    const name = k.slice('SCHILY.xattr.'.length);
    if (v.includes('\uFFFD')) {
      skipped.push(`${header.name} (xattr ${name}: binary value)`);
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

export async function unpackLayer(job: UnpackJob, ids?: IdTranslation): Promise<UnpackResult> {
  let target = job.target;
  if (job.baseDirectory) {
    const comps = entryComponents(job.baseDirectory);
    mkdirSync(joinUnder(target, comps), { recursive: true, mode: 0o755 });
    target = joinUnder(target, comps);
  }
  const writer = new LayerWriter(target, job.mode, ids);
  const compressed = new Hasher();
  const plain = new Hasher();
  const ex = tarExtract();
  const source = createReadStream(job.blob, { highWaterMark: 1 << 20 });
  const sink = ex as unknown as NodeJS.WritableStream;
  const piped =
    compression(job.blob) === 'gzip'
      ? pipeline(source, compressed, createGunzip(), plain, sink)
      : pipeline(source, compressed, plain, sink);
  const consume = (async () => {
    for await (const entry of ex) {
      await writer.entry(entry.header, entry as unknown as AsyncIterable<Buffer>);
    }
  })();
  // If the writer fails, stop reading; if reading fails, the iterator throws too.
  await Promise.all([piped, consume.catch((err: unknown) => { source.destroy(err as Error); throw err; })]);
  // tar readers stop at the end-of-archive blocks; what follows still counts for the digests.
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
