// Disk limits on the btrfs store (issue #11). Setting a qgroup limit needs root, so it
// goes through the setuid gate's narrow `quota` subcommand (plugins/networker/gate/quota.c),
// which resolves the container's subvolume itself from the root-listed store. Reading
// usage needs nothing: the kernel publishes every qgroup's counters, world-readable,
// in /sys/fs/btrfs/<fsid>/qgroups/0_<subvolume id>/.
import { execa } from 'execa';
import { readdir, readFile } from 'node:fs/promises';
import { ExternalFailure } from '../../src/errors.js';

/** Where root lists each user's quota stores (one `store=/path` a line); the gate trusts only this. */
export const QUOTA_CONF_DIR = '/etc/trellis/quota';
const ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };

export type Scope = 'exclusive' | 'total';

/** What the gate recorded for a limited image: the filesystem and the subvolume its qgroup is on. */
export interface QuotaRecord {
  fsid: string;
  subvolume: number;
}

/** The `quota` lines of the conf file for a set of stores, for `gdn setup`. */
export function quotaConf(stores: string[]): string {
  return `# written by gdn setup: the stores whose containers cni-gate may limit (issue #11)\n${[...new Set(stores)].map((s) => `store=${s}\n`).join('')}`;
}

/** The store paths of a conf file's text (lines that are not store= are left out). */
export function parseQuotaConf(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('store='))
    .map((l) => l.slice('store='.length));
}

export class QuotaGate {
  constructor(private readonly gate: string) {}

  private async call(args: string[]): Promise<string> {
    const r = await execa(this.gate, ['quota', ...args], { reject: false, stdin: 'ignore', extendEnv: false, env: ENV, timeout: 60_000 });
    if (r.exitCode !== 0) {
      const last = r.stderr.trim().split('\n').pop() || `exit status ${r.exitCode ?? r.signal ?? '?'}`;
      throw new ExternalFailure('cni-gate', last);
    }
    return r.stdout;
  }

  /** Limits <store>/images/<id>/rootfs: exclusive bytes, or referenced (image + writes) bytes. */
  async limit(store: string, id: string, scope: Scope, bytes: number): Promise<QuotaRecord> {
    const out = await this.call(['limit', store, id, scope, String(Math.floor(bytes))]);
    const m = /^([0-9a-f]{32}) (\d+)\n?$/.exec(out);
    if (!m) throw new ExternalFailure('cni-gate', `unexpected output from cni-gate quota limit: ${out.slice(0, 80)}`);
    return { fsid: m[1] as string, subvolume: Number(m[2]) };
  }

  async release(store: string, id: string): Promise<void> {
    await this.call(['release', store, id]);
  }
}

/** `btrfs inspect-internal rootid`: the subvolume id of a path (no privilege needed). */
export async function subvolumeId(path: string): Promise<number> {
  const r = await execa('btrfs', ['inspect-internal', 'rootid', path], { reject: false, stdin: 'ignore', extendEnv: false, env: ENV });
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
