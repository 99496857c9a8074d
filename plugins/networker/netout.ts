// Egress rules (Garden's NetOutRule) as iptables-restore input for the container's
// own network namespace. Deny by default: the loopback, replies, DNS to the
// configured servers, the container's neighbours on its subnet and the operator's
// --allow-network ranges are open; the host (the gateway) and everything else only
// through rules. --deny-network wins over all of them. The rules live where the
// container cannot change them: its processes hold no CAP_NET_ADMIN.
import { isIPv4 } from 'node:net';
import { InvalidArgument } from '../../src/errors.js';

export const PROTOCOLS = ['all', 'tcp', 'udp', 'icmp', 'icmpv6'] as const;

export interface IPRange {
  start: string;
  end: string;
}

export interface PortRange {
  start: number;
  end: number;
}

export interface NetOutRule {
  protocol: 'all' | 'tcp' | 'udp' | 'icmp';
  networks: IPRange[];
  ports: PortRange[];
  icmps?: { type: number; code?: number };
  log: boolean;
}

function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function uint(v: unknown, max: number, what: string): number {
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw new InvalidArgument(`invalid ${what}: ${JSON.stringify(v)}`);
  return v;
}

/** Validates a rule as Garden's JSON carries it (every field omitempty). */
export function parseRule(raw: unknown): NetOutRule {
  if (!isObject(raw)) throw new InvalidArgument('invalid net-out rule: not an object');
  const p = uint(raw.protocol, 4, 'protocol');
  const protocol = PROTOCOLS[p] as (typeof PROTOCOLS)[number];
  if (protocol === 'icmpv6') throw new InvalidArgument('invalid net-out rule: icmpv6 is not supported (containers get IPv4 only)');
  const networks: IPRange[] = [];
  if (raw.networks !== undefined && raw.networks !== null) {
    if (!Array.isArray(raw.networks)) throw new InvalidArgument('invalid net-out rule: networks must be a list');
    for (const n of raw.networks) {
      if (!isObject(n)) throw new InvalidArgument('invalid net-out rule: a network must be an object');
      const start = n.start === undefined || n.start === '' ? undefined : n.start;
      const end = n.end === undefined || n.end === '' ? undefined : n.end;
      for (const ip of [start, end]) {
        if (ip !== undefined && (typeof ip !== 'string' || !isIPv4(ip))) throw new InvalidArgument(`invalid net-out rule: ${JSON.stringify(ip)} is not an IPv4 address`);
      }
      const s = (start ?? end) as string | undefined;
      const e = (end ?? start) as string | undefined;
      if (s === undefined || e === undefined) throw new InvalidArgument('invalid net-out rule: a network needs a start or an end');
      if (ipToInt(s) > ipToInt(e)) throw new InvalidArgument(`invalid net-out rule: network start ${s} is after its end ${e}`);
      networks.push({ start: s, end: e });
    }
  }
  const ports: PortRange[] = [];
  if (raw.ports !== undefined && raw.ports !== null) {
    if (!Array.isArray(raw.ports)) throw new InvalidArgument('invalid net-out rule: ports must be a list');
    for (const r of raw.ports) {
      if (!isObject(r)) throw new InvalidArgument('invalid net-out rule: a port range must be an object');
      const start = uint(r.start, 65535, 'port');
      const end = r.end === undefined || r.end === null ? start : uint(r.end, 65535, 'port');
      if (start > end) throw new InvalidArgument(`invalid net-out rule: port range ${start}-${end} ends before it starts`);
      ports.push({ start, end });
    }
  }
  if (ports.length > 0 && protocol !== 'tcp' && protocol !== 'udp') {
    throw new InvalidArgument(`Ports cannot be specified for Protocol ${protocol.toUpperCase()}`);
  }
  let icmps: NetOutRule['icmps'];
  if (raw.icmps !== undefined && raw.icmps !== null) {
    if (protocol !== 'icmp') throw new InvalidArgument(`ICMP type cannot be specified for Protocol ${protocol.toUpperCase()}`);
    if (!isObject(raw.icmps)) throw new InvalidArgument('invalid net-out rule: icmps must be an object');
    icmps = { type: uint(raw.icmps.type, 255, 'icmp type') };
    if (raw.icmps.code !== undefined && raw.icmps.code !== null) icmps.code = uint(raw.icmps.code, 255, 'icmp code');
  }
  if (raw.log !== undefined && typeof raw.log !== 'boolean') throw new InvalidArgument('invalid net-out rule: log must be a boolean');
  return { protocol, networks, ports, ...(icmps ? { icmps } : {}), log: raw.log === true };
}

export const NETOUT_CHAIN = 'trellis-netout';

/** One rule as `-A` lines: the cross product of its networks (any when none) and ports. */
export function ruleLines(rule: NetOutRule, chain = NETOUT_CHAIN): string[] {
  const nets: (IPRange | undefined)[] = rule.networks.length > 0 ? rule.networks : [undefined];
  const ports: (PortRange | undefined)[] = rule.ports.length > 0 ? rule.ports : [undefined];
  const lines: string[] = [];
  for (const n of nets) {
    for (const p of ports) {
      const m: string[] = ['-A', chain, '-p', rule.protocol];
      if (n) m.push(...(n.start === n.end ? ['-d', `${n.start}/32`] : ['-m', 'iprange', '--dst-range', `${n.start}-${n.end}`]));
      if (p) m.push('-m', rule.protocol, '--dport', p.start === p.end ? `${p.start}` : `${p.start}:${p.end}`);
      if (rule.icmps) m.push('-m', 'icmp', '--icmp-type', rule.icmps.code === undefined ? `${rule.icmps.type}` : `${rule.icmps.type}/${rule.icmps.code}`);
      if (rule.log) lines.push([...m, '-m', 'conntrack', '--ctstate', 'NEW', '-j', 'LOG', '--log-prefix', '"trellis-netout "'].join(' '));
      lines.push([...m, '-j', 'ACCEPT'].join(' '));
    }
  }
  return lines;
}

export interface FirewallConfig {
  /** The container's subnet (its neighbours), CIDR. */
  subnet: string;
  /** The bridge's address: the host, reachable only through rules. */
  gateway: string;
  dnsServers: string[];
  allowNetworks: string[];
  denyNetworks: string[];
  rules: NetOutRule[];
}

/** The whole filter table for `iptables-restore` (atomic: it replaces what was there). */
export function ipv4Table(c: FirewallConfig): string {
  const out = [
    '*filter',
    ':INPUT ACCEPT [0:0]',
    ':FORWARD DROP [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    `:${NETOUT_CHAIN} - [0:0]`,
    '-A OUTPUT -o lo -j ACCEPT',
    '-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT',
  ];
  for (const d of c.denyNetworks) out.push(`-A OUTPUT -d ${d} -j REJECT --reject-with icmp-net-prohibited`);
  for (const dns of c.dnsServers) {
    out.push(`-A OUTPUT -d ${dns}/32 -p udp -m udp --dport 53 -j ACCEPT`, `-A OUTPUT -d ${dns}/32 -p tcp -m tcp --dport 53 -j ACCEPT`);
  }
  out.push(`-A OUTPUT -d ${c.gateway}/32 -j ${NETOUT_CHAIN}`, `-A OUTPUT -d ${c.gateway}/32 -p tcp -j REJECT --reject-with tcp-reset`, `-A OUTPUT -d ${c.gateway}/32 -j REJECT`);
  out.push(`-A OUTPUT -d ${c.subnet} -j ACCEPT`);
  for (const a of c.allowNetworks) out.push(`-A OUTPUT -d ${a} -j ACCEPT`);
  out.push(`-A OUTPUT -j ${NETOUT_CHAIN}`, '-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset', '-A OUTPUT -j REJECT');
  for (const r of c.rules) out.push(...ruleLines(r));
  out.push('COMMIT', '');
  return out.join('\n');
}

/** IPv6: containers get none, and link-local addresses must not become a way around the rules. */
export function ipv6Table(): string {
  return ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD DROP [0:0]', ':OUTPUT DROP [0:0]', '-A OUTPUT -o lo -j ACCEPT', 'COMMIT', ''].join('\n');
}

/** `a.b.c.d/nn` with the network address exactly. */
export function parseCidr(cidr: string): { network: string; prefix: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(cidr);
  if (!m || !isIPv4(m[1] as string) || Number(m[2]) > 32) throw new InvalidArgument(`invalid CIDR \`${cidr}\``);
  const prefix = Number(m[2]);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const ip = ipToInt(m[1] as string);
  if (((ip & mask) >>> 0) !== ip) throw new InvalidArgument(`invalid CIDR \`${cidr}\`: ${m[1]} is not the network address of /${prefix}`);
  return { network: m[1] as string, prefix };
}
