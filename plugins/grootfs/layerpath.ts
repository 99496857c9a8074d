// Where a tar entry lands inside a layer. Entry names are cleaned lexically and may
// not climb out of the layer; symlinks met on the way (made by this layer or, for
// btrfs, by the layers below) are followed as a chroot would follow them, so a
// link to `/etc` or `../../..` leads back inside the layer, never to the host.
import { InvalidArgument } from '../../src/errors.js';

export type PathKind = 'dir' | 'symlink' | 'other' | 'missing';

/** What resolution needs from the file system; tests hand an in-memory tree. */
export interface PathProbe {
  kind(absPath: string): PathKind;
  readlink(absPath: string): string;
}

export class LayerEscape extends InvalidArgument {}

const MAX_SYMLINK_HOPS = 40;

/**
 * The components of a tar entry name, relative to the layer root. A leading `/` or
 * `./` is dropped (tar's usual forms); `a/../b` becomes `b`; a name that climbs
 * above the root is refused. The empty list names the root itself.
 */
export function entryComponents(name: string): string[] {
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length === 0) throw new LayerEscape(`tar entry \`${name}\` points outside the layer`);
      out.pop();
      continue;
    }
    if (c.includes('\0')) throw new InvalidArgument(`tar entry \`${name.replace(/\0/g, '\\0')}\` has a NUL in its name`);
    out.push(c);
  }
  return out;
}

export function joinUnder(root: string, comps: string[]): string {
  return comps.length === 0 ? root : `${root}/${comps.join('/')}`;
}

/**
 * Resolves directory components under `root`, following symlinks inside the root
 * (absolute targets restart at the root, `..` stops at it). Components that do not
 * exist yet are kept as they are: the caller creates them as directories.
 */
export function resolveDir(root: string, comps: string[], probe: PathProbe, what = comps.join('/')): string[] {
  const resolved: string[] = [];
  const queue = [...comps];
  let hops = 0;
  let missing = false;
  while (queue.length > 0) {
    const c = queue.shift() as string;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      resolved.pop();
      missing = false;
      continue;
    }
    if (missing) {
      resolved.push(c);
      continue;
    }
    const path = joinUnder(root, [...resolved, c]);
    const kind = probe.kind(path);
    if (kind === 'symlink') {
      if (++hops > MAX_SYMLINK_HOPS) throw new InvalidArgument(`tar entry \`${what}\`: too many levels of symbolic links`);
      const target = probe.readlink(path);
      if (target.startsWith('/')) resolved.length = 0;
      queue.unshift(...target.split('/'));
      continue;
    }
    if (kind === 'other') {
      throw new InvalidArgument(`tar entry \`${what}\`: \`/${[...resolved, c].join('/')}\` is not a directory`);
    }
    if (kind === 'missing') missing = true;
    resolved.push(c);
  }
  return resolved;
}

/**
 * Caches resolved parent directories for one layer. Every step of a cached
 * resolution exists once the writer has made the missing ones, so only removing a
 * directory or a symlink can make an entry wrong: the writer then clears it all.
 */
export class DirCache {
  private readonly map = new Map<string, string[]>();

  get(key: string): string[] | undefined {
    return this.map.get(key);
  }

  set(key: string, resolved: string[]): void {
    this.map.set(key, resolved);
  }

  clear(): void {
    this.map.clear();
  }
}

/** OCI whiteout names (image-spec layer.md). */
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';

/**
 * xattrs an image may not carry into the store: overlay's own (they would redirect
 * or hide lower layers) and `trusted.*`, which a user namespace cannot set anyway.
 */
export function droppedXattr(name: string): boolean {
  return name.startsWith('trusted.') || name.startsWith('user.overlay.');
}
