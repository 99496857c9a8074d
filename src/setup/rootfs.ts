// The user's default rootfs: the root-owned source tree copied with every owner
// moved into the user's ranges, so that inside a container's user namespace it
// looks exactly like the source. Containers use it as an overlay lower dir, so a
// tree in use is never changed: a new one is built aside and renamed into place.
import { createHash } from 'node:crypto';
import {
  chmodSync,
  constants,
  copyFileSync,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  utimesSync,
} from 'node:fs';
import { join } from 'node:path';
import { FailedPrecondition } from '../errors.js';
import { toHost, type IdMapping } from '../idmap/subid.js';
import { lstatOrUndefined, readTextOrEmpty, writeFileAtomic } from './host-files.js';

/** The host id that container id `id` is stored as; a tree with an id outside the maps cannot be imported. */
export function mapOwner(maps: IdMapping[], id: number, kind: 'uid' | 'gid'): number {
  const host = toHost(maps, id);
  if (host === undefined) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_ROOTFS_UNMAPPED_ID',
      `the rootfs source has an entry owned by ${kind} ${id}, which the user's ${kind} mappings do not cover`,
    );
  }
  return host;
}

/** A digest of names, types, owners, modes, sizes, mtimes and link targets: what make-rootfs changes when it rebuilds. */
export function treeDigest(dir: string): string {
  const hash = createHash('sha256');
  const walk = (abs: string, rel: string): void => {
    const st = lstatSync(abs);
    const link = st.isSymbolicLink() ? readlinkSync(abs) : '';
    hash.update(`${rel}\0${st.mode}\0${st.uid}\0${st.gid}\0${st.isFile() ? st.size : 0}\0${Math.trunc(st.mtimeMs)}\0${link}\n`);
    if (st.isDirectory()) for (const name of readdirSync(abs).sort()) walk(join(abs, name), `${rel}/${name}`);
  };
  walk(dir, '.');
  return hash.digest('hex');
}

export interface RootfsStamp {
  version: 1;
  source: string;
  sourceDigest: string;
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
}

export function stampText(stamp: RootfsStamp): string {
  return `${JSON.stringify(stamp)}\n`;
}

export interface SkippedEntry {
  path: string;
  kind: string;
}

/**
 * Copies `src` to `dst` (which must not exist) with owners mapped. Modes are set
 * after owners, since chown clears setuid/setgid bits. Device nodes, fifos and
 * sockets are skipped: rootless containers cannot use image device nodes anyway.
 */
export function copyTreeMapped(src: string, dst: string, uidMaps: IdMapping[], gidMaps: IdMapping[]): SkippedEntry[] {
  const skipped: SkippedEntry[] = [];
  const links = new Map<string, string>();
  const walk = (from: string, to: string, rel: string): void => {
    const st = lstatSync(from);
    const uid = mapOwner(uidMaps, st.uid, 'uid');
    const gid = mapOwner(gidMaps, st.gid, 'gid');
    if (st.isDirectory()) {
      mkdirSync(to, { mode: 0o700 });
      for (const name of readdirSync(from)) walk(join(from, name), join(to, name), `${rel}/${name}`);
      lchownSync(to, uid, gid);
      chmodSync(to, st.mode & 0o7777);
      utimesSync(to, st.atime, st.mtime);
    } else if (st.isSymbolicLink()) {
      symlinkSync(readlinkSync(from), to);
      lchownSync(to, uid, gid);
      lutimesSync(to, st.atime, st.mtime);
    } else if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? links.get(key) : undefined;
      if (first !== undefined) {
        linkSync(first, to);
        return;
      }
      copyFileSync(from, to, constants.COPYFILE_FICLONE);
      lchownSync(to, uid, gid);
      chmodSync(to, st.mode & 0o7777);
      utimesSync(to, st.atime, st.mtime);
      if (st.nlink > 1) links.set(key, to);
    } else {
      skipped.push({ path: rel, kind: st.isFIFO() ? 'fifo' : st.isSocket() ? 'socket' : 'device' });
    }
  };
  walk(src, dst, '');
  return skipped;
}

export interface ImportOptions {
  source: string;
  dest: string;
  stampPath: string;
  /** A root-only directory on dest's filesystem to build in (not the user's dir: the user could swap paths there). */
  scratchParent: string;
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
}

export interface ImportResult {
  outcome: 'already present' | 'created' | 'replaced';
  /** Where the replaced tree was moved: containers may still use it as a lower dir. */
  previous?: string;
  skipped: SkippedEntry[];
}

export function importRootfs(opts: ImportOptions): ImportResult {
  const srcStat = lstatOrUndefined(opts.source);
  if (srcStat === undefined || !srcStat.isDirectory()) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_ROOTFS_SOURCE_MISSING',
      `the default rootfs source ${opts.source} does not exist: build it with 'sudo bash scripts/make-rootfs'`,
      'sudo bash scripts/make-rootfs',
    );
  }
  const stamp = stampText({
    version: 1,
    source: opts.source,
    sourceDigest: treeDigest(opts.source),
    uidMappings: opts.uidMappings,
    gidMappings: opts.gidMappings,
  });
  const current = lstatOrUndefined(opts.dest);
  if (current !== undefined && current.isDirectory() && readTextOrEmpty(opts.stampPath) === stamp) {
    return { outcome: 'already present', skipped: [] };
  }

  const scratch = mkdtempSync(join(opts.scratchParent, '.rootfs-'));
  try {
    const built = join(scratch, 'rootfs');
    const skipped = copyTreeMapped(opts.source, built, opts.uidMappings, opts.gidMappings);
    let previous: string | undefined;
    if (current !== undefined) {
      previous = `${opts.dest}.old-${Date.now()}`;
      renameSync(opts.dest, previous);
    }
    renameSync(built, opts.dest);
    writeFileAtomic(opts.stampPath, stamp, { mode: 0o644, uid: 0, gid: 0 });
    return { outcome: previous === undefined ? 'created' : 'replaced', previous, skipped };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
