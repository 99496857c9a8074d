// The OCI config.json for a rootless container, as Garden's unprivileged bundle is
// built (spec/plugins.md §5), with garden-init (src/runtime/init) as pid 1. Pure: no I/O.
import { fileURLToPath } from 'node:url';
import type { IdMapping } from '../idmap/subid.js';
import type { OciSeccomp } from './seccomp.js';
import type { SpawnRequest } from './spawnrequest.js';

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface OciRlimit {
  type: string;
  hard: number;
  soft: number;
}

export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user: { uid: number; gid: number; additionalGids?: number[]; username?: string };
  args: string[];
  env: string[];
  cwd: string;
  capabilities: { bounding: string[]; effective: string[]; inheritable: string[]; permitted: string[] };
  rlimits?: OciRlimit[];
  noNewPrivileges?: boolean;
}

export interface OciConfig {
  ociVersion: string;
  process: OciProcess;
  root: { path: string; readonly?: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    uidMappings: IdMapping[];
    gidMappings: IdMapping[];
    namespaces: { type: string; path?: string }[];
    cgroupsPath?: string;
    resources?: {
      memory?: { limit: number; swap?: number };
      cpu?: { shares: number };
      pids?: { limit: number };
    };
    maskedPaths: string[];
    readonlyPaths: string[];
    rootfsPropagation: string;
    seccomp?: OciSeccomp;
  };
}

/** Garden's "unprivileged max caps" (plugins.md §5.1). */
export const UNPRIVILEGED_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

export const MASKED_PATHS = [
  '/proc/kcore', '/proc/latency_stats', '/proc/sched_debug', '/proc/scsi', '/proc/timer_list', '/proc/timer_stats',
  '/proc/keys', '/sys/firmware', '/proc/acpi',
];

export const READONLY_PATHS = ['/proc/asound', '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/**
 * Where garden-init appears in every container (Garden's own path: clients see pid 1 as
 * `garden-init`). It is pid 1 and the launcher of every non-root process.
 */
export const INIT_PATH = '/tmp/garden-init';
/** garden-init as `npm run build` leaves it beside this module. */
export const BUILT_INIT = fileURLToPath(new URL('./init/garden-init', import.meta.url));
/** trellis-exec (the runtime conmon runs to start a process through garden-init's spawn server), as built. */
export const BUILT_EXEC = fileURLToPath(new URL('./exec/trellis-exec', import.meta.url));
/** A static busybox for stream-in/out (tar, mkdir), so that works whatever the image holds. */
export const TOOLS_PATH = '/dev/.trellis/busybox';

export const DEFAULT_PATH_ROOT = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_PATH_USER = 'PATH=/usr/local/bin:/usr/bin:/bin';

export interface BindMountSpec {
  source: string;
  destination: string;
  readOnly: boolean;
  /** Flags of the source's mount that a user namespace may not drop (nosuid, nodev, noexec, atime flags). */
  lockedFlags: string[];
}

export interface ContainerLimits {
  memoryBytes?: number;
  cpuShares?: number;
  pidsMax?: number;
}

export interface BundleInput {
  handle: string;
  rootfsPath: string;
  /** Mounts from the image plugin, performed first (e.g. the overlay onto /). */
  imageMounts: OciMount[];
  env: string[];
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
  initBinary: string;
  initLockedFlags: string[];
  /** Static busybox bound at TOOLS_PATH, with its mount's locked flags. */
  toolsBinary?: string;
  toolsLockedFlags?: string[];
  bindMounts: BindMountSpec[];
  /** cgroup path (absolute, e.g. /garden/1001/<handle>), or undefined to run without one. */
  cgroupsPath?: string;
  limits: ContainerLimits;
  /** The filter every process in the container runs under; undefined = unconfined. */
  seccomp?: OciSeccomp;
  /** garden-init also starts the container's processes (`--spawn-server`): run needs no `runc exec`. */
  spawnServer?: boolean;
}

function bindOptions(b: { readOnly: boolean; lockedFlags: string[] }): string[] {
  return ['bind', b.readOnly ? 'ro' : 'rw', ...b.lockedFlags.filter((f) => f !== 'ro' && f !== 'rw' && f !== 'bind')];
}

/** The last 49 bytes of the handle (Garden's rule), started on a whole UTF-8 character. */
export function containerHostname(handle: string): string {
  const b = Buffer.from(handle, 'utf8');
  if (b.length <= 49) return handle;
  let start = b.length - 49;
  while (start < b.length && (b[start]! & 0xc0) === 0x80) start++;
  return b.subarray(start).toString('utf8');
}

export function buildBundle(input: BundleInput): OciConfig {
  const caps = [...UNPRIVILEGED_CAPS];
  const mounts: OciMount[] = [
    ...input.imageMounts,
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    // gid 5 is the tty group: a terminal belongs to it, as on any Linux box (and Garden's containers).
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'gid=5', 'ptmxmode=0666', 'mode=0620'] },
    // No size, as Garden's: tmpfs pages count against the container's memory limit.
    { destination: '/dev/shm', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'noexec', 'nodev', 'mode=1777'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    // runc binds the container's own cgroups here, read-only: a process sees its limits and cannot change them.
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
    { destination: INIT_PATH, type: 'bind', source: input.initBinary, options: bindOptions({ readOnly: true, lockedFlags: input.initLockedFlags }) },
    ...(input.toolsBinary === undefined
      ? []
      : [{ destination: TOOLS_PATH, type: 'bind', source: input.toolsBinary, options: bindOptions({ readOnly: true, lockedFlags: input.toolsLockedFlags ?? [] }) }]),
    ...input.bindMounts.map((b) => ({ destination: b.destination, type: 'bind', source: b.source, options: bindOptions(b) })),
  ];

  const resources: NonNullable<OciConfig['linux']['resources']> = {};
  if (input.limits.memoryBytes) resources.memory = { limit: input.limits.memoryBytes, swap: input.limits.memoryBytes };
  if (input.limits.cpuShares) resources.cpu = { shares: input.limits.cpuShares };
  if (input.limits.pidsMax) resources.pids = { limit: input.limits.pidsMax };

  const config: OciConfig = {
    ociVersion: '1.0.2',
    process: {
      user: { uid: 0, gid: 0 },
      // garden-init reaps and waits; a user process arrives by its spawn server, or by `runc exec`.
      args: input.spawnServer === true ? [INIT_PATH, '--spawn-server'] : [INIT_PATH],
      env: input.env,
      cwd: '/',
      capabilities: { bounding: caps, effective: caps, inheritable: caps, permitted: caps },
      noNewPrivileges: false,
    },
    root: { path: input.rootfsPath },
    hostname: containerHostname(input.handle),
    mounts,
    linux: {
      uidMappings: input.uidMappings,
      gidMappings: input.gidMappings,
      namespaces: ['pid', 'network', 'ipc', 'uts', 'mount', 'user'].map((type) => ({ type })),
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
      rootfsPropagation: 'private',
    },
  };
  if (input.cgroupsPath !== undefined) config.linux.cgroupsPath = input.cgroupsPath;
  if (input.seccomp !== undefined) config.linux.seccomp = input.seccomp;
  if (Object.keys(resources).length > 0) config.linux.resources = resources;
  return config;
}

export const RLIMIT_NAMES: Record<string, string> = {
  as: 'RLIMIT_AS', core: 'RLIMIT_CORE', cpu: 'RLIMIT_CPU', data: 'RLIMIT_DATA', fsize: 'RLIMIT_FSIZE',
  locks: 'RLIMIT_LOCKS', memlock: 'RLIMIT_MEMLOCK', msgqueue: 'RLIMIT_MSGQUEUE', nice: 'RLIMIT_NICE',
  nofile: 'RLIMIT_NOFILE', nproc: 'RLIMIT_NPROC', rss: 'RLIMIT_RSS', rtprio: 'RLIMIT_RTPRIO',
  sigpending: 'RLIMIT_SIGPENDING', stack: 'RLIMIT_STACK',
};

export interface ProcessInput {
  args: string[];
  /** Container env (image env, then the create spec's env). */
  containerEnv: string[];
  /** The run spec's env, appended after the container's. */
  env: string[];
  uid: number;
  gid: number;
  /** The user's supplementary groups (from the container's /etc/group); set for non-root users. */
  additionalGids?: number[];
  /** The user's home, for $HOME when the env names none (runc would take root's from the launcher). */
  home?: string;
  username: string;
  cwd: string;
  rlimits: Record<string, number>;
  terminal: boolean;
  /** Initial window (rows x columns); Garden's default is 80x24. */
  windowSize?: { rows: number; columns: number };
  /** false: the container has no garden-init to launch with (made by an older gdn): runc sets the ids, without groups. */
  launcher?: boolean;
}

/**
 * argv that makes garden-init, started as container root, become `uid`:`gid` with exactly
 * `groups` and exec `args` (rootless runc cannot call setgroups itself).
 */
export function launcherArgs(uid: number, gid: number, groups: number[], args: string[]): string[] {
  return [INIT_PATH, '--run', String(uid), String(gid), [...new Set(groups)].join(','), '--', ...args];
}

/**
 * The process JSON handed to `runc exec` (plugins.md §8.1). A non-root user's process is
 * started as container root running garden-init's launcher, which sets the user's groups and
 * ids and execs the program; its capabilities end as runc would leave them for that user.
 */
function processEnv(input: ProcessInput): string[] {
  const env = [...input.containerEnv, ...input.env];
  if (!env.some((e) => e.startsWith('PATH='))) env.push(input.uid === 0 ? DEFAULT_PATH_ROOT : DEFAULT_PATH_USER);
  if (!env.some((e) => e.startsWith('USER='))) env.push(`USER=${input.username}`);
  if (input.uid !== 0 && input.home !== undefined && !env.some((e) => e.startsWith('HOME='))) env.push(`HOME=${input.home}`);
  return env;
}

/**
 * What garden-init's spawn server is asked to start (spawnrequest.ts): the process `runc exec`
 * would start for buildProcess(input), ids, groups, environment and all.
 */
/** As runc sets a process's environment (os.Setenv per entry): one entry per name, where it first appears, with its last value. */
function dedupEnv(env: string[]): string[] {
  const at = new Map<string, number>();
  const out: string[] = [];
  for (const e of env) {
    const eq = e.indexOf('=');
    const name = eq < 0 ? e : e.slice(0, eq);
    const i = at.get(name);
    if (i === undefined) {
      at.set(name, out.length);
      out.push(e);
    } else out[i] = e;
  }
  return out;
}

export function buildSpawnRequest(input: ProcessInput): SpawnRequest {
  const env = dedupEnv(processEnv(input));
  // runc fills in HOME from the user it starts (root, for the launcher) when the env names none
  if (input.home !== undefined && !env.some((e) => e.startsWith('HOME='))) env.push(`HOME=${input.home}`);
  return {
    uid: input.uid,
    gid: input.gid,
    setgroups: input.uid !== 0,
    groups: input.uid !== 0 ? input.additionalGids ?? [] : [],
    tty: input.terminal,
    rows: input.terminal ? input.windowSize?.rows || 24 : 0,
    columns: input.terminal ? input.windowSize?.columns || 80 : 0,
    rlimits: input.rlimits,
    cwd: input.cwd,
    args: input.args,
    env,
  };
}

export function buildProcess(input: ProcessInput): OciProcess {
  const env = processEnv(input);
  const caps = [...UNPRIVILEGED_CAPS];
  const rlimits: OciRlimit[] = [];
  for (const [key, value] of Object.entries(input.rlimits)) {
    const type = RLIMIT_NAMES[key];
    if (type !== undefined) rlimits.push({ type, hard: value, soft: value });
  }
  const launched = input.uid !== 0 && input.launcher !== false;
  const proc: OciProcess = launched
    ? {
        // setresuid away from 0 clears permitted and effective; exec then leaves what runc would.
        user: { uid: 0, gid: 0, username: input.username },
        args: launcherArgs(input.uid, input.gid, input.additionalGids ?? [], input.args),
        env,
        cwd: input.cwd,
        capabilities: { bounding: caps, effective: caps, inheritable: caps, permitted: caps },
      }
    : {
        user: { uid: input.uid, gid: input.gid, username: input.username },
        args: input.args,
        env,
        cwd: input.cwd,
        capabilities: { bounding: caps, effective: caps, inheritable: caps, permitted: caps },
      };
  if (input.terminal) {
    proc.terminal = true;
    proc.consoleSize = { height: input.windowSize?.rows || 24, width: input.windowSize?.columns || 80 };
  }
  if (rlimits.length > 0) proc.rlimits = rlimits;
  return proc;
}
