// `gdn setup`'s network step: the user's own bridge, subnet and host-port range
// (root-owned /etc/trellis/net/<uid>.conf, the only thing the setuid gate trusts),
// IP forwarding, and the gate itself, installed root-owned with the setuid bit.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync, renameSync, statSync, copyFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FailedPrecondition, InvalidArgument } from '../errors.js';
import { DEFAULT_GATE, NET_CONF_DIR, cidrsOverlap, formatPool, formatUserNetwork, intToIp, ipToInt, parseUserNetwork, withPool, type UserNetwork } from '../../plugins/networker/config.js';
import { parseCidr } from '../../plugins/networker/netout.js';
import { ensureRootDir, writeFileAtomic } from './host-files.js';

export const NET_STATE_DIR = '/var/lib/trellis/net';
/** Where user subnets come from: one /24 each. */
export const DEFAULT_POOL = '10.88.0.0/16';
/** Host ports: 500 per user from here, below the kernel's ephemeral range (32768+). */
export const PORT_BASE = 20000;
export const PORTS_PER_USER = 500;
export const DEFAULT_MTU = 9000;
const CNI_DIR = '/usr/lib/cni';
const PLUGINS = ['bridge', 'host-local', 'portmap'];

export interface NetworkSetupOptions {
  uid: number;
  /** A CIDR for this user's containers (default: the next free /24 of 10.88.0.0/16). */
  subnet?: string;
  /** `START-END` host ports for net-in (default: the next free block of 500 from 20000). */
  hostPorts?: string;
  /** Issue #8: an address pool (CIDR) whose subnets this user's creates may ask for (default: none, or the one granted before). */
  pool?: string;
  /** The compiled gate to install (default: the one built beside this module). */
  gateSource?: string;
  gatePath?: string;
  confDir?: string;
}

export const BUILT_GATE = fileURLToPath(new URL('../../plugins/networker/gate/cni-gate', import.meta.url));

function others(confDir: string, uid: number): UserNetwork[] {
  const out: UserNetwork[] = [];
  for (const f of existsSync(confDir) ? readdirSync(confDir) : []) {
    if (!/^\d+\.conf$/.test(f) || f === `${uid}.conf`) continue;
    try {
      const n = parseUserNetwork(readFileSync(join(confDir, f), 'utf8'));
      let pooled = n;
      try {
        pooled = withPool(n, Number(f.slice(0, -'.conf'.length)), confDir);
      } catch {
        // a broken pool file claims nothing
      }
      out.push(pooled);
    } catch {
      // a broken file claims nothing
    }
  }
  return out;
}

function overlaps(a: string, b: string): boolean {
  const x = parseCidr(a);
  const y = parseCidr(b);
  const span = (c: { network: string; prefix: number }): [number, number] => [ipToInt(c.network), ipToInt(c.network) + 2 ** (32 - c.prefix) - 1];
  const [a0, a1] = span(x);
  const [b0, b1] = span(y);
  return a0 <= b1 && b0 <= a1;
}

/** A socket on the host that holds a port: TCP listening, or UDP bound. */
export interface HostSocket {
  proto: 'tcp' | 'udp';
  port: number;
  uid: number;
}

/** The listening TCP and bound UDP sockets of /proc/net/{tcp,tcp6,udp,udp6} text. */
export function parseProcNet(proto: 'tcp' | 'udp', text: string): HostSocket[] {
  const out: HostSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const port = parseInt((f[1] as string).split(':').pop() as string, 16);
    const state = f[3] as string;
    // TCP: LISTEN (0A) only; UDP: every bound socket (unconnected ones are 07).
    if (proto === 'tcp' && state !== '0A') continue;
    out.push({ proto, port, uid: Number(f[7]) });
  }
  return out;
}

export function hostSockets(): HostSocket[] {
  const out: HostSocket[] = [];
  for (const [proto, file] of [['tcp', 'tcp'], ['tcp', 'tcp6'], ['udp', 'udp'], ['udp', 'udp6']] as const) {
    try {
      out.push(...parseProcNet(proto, readFileSync(`/proc/net/${file}`, 'utf8')));
    } catch {
      // no IPv6
    }
  }
  return out;
}

/** The first socket of another uid (or the host's) in start-end, as words. */
export function busyIn(sockets: HostSocket[], uid: number, start: number, end: number): string | undefined {
  const s = sockets.find((x) => x.port >= start && x.port <= end && x.uid !== uid);
  return s && `${s.port}/${s.proto} (a socket of uid ${s.uid})`;
}

/** Picks (or checks) this user's subnet and port range against every other user's and the host's listeners. */
export function planNetwork(
  uid: number,
  existing: UserNetwork[],
  want: { subnet?: string; hostPorts?: string },
  busy: (start: number, end: number) => string | undefined = () => undefined,
): UserNetwork {
  let subnet = want.subnet;
  if (subnet !== undefined) {
    const { prefix } = parseCidr(subnet);
    if (prefix < 16 || prefix > 28) throw new InvalidArgument('--network-subnet must be between /16 and /28');
    const clash = existing.find((n) => overlaps(n.subnet, subnet as string));
    if (clash) throw new InvalidArgument(`--network-subnet ${subnet} overlaps ${clash.subnet}, another user's`);
  } else {
    const pool = parseCidr(DEFAULT_POOL);
    for (let i = 0; i < 256 && subnet === undefined; i++) {
      const candidate = `${intToIp(ipToInt(pool.network) + i * 256)}/24`;
      if (!existing.some((n) => overlaps(n.subnet, candidate))) subnet = candidate;
    }
    if (subnet === undefined) throw new FailedPrecondition('ERR_TRELLIS_NETWORK_POOL', `no free /24 left in ${DEFAULT_POOL}: pass --network-subnet`);
  }
  let portStart: number;
  let portEnd: number;
  if (want.hostPorts !== undefined) {
    const m = /^(\d+)-(\d+)$/.exec(want.hostPorts);
    portStart = Number(m?.[1]);
    portEnd = Number(m?.[2]);
    if (!m || portStart < 1024 || portEnd > 65535 || portStart > portEnd) throw new InvalidArgument('--host-ports must be START-END within 1024-65535');
  } else {
    let slot = 0;
    const taken = (a: number, b: number): boolean => existing.some((n) => n.portStart <= b && a <= n.portEnd) || busy(a, b) !== undefined;
    while (PORT_BASE + slot * PORTS_PER_USER + PORTS_PER_USER - 1 <= 65535 && taken(PORT_BASE + slot * PORTS_PER_USER, PORT_BASE + slot * PORTS_PER_USER + PORTS_PER_USER - 1)) slot++;
    portStart = PORT_BASE + slot * PORTS_PER_USER;
    portEnd = portStart + PORTS_PER_USER - 1;
    if (portEnd > 65535) throw new FailedPrecondition('ERR_TRELLIS_PORTS', 'no free block of host ports left: pass --host-ports');
  }
  const clash = existing.find((n) => n.portStart <= portEnd && portStart <= n.portEnd);
  if (clash) throw new InvalidArgument(`host ports ${portStart}-${portEnd} overlap ${clash.portStart}-${clash.portEnd}, another user's`);
  const inUse = busy(portStart, portEnd);
  if (inUse) throw new InvalidArgument(`host ports ${portStart}-${portEnd}: ${inUse} already uses one; pick another block with --host-ports`);
  const net = parseCidr(subnet);
  // 9000: the bridge has no physical port, so jumbo frames cost nothing and carry ~2x the TCP throughput of 1500.
  return { bridge: `tr${uid}`, subnet, gateway: intToIp(ipToInt(net.network) + 1), portStart, portEnd, mtu: DEFAULT_MTU };
}

/** A route of the host's (`ip -j route show table all`), the parts the pool check needs. */
export interface HostRoute {
  dst: string;
  dev?: string;
  type?: string;
}

/**
 * Checks an address pool for uid: a /12 to a /30 network outside 0/8, 127/8 and 224/3, clear
 * of the user's own subnet, every other user's subnet and pool, and every route and address
 * of the host but the default route and the user's own bridges'.
 */
export function checkPool(uid: number, pool: string, subnet: string, existing: UserNetwork[], routes: HostRoute[]): string {
  const { network, prefix } = parseCidr(pool);
  if (prefix < 12 || prefix > 30) throw new InvalidArgument(`--network-pool ${pool}: the pool must be a /12 to a /30`);
  const first = Number(network.split('.')[0]);
  if (first === 0 || first === 127 || first >= 224) throw new InvalidArgument(`--network-pool ${pool}: not in 0.0.0.0/8, 127.0.0.0/8 or 224.0.0.0/3`);
  if (cidrsOverlap(pool, subnet)) throw new InvalidArgument(`--network-pool ${pool} overlaps this user's subnet ${subnet}`);
  for (const n of existing) {
    if (cidrsOverlap(pool, n.subnet)) throw new InvalidArgument(`--network-pool ${pool} overlaps ${n.subnet}, another user's subnet`);
    if (n.pool !== undefined && cidrsOverlap(pool, n.pool)) throw new InvalidArgument(`--network-pool ${pool} overlaps ${n.pool}, another user's pool`);
  }
  const own = new RegExp(`^tr${uid}(p\\d+)?$`);
  for (const r of routes) {
    if (r.dst === 'default' || (r.dev !== undefined && own.test(r.dev))) continue;
    const dst = r.dst.includes('/') ? r.dst : `${r.dst}/32`;
    let ok = true;
    try {
      parseCidr(dst);
    } catch {
      ok = false;
    }
    if (ok && cidrsOverlap(pool, dst)) throw new InvalidArgument(`--network-pool ${pool} overlaps the host's route to ${r.dst}${r.dev ? ` (dev ${r.dev})` : ''}`);
  }
  return pool;
}

function hostRoutes(): HostRoute[] {
  return JSON.parse(ip(['-j', '-4', 'route', 'show', 'table', 'all'])) as HostRoute[];
}

/** The pool bridges' wildcard: the gate names them tr<uid>p<n>. */
export function poolBridges(uid: number): string {
  return `tr${uid}p+`;
}

/**
 * The host rules of ensureHostRules for every pool bridge of the user at once (interface
 * wildcard): no source outside the pool; traffic within one bridge (bridged) passes, none
 * goes to another bridge (another subnet of the same user, or another user's), only replies
 * and net-in come in, from the host only the owner's and root's sockets; masquerade out.
 */
export function ensurePoolRules(n: UserNetwork & { pool: string }, uid: number, previous?: string): 'created' | 'already present' {
  const w = poolBridges(uid);
  let changed = false;
  if (previous !== undefined && previous !== n.pool) {
    changed = xtables('iptables', ['-t', 'raw', '-D', 'PREROUTING', '-i', w, '!', '-s', previous, '-j', 'DROP']) || changed;
    changed = xtables('iptables', ['-t', 'nat', '-D', 'POSTROUTING', '-s', previous, '!', '-o', w, '-j', 'MASQUERADE']) || changed;
  }
  changed = ensureRule('raw', 'PREROUTING', ['-i', 'tr+', '-d', '127.0.0.0/8', '-j', 'DROP'], true) || changed;
  changed = ensureRule('raw', 'PREROUTING', ['-i', w, '!', '-s', n.pool, '-j', 'DROP']) || changed;
  changed = ensureChain('filter', FORWARD_CHAIN) || changed;
  changed = ensureRule('filter', 'FORWARD', ['-j', FORWARD_CHAIN], true) || changed;
  for (const rule of [
    ['-i', w, '-m', 'physdev', '--physdev-is-bridged', '-j', 'ACCEPT'],
    ['-i', w, '-o', 'tr+', '-j', 'DROP'],
    ['-o', w, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED,DNAT', '-j', 'ACCEPT'],
    ['-o', w, '-j', 'DROP'],
  ]) {
    changed = ensureRule('filter', FORWARD_CHAIN, rule) || changed;
  }
  for (const [bin, family] of [['iptables', 4], ['ip6tables', 6]] as const) {
    changed = ensureChain('filter', OUTPUT_CHAIN, bin) || changed;
    changed = ensureRule('filter', 'OUTPUT', ['-j', OUTPUT_CHAIN], true, bin) || changed;
    for (const rule of outputRules(w, uid, family)) changed = ensureRule('filter', OUTPUT_CHAIN, rule, false, bin) || changed;
  }
  changed = ensureRule('nat', 'POSTROUTING', ['-s', n.pool, '!', '-o', w, '-j', 'MASQUERADE']) || changed;
  return changed ? 'created' : 'already present';
}

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A locally administered unicast MAC, the same for a bridge name every time. */
export function bridgeMac(bridge: string): string {
  const h = createHash('sha256').update(`trellis-bridge-${bridge}`).digest();
  return ['02', ...[0, 1, 2, 3, 4].map((i) => (h[i] as number).toString(16).padStart(2, '0'))].join(':');
}

function ensureBridge(n: UserNetwork): 'created' | 'already present' | 'fixed' {
  const { prefix } = parseCidr(n.subnet);
  let outcome: 'created' | 'already present' | 'fixed' = 'already present';
  let info: { addr_info?: { local?: string; prefixlen?: number; family?: string }[]; operstate?: string; flags?: string[] }[] = [];
  try {
    info = JSON.parse(ip(['-j', 'addr', 'show', 'dev', n.bridge])) as typeof info;
  } catch {
    ip(['link', 'add', n.bridge, 'type', 'bridge']);
    outcome = 'created';
  }
  // A fixed MAC: left to itself a bridge borrows its lowest port's, so destroying that
  // container would change the gateway's MAC under every other container's ARP cache.
  const mac = bridgeMac(n.bridge);
  const assigned = readFileSync(`/sys/class/net/${n.bridge}/addr_assign_type`, 'utf8').trim();
  const current = readFileSync(`/sys/class/net/${n.bridge}/address`, 'utf8').trim();
  if (assigned !== '3' || current !== mac) {
    ip(['link', 'set', n.bridge, 'address', mac]);
    if (outcome === 'already present') outcome = 'fixed';
  }
  const addrs = (info[0]?.addr_info ?? []).filter((a) => a.family === 'inet');
  if (!addrs.some((a) => a.local === n.gateway && a.prefixlen === prefix)) {
    for (const a of addrs) ip(['addr', 'del', `${a.local}/${a.prefixlen}`, 'dev', n.bridge]);
    ip(['addr', 'add', `${n.gateway}/${prefix}`, 'dev', n.bridge]);
    if (outcome !== 'created') outcome = 'fixed';
  }
  const mtu = (info[0] as { mtu?: number } | undefined)?.mtu;
  if (mtu !== n.mtu) {
    ip(['link', 'set', n.bridge, 'mtu', String(n.mtu)]);
    if (outcome === 'already present') outcome = 'fixed';
  }
  if (!(info[0]?.flags ?? []).includes('UP')) {
    ip(['link', 'set', n.bridge, 'up']);
    if (outcome === 'already present') outcome = 'fixed';
  }
  return outcome;
}

function xtables(bin: 'iptables' | 'ip6tables', args: string[]): boolean {
  try {
    execFileSync(bin, ['-w', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    return true;
  } catch {
    return false;
  }
}

const iptables = (args: string[]): boolean => xtables('iptables', args);

/** Appends (or inserts first) a rule unless it is already there. */
function ensureRule(table: string, chain: string, rule: string[], first = false, bin: 'iptables' | 'ip6tables' = 'iptables'): boolean {
  if (xtables(bin, ['-t', table, '-C', chain, ...rule])) return false;
  if (!xtables(bin, ['-t', table, first ? '-I' : '-A', chain, ...(first ? ['1'] : []), ...rule])) {
    throw new FailedPrecondition('ERR_TRELLIS_IPTABLES', `${bin} -t ${table} ${first ? '-I' : '-A'} ${chain} ${rule.join(' ')} failed`);
  }
  return true;
}

function ensureChain(table: string, chain: string, bin: 'iptables' | 'ip6tables' = 'iptables'): boolean {
  if (xtables(bin, ['-t', table, '-S', chain])) return false;
  if (!xtables(bin, ['-t', table, '-N', chain])) throw new FailedPrecondition('ERR_TRELLIS_IPTABLES', `${bin} -t ${table} -N ${chain} failed`);
  return true;
}

export const FORWARD_CHAIN = 'TRELLIS-FORWARD';
export const OUTPUT_CHAIN = 'TRELLIS-OUTPUT';
/** portmap's top-level DNAT chain (containernetworking-plugins), entered for every local destination. */
const HOSTPORT_DNAT = 'CNI-HOSTPORT-DNAT';
/** nat: UDP net-in (issue #13), entered for every local destination but loopback; one jump per user's port block. */
export const UDP_CHAIN = 'TRELLIS-UDP';
/** nat: one user's UDP DNAT rules, which the gate rebuilds whole from the user's records on every ports and del. */
export const udpChain = (uid: number): string => `${UDP_CHAIN}-${uid}`;

/** The jumps to this user's UDP chain: exactly one, for its port block (a block changed by setup leaves no stale jump). */
function ensureUdpJump(n: UserNetwork, uid: number): boolean {
  const dport = n.portStart === n.portEnd ? String(n.portStart) : `${n.portStart}:${n.portEnd}`; // as iptables -S prints it
  const want = ['-p', 'udp', '-m', 'udp', '--dport', dport, '-j', udpChain(uid)];
  let changed = false;
  let listed = '';
  try {
    listed = execFileSync('iptables', ['-w', '-t', 'nat', '-S', UDP_CHAIN], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    // no chain yet: made by the caller first
  }
  for (const line of listed.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== '-A' || words[words.length - 1] !== udpChain(uid) || words.slice(2).join(' ') === want.join(' ')) continue;
    if (!iptables(['-t', 'nat', '-D', UDP_CHAIN, ...words.slice(2)])) throw new FailedPrecondition('ERR_TRELLIS_IPTABLES', `iptables -t nat -D ${line.trim().slice(3)} failed`);
    changed = true;
  }
  return ensureRule('nat', UDP_CHAIN, want) || changed;
}

/** The host's own traffic into bridge b (filter OUTPUT): replies, net-in (DNAT), the owner's and root's sockets; nothing else. */
export function outputRules(b: string, uid: number, family: 4 | 6): string[][] {
  return [
    ['-o', b, '-m', 'conntrack', '--ctstate', family === 4 ? 'ESTABLISHED,RELATED,DNAT' : 'ESTABLISHED,RELATED', '-j', 'ACCEPT'],
    ...(family === 6
      ? ['neighbour-solicitation', 'neighbour-advertisement'].map((t) => ['-o', b, '-p', 'ipv6-icmp', '--icmpv6-type', t, '-j', 'ACCEPT'])
      : []),
    ['-o', b, '-m', 'owner', '--uid-owner', String(uid), '-j', 'ACCEPT'],
    ['-o', b, '-m', 'owner', '--uid-owner', '0', '-j', 'ACCEPT'],
    ['-o', b, '-j', 'DROP'],
  ];
}

/**
 * Host rules, once per user, that containers' own netns rules cannot give:
 * nothing from a Trellis bridge reaches the host's 127.0.0.0/8 (CVE-2020-8558); nothing
 * leaves a bridge from an address outside its subnet (no container speaks as another
 * user's); no user's containers reach another user's bridge; nothing enters a bridge
 * from other bridges unless it is a reply or a net-in mapping, nor from the host itself
 * (OUTPUT, both families: the bridge's host address would otherwise let any local user
 * reach every container port) unless it is a reply, a net-in mapping, or a socket of the
 * owner or root; and one static MASQUERADE per user for egress (the gate runs the bridge
 * plugin with ipMasq off, so no per-container NAT chain exists).
 */
export function ensureHostRules(n: UserNetwork, uid: number): 'created' | 'already present' {
  let changed = ensureRule('raw', 'PREROUTING', ['-i', 'tr+', '-d', '127.0.0.0/8', '-j', 'DROP'], true);
  const b = n.bridge;
  changed = ensureRule('raw', 'PREROUTING', ['-i', b, '!', '-s', n.subnet, '-j', 'DROP']) || changed;
  changed = ensureChain('filter', FORWARD_CHAIN) || changed;
  changed = ensureRule('filter', 'FORWARD', ['-j', FORWARD_CHAIN], true) || changed;
  for (const rule of [
    ['-i', b, '-o', b, '-j', 'ACCEPT'],
    ['-i', b, '-o', 'tr+', '-j', 'DROP'],
    ['-o', b, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED,DNAT', '-j', 'ACCEPT'],
    ['-o', b, '-j', 'DROP'],
  ]) {
    changed = ensureRule('filter', FORWARD_CHAIN, rule) || changed;
  }
  for (const [bin, family] of [['iptables', 4], ['ip6tables', 6]] as const) {
    changed = ensureChain('filter', OUTPUT_CHAIN, bin) || changed;
    changed = ensureRule('filter', 'OUTPUT', ['-j', OUTPUT_CHAIN], true, bin) || changed;
    for (const rule of outputRules(b, uid, family)) changed = ensureRule('filter', OUTPUT_CHAIN, rule, false, bin) || changed;
  }
  changed = ensureRule('nat', 'POSTROUTING', ['-s', n.subnet, '!', '-o', b, '-j', 'MASQUERADE']) || changed;
  // portmap's DNAT skips loopback: 127.0.0.1:<hostport> reaches gdn's own socket, which splices to the container (route_localnet stays off).
  changed = ensureChain('nat', HOSTPORT_DNAT) || changed;
  changed = ensureRule('nat', HOSTPORT_DNAT, ['-d', '127.0.0.0/8', '-j', 'RETURN'], true) || changed;
  // UDP net-in is the gate's own DNAT, not portmap's (whose ADD flushes every UDP flow to that port, on any
  // address): TRELLIS-UDP for local destinations, loopback skipped as above, then this user's block into its chain.
  changed = ensureChain('nat', UDP_CHAIN) || changed;
  for (const base of ['PREROUTING', 'OUTPUT']) changed = ensureRule('nat', base, ['-m', 'addrtype', '--dst-type', 'LOCAL', '-j', UDP_CHAIN]) || changed;
  changed = ensureRule('nat', UDP_CHAIN, ['-d', '127.0.0.0/8', '-j', 'RETURN'], true) || changed;
  changed = ensureChain('nat', udpChain(uid)) || changed;
  changed = ensureUdpJump(n, uid) || changed;
  return changed ? 'created' : 'already present';
}

/** nftables, bridge family (no br_netfilter, no sysctl): each container's host veth carries only its own addresses (issue #13). */
export const SPOOF_TABLE = 'trellis';
const SPOOF_RULES = [
  // IPv4 and ARP only: VLAN-tagged frames would hide their payload's type from the rules below
  'iifname @veths ether type != { ip, arp } drop',
  'iifname @veths iifname . ether saddr != @ownmac drop',
  'iifname @veths iifname . ip saddr != @own drop',
  'iifname @veths iifname . arp saddr ip != @own drop',
  'iifname @veths iifname . arp saddr ether != @ownmac drop',
];

/**
 * The table, its sets (veths: ifname; own: ifname . ipv4_addr; ownmac: ifname . ether_addr, which
 * the gate fills at add and empties at del) and the drops: from a listed veth, only IPv4 and ARP
 * frames whose sender MAC and address are that container's own. Shared by every user: the gate only ever adds and removes
 * its own container's veth, and veths it never listed (containers from before) pass.
 */
export function ensureSpoofGuard(): 'created' | 'already present' {
  const run = (args: string[], input?: string): string =>
    execFileSync('nft', args, { encoding: 'utf8', input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  let chain = '';
  try {
    chain = run(['list', 'chain', 'bridge', SPOOF_TABLE, 'prerouting']);
  } catch {
    // no table yet
  }
  const rules = chain.split('\n').map((l) => l.trim()).filter((l) => l.includes(' drop'));
  if (rules.length === SPOOF_RULES.length && SPOOF_RULES.every((r, i) => rules[i] === r)) return 'already present';
  try {
    run(['-f', '-'], [
      `add table bridge ${SPOOF_TABLE}`,
      `add set bridge ${SPOOF_TABLE} veths { type ifname; }`,
      `add set bridge ${SPOOF_TABLE} own { type ifname . ipv4_addr; }`,
      `add set bridge ${SPOOF_TABLE} ownmac { type ifname . ether_addr; }`,
      `add chain bridge ${SPOOF_TABLE} prerouting { type filter hook prerouting priority -300; policy accept; }`,
      `flush chain bridge ${SPOOF_TABLE} prerouting`,
      ...SPOOF_RULES.map((r) => `add rule bridge ${SPOOF_TABLE} prerouting ${r}`),
      '',
    ].join('\n'));
  } catch (err) {
    const why = ((err as { stderr?: string }).stderr ?? String(err)).trim().split('\n').pop();
    throw new FailedPrecondition('ERR_TRELLIS_NFT', `nft: cannot make the table bridge ${SPOOF_TABLE}: ${why}`, "install it: 'apt-get install nftables'");
  }
  return 'created';
}

const RESERVED_PORTS = '/proc/sys/net/ipv4/ip_local_reserved_ports';
export const RESERVED_PORTS_CONF = '/etc/sysctl.d/60-trellis-reserved-ports.conf';

/** `a,b-c` ranges merged with more ranges, as the kernel prints them. */
export function mergePortRanges(current: string, add: [number, number][]): string {
  const all: [number, number][] = [...add];
  for (const part of current.split(',').map((x) => x.trim()).filter(Boolean)) {
    const [a, b] = part.split('-').map(Number);
    if (Number.isInteger(a) && (b === undefined || Number.isInteger(b))) all.push([a as number, b ?? (a as number)]);
  }
  all.sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const r of all) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out.map(([a, z]) => (a === z ? String(a) : `${a}-${z}`)).join(',');
}

/** Every user's host ports go into ip_local_reserved_ports: no automatic bind (ephemeral port) ever lands there. */
function ensureReservedPorts(nets: UserNetwork[]): string {
  const current = readFileSync(RESERVED_PORTS, 'utf8').trim();
  const want = mergePortRanges(current, nets.map((n) => [n.portStart, n.portEnd]));
  let outcome = 'already present';
  if (want !== mergePortRanges(current, [])) {
    execFileSync('sysctl', ['-q', '-w', `net.ipv4.ip_local_reserved_ports=${want}`]);
    outcome = 'set';
  }
  const conf = `# Written by gdn setup: the Trellis users' host-port blocks (and what was reserved before).\nnet.ipv4.ip_local_reserved_ports = ${want}\n`;
  if (!existsSync(RESERVED_PORTS_CONF) || readFileSync(RESERVED_PORTS_CONF, 'utf8') !== conf) {
    ensureRootDir(dirname(RESERVED_PORTS_CONF), { uid: 0, gid: 0 }, 0o755);
    writeFileAtomic(RESERVED_PORTS_CONF, conf, { mode: 0o644, uid: 0, gid: 0 });
  }
  return `${want} (${outcome})`;
}

function installGate(source: string, dest: string): 'installed' | 'already present' {
  if (!existsSync(source)) {
    throw new FailedPrecondition('ERR_TRELLIS_GATE_NOT_BUILT', `the CNI gate was not built (${source})`, "run 'npm run build' (it compiles plugins/networker/gate with gcc)");
  }
  const src = statSync(source);
  if (src.uid !== 0 || (src.mode & 0o022) !== 0) {
    // It becomes setuid root: only a build nobody else could have changed.
    throw new FailedPrecondition('ERR_TRELLIS_GATE_SOURCE', `${source} must be owned by root and writable by nobody else before it is installed setuid`);
  }
  ensureRootDir(dirname(dirname(dest)), { uid: 0, gid: 0 }, 0o755);
  ensureRootDir(dirname(dest), { uid: 0, gid: 0 }, 0o755);
  if (existsSync(dest)) {
    const st = statSync(dest);
    const same = readFileSync(dest).equals(readFileSync(source));
    if (same && st.uid === 0 && st.gid === 0 && (st.mode & 0o7777) === 0o4755) return 'already present';
  }
  const tmp = `${dest}.new`;
  rmSync(tmp, { force: true });
  copyFileSync(source, tmp);
  chownSync(tmp, 0, 0);
  chmodSync(tmp, 0o4755); // after chown, which clears the setuid bit
  renameSync(tmp, dest);
  return 'installed';
}

export function ensureNetwork(opts: NetworkSetupOptions, info: (line: string) => void): UserNetwork {
  for (const p of PLUGINS) {
    if (!existsSync(join(CNI_DIR, p))) {
      throw new FailedPrecondition('ERR_TRELLIS_CNI_MISSING', `${join(CNI_DIR, p)} not found`, "install it: 'apt-get install containernetworking-plugins'");
    }
  }
  const confDir = opts.confDir ?? NET_CONF_DIR;
  ensureRootDir(dirname(confDir), { uid: 0, gid: 0 }, 0o755);
  ensureRootDir(confDir, { uid: 0, gid: 0 }, 0o755);
  ensureRootDir(NET_STATE_DIR, { uid: 0, gid: 0 }, 0o700);
  const path = join(confDir, `${opts.uid}.conf`);
  // A block that another user's or the host's service already listens in is refused (or skipped when picking one).
  const sockets = hostSockets();
  const busy = (start: number, end: number): string | undefined => busyIn(sockets, opts.uid, start, end);
  let net: UserNetwork;
  let outcome: string;
  let previousPool: string | undefined;
  if (existsSync(path)) {
    net = parseUserNetwork(readFileSync(path, 'utf8'));
    try {
      previousPool = withPool(net, opts.uid, confDir).pool;
    } catch {
      previousPool = undefined; // a broken pool file is rewritten below, or removed by purge-user
    }
    const wanted = planNetwork(opts.uid, others(confDir, opts.uid), {
      subnet: opts.subnet ?? net.subnet,
      hostPorts: opts.hostPorts ?? `${net.portStart}-${net.portEnd}`,
    }, busy);
    if (wanted.subnet !== net.subnet || wanted.portStart !== net.portStart || wanted.portEnd !== net.portEnd || net.mtu !== DEFAULT_MTU) {
      net = { ...net, subnet: wanted.subnet, gateway: wanted.gateway, portStart: wanted.portStart, portEnd: wanted.portEnd, mtu: DEFAULT_MTU };
      outcome = 'changed';
    } else {
      outcome = 'already present';
    }
  } else {
    net = planNetwork(opts.uid, others(confDir, opts.uid), opts, busy);
    outcome = 'created';
  }
  // Issue #8: the pool, checked (against the host's routes too) before anything is written; kept once granted.
  const pool = opts.pool ?? previousPool;
  if (pool !== undefined) net.pool = checkPool(opts.uid, pool, net.subnet, others(confDir, opts.uid), hostRoutes());
  if (outcome !== 'already present') writeFileAtomic(path, formatUserNetwork(net), { mode: 0o644, uid: 0, gid: 0 });
  if (pool !== undefined) {
    const poolPath = join(confDir, `${opts.uid}.pool`);
    if (pool !== previousPool || readFileSync(poolPath, 'utf8') !== formatPool(pool)) {
      writeFileAtomic(poolPath, formatPool(pool), { mode: 0o644, uid: 0, gid: 0 });
      if (outcome === 'already present') outcome = 'changed';
    }
  }
  info(`network ${path}: bridge ${net.bridge}, subnet ${net.subnet}, gateway ${net.gateway}, host ports ${net.portStart}-${net.portEnd}${net.pool !== undefined ? `, address pool ${net.pool}` : ''} (${outcome})`);
  info(`bridge ${net.bridge} ${net.gateway}/${parseCidr(net.subnet).prefix} (${ensureBridge(net)})`);
  info(`host rules for ${net.bridge}: no 127.0.0.0/8 from bridges, no source outside ${net.subnet}, no other user's bridge, only replies and net-in in, no DNAT of loopback, UDP net-in through ${udpChain(opts.uid)}, from the host only the owner's and root's sockets (IPv4 and IPv6), masquerade out (${ensureHostRules(net, opts.uid)})`);
  info(`per-veth anti-spoofing (nftables table bridge ${SPOOF_TABLE}: a container's veth carries only IPv4 and ARP with its own sender MAC and address) (${ensureSpoofGuard()})`);
  if (net.pool !== undefined) {
    info(`address pool ${net.pool}: a bridge tr${opts.uid}p<n> per subnet in use, made by the CNI gate; host rules for ${poolBridges(opts.uid)}: no source outside the pool, nothing between subnets or users, only replies and net-in in, from the host only the owner's and root's sockets, masquerade out (${ensurePoolRules({ ...net, pool: net.pool }, opts.uid, previousPool)})`);
  }
  info(`reserved host ports (ip_local_reserved_ports, ${RESERVED_PORTS_CONF}): ${ensureReservedPorts([net, ...others(confDir, opts.uid)])}`);
  const fwd = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim();
  if (fwd !== '1') execFileSync('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
  info(`IPv4 forwarding on (${fwd === '1' ? 'already present' : 'enabled'})`);
  const gate = opts.gatePath ?? DEFAULT_GATE;
  info(`CNI gate ${gate} root:root 4755 (${installGate(opts.gateSource ?? BUILT_GATE, gate)})`);
  return net;
}
