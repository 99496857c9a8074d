// Request bodies byte for byte as the Go client encodes them (struct field
// order, omitempty, nested structs always present), and decoders for the
// response bodies.

import {
  dArray, dInt64, dMap, dNullableArray, dNullableMap, dPointer, dString, dStruct, dUint32,
  dUint64, dUint8, type Decoder, goBytesString, goInt, goInt64, goObject, goString, goUint, goUint64,
  omitArray, omitBool, omitInt64, omitString, omitStringMap, omitUint, omitUint64, ptr,
} from './gojson.js';
import { errorFromWire } from './errors.js';
import {
  MEMORY_STAT_KEYS,
  type BandwidthLimits, type BindMount, type CPULimits, type Capacity, type ContainerInfo,
  type ContainerInfoEntry, type ContainerMemoryStat, type ContainerMetricsEntry, type ContainerSpec,
  type DiskLimits, type ErrorObject, type ImageRef, type Limits, type MemoryLimits, type Metrics, type NetIn,
  type NetInRequest, type NetInResponse, type NetOutRule, type PidLimits, type ProcessLimits,
  type ProcessPayload, type ProcessSpec, type ResourceLimits, type TTYSpec, type Uint64,
} from './types.js';

// ---------------------------------------------------------------------------
// Encoders

export const encodeImageRef = (i: ImageRef = {}): string =>
  goObject([['uri', omitString(i.uri)], ['username', omitString(i.username)], ['password', omitString(i.password)]]);

export const encodeBindMount = (b: BindMount): string =>
  goObject([
    ['src_path', omitString(b.src_path)],
    ['dst_path', omitString(b.dst_path)],
    ['mode', omitUint(b.mode, 8)],
    ['origin', omitUint(b.origin, 8)],
  ]);

export const encodeBandwidthLimits = (l: BandwidthLimits = {}): string =>
  goObject([['rate', omitUint64(l.rate)], ['burst', omitUint64(l.burst)]]);

export const encodeCPULimits = (l: CPULimits = {}): string =>
  goObject([['weight', omitUint64(l.weight)], ['limit_in_shares', omitUint64(l.limit_in_shares)]]);

export const encodeDiskLimits = (l: DiskLimits = {}): string =>
  goObject([
    ['inode_soft', omitUint64(l.inode_soft)],
    ['inode_hard', omitUint64(l.inode_hard)],
    ['byte_soft', omitUint64(l.byte_soft)],
    ['byte_hard', omitUint64(l.byte_hard)],
    ['scope', omitUint(l.scope, 8)],
  ]);

export const encodeMemoryLimits = (l: MemoryLimits = {}): string =>
  goObject([['limit_in_bytes', omitUint64(l.limit_in_bytes)]]);

export const encodePidLimits = (l: PidLimits = {}): string => goObject([['max', omitUint64(l.max)]]);

export const encodeLimits = (l: Limits = {}): string =>
  goObject([
    ['bandwidth_limits', encodeBandwidthLimits(l.bandwidth_limits)],
    ['cpu_limits', encodeCPULimits(l.cpu_limits)],
    ['disk_limits', encodeDiskLimits(l.disk_limits)],
    ['memory_limits', encodeMemoryLimits(l.memory_limits)],
    ['pid_limits', encodePidLimits(l.pid_limits)],
  ]);

export const encodeNetOutRule = (r: NetOutRule): string =>
  goObject([
    ['protocol', omitUint(r.protocol, 8)],
    ['networks', omitArray(r.networks, (n) => goObject([['start', omitString(n.start)], ['end', omitString(n.end)]]))],
    ['ports', omitArray(r.ports, (p) => goObject([['start', omitUint(p.start, 16)], ['end', omitUint(p.end, 16)]]))],
    ['icmps', ptr(r.icmps, (i) => goObject([['type', omitUint(i.type, 8)], ['code', ptr(i.code, (c) => goUint(c, 8))]]))],
    ['log', omitBool(r.log)],
  ]);

const encodeNetIn = (n: NetIn): string =>
  goObject([['host_port', goUint(n.host_port, 32)], ['container_port', goUint(n.container_port, 32)]]);

export function encodeContainerSpec(s: ContainerSpec): string {
  return goObject([
    ['handle', omitString(s.handle)],
    ['grace_time', omitInt64(s.grace_time)],
    ['rootfs', omitString(s.rootfs)],
    ['image', encodeImageRef(s.image)],
    ['bind_mounts', omitArray(s.bind_mounts, encodeBindMount)],
    ['network', omitString(s.network)],
    ['properties', omitStringMap(s.properties)],
    ['env', omitArray(s.env, goString)],
    ['privileged', omitBool(s.privileged)],
    ['limits', encodeLimits(s.limits)],
    ['netout_rules', omitArray(s.netout_rules, encodeNetOutRule)],
    ['netin', omitArray(s.netin, encodeNetIn)],
  ]);
}

const RLIMIT_KEYS = [
  'as', 'core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss',
  'rtprio', 'sigpending', 'stack',
] as const satisfies ReadonlyArray<keyof ResourceLimits>;

export const encodeResourceLimits = (r: ResourceLimits = {}): string =>
  goObject(RLIMIT_KEYS.map((k) => [k, ptr(r[k], goUint64)] as const));

const encodeProcessLimits = (l: ProcessLimits): string =>
  goObject([['cpu_limits', encodeCPULimits(l.cpu_limits)], ['memory_limits', encodeMemoryLimits(l.memory_limits)]]);

export const encodeTTYSpec = (t: TTYSpec): string =>
  goObject([
    ['window_size', ptr(t.window_size, (w) => goObject([['columns', omitUint(w.columns, 16)], ['rows', omitUint(w.rows, 16)]]))],
  ]);

export function encodeProcessSpec(s: ProcessSpec): string {
  return goObject([
    ['id', omitString(s.id)],
    ['path', omitString(s.path)],
    ['args', omitArray(s.args, goString)],
    ['env', omitArray(s.env, goString)],
    ['dir', omitString(s.dir)],
    ['user', omitString(s.user)],
    ['rlimits', encodeResourceLimits(s.rlimits)],
    ['limits', ptr(s.limits, encodeProcessLimits)],
    ['tty', ptr(s.tty, encodeTTYSpec)],
    ['image', encodeImageRef(s.image)],
    ['bind_mounts', omitArray(s.bind_mounts, encodeBindMount)],
  ]);
}

/**
 * A control message. `data` may be given as raw bytes, in which case invalid
 * UTF-8 turns into U+FFFD byte by byte, as Go's string conversion does.
 */
export function encodeProcessPayload(p: ProcessPayload, rawData?: Uint8Array): string {
  return goObject([
    ['process_id', omitString(p.process_id)],
    ['stream_id', omitString(p.stream_id)],
    ['source', ptr(p.source, goInt)],
    ['data', rawData ? goBytesString(rawData) : ptr(p.data, goString)],
    ['exit_status', ptr(p.exit_status, goInt)],
    ['error', ptr(p.error, goString)],
    ['tty', ptr(p.tty, encodeTTYSpec)],
    ['signal', ptr(p.signal, goInt)],
  ]);
}

export const encodeNetInRequest = (r: NetInRequest): string =>
  goObject([
    ['handle', omitString(r.handle)],
    ['host_port', omitUint(r.host_port, 32)],
    ['container_port', omitUint(r.container_port, 32)],
  ]);

export const encodeGraceTime = (ns: number | bigint): string => goInt64(ns);

// ---------------------------------------------------------------------------
// Decoders

const u64: Decoder<Uint64> = dUint64;

export const decodeErrorObject = dStruct<ErrorObject>(
  { Type: dString, Message: dString, Handle: dString, ProcessID: dString, Binary: dString },
  'garden.Error',
);

const decodeWireError: Decoder<Error | null> = (v, w) => {
  const o = dPointer(decodeErrorObject)(v, w);
  return o === null ? null : errorFromWire(o);
};

export const decodeCapacity = dStruct<Capacity>(
  { memory_in_bytes: u64, disk_in_bytes: u64, schedulable_disk_in_bytes: u64, max_containers: u64 },
  'garden.Capacity',
);

export const decodeContainerInfo = dStruct<ContainerInfo>(
  {
    State: dString,
    Events: dNullableArray(dString),
    HostIP: dString,
    ContainerIP: dString,
    ContainerIPv6: dString,
    ExternalIP: dString,
    ContainerPath: dString,
    ProcessIDs: dNullableArray(dString),
    Properties: dNullableMap(dString),
    MappedPorts: dNullableArray(
      dStruct({ HostPort: dUint32, ContainerPort: dUint32 }, 'garden.PortMapping'),
    ),
  },
  'garden.ContainerInfo',
);

const decodeMemoryStat = dStruct<ContainerMemoryStat>(
  Object.fromEntries(MEMORY_STAT_KEYS.map((k) => [k, u64])) as { [K in keyof ContainerMemoryStat]: Decoder<Uint64> },
  'garden.ContainerMemoryStat',
);

export const decodeMetrics = dStruct<Metrics>(
  {
    MemoryStat: decodeMemoryStat,
    CPUStat: dStruct({ Usage: u64, User: u64, System: u64 }, 'garden.ContainerCPUStat'),
    DiskStat: dStruct(
      { TotalBytesUsed: u64, TotalInodesUsed: u64, ExclusiveBytesUsed: u64, ExclusiveInodesUsed: u64 },
      'garden.ContainerDiskStat',
    ),
    NetworkStat: dPointer(dStruct({ RxBytes: u64, TxBytes: u64 }, 'garden.ContainerNetworkStat')),
    PidStat: dStruct({ Current: u64, Max: u64 }, 'garden.ContainerPidStat'),
    Age: dInt64,
    CPUEntitlement: u64,
  },
  'garden.Metrics',
);

export const decodeBulkInfo = dMap(
  dStruct<ContainerInfoEntry>({ Info: decodeContainerInfo, Err: decodeWireError }, 'garden.ContainerInfoEntry'),
);

export const decodeBulkMetrics = dMap(
  dStruct<ContainerMetricsEntry>({ Metrics: decodeMetrics, Err: decodeWireError }, 'garden.ContainerMetricsEntry'),
);

export const decodeBandwidthLimits = dStruct<Required<BandwidthLimits>>({ rate: u64, burst: u64 }, 'garden.BandwidthLimits');
export const decodeCPULimits = dStruct<Required<CPULimits>>({ weight: u64, limit_in_shares: u64 }, 'garden.CPULimits');
export const decodeDiskLimits = dStruct<Required<DiskLimits>>(
  {
    inode_soft: u64,
    inode_hard: u64,
    byte_soft: u64,
    byte_hard: u64,
    scope: dUint8 as Decoder<Required<DiskLimits>['scope']>,
  },
  'garden.DiskLimits',
);
export const decodeMemoryLimits = dStruct<Required<MemoryLimits>>({ limit_in_bytes: u64 }, 'garden.MemoryLimits');

export const decodeNetInResponse = dStruct<NetInResponse>(
  { host_port: dUint32, container_port: dUint32 },
  'transport.NetInResponse',
);

export const decodeHandle = dStruct<{ handle: string }>({ handle: dString }, 'struct');
export const decodeHandles = dStruct<{ Handles: string[] }>({ Handles: dArray(dString) }, 'struct');
export const decodeValue = dStruct<{ value: string }>({ value: dString }, 'struct');
export const decodeProperties = dMap(dString);
export const decodeEmpty = dStruct<Record<string, never>>({}, 'struct');

export const decodeProcessPayload = dStruct<Required<Pick<ProcessPayload, 'process_id' | 'stream_id'>> & {
  exit_status: number | null;
  error: string | null;
}>(
  {
    process_id: dString,
    stream_id: dString,
    exit_status: dPointer((v, w) => Number(dInt64(v, w))),
    error: dPointer(dString),
  },
  'transport.ProcessPayload',
);

