// Disk limits on the btrfs store (issue #11). Setting a qgroup limit needs root, so it
// goes through the setuid gate's narrow `quota` subcommand (plugins/networker/gate/quota.c),
// which resolves the container's subvolume itself from the root-listed store. Reading
// usage needs nothing: the kernel publishes every qgroup's counters, world-readable,
// in /sys/fs/btrfs/<fsid>/qgroups/0_<subvolume id>/.
import { readdir, readFile } from 'node:fs/promises';
import { ExternalFailure } from '../../src/errors.js';
import { runCommand, type CommandRunner } from './remove.js';

/** Where root lists each user's quota stores (one `store=/path` a line); the gate trusts only this. */
export const QUOTA_CONF_DIR = '/etc/trellis/quota';

export type Scope = 'exclusive' | 'total';

/**
 * What the gate recorded for a limited image: btrfs, the filesystem and the subvolume its
 * qgroup is on; XFS, the project id the gate gave the image's dirs (fsid 'xfs', subvolume 0).
 */
export interface QuotaRecord {
  fsid: string;
  subvolume: number;
  project?: number;
}

/** A user's XFS project ids, FIRST-LAST: root gives each user its own block (the gate allocates only from it). */
export interface ProjectRange {
  first: number;
  last: number;
}
export const PROJECT_BLOCK = 65536;
/** Far above the ids an administrator hands out by hand in /etc/projid. */
export const PROJECT_BASE = 1 << 20;

/** The conf file for a set of stores (and the user's project range, when it has an XFS store), for `gdn setup`. */
export function quotaConf(stores: string[], projects?: ProjectRange): string {
  const range = projects === undefined ? '' : `projects=${projects.first}-${projects.last}\n`;
  return `# written by gdn setup: the stores whose containers cni-gate may limit (issue #11)\n${range}${[...new Set(stores)].map((s) => `store=${s}\n`).join('')}`;
}

/** The store paths of a conf file's text (lines that are not store= are left out). */
export function parseQuotaConf(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('store='))
    .map((l) => l.slice('store='.length));
}

/** The projects= range of a conf file's text, if any. */
export function parseProjectRange(text: string): ProjectRange | undefined {
  const m = /^projects=(\d+)-(\d+)$/m.exec(text);
  return m ? { first: Number(m[1]), last: Number(m[2]) } : undefined;
}

/** The first block of PROJECT_BLOCK ids no other user's conf holds. */
export function nextProjectRange(taken: ProjectRange[]): ProjectRange {
  for (let first = PROJECT_BASE; first + PROJECT_BLOCK - 1 < 0xffffffff; first += PROJECT_BLOCK) {
    const last = first + PROJECT_BLOCK - 1;
    if (!taken.some((t) => t.first <= last && first <= t.last)) return { first, last };
  }
  throw new Error('no free block of XFS project ids is left');
}

export class QuotaGate {
  constructor(
    private readonly gate: string,
    private readonly run: CommandRunner = runCommand,
  ) {}

  private async call(args: string[]): Promise<string> {
    const r = await this.run(this.gate, ['quota', ...args], { timeoutMs: 60_000 });
    if (r.exitCode !== 0) {
      const last = r.stderr.trim().split('\n').pop() || `exit status ${r.exitCode}`;
      throw new ExternalFailure('cni-gate', last);
    }
    return r.stdout;
  }

  /**
   * btrfs: limits <store>/images/<id>/rootfs, exclusive bytes or referenced (image + writes)
   * bytes. XFS: limits the project of <store>/images/<id> (exclusive only; bytes 0 is no byte
   * limit) and, when given, its inodes.
   */
  async limit(store: string, id: string, scope: Scope, bytes: number, inodes?: number): Promise<QuotaRecord> {
    const args = ['limit', store, id, scope, String(Math.floor(bytes))];
    if (inodes !== undefined && inodes > 0) args.push(String(Math.floor(inodes)));
    const out = await this.call(args);
    const x = /^xfs (\d+)\n?$/.exec(out);
    if (x) return { fsid: 'xfs', subvolume: 0, project: Number(x[1]) };
    const m = /^([0-9a-f]{32}) (\d+)\n?$/.exec(out);
    if (!m) throw new ExternalFailure('cni-gate', `unexpected output from cni-gate quota limit: ${out.slice(0, 80)}`);
    return { fsid: m[1] as string, subvolume: Number(m[2]) };
  }

  /** XFS: what the image's project owns (Q_XGETQUOTA, root's to read). */
  async usage(store: string, id: string): Promise<{ bytes: number; inodes: number }> {
    const out = await this.call(['usage', store, id]);
    const m = /^(\d+) (\d+)\n?$/.exec(out);
    if (!m) throw new ExternalFailure('cni-gate', `unexpected output from cni-gate quota usage: ${out.slice(0, 80)}`);
    return { bytes: Number(m[1]), inodes: Number(m[2]) };
  }

  async release(store: string, id: string): Promise<void> {
    await this.call(['release', store, id]);
  }
}

/** `btrfs inspect-internal rootid`: the subvolume id of a path (no privilege needed). */
export async function subvolumeId(path: string, run: CommandRunner = runCommand): Promise<number> {
  const r = await run('btrfs', ['inspect-internal', 'rootid', path]);
  const id = Number(r.stdout.trim());
  if (r.exitCode !== 0 || !Number.isSafeInteger(id) || id < 256) {
    throw new ExternalFailure('btrfs', `btrfs inspect-internal rootid ${path}: ${r.stderr.trim().split('\n').pop() || 'no id'}`);
  }
  return id;
}

/** 16 raw bytes as the gate prints them, to the dashed form /sys/fs/btrfs uses. */
export function fsidToUuid(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The filesystem uuid of the btrfs mounted at or above `path`: the mount's source device
 * (from mountinfo) is listed under /sys/fs/btrfs/<uuid>/devices/.
 */
export async function fsUuidOf(path: string, mountinfo?: string): Promise<string | undefined> {
  const text = mountinfo ?? (await readFile('/proc/self/mountinfo', 'utf8'));
  let best: { point: string; source: string } | undefined;
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const point = (pre.split(' ')[4] ?? '').replace(/\\040/g, ' ');
    const [fstype, source] = post.split(' ');
    if (fstype !== 'btrfs' || source === undefined) continue;
    const under = point === '/' || path === point || path.startsWith(`${point}/`);
    if (under && (!best || point.length >= best.point.length)) best = { point, source };
  }
  if (!best) return undefined;
  const dev = best.source.split('/').pop() ?? '';
  for (const uuid of await readdir('/sys/fs/btrfs').catch(() => [] as string[])) {
    const devs = await readdir(`/sys/fs/btrfs/${uuid}/devices`).catch(() => [] as string[]);
    if (devs.includes(dev)) return uuid;
  }
  return undefined;
}

/**
 * A qgroup's usage from the kernel's counters: referenced (image + writes) and exclusive
 * (writes), each with the data reserved for writes not yet committed, so a write shows up
 * at once rather than at the next transaction commit.
 */
export async function qgroupUsage(uuid: string, subvolume: number): Promise<{ total: number; exclusive: number } | undefined> {
  const dir = `/sys/fs/btrfs/${uuid}/qgroups/0_${subvolume}`;
  const read = (f: string): Promise<number> => readFile(`${dir}/${f}`, 'utf8').then((t) => Number(t.trim()));
  try {
    const [rfer, excl, rsv] = await Promise.all([read('referenced'), read('exclusive'), read('rsv_data')]);
    if (![rfer, excl, rsv].every(Number.isFinite)) return undefined;
    return { total: rfer + rsv, exclusive: excl + rsv };
  } catch {
    return undefined;
  }
}
