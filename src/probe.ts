// What `gdn server` checks before it listens: each missing piece is named with its fix.
import { accessSync, constants, existsSync, mkdirSync, statSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { ensureDir } from './mkdirp.js';
import { execaSync } from 'execa';
import { FailedPrecondition } from './errors.js';
import { parseMountInfo } from './runtime/mountinfo.js';
import { ownV2Cgroup, planV2, type V2Plan } from './runtime/cgroupv2.js';

export function which(bin: string, path = process.env.PATH ?? ''): string | undefined {
  if (bin.includes('/')) return existsSync(bin) ? bin : undefined;
  for (const dir of path.split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, bin);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

const SETUP_HINT = (uid: number, gid: number) => `run 'sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}'`;

export function requireBinary(name: string, pkg: string): string {
  const p = which(name, `${process.env.PATH ?? ''}:/usr/sbin:/sbin`);
  if (p === undefined) {
    throw new FailedPrecondition('ERR_TRELLIS_MISSING_BINARY', `${name} not found in PATH`, `install it: 'apt-get install ${pkg}'`);
  }
  return p;
}

export function requireSetuid(name: string): void {
  const p = requireBinary(name, 'uidmap');
  const st = statSync(p);
  if (st.uid !== 0 || (st.mode & 0o4000) === 0) {
    throw new FailedPrecondition('ERR_TRELLIS_NEWUIDMAP', `${p} is not setuid root`, "reinstall it: 'apt-get install --reinstall uidmap'");
  }
}

export function requireWritableDir(dir: string, what: string, uid: number, gid: number): void {
  try {
    ensureDir(dir);
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_DIR',
      `${what} ${dir} is not writable: ${(err as Error).message}`,
      SETUP_HINT(uid, gid),
    );
  }
}

/** The cgroup parent delegated to this user in every hierarchy, or a reason it is not. */
export function delegatedCgroup(parent: string, mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')): { ok: true } | { ok: false; why: string } {
  const mounts = parseMountInfo(mountinfo).filter((m) => m.fsType === 'cgroup' || m.fsType === 'cgroup2');
  if (mounts.length === 0) return { ok: false, why: 'no cgroup filesystem is mounted' };
  for (const m of mounts) {
    const dir = join(m.mountPoint, parent);
    try {
      accessSync(dir, constants.W_OK);
    } catch {
      return { ok: false, why: `${dir} is missing or not writable` };
    }
  }
  return { ok: true };
}

export type CgroupPlan =
  | { mode: 'v1'; parent: string }
  | { mode: 'v2'; parent: string; mount: string; placement: Extract<V2Plan, { ok: true }> }
  | { mode: 'none'; why: string; fix: string; refuse?: true };

/**
 * Where container cgroups go. cgroup v1 (or hybrid): below the parent delegated in every
 * hierarchy. Pure v2: moving a process needs write access to the common ancestor of its
 * old and new cgroup, so only a gdn that itself lives in a subtree delegated to its user
 * can (src/runtime/cgroupv2.ts); anywhere else on v2 gdn refuses to start (`refuse`).
 */
export function planCgroups(parent: string, mountinfo: string, selfCgroup: string, uid: number, gid: number, systemd = existsSync('/run/systemd/system'), shellPid = process.ppid): CgroupPlan {
  const mounts = parseMountInfo(mountinfo);
  const v1 = mounts.some((m) => m.fsType === 'cgroup');
  const setup = `sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}`;
  if (v1) {
    const d = delegatedCgroup(parent, mountinfo);
    if (!d.ok) return { mode: 'none', why: `cgroups are not delegated to this user: ${d.why}`, fix: setup };
    return { mode: 'v1', parent: `/${parent}` };
  }
  const v2 = mounts.find((m) => m.fsType === 'cgroup2' && m.mountPoint === '/sys/fs/cgroup') ?? mounts.find((m) => m.fsType === 'cgroup2');
  if (v2 === undefined) return { mode: 'none', why: 'no cgroup filesystem is mounted', fix: 'mount cgroup2 at /sys/fs/cgroup' };
  const placement = planV2(ownV2Cgroup(selfCgroup), `/${parent}`, uid, gid, systemd, shellPid);
  if (!placement.ok) return { mode: 'none', why: placement.why, fix: placement.fix, refuse: true };
  return { mode: 'v2', parent: placement.parent, mount: v2.mountPoint, placement };
}

/** Rootless overlay needs a kernel that allows it in a user namespace (mainline ≥ 5.11). */
export function probeOverlayInUserns(scratch: string): void {
  const dirs = ['l', 'u', 'w', 'm'].map((d) => join(scratch, d));
  for (const d of dirs) mkdirSync(d, { recursive: true });
  const [l, u, w, m] = dirs as [string, string, string, string];
  const res = execaSync(
    'unshare',
    ['--user', '--map-root-user', '--mount', 'mount', '-t', 'overlay', 'overlay', '-o', `lowerdir=${l},upperdir=${u},workdir=${w}`, m],
    // From /: the caller's cwd may be one this user cannot enter (sudo -u from /root).
    { reject: false, cwd: '/' },
  );
  if (res.exitCode !== 0) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_OVERLAY',
      `overlay cannot be mounted in a user namespace here: ${res.stderr?.trim() || res.shortMessage || `exit ${res.exitCode}`}`,
      'use a kernel of 5.11 or later',
    );
  }
}

/** The CNI gate gdn setup installs: root's, setuid. Without it the built-in networker cannot work. */
export function requireSetuidRoot(path: string): void {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new FailedPrecondition('ERR_TRELLIS_NO_GATE', `the CNI gate ${path} is missing`, "run 'sudo gdn setup' (it installs the gate), or pass --network-plugin");
  }
  if (st.uid !== 0 || (st.mode & 0o4000) === 0) {
    throw new FailedPrecondition('ERR_TRELLIS_NO_GATE', `the CNI gate ${path} is not setuid root`, "run 'sudo gdn setup' again");
  }
}
