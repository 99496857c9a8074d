// `gdn setup`'s network step: the user's own bridge, subnet and host-port range
// (root-owned /etc/trellis/net/<uid>.conf, the only thing the setuid gate trusts),
// IP forwarding, and the gate itself, installed root-owned with the setuid bit.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync, renameSync, statSync, copyFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FailedPrecondition, InvalidArgument } from '../errors.js';
import { DEFAULT_GATE, NET_CONF_DIR, formatUserNetwork, intToIp, ipToInt, parseUserNetwork, type UserNetwork } from '../../plugins/networker/config.js';
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
      out.push(parseUserNetwork(readFileSync(join(confDir, f), 'utf8')));
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

/** Picks (or checks) this user's subnet and port range against every other user's. */
export function planNetwork(uid: number, existing: UserNetwork[], want: { subnet?: string; hostPorts?: string }): UserNetwork {
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
    while (existing.some((n) => n.portStart <= PORT_BASE + slot * PORTS_PER_USER + PORTS_PER_USER - 1 && PORT_BASE + slot * PORTS_PER_USER <= n.portEnd)) slot++;
    portStart = PORT_BASE + slot * PORTS_PER_USER;
    portEnd = portStart + PORTS_PER_USER - 1;
    if (portEnd > 65535) throw new FailedPrecondition('ERR_TRELLIS_PORTS', 'no free block of host ports left: pass --host-ports');
  }
  const clash = existing.find((n) => n.portStart <= portEnd && portStart <= n.portEnd);
  if (clash) throw new InvalidArgument(`host ports ${portStart}-${portEnd} overlap ${clash.portStart}-${clash.portEnd}, another user's`);
  const net = parseCidr(subnet);
  // 9000: the bridge has no physical port, so jumbo frames cost nothing and carry ~2x the TCP throughput of 1500.
  return { bridge: `tr${uid}`, subnet, gateway: intToIp(ipToInt(net.network) + 1), portStart, portEnd, mtu: DEFAULT_MTU };
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

function iptables(args: string[]): boolean {
  try {
    execFileSync('iptables', ['-w', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    return true;
  } catch {
    return false;
  }
}

/** Appends (or inserts first) a rule unless it is already there. */
function ensureRule(table: string, chain: string, rule: string[], first = false): boolean {
  if (iptables(['-t', table, '-C', chain, ...rule])) return false;
  if (!iptables(['-t', table, first ? '-I' : '-A', chain, ...(first ? ['1'] : []), ...rule])) {
    throw new FailedPrecondition('ERR_TRELLIS_IPTABLES', `iptables -t ${table} ${first ? '-I' : '-A'} ${chain} ${rule.join(' ')} failed`);
  }
  return true;
}

export const FORWARD_CHAIN = 'TRELLIS-FORWARD';

/**
 * Host rules, once per user, that containers' own netns rules cannot give:
 * nothing from a Trellis bridge reaches the host's 127.0.0.0/8 (CVE-2020-8558); no
 * user's containers reach another user's bridge; nothing enters a bridge unless it is
 * a reply or a net-in mapping; and one static MASQUERADE per user for egress (the
 * gate runs the bridge plugin with ipMasq off, so no per-container NAT chain exists).
 */
export function ensureHostRules(n: UserNetwork): 'created' | 'already present' {
  let changed = ensureRule('raw', 'PREROUTING', ['-i', 'tr+', '-d', '127.0.0.0/8', '-j', 'DROP'], true);
  if (!iptables(['-t', 'filter', '-S', FORWARD_CHAIN])) {
    if (!iptables(['-t', 'filter', '-N', FORWARD_CHAIN])) throw new FailedPrecondition('ERR_TRELLIS_IPTABLES', `iptables -N ${FORWARD_CHAIN} failed`);
    changed = true;
  }
  changed = ensureRule('filter', 'FORWARD', ['-j', FORWARD_CHAIN], true) || changed;
  const b = n.bridge;
  for (const rule of [
    ['-i', b, '-o', b, '-j', 'ACCEPT'],
    ['-i', b, '-o', 'tr+', '-j', 'DROP'],
    ['-o', b, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED,DNAT', '-j', 'ACCEPT'],
    ['-o', b, '-j', 'DROP'],
  ]) {
    changed = ensureRule('filter', FORWARD_CHAIN, rule) || changed;
  }
  changed = ensureRule('nat', 'POSTROUTING', ['-s', n.subnet, '!', '-o', b, '-j', 'MASQUERADE']) || changed;
  return changed ? 'created' : 'already present';
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
  let net: UserNetwork;
  let outcome: string;
  if (existsSync(path)) {
    net = parseUserNetwork(readFileSync(path, 'utf8'));
    const wanted = planNetwork(opts.uid, others(confDir, opts.uid), {
      subnet: opts.subnet ?? net.subnet,
      hostPorts: opts.hostPorts ?? `${net.portStart}-${net.portEnd}`,
    });
    if (wanted.subnet !== net.subnet || wanted.portStart !== net.portStart || wanted.portEnd !== net.portEnd || net.mtu !== DEFAULT_MTU) {
      net = { ...net, subnet: wanted.subnet, gateway: wanted.gateway, portStart: wanted.portStart, portEnd: wanted.portEnd, mtu: DEFAULT_MTU };
      writeFileAtomic(path, formatUserNetwork(net), { mode: 0o644, uid: 0, gid: 0 });
      outcome = 'changed';
    } else {
      outcome = 'already present';
    }
  } else {
    net = planNetwork(opts.uid, others(confDir, opts.uid), opts);
    writeFileAtomic(path, formatUserNetwork(net), { mode: 0o644, uid: 0, gid: 0 });
    outcome = 'created';
  }
  info(`network ${path}: bridge ${net.bridge}, subnet ${net.subnet}, gateway ${net.gateway}, host ports ${net.portStart}-${net.portEnd} (${outcome})`);
  info(`bridge ${net.bridge} ${net.gateway}/${parseCidr(net.subnet).prefix} (${ensureBridge(net)})`);
  info(`host rules for ${net.bridge}: no 127.0.0.0/8 from bridges, no other user's bridge, only replies and net-in in, masquerade out (${ensureHostRules(net)})`);
  const fwd = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim();
  if (fwd !== '1') execFileSync('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
  info(`IPv4 forwarding on (${fwd === '1' ? 'already present' : 'enabled'})`);
  const gate = opts.gatePath ?? DEFAULT_GATE;
  info(`CNI gate ${gate} root:root 4755 (${installGate(opts.gateSource ?? BUILT_GATE, gate)})`);
  return net;
}
