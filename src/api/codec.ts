// Server side of the wire: request bodies decoded the way Go's encoding/json does
// (case-insensitive keys, zero values for what is missing, Go's error texts), and
// responses encoded byte for byte as Garden's server writes them.
import {
  dArray, dBool, dInt64, dMap, dPointer, dString, dStruct, dUint16, dUint32, dUint64, dUint8, decodeJson,
  goObject, goString, goStringArray, goStringMap, goUint, goUint64, goInt64, omitUint64, type Decoder,
} from '../client/gojson.js';
import type { CreateSpec, ContainerInfo, RunSpec } from '../gardener/gardener.js';
import type { TrellisError } from '../errors.js';

const big = (d: Decoder<number | bigint>): Decoder<bigint> => (v, w) => BigInt(d(v, w));

const dBandwidth = dStruct({ rate: big(dUint64), burst: big(dUint64) }, 'garden.BandwidthLimits');
const dCpu = dStruct({ weight: big(dUint64), limit_in_shares: big(dUint64) }, 'garden.CPULimits');
const dDisk = dStruct(
  { inode_soft: big(dUint64), inode_hard: big(dUint64), byte_soft: big(dUint64), byte_hard: big(dUint64), scope: big(dUint8) },
  'garden.DiskLimits',
);
const dMemory = dStruct({ limit_in_bytes: big(dUint64) }, 'garden.MemoryLimits');
const dPid = dStruct({ max: big(dUint64) }, 'garden.PidLimits');
const dLimits = dStruct(
  { bandwidth_limits: dBandwidth, cpu_limits: dCpu, disk_limits: dDisk, memory_limits: dMemory, pid_limits: dPid },
  'garden.Limits',
);
const dImage = dStruct({ uri: dString, username: dString, password: dString }, 'garden.ImageRef');
const dBindMount = dStruct({ src_path: dString, dst_path: dString, mode: dUint8, origin: dUint8 }, 'garden.BindMount');
const dIPRange = dStruct({ start: dString, end: dString }, 'garden.IPRange');
const dPortRange = dStruct({ start: dUint16, end: dUint16 }, 'garden.PortRange');
const dIcmp = dStruct({ type: dUint8, code: dPointer(dUint8) }, 'garden.ICMPControl');
export const dNetOutRule = dStruct(
  { protocol: dUint8, networks: dArray(dIPRange), ports: dArray(dPortRange), icmps: dPointer(dIcmp), log: dBool },
  'garden.NetOutRule',
);
const dNetIn = dStruct({ host_port: dUint32, container_port: dUint32 }, 'garden.NetIn');

const dContainerSpec = dStruct(
  {
    handle: dString,
    grace_time: big(dInt64),
    rootfs: dString,
    image: dImage,
    bind_mounts: dArray(dBindMount),
    network: dString,
    properties: dMap(dString),
    env: dArray(dString),
    privileged: dBool,
    limits: dLimits,
    netout_rules: dArray(dNetOutRule),
    netin: dArray(dNetIn),
  },
  'garden.ContainerSpec',
);

export function decodeCreate(body: Buffer): CreateSpec {
  const s = decodeJson(body, dContainerSpec);
  if (s.rootfs !== '' && s.image.uri !== '') throw new Error('Cannot provide both Image.URI and RootFSPath');
  if (s.grace_time < 0n) throw new Error('grace_time must not be negative');
  return {
    handle: s.handle,
    graceTimeNs: s.grace_time,
    image: s.image.uri !== '' ? s.image.uri : s.rootfs,
    username: s.image.username,
    password: s.image.password,
    env: s.env,
    properties: s.properties,
    privileged: s.privileged,
    limits: {
      bandwidth_limits: s.limits.bandwidth_limits,
      cpu_limits: s.limits.cpu_limits,
      disk_limits: s.limits.disk_limits,
      memory_limits: s.limits.memory_limits,
      pid_limits: s.limits.pid_limits,
    },
    bindMounts: s.bind_mounts,
    network: s.network,
    netin: s.netin,
    netoutRules: s.netout_rules,
  };
}

const RLIMIT_KEYS = ['as', 'core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss', 'rtprio', 'sigpending', 'stack'] as const;
const dRlimits = dStruct(
  Object.fromEntries(RLIMIT_KEYS.map((k) => [k, dPointer(big(dUint64))])) as Record<(typeof RLIMIT_KEYS)[number], Decoder<bigint | null>>,
  'garden.ResourceLimits',
);
const dWindow = dStruct({ columns: dUint16, rows: dUint16 }, 'garden.WindowSize');
const dTty = dStruct({ window_size: dPointer(dWindow) }, 'garden.TTYSpec');
const dProcessSpec = dStruct(
  {
    id: dString,
    path: dString,
    args: dArray(dString),
    env: dArray(dString),
    dir: dString,
    user: dString,
    rlimits: dRlimits,
    limits: dPointer(dStruct({ cpu_limits: dCpu, memory_limits: dMemory }, 'garden.ProcessLimits')),
    tty: dPointer(dTty),
    image: dImage,
    bind_mounts: dArray(dBindMount),
  },
  'garden.ProcessSpec',
);

export function decodeRun(body: Buffer): RunSpec {
  const s = decodeJson(body, dProcessSpec);
  const rlimits: Record<string, number> = {};
  for (const k of RLIMIT_KEYS) {
    const v = s.rlimits[k];
    if (v !== null) rlimits[k] = v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  return {
    id: s.id,
    path: s.path,
    args: s.args,
    env: s.env,
    dir: s.dir,
    user: s.user,
    rlimits,
    tty: s.tty !== null,
    ...(s.tty?.window_size ? { windowSize: { rows: s.tty.window_size.rows, columns: s.tty.window_size.columns } } : {}),
    image: s.image.uri,
    bindMounts: s.bind_mounts.length,
    ...(s.limits !== null
      ? {
          overrideLimits: {
            memoryBytes: s.limits.memory_limits.limit_in_bytes ?? 0n,
            cpuShares: s.limits.cpu_limits.weight || s.limits.cpu_limits.limit_in_shares || 0n,
          },
        }
      : {}),
  };
}

export const decodeStop = (body: Buffer) => decodeJson(body, dStruct({ kill: dBool }, 'api.StopRequest')).kill;
export const decodeProperty = (body: Buffer) => decodeJson(body, dStruct({ value: dString }, 'api.PropertyRequest')).value;
export const decodeGraceTime = (body: Buffer): bigint => BigInt(decodeJson(body, dInt64, ));
export const decodeNetIn = (body: Buffer) => decodeJson(body, dStruct({ handle: dString, host_port: dUint32, container_port: dUint32 }, 'api.NetInRequest'));
export const decodeNetOut = (body: Buffer) => decodeJson(body, dNetOutRule);
export const decodeBulkNetOut = (body: Buffer) => decodeJson(body, dArray(dNetOutRule));

const dControl = dStruct(
  {
    process_id: dString,
    source: dPointer(dInt64),
    data: dPointer(dString),
    tty: dPointer(dTty),
    signal: dPointer(dInt64),
  },
  'transport.ProcessPayload',
);
export type ControlMessage = ReturnType<typeof dControl>;
export const decodeControl = (v: unknown): ControlMessage => dControl(v, '');

// ---- responses ----

export const line = (json: string) => `${json}\n`;

export function encodeError(err: TrellisError | { gardenType: string; message: string; handle: string; processId: string }): string {
  return line(
    goObject([
      ['Type', goString(err.gardenType)],
      ['Message', goString(err.message)],
      ['Handle', goString(err.handle)],
      ['ProcessID', goString(err.processId)],
      ['Binary', goString('')],
    ]),
  );
}

export function encodeInfo(i: ContainerInfo | undefined): string {
  if (i === undefined) {
    return goObject([
      ['State', '""'], ['Events', 'null'], ['HostIP', '""'], ['ContainerIP', '""'], ['ContainerIPv6', '""'],
      ['ExternalIP', '""'], ['ContainerPath', '""'], ['ProcessIDs', 'null'], ['Properties', 'null'], ['MappedPorts', 'null'],
    ]);
  }
  return goObject([
    ['State', goString(i.State)],
    ['Events', goStringArray(i.Events)],
    ['HostIP', goString(i.HostIP)],
    ['ContainerIP', goString(i.ContainerIP)],
    ['ContainerIPv6', goString(i.ContainerIPv6)],
    ['ExternalIP', goString(i.ExternalIP)],
    ['ContainerPath', goString(i.ContainerPath)],
    ['ProcessIDs', goStringArray(i.ProcessIDs)],
    ['Properties', goStringMap(i.Properties)],
    [
      'MappedPorts',
      '[' + i.MappedPorts.map((m) => goObject([['HostPort', goUint(m.HostPort, 32)], ['ContainerPort', goUint(m.ContainerPort, 32)]])).join(',') + ']',
    ],
  ]);
}

/** A limits record as stored (decimal strings), encoded with omitempty. */
export function encodeLimitRecord(rec: Record<string, string> | undefined, keys: string[]): string {
  return line(goObject(keys.map((k) => [k, omitUint64(rec?.[k] === undefined ? undefined : BigInt(rec[k]!))] as const)));
}

export function encodeCapacity(c: { memory: bigint; disk: bigint; schedulableDisk: bigint; maxContainers: bigint }): string {
  return line(
    goObject([
      ['memory_in_bytes', omitUint64(c.memory)],
      ['disk_in_bytes', omitUint64(c.disk)],
      ['schedulable_disk_in_bytes', omitUint64(c.schedulableDisk)],
      ['max_containers', omitUint64(c.maxContainers)],
    ]),
  );
}

const MEMORY_KEYS = [
  'active_anon', 'active_file', 'cache', 'hierarchical_memory_limit', 'inactive_anon', 'inactive_file', 'mapped_file',
  'pgfault', 'pgmajfault', 'pgpgin', 'pgpgout', 'rss', 'total_active_anon', 'total_active_file', 'total_cache',
  'total_inactive_anon', 'total_inactive_file', 'total_mapped_file', 'total_pgfault', 'total_pgmajfault', 'total_pgpgin',
  'total_pgpgout', 'total_rss', 'total_unevictable', 'unevictable', 'swap', 'hierarchical_memsw_limit', 'total_swap',
  'TotalUsageTowardLimit', 'anon', 'file', 'swapcached',
];

export interface MetricsValues {
  memory: Record<string, bigint>;
  cpu: { Usage: bigint; User: bigint; System: bigint };
  disk: { TotalBytesUsed: bigint; TotalInodesUsed: bigint; ExclusiveBytesUsed: bigint; ExclusiveInodesUsed: bigint };
  pids: { Current: bigint; Max: bigint };
  ageNs: bigint;
  cpuEntitlement: bigint;
}

export function encodeMetrics(m: MetricsValues): string {
  return goObject([
    ['MemoryStat', goObject(MEMORY_KEYS.map((k) => [k, goUint64(m.memory[k] ?? 0n)] as const))],
    ['CPUStat', goObject([['Usage', goUint64(m.cpu.Usage)], ['User', goUint64(m.cpu.User)], ['System', goUint64(m.cpu.System)]])],
    [
      'DiskStat',
      goObject([
        ['TotalBytesUsed', goUint64(m.disk.TotalBytesUsed)],
        ['TotalInodesUsed', goUint64(m.disk.TotalInodesUsed)],
        ['ExclusiveBytesUsed', goUint64(m.disk.ExclusiveBytesUsed)],
        ['ExclusiveInodesUsed', goUint64(m.disk.ExclusiveInodesUsed)],
      ]),
    ],
    ['NetworkStat', 'null'],
    ['PidStat', goObject([['Current', goUint64(m.pids.Current)], ['Max', goUint64(m.pids.Max)]])],
    ['Age', goInt64(m.ageNs)],
    ['CPUEntitlement', goUint64(m.cpuEntitlement)],
  ]);
}

export const encodeHandles = (hs: string[]) => line(goObject([['Handles', goStringArray(hs)]]));
export const encodeHandle = (h: string) => line(goObject([['Handle', goString(h)]]));
export const encodeValue = (v: string) => line(goObject([['value', goString(v)]]));
export const encodeProperties = (p: Record<string, string>) => line(goStringMap(p));
export const EMPTY = '{}\n';
export const encodeNetInResponse = (h: number, c: number) =>
  line(goObject([['host_port', h ? goUint(h, 32) : undefined], ['container_port', c ? goUint(c, 32) : undefined]]));
export const encodeIdMessage = (pid: string, sid: string) => line(goObject([['process_id', goString(pid)], ['stream_id', goString(sid)]]));
export const encodeExitMessage = (pid: string, code: number) => line(goObject([['process_id', goString(pid)], ['exit_status', goInt64(code)]]));
export const encodeErrorMessage = (pid: string, err: string) => line(goObject([['process_id', goString(pid)], ['error', goString(err)]]));
export { goObject, goString };
