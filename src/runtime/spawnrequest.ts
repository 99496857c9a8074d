// The request gdn writes beside a process's spec for trellis-exec (src/runtime/exec), which
// hands its body to the container's garden-init spawn server (src/runtime/init/spawn-*.h).
// NUL-terminated fields; the C side parses and bounds every one. Pure: no I/O.
import { RLIMIT_NAMES } from './bundle.js';

export const SPAWN_MAGIC = 'TRELLIS-SPAWN-1';
export const EXEC_MAGIC = 'TRELLIS-EXEC-1';
/** Largest body garden-init accepts (SPAWN_REQUEST_MAX); a larger process goes by `runc exec`. */
export const SPAWN_REQUEST_MAX = 128 * 1024;
export const SPAWN_MAX_ARGS = 4096;
export const SPAWN_MAX_ENV = 4096;
export const SPAWN_MAX_GROUPS = 256;

/** Linux's resource numbers (asm-generic/resource.h) for runc's RLIMIT_* names. */
export const RLIMIT_NUMBERS: Record<string, number> = {
  RLIMIT_CPU: 0, RLIMIT_FSIZE: 1, RLIMIT_DATA: 2, RLIMIT_STACK: 3, RLIMIT_CORE: 4, RLIMIT_RSS: 5, RLIMIT_NPROC: 6,
  RLIMIT_NOFILE: 7, RLIMIT_MEMLOCK: 8, RLIMIT_AS: 9, RLIMIT_LOCKS: 10, RLIMIT_SIGPENDING: 11, RLIMIT_MSGQUEUE: 12,
  RLIMIT_NICE: 13, RLIMIT_RTPRIO: 14,
};

const U64_MAX = (1n << 64n) - 1n;

export interface SpawnRequest {
  uid: number;
  gid: number;
  /** Set exactly `groups` (a non-root user, as garden-init's launcher does); root keeps init's, as rootless runc leaves them. */
  setgroups: boolean;
  groups: number[];
  tty: boolean;
  rows: number;
  columns: number;
  /** Garden's rlimit names (nofile, ...) to soft = hard = value. */
  rlimits: Record<string, number>;
  cwd: string;
  args: string[];
  env: string[];
}

export interface NamespaceId {
  dev: bigint;
  ino: bigint;
}

function field(s: string | number | bigint): Buffer {
  const text = String(s);
  if (text.includes('\0')) throw new RangeError('a NUL byte cannot be passed to a process');
  return Buffer.from(`${text}\0`, 'utf8');
}

function id(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 0 || n > 0xfffffffe) throw new RangeError(`${what} ${n} is out of range`);
  return n;
}

/** The request body garden-init parses (parse_spawn_request). Throws RangeError on what it would refuse. */
export function encodeSpawnRequest(r: SpawnRequest): Buffer {
  if (r.args.length === 0 || r.args[0] === '') throw new RangeError('no program to run');
  if (r.args.length > SPAWN_MAX_ARGS || r.env.length > SPAWN_MAX_ENV) throw new RangeError('too many arguments or environment variables');
  if (!r.cwd.startsWith('/')) throw new RangeError(`the working directory ${r.cwd} is not absolute`);
  const groups = r.setgroups ? [...new Set(r.groups)] : [];
  if (groups.length > SPAWN_MAX_GROUPS) throw new RangeError('too many supplementary groups');
  for (const e of r.env) if (!e.includes('=')) throw new RangeError(`environment entry ${JSON.stringify(e)} has no '='`);
  const limits: Array<[number, bigint]> = [];
  for (const [key, value] of Object.entries(r.rlimits)) {
    const name = RLIMIT_NAMES[key];
    if (name === undefined) continue;
    const v = BigInt(Math.max(0, Math.trunc(value)));
    limits.push([RLIMIT_NUMBERS[name]!, v > U64_MAX ? U64_MAX : v]);
  }
  const parts: Buffer[] = [
    field(SPAWN_MAGIC),
    field(id(r.uid, 'uid')),
    field(id(r.gid, 'gid')),
    field(r.setgroups ? 1 : 0),
    field(groups.length),
    ...groups.map((g) => field(id(g, 'gid'))),
    field(r.tty ? 1 : 0),
    field(Math.min(Math.max(0, Math.trunc(r.rows)), 65535)),
    field(Math.min(Math.max(0, Math.trunc(r.columns)), 65535)),
    field(limits.length),
    ...limits.flatMap(([res, v]) => [field(res), field(v), field(v)]),
    field(r.cwd),
    field(r.args.length),
    ...r.args.map(field),
    field(r.env.length),
    ...r.env.map(field),
  ];
  const body = Buffer.concat(parts);
  if (body.length > SPAWN_REQUEST_MAX) throw new RangeError(`the process spec is ${body.length} bytes, more than the spawn server takes`);
  return body;
}

/** exec-request: what trellis-exec needs to find and check the container's init, then the body. */
export function encodeExecRequest(initPid: number, userNs: NamespaceId, netNs: NamespaceId, body: Buffer): Buffer {
  if (!Number.isInteger(initPid) || initPid < 2) throw new RangeError(`init pid ${initPid} is not one`);
  return Buffer.concat([field(EXEC_MAGIC), field(initPid), field(userNs.dev), field(userNs.ino), field(netNs.dev), field(netNs.ino), body]);
}
