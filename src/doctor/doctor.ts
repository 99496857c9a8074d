// `gdn doctor`, as the ordinary user who runs gdn: one line per prerequisite, `ok` or
// the problem with its exact fix. A hard problem (gdn cannot run, or cannot do what
// setup promised) makes the exit status non-zero; a soft one is reported as `warn`.
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { execaSync } from 'execa';
import { errorMessage } from '../errors.js';
import { primaryRange, readSubIdFile } from '../idmap/subid.js';
import { userPaths } from '../paths.js';
import { probeOverlayInUserns, which, planCgroups } from '../probe.js';
import { parseMountInfo } from '../runtime/mountinfo.js';
import { LIMIT_CONTROLLERS, ownV2Cgroup, userManagerCgroup } from '../runtime/cgroupv2.js';
import { DEFAULT_GATE, NET_CONF_DIR, loadUserNetwork } from '../../plugins/networker/config.js';

export type Level = 'ok' | 'warn' | 'fail';
export interface Finding {
  check: string;
  level: Level;
  /** What was found (ok) or the problem. */
  detail: string;
  fix?: string;
}

export interface DoctorEnv {
  uid: number;
  gid: number;
  user: string;
  subuidFile: string;
  subgidFile: string;
  gate: string;
  netConfDir: string;
  mountinfo: string;
  selfCgroup: string;
  cgroupRoot: string;
  systemd: boolean;
  runtimeDir: string;
  store: string;
  /** Root's list of each user's quota stores (issue #11). */
  quotaConfDir: string;
  path: string;
}

export function defaultEnv(gate = DEFAULT_GATE): DoctorEnv {
  const uid = process.getuid!();
  const gid = process.getgid!();
  let user = String(uid);
  try {
    user = userInfo().username;
  } catch {
    // a uid without a name
  }
  const paths = userPaths(uid);
  return {
    uid,
    gid,
    user,
    subuidFile: '/etc/subuid',
    subgidFile: '/etc/subgid',
    gate,
    netConfDir: NET_CONF_DIR,
    mountinfo: readFileSync('/proc/self/mountinfo', 'utf8'),
    selfCgroup: readFileSync('/proc/self/cgroup', 'utf8'),
    cgroupRoot: '/sys/fs/cgroup',
    systemd: existsSync('/run/systemd/system'),
    runtimeDir: `/run/user/${uid}`,
    store: paths.store,
    quotaConfDir: '/etc/trellis/quota',
    path: `${process.env.PATH ?? ''}:/usr/sbin:/sbin`,
  };
}

function quotaListed(dir: string, store: string, uid: number): boolean {
  try {
    return readFileSync(join(dir, `${uid}.conf`), 'utf8').split('\n').includes(`store=${store}`);
  } catch {
    return false;
  }
}

const setupFix = (e: DoctorEnv) => `sudo gdn setup --rootless-uid ${e.uid} --rootless-gid ${e.gid}`;

function version(bin: string, path: string): string | undefined {
  const p = which(bin, path);
  if (p === undefined) return undefined;
  // From /: the caller's cwd may be one this user cannot enter.
  const r = execaSync(p, ['--version'], { reject: false, cwd: '/' });
  const text = `${r.stdout}\n${r.stderr}`;
  return /(\d+\.\d+(\.\d+)?)/.exec(text)?.[1] ?? 'unknown version';
}

function writable(p: string): boolean {
  try {
    accessSync(p, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export function runChecks(e: DoctorEnv): Finding[] {
  const out: Finding[] = [];
  const add = (check: string, level: Level, detail: string, fix?: string) => out.push({ check, level, detail, fix });

  for (const [kind, file] of [['subuid', e.subuidFile], ['subgid', e.subgidFile]] as const) {
    const r = primaryRange(readSubIdFile(file), { name: e.user, id: e.uid });
    if (r === undefined) add(kind, 'fail', `no ${file} entry for ${e.user}`, setupFix(e));
    else if (r.count < 65536) add(kind, 'warn', `${file}: ${r.start}:${r.count}, fewer than 65536 ids (images with higher ids cannot be used)`, `give ${e.user} a range of 65536 in ${file}`);
    else add(kind, 'ok', `${file}: ${r.start}:${r.count}`);
  }

  for (const bin of ['newuidmap', 'newgidmap']) {
    const p = which(bin, e.path);
    if (p === undefined) add(bin, 'fail', `${bin} is not installed`, 'sudo apt-get install uidmap');
    else {
      const st = statSync(p);
      if (st.uid !== 0 || (st.mode & 0o4000) === 0) add(bin, 'fail', `${p} is not setuid root`, 'sudo apt-get install --reinstall uidmap');
      else add(bin, 'ok', `${p} setuid root`);
    }
  }

  for (const [bin, pkg] of [['runc', 'runc'], ['conmon', 'conmon'], ['catatonit', 'catatonit']]) {
    const v = version(bin!, e.path);
    if (v === undefined) add(bin!, 'fail', `${bin} is not installed`, `sudo apt-get install ${pkg}`);
    else add(bin!, 'ok', `${bin} ${v}`);
  }

  const scratch = mkdtempSync(join(tmpdir(), 'gdn-doctor-'));
  try {
    probeOverlayInUserns(scratch);
    add('overlay', 'ok', 'overlay mounts in a user namespace');
  } catch (err) {
    add('overlay', 'fail', errorMessage(err), 'use a kernel of 5.11 or later');
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }

  cgroupChecks(e, add);

  const conf = join(e.netConfDir, `${e.uid}.conf`);
  let net: ReturnType<typeof loadUserNetwork> | undefined;
  if (!existsSync(conf)) {
    add('network', 'warn', `no network for ${e.user} (${conf}): containers get loopback only`, setupFix(e));
  } else {
    try {
      net = loadUserNetwork(e.uid, e.netConfDir);
      if (existsSync(`/sys/class/net/${net.bridge}`)) add('bridge', 'ok', `${net.bridge} ${net.gateway} (${net.subnet})`);
      else add('bridge', 'fail', `the bridge ${net.bridge} is missing (a reboot removes it)`, e.systemd ? `${setupFix(e)} (or enable the boot unit: sudo gdn setup --systemd ...)` : setupFix(e));
    } catch (err) {
      add('network', 'fail', errorMessage(err), setupFix(e));
    }
    let st;
    try {
      st = statSync(e.gate);
    } catch {
      st = undefined;
    }
    if (st === undefined) add('gate', 'fail', `the CNI gate ${e.gate} is missing`, setupFix(e));
    else if (st.uid !== 0 || (st.mode & 0o4000) === 0) add('gate', 'fail', `the CNI gate ${e.gate} is not setuid root`, setupFix(e));
    else add('gate', 'ok', `${e.gate} setuid root`);
    if (net !== undefined) {
      const n = net.portEnd - net.portStart + 1;
      if (net.portStart < 1024 || net.portEnd > 65535 || n < 1) add('ports', 'fail', `net-in port range ${net.portStart}-${net.portEnd} is not usable`, setupFix(e));
      else add('ports', 'ok', `net-in host ports ${net.portStart}-${net.portEnd} (${n})`);
    }
  }

  if (!existsSync(join(e.store, 'meta', 'namespace.json'))) {
    add('store', 'fail', `the image store ${e.store} is not initialised`, setupFix(e));
  } else {
    const r = execaSync('stat', ['-f', '-c', '%T', e.store], { reject: false, cwd: '/' });
    const fs = r.stdout.trim();
    if (fs === 'overlayfs' || fs === 'overlay') add('store', 'fail', `the image store ${e.store} is on ${fs}: overlay layers cannot live on overlay`, `${setupFix(e)} --store <a directory on ext4, xfs or btrfs>`);
    else add('store', 'ok', `${e.store} on ${fs}`);
    // Issue #11: whether the store enforces disk limits (overlay records them only).
    let driver = 'overlay';
    try {
      driver = readFileSync(join(e.store, 'meta', 'driver'), 'utf8').trim();
    } catch {
      // stores made before the driver was recorded are overlay stores
    }
    let xfsQuota = false;
    try {
      xfsQuota = driver === 'overlay' && readFileSync(join(e.store, 'meta', 'quota'), 'utf8').trim() === 'xfs';
    } catch {
      // an overlay store without project quotas
    }
    if (xfsQuota) {
      if (!quotaListed(e.quotaConfDir, e.store, e.uid)) add('disk-limits', 'fail', `${e.store} is an XFS store the gate may not limit (not in ${e.quotaConfDir}/${e.uid}.conf)`, setupFix(e));
      else add('disk-limits', 'ok', `${e.store}: XFS project quotas, limits (bytes and inodes) set through the gate`);
    } else if (driver !== 'btrfs') {
      add('disk-limits', 'warn', `${e.store} is an ${driver} store: disk limits are recorded and reported, not enforced`, `${setupFix(e)} --store <a new path> (a btrfs store with quotas), then gdn server --store <that path>`);
    } else if (!quotaListed(e.quotaConfDir, e.store, e.uid)) {
      add('disk-limits', 'fail', `${e.store} is a btrfs store the gate may not limit (not in ${e.quotaConfDir}/${e.uid}.conf)`, setupFix(e));
    } else add('disk-limits', 'ok', `${e.store}: btrfs qgroups, limits set through the gate`);
  }

  if (!existsSync(e.runtimeDir)) add('run-user', 'fail', `${e.runtimeDir} is missing (a reboot removes it)`, setupFix(e));
  else {
    const st = statSync(e.runtimeDir);
    if (st.uid !== e.uid || !writable(e.runtimeDir)) add('run-user', 'fail', `${e.runtimeDir} is not ${e.user}'s to write`, setupFix(e));
    else add('run-user', 'ok', `${e.runtimeDir} owned by ${e.user}`);
  }
  return out;
}

function cgroupChecks(e: DoctorEnv, add: (check: string, level: Level, detail: string, fix?: string) => void): void {
  const mounts = parseMountInfo(e.mountinfo).filter((m) => m.fsType === 'cgroup' || m.fsType === 'cgroup2');
  const v1 = mounts.some((m) => m.fsType === 'cgroup');
  if (mounts.length === 0) {
    add('cgroups', 'fail', 'no cgroup filesystem is mounted', 'mount cgroup2 at /sys/fs/cgroup');
    return;
  }
  if (v1) {
    const plan = planCgroups(`garden/${e.uid}`, e.mountinfo, e.selfCgroup, e.uid, e.gid, e.systemd);
    add('cgroup-mode', 'ok', mounts.some((m) => m.fsType === 'cgroup2') ? 'hybrid (v1 controllers, v2 beside them)' : 'v1');
    if (plan.mode === 'v1') add('cgroups', 'ok', `garden/${e.uid} delegated in every hierarchy (memory, cpu, pids limits)`);
    else add('cgroups', 'fail', plan.mode === 'none' ? plan.why : 'not delegated', setupFix(e));
    return;
  }
  add('cgroup-mode', 'ok', `v2 (unified)${e.systemd ? ', systemd' : ', no systemd'}`);
  const own = ownV2Cgroup(e.selfCgroup);
  // Where gdn would place containers: the user manager's subtree (systemd) or setup's.
  const manager = userManagerCgroup(e.uid);
  const setupDir = `/garden/${e.uid}`;
  const candidates: Array<[string, string]> = [];
  if (e.systemd) candidates.push([manager, 'user@.service (for gdn.service or systemd-run --user --scope)']);
  candidates.push([setupDir, 'gdn setup (for gdn started by hand in it)']);
  let found = false;
  for (const [dir, what] of candidates) {
    const abs = join(e.cgroupRoot, dir);
    if (!existsSync(abs)) continue;
    const offered = readFileSync(join(abs, 'cgroup.controllers'), 'utf8').split(/\s+/);
    const missing = LIMIT_CONTROLLERS.filter((c) => !offered.includes(c));
    if (!writable(join(abs, 'cgroup.procs')) || !writable(join(abs, 'cgroup.subtree_control'))) continue;
    found = true;
    if (missing.length > 0) {
      add('cgroups', 'fail', `${dir} is delegated by ${what} but lacks the ${missing.join(', ')} controller(s)`,
        dir === manager ? "sudo sh -c \"mkdir -p /etc/systemd/system/user@.service.d && printf '[Service]\\nDelegate=cpu memory pids\\n' > /etc/systemd/system/user@.service.d/delegate.conf && systemctl daemon-reload\", then log in again" : setupFix(e));
    } else {
      add('cgroups', 'ok', `${dir} delegated by ${what}: ${LIMIT_CONTROLLERS.join(' ')}`);
    }
  }
  if (!found) {
    add('cgroups', 'fail', `no cgroup subtree is delegated to ${e.user} (checked ${candidates.map(([d]) => d).join(', ')}; this shell runs in ${own})`,
      e.systemd ? `sudo loginctl enable-linger ${e.user} (or log in through a systemd session), then ${setupFix(e)} --systemd` : setupFix(e));
  }
}

export function formatFindings(fs: Finding[]): string {
  const width = Math.max(...fs.map((f) => f.check.length));
  return fs
    .map((f) => `${f.level === 'ok' ? 'ok  ' : f.level === 'warn' ? 'warn' : 'FAIL'}  ${f.check.padEnd(width)}  ${f.detail}${f.fix === undefined || f.level === 'ok' ? '' : ` — fix: ${f.fix}`}`)
    .join('\n');
}
