// Garden's wire types, with the JSON keys exactly as they appear on the wire
// (spec §1.2, §3.3, §5). Request types mark with `?` what the Go client leaves
// out when zero; response types are fully populated by the decoders in
// wire.ts, missing keys holding Go's zero value.

/** uint64 on the wire; a bigint when the value does not fit in a double exactly. */
export type Uint64 = number | bigint;
/** int64 on the wire (durations in nanoseconds); bigint beyond 2^53. */
export type Int64 = number | bigint;

export type Properties = Record<string, string>;

export interface ImageRef {
  uri?: string;
  username?: string;
  password?: string;
}

export const BindMountMode = { RO: 0, RW: 1 } as const;
export type BindMountMode = (typeof BindMountMode)[keyof typeof BindMountMode];
export const BindMountOrigin = { Host: 0, Container: 1 } as const;
export type BindMountOrigin = (typeof BindMountOrigin)[keyof typeof BindMountOrigin];

export interface BindMount {
  src_path?: string;
  dst_path?: string;
  mode?: BindMountMode;
  origin?: BindMountOrigin;
}

export interface BandwidthLimits {
  rate?: Uint64;
  burst?: Uint64;
}

export interface CPULimits {
  weight?: Uint64;
  limit_in_shares?: Uint64;
}

export const DiskLimitScope = { Total: 0, Exclusive: 1 } as const;
export type DiskLimitScope = (typeof DiskLimitScope)[keyof typeof DiskLimitScope];

export interface DiskLimits {
  inode_soft?: Uint64;
  inode_hard?: Uint64;
  byte_soft?: Uint64;
  byte_hard?: Uint64;
  scope?: DiskLimitScope;
}

export interface MemoryLimits {
  limit_in_bytes?: Uint64;
}

export interface PidLimits {
  max?: Uint64;
}

/** Always sent, each member as `{}` at least. */
export interface Limits {
  bandwidth_limits?: BandwidthLimits;
  cpu_limits?: CPULimits;
  disk_limits?: DiskLimits;
  memory_limits?: MemoryLimits;
  pid_limits?: PidLimits;
}

/** A port mapping requested at create; both keys always sent. */
export interface NetIn {
  host_port: number;
  container_port: number;
}

export const Protocol = { All: 0, TCP: 1, UDP: 2, ICMP: 3, ICMPv6: 4 } as const;
export type Protocol = (typeof Protocol)[keyof typeof Protocol];

export interface IPRange {
  start?: string;
  end?: string;
}

export interface PortRange {
  start?: number;
  end?: number;
}

export interface ICMPControl {
  type?: number;
  /** A pointer in Go: sent even when 0; absent means any code. */
  code?: number;
}

export interface NetOutRule {
  protocol?: Protocol;
  networks?: IPRange[];
  ports?: PortRange[];
  icmps?: ICMPControl;
  log?: boolean;
}

export interface ContainerSpec {
  handle?: string;
  /** Nanoseconds. */
  grace_time?: Int64;
  rootfs?: string;
  image?: ImageRef;
  bind_mounts?: BindMount[];
  network?: string;
  properties?: Properties;
  env?: string[];
  privileged?: boolean;
  limits?: Limits;
  netout_rules?: NetOutRule[];
  netin?: NetIn[];
}

/** setrlimit values; pointers in Go, so a 0 that is given is sent. */
export interface ResourceLimits {
  as?: Uint64;
  core?: Uint64;
  cpu?: Uint64;
  data?: Uint64;
  fsize?: Uint64;
  locks?: Uint64;
  memlock?: Uint64;
  msgqueue?: Uint64;
  nice?: Uint64;
  nofile?: Uint64;
  nproc?: Uint64;
  rss?: Uint64;
  rtprio?: Uint64;
  sigpending?: Uint64;
  stack?: Uint64;
}

export interface ProcessLimits {
  cpu_limits?: CPULimits;
  memory_limits?: MemoryLimits;
}

export interface WindowSize {
  columns?: number;
  rows?: number;
}

export interface TTYSpec {
  window_size?: WindowSize;
}

export interface ProcessSpec {
  id?: string;
  path: string;
  args?: string[];
  env?: string[];
  dir?: string;
  user?: string;
  rlimits?: ResourceLimits;
  limits?: ProcessLimits;
  tty?: TTYSpec;
  image?: ImageRef;
  bind_mounts?: BindMount[];
}

export const Signal = { Terminate: 0, Kill: 1 } as const;
export type Signal = (typeof Signal)[keyof typeof Signal];

/** One message on a hijacked control connection (§3.3). */
export interface ProcessPayload {
  process_id?: string;
  stream_id?: string;
  source?: number;
  data?: string;
  exit_status?: number;
  error?: string;
  tty?: TTYSpec;
  signal?: number;
}

export interface NetInRequest {
  handle?: string;
  host_port?: number;
  container_port?: number;
}

export interface NetInResponse {
  host_port: number;
  container_port: number;
}

export interface StreamInSpec {
  path: string;
  user?: string;
  tarStream: NodeJS.ReadableStream;
}

export interface StreamOutSpec {
  path: string;
  user?: string;
}

// ---------------------------------------------------------------------------
// Responses (decoded, every key present)

export interface Capacity {
  memory_in_bytes: Uint64;
  disk_in_bytes: Uint64;
  schedulable_disk_in_bytes: Uint64;
  max_containers: Uint64;
}

export interface PortMapping {
  HostPort: number;
  ContainerPort: number;
}

export interface ContainerInfo {
  State: string;
  Events: string[] | null;
  HostIP: string;
  ContainerIP: string;
  ContainerIPv6: string;
  ExternalIP: string;
  ContainerPath: string;
  ProcessIDs: string[] | null;
  Properties: Properties | null;
  MappedPorts: PortMapping[] | null;
}

/** Wire order of the MemoryStat keys. */
export const MEMORY_STAT_KEYS = [
  'active_anon', 'active_file', 'cache', 'hierarchical_memory_limit', 'inactive_anon', 'inactive_file',
  'mapped_file', 'pgfault', 'pgmajfault', 'pgpgin', 'pgpgout', 'rss', 'total_active_anon',
  'total_active_file', 'total_cache', 'total_inactive_anon', 'total_inactive_file', 'total_mapped_file',
  'total_pgfault', 'total_pgmajfault', 'total_pgpgin', 'total_pgpgout', 'total_rss', 'total_unevictable',
  'unevictable', 'swap', 'hierarchical_memsw_limit', 'total_swap', 'TotalUsageTowardLimit', 'anon', 'file',
  'swapcached',
] as const;
export type ContainerMemoryStat = Record<(typeof MEMORY_STAT_KEYS)[number], Uint64>;

export interface ContainerCPUStat {
  Usage: Uint64;
  User: Uint64;
  System: Uint64;
}

export interface ContainerDiskStat {
  TotalBytesUsed: Uint64;
  TotalInodesUsed: Uint64;
  ExclusiveBytesUsed: Uint64;
  ExclusiveInodesUsed: Uint64;
}

export interface ContainerNetworkStat {
  RxBytes: Uint64;
  TxBytes: Uint64;
}

export interface ContainerPidStat {
  Current: Uint64;
  Max: Uint64;
}

export interface Metrics {
  MemoryStat: ContainerMemoryStat;
  CPUStat: ContainerCPUStat;
  DiskStat: ContainerDiskStat;
  NetworkStat: ContainerNetworkStat | null;
  PidStat: ContainerPidStat;
  /** Nanoseconds since creation. */
  Age: Int64;
  CPUEntitlement: Uint64;
}

/** Garden's error object (§2.1): all five keys always present on the wire. */
export interface ErrorObject {
  Type: string;
  Message: string;
  Handle: string;
  ProcessID: string;
  Binary: string;
}

export interface ContainerInfoEntry {
  Info: ContainerInfo;
  /** The per-handle error, rebuilt into a typed error as the Go client does. */
  Err: Error | null;
}

export interface ContainerMetricsEntry {
  Metrics: Metrics;
  Err: Error | null;
}
