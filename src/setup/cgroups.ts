// Delegating cgroups to the rootless user. On v1 (and hybrid) runc needs a
// user-owned subtree in every hierarchy, or it fails as soon as limits are set;
// on pure v2 the user gets garden/UID with controllers enabled above it.
import { lchownSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FailedPrecondition } from '../errors.js';
import { parseMountInfo, type MountEntry } from '../runtime/mountinfo.js';
import { ensureRootDir, lstatOrUndefined, type Owner } from './host-files.js';
import { GDN_LEAF } from '../runtime/cgroupv2.js';

/** What a v2 delegation hands over (cgroup-v2.rst, "Delegation Containment"). */
const V2_DELEGATED_FILES = ['.', 'cgroup.procs', 'cgroup.threads', 'cgroup.subtree_control'];

export type MountInfo = MountEntry;
export const parseMountinfo = parseMountInfo;

export interface Hierarchy {
  mountPoint: string;
  version: 1 | 2;
  /** v1: the controllers (and "name=..." for a named hierarchy); v2: empty. */
  controllers: string[];
  /** v1 mounted with noprefix: files are "cpus", not "cpuset.cpus". */
  noprefix: boolean;
}

export interface CgroupPlan {
  /** v1 covers hybrid hosts too: every v1 hierarchy plus the cgroup2 one beside them. */
  mode: 'v1' | 'v2';
  hierarchies: Hierarchy[];
}

const NOT_CONTROLLERS = new Set(['rw', 'ro', 'noprefix', 'clone_children', 'xattr', 'cpuset_v2_mode', 'favordynmods', 'nofavordynmods', 'nsdelegate', 'memory_recursiveprot', 'memory_localevents', 'memory_hugetlb_accounting', 'pids_localevents']);

/** The hierarchies setup must delegate, from the mount table. */
export function planCgroups(mounts: MountInfo[]): CgroupPlan {
  const seen = new Set<string>();
  // A hierarchy can be mounted more than once; the whole-tree mount is the one to use.
  const ordered = [...mounts].sort((a, b) => Number(b.root === '/') - Number(a.root === '/'));
  const unique: MountInfo[] = [];
  for (const m of ordered) {
    if (m.fsType !== 'cgroup' && m.fsType !== 'cgroup2') continue;
    if (seen.has(m.device)) continue;
    seen.add(m.device);
    unique.push(m);
  }
  const byMountOrder = unique.sort((a, b) => mounts.indexOf(a) - mounts.indexOf(b));
  const v1 = byMountOrder.filter((m) => m.fsType === 'cgroup');
  const v2 = byMountOrder.filter((m) => m.fsType === 'cgroup2');
  if (v1.length > 0) {
    return { mode: 'v1', hierarchies: [...v1.map(v1Hierarchy), ...v2.map(v2Hierarchy)] };
  }
  if (v2.length > 0) {
    const main = v2.find((m) => m.mountPoint === '/sys/fs/cgroup') ?? v2[0]!;
    return { mode: 'v2', hierarchies: [v2Hierarchy(main)] };
  }
  throw new FailedPrecondition('ERR_TRELLIS_NO_CGROUPS', 'no cgroup filesystem is mounted (checked /proc/self/mountinfo)', 'mount cgroup2 at /sys/fs/cgroup');
}

function v1Hierarchy(m: MountInfo): Hierarchy {
  return {
    mountPoint: m.mountPoint,
    version: 1,
    controllers: m.superOptions.filter((o) => !NOT_CONTROLLERS.has(o) && !o.startsWith('release_agent=')),
    noprefix: m.superOptions.includes('noprefix'),
  };
}

function v2Hierarchy(m: MountInfo): Hierarchy {
  return { mountPoint: m.mountPoint, version: 2, controllers: [], noprefix: false };
}

/** Controllers a rootless container may want limited. */
export const WANTED_V2_CONTROLLERS = ['cpu', 'memory', 'pids', 'io', 'cpuset'];

/** The wanted controllers among those a v2 cgroup.controllers file lists, in the file's order. */
export function controllersToEnable(available: string, wanted: string[] = WANTED_V2_CONTROLLERS): string[] {
  return available
    .split(/\s+/)
    .filter((c) => c !== '' && wanted.includes(c));
}

/** The cpuset files a v1 child needs filled before any task can join it. */
export function cpusetFiles(h: Hierarchy): string[] {
  if (h.version !== 1 || !h.controllers.includes('cpuset')) return [];
  return h.noprefix ? ['cpus', 'mems'] : ['cpuset.cpus', 'cpuset.mems'];
}

/** A human name for a hierarchy: its controllers, or the unified one. */
export function hierarchyLabel(h: Hierarchy): string {
  if (h.version === 2) return 'cgroup2';
  return h.controllers.join(',') || 'cgroup';
}

export interface CgroupOutcome {
  hierarchy: Hierarchy;
  userDir: string;
  gardenCreated: boolean;
  outcome: string;
}

/** Applies the plan for `owner`; returns one outcome per hierarchy. */
export function delegateCgroups(plan: CgroupPlan, owner: Owner): CgroupOutcome[] {
  const root: Owner = { uid: 0, gid: 0 };
  const out: CgroupOutcome[] = [];
  for (const h of plan.hierarchies) {
    const garden = join(h.mountPoint, 'garden');
    const userDir = join(garden, String(owner.uid));
    const gardenOutcome = ensureRootDir(garden, root, 0o755);
    fillCpuset(h, h.mountPoint, garden);
    if (plan.mode === 'v2') enableControllers(h.mountPoint, garden);
    const st = lstatOrUndefined(userDir);
    const existed = st !== undefined;
    if (st === undefined) mkdirSync(userDir, { mode: 0o755 });
    else if (!st.isDirectory()) throw new FailedPrecondition('ERR_TRELLIS_SETUP_NOT_A_DIR', `${userDir} is not a directory`);
    fillCpuset(h, garden, userDir);
    let changed: number;
    if (plan.mode === 'v2') {
      changed = chownEntries(userDir, V2_DELEGATED_FILES, owner);
      // The leaf a gdn started by hand runs in (root moves its shell there once; see
      // src/runtime/cgroupv2.ts): the user's, so containers can go beside it.
      const leaf = join(userDir, GDN_LEAF);
      if (lstatOrUndefined(leaf) === undefined) {
        mkdirSync(leaf, { mode: 0o755 });
        changed++;
      }
      changed += chownEntries(leaf, V2_DELEGATED_FILES, owner);
    } else {
      changed = chownTree(userDir, owner);
    }
    const outcome = !existed ? 'created' : changed > 0 ? `fixed the owner of ${changed} entries` : 'already present';
    out.push({ hierarchy: h, userDir, gardenCreated: gardenOutcome === 'created', outcome });
  }
  return out;
}

/** v1 cpuset children start empty and refuse tasks until filled from the parent. */
function fillCpuset(h: Hierarchy, parent: string, child: string): void {
  for (const file of cpusetFiles(h)) {
    const current = readFileSync(join(child, file), 'utf8').trim();
    if (current !== '') continue;
    writeFileSync(join(child, file), readFileSync(join(parent, file), 'utf8').trim());
  }
}

/** Enables the wanted controllers in the root's and garden's subtree_control: all at once, else one by one. */
function enableControllers(mountPoint: string, garden: string): void {
  const available = controllersToEnable(readFileSync(join(mountPoint, 'cgroup.controllers'), 'utf8'));
  for (const dir of [mountPoint, garden]) {
    const file = join(dir, 'cgroup.subtree_control');
    const enabled = readFileSync(file, 'utf8').split(/\s+/);
    const missing = available.filter((c) => !enabled.includes(c));
    if (missing.length === 0) continue;
    try {
      writeFileSync(file, missing.map((c) => `+${c}`).join(' '));
    } catch {
      for (const c of missing) {
        try {
          writeFileSync(file, `+${c}`);
        } catch {
          // A controller busy elsewhere (e.g. a threaded subtree) stays off; runc reports it if a limit needs it.
        }
      }
    }
  }
}

function chownEntries(dir: string, names: string[], owner: Owner): number {
  let changed = 0;
  for (const name of names) {
    const path = name === '.' ? dir : join(dir, name);
    const st = lstatOrUndefined(path);
    if (st === undefined || (st.uid === owner.uid && st.gid === owner.gid)) continue;
    lchownSync(path, owner.uid, owner.gid);
    changed++;
  }
  return changed;
}

/** The directory and everything below it (cgroupfs has no symlinks to escape through). */
function chownTree(dir: string, owner: Owner): number {
  let changed = 0;
  const st = lstatSync(dir);
  if (st.uid !== owner.uid || st.gid !== owner.gid) {
    lchownSync(dir, owner.uid, owner.gid);
    changed++;
  }
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      changed += chownTree(path, owner);
    } else {
      const est = lstatSync(path);
      if (est.uid === owner.uid && est.gid === owner.gid) continue;
      lchownSync(path, owner.uid, owner.gid);
      changed++;
    }
  }
  return changed;
}
