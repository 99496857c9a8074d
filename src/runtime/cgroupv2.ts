// Where gdn puts container cgroups on a pure cgroup v2 host, and getting there. On v2 a
// process may move another only with write access to the common ancestor's
// cgroup.procs, so conmon's runc can place a container only inside a subtree that
// holds gdn itself and belongs to this user. Two such subtrees exist:
//   - systemd: the user manager's user@UID.service (systemd delegates it, with cpu,
//     memory and pids). Containers go to user@UID.service/garden, beside the unit gdn
//     runs in (gdn.service, or a scope of `systemd-run --user --scope`), not inside it:
//     systemd must be able to start gdn.service again into its own cgroup while
//     containers live on, and a cgroup with controllers enabled below it takes no
//     processes.
//   - no systemd: the /garden/UID subtree `gdn setup` makes. gdn started there (root
//     moved its shell in once) moves itself, and the processes beside it, into the leaf
//     /garden/UID/.gdn and enables the controllers for the containers beside that leaf.
// Anywhere else gdn refuses to start, naming the exact fix.
import { accessSync, constants, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FailedPrecondition } from '../errors.js';

/** Controllers containers are limited with; what user@.service delegates. */
export const LIMIT_CONTROLLERS = ['cpu', 'memory', 'pids'];
/** The leaf gdn moves itself into (not a possible container key: those never start with a dot). */
export const GDN_LEAF = '.gdn';

export type V2Plan =
  | { ok: true; kind: 'systemd' | 'setup'; parent: string; leaf?: string; enable: string[] }
  | { ok: false; why: string; fix: string };

export const userManagerCgroup = (uid: number) => `/user.slice/user-${uid}.slice/user@${uid}.service`;

/** The cgroup of this process on v2 (the `0::` line of /proc/self/cgroup). */
export function ownV2Cgroup(procSelfCgroup: string): string {
  return /^0::(\/.*)$/m.exec(procSelfCgroup)?.[1] ?? '/';
}

const within = (path: string, dir: string) => path === dir || path.startsWith(`${dir}/`);

/**
 * The decision, from where gdn runs (`own`): `setupParent` is the subtree gdn setup
 * delegates (/garden/UID); `systemd` whether the host boots with systemd; `shellPid`
 * the pid a fix should move (gdn's parent, the shell that started it).
 */
export function planV2(own: string, setupParent: string, uid: number, gid: number, systemd: boolean, shellPid: number): V2Plan {
  if (within(own, setupParent)) {
    return own === setupParent
      ? { ok: true, kind: 'setup', parent: setupParent, leaf: `${setupParent}/${GDN_LEAF}`, enable: [setupParent] }
      : { ok: true, kind: 'setup', parent: setupParent, enable: [setupParent] };
  }
  const manager = userManagerCgroup(uid);
  if (within(own, manager) && own !== manager) {
    return { ok: true, kind: 'systemd', parent: `${manager}/garden`, enable: [manager, `${manager}/garden`] };
  }
  const why = `on cgroup v2 gdn must run inside a cgroup subtree delegated to uid ${uid} to place containers there; it runs in ${own}`;
  if (systemd) {
    return {
      ok: false,
      why,
      fix: `run it as your systemd service: 'systemctl --user start gdn' (installed by 'sudo gdn setup --systemd --rootless-uid ${uid} --rootless-gid ${gid}'), or by hand in a delegated scope: 'systemd-run --user --scope -p Delegate=yes gdn server ...'`,
    };
  }
  return {
    ok: false,
    why,
    fix: `move the shell that starts it into the leaf gdn setup made, once, as root: sudo sh -c 'echo ${shellPid} > /sys/fs/cgroup${setupParent}/${GDN_LEAF}/cgroup.procs' (after 'sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}'), then start gdn from that shell`,
  };
}

function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function enabledIn(dir: string): string[] {
  return readFileSync(join(dir, 'cgroup.subtree_control'), 'utf8').split(/\s+/).filter((c) => c !== '');
}

/** Enables the limit controllers `dir` offers in its subtree_control, one by one; returns what is enabled after. */
export function enableLimitControllers(dir: string): string[] {
  const offered = readFileSync(join(dir, 'cgroup.controllers'), 'utf8').split(/\s+/);
  for (const c of LIMIT_CONTROLLERS) {
    if (!offered.includes(c) || enabledIn(dir).includes(c)) continue;
    try {
      writeFileSync(join(dir, 'cgroup.subtree_control'), `+${c}`);
    } catch {
      // Reported below, by what is missing.
    }
  }
  return enabledIn(dir);
}

/**
 * Carries out a plan under the cgroup2 mount `mount`: makes the parent, moves gdn (and
 * whatever shares its cgroup) into its leaf, enables the controllers. Throws with the
 * fix when the subtree is not this user's to change.
 */
export function applyV2(mount: string, plan: Extract<V2Plan, { ok: true }>, uid: number, gid: number): { moved: number; controllers: string[] } {
  const setupFix = `sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}`;
  const top = join(mount, plan.enable[0]!);
  if (!writable(join(top, 'cgroup.procs')) || !writable(join(top, 'cgroup.subtree_control'))) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_CGROUP_NOT_DELEGATED',
      `the cgroup ${top} is not delegated to uid ${uid} (its cgroup.procs or cgroup.subtree_control is not writable)`,
      plan.kind === 'systemd' ? 'check that user@.service has Delegate=yes (systemd 244 or later does by default)' : setupFix,
    );
  }
  const parent = join(mount, plan.parent);
  if (!existsSync(parent)) mkdirSync(parent);
  let moved = 0;
  if (plan.leaf !== undefined) {
    const leaf = join(mount, plan.leaf);
    if (!existsSync(leaf)) mkdirSync(leaf);
    // Ourselves first, then whatever else shares the parent (the shell root moved there).
    const pids = [String(process.pid), ...readFileSync(join(parent, 'cgroup.procs'), 'utf8').split('\n').filter((p) => p !== '' && p !== String(process.pid))];
    for (const pid of pids) {
      try {
        writeFileSync(join(leaf, 'cgroup.procs'), pid);
        moved++;
      } catch (err) {
        if (pid === String(process.pid)) throw new FailedPrecondition('ERR_TRELLIS_CGROUP_MOVE', `cannot move gdn into ${leaf}: ${(err as Error).message}`, setupFix);
        // A process that exited meanwhile.
      }
    }
  }
  let controllers: string[] = [];
  for (const dir of plan.enable) controllers = enableLimitControllers(join(mount, dir));
  const missing = LIMIT_CONTROLLERS.filter((c) => !controllers.includes(c));
  if (missing.length > 0) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_CGROUP_CONTROLLERS',
      `the ${missing.join(', ')} controller(s) cannot be enabled for containers in ${parent} (it offers: ${readFileSync(join(parent, 'cgroup.controllers'), 'utf8').trim() || 'none'})`,
      plan.kind === 'systemd'
        ? "delegate them to user sessions as root: mkdir -p /etc/systemd/system/user@.service.d && printf '[Service]\\nDelegate=cpu memory pids\\n' > /etc/systemd/system/user@.service.d/delegate.conf && systemctl daemon-reload, then log in again"
        : setupFix,
    );
  }
  return { moved, controllers };
}
