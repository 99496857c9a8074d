// Which flags of a host mount a user namespace cannot drop: a bind mount made inside
// one must repeat them or the kernel refuses it (plugins.md §9 item 8).
import { readFileSync } from 'node:fs';

const LOCKABLE = new Set(['nosuid', 'nodev', 'noexec', 'noatime', 'nodiratime', 'relatime']);

export interface MountEntry {
  mountId: number;
  parentId: number;
  /** "major:minor" of the filesystem; the same hierarchy mounted twice shares it. */
  device: string;
  /** The path inside the filesystem that is mounted. */
  root: string;
  mountPoint: string;
  options: string[];
  fsType: string;
  source: string;
  /** Filesystem options after the separator (for cgroup v1: the controllers). */
  superOptions: string[];
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [left, right] = line.split(' - ');
    if (left === undefined || right === undefined) continue;
    const f = left.split(' ');
    const r = right.split(' ');
    if (f.length < 6 || r.length < 2) continue;
    if (!/^\d+$/.test(f[0]!) || !/^\d+$/.test(f[1]!)) continue;
    out.push({
      mountId: Number(f[0]),
      parentId: Number(f[1]),
      device: f[2]!,
      root: unescape(f[3]!),
      mountPoint: unescape(f[4]!),
      options: f[5]!.split(','),
      fsType: r[0]!,
      source: unescape(r[1]!),
      superOptions: (r[2] ?? '').split(','),
    });
  }
  return out;
}

/** The mount a path lives on: the last listed mount whose mount point is a prefix of it. */
export function mountOf(entries: MountEntry[], path: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const e of entries) {
    const mp = e.mountPoint;
    const under = mp === '/' || path === mp || path.startsWith(mp.endsWith('/') ? mp : `${mp}/`);
    if (under && (best === undefined || mp.length >= best.mountPoint.length)) best = e;
  }
  return best;
}

export function lockedFlags(path: string, text = readFileSync('/proc/self/mountinfo', 'utf8')): string[] {
  const m = mountOf(parseMountInfo(text), path);
  if (m === undefined) return [];
  return m.options.filter((o) => LOCKABLE.has(o));
}
