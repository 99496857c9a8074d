// The network `gdn setup` gave a user: /etc/trellis/net/<uid>.conf, root-owned,
// `key=value` lines. The setuid gate trusts only this file; the networker reads the
// same file to know its subnet, gateway and host-port range.
import { existsSync, readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { FailedPrecondition, InvalidArgument } from '../../src/errors.js';
import { parseCidr } from './netout.js';

export const NET_CONF_DIR = '/etc/trellis/net';
/** Where the Debian package ships the gate (dpkg-owned, root 4755). */
export const PACKAGED_GATE = '/usr/libexec/trellis/cni-gate';
/**
 * The gate `gdn setup` installs and `gdn server` uses: the package's own path when this
 * code runs from the Debian package (scripts/package leaves a `.packaged` marker at its
 * root, /usr/lib/trellis), else /usr/local for a source install.
 */
export const DEFAULT_GATE = existsSync(new URL('../../../.packaged', import.meta.url)) ? PACKAGED_GATE : '/usr/local/libexec/trellis/cni-gate';

export interface UserNetwork {
  bridge: string;
  /** CIDR, network address exact. */
  subnet: string;
  gateway: string;
  portStart: number;
  portEnd: number;
  mtu: number;
  /** Issue #8: the address pool root granted (CIDR), whose subnets creates may ask for; each gets its own bridge. */
  pool?: string;
}

const KEYS = new Set(['bridge', 'subnet', 'gateway', 'port_start', 'port_end', 'mtu']);

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0) >>> 0;
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

/** Is `ip` a host address of `cidr` (not its network or broadcast address)? */
export function inSubnet(ip: string, cidr: string): boolean {
  const { network, prefix } = parseCidr(cidr);
  const size = 2 ** (32 - prefix);
  const base = ipToInt(network);
  const n = ipToInt(ip);
  return n > base && n < base + size - 1;
}

export function parseUserNetwork(text: string): UserNetwork {
  const kv = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new InvalidArgument(`malformed line \`${line}\``);
    const k = line.slice(0, eq);
    if (!KEYS.has(k)) throw new InvalidArgument(`unknown key \`${k}\``);
    kv.set(k, line.slice(eq + 1));
  }
  const need = (k: string): string => {
    const v = kv.get(k);
    if (v === undefined) throw new InvalidArgument(`missing \`${k}\``);
    return v;
  };
  const int = (k: string, lo: number, hi: number, dflt?: number): number => {
    const v = kv.get(k);
    if (v === undefined && dflt !== undefined) return dflt;
    const n = Number(need(k));
    if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgument(`\`${k}\` must be between ${lo} and ${hi}`);
    return n;
  };
  const bridge = need('bridge');
  if (!/^[a-z][a-z0-9]{0,14}$/.test(bridge)) throw new InvalidArgument(`bad bridge name \`${bridge}\``);
  const subnet = need('subnet');
  const { prefix } = parseCidr(subnet);
  if (prefix < 16 || prefix > 28) throw new InvalidArgument('the subnet must be between /16 and /28');
  const gateway = need('gateway');
  if (!isIPv4(gateway) || !inSubnet(gateway, subnet)) throw new InvalidArgument(`gateway ${gateway} is not a host address of ${subnet}`);
  const portStart = int('port_start', 1024, 65535);
  const portEnd = int('port_end', portStart, 65535);
  return { bridge, subnet, gateway, portStart, portEnd, mtu: int('mtu', 576, 9000, 1500) };
}

/**
 * Issue #8: /etc/trellis/net/<uid>.pool, beside the config (so a gate or networker from
 * before pools reads the config unchanged): `pool=a.b.c.d/nn`, /12 to /30, clear of subnet.
 */
export function parsePool(text: string, subnet: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const m = lines.length === 1 ? /^pool=(\S+)$/.exec(lines[0] as string) : null;
  if (!m) throw new InvalidArgument('want one line pool=a.b.c.d/nn');
  const pool = m[1] as string;
  const { prefix } = parseCidr(pool);
  if (prefix < 12 || prefix > 30) throw new InvalidArgument('the pool must be between /12 and /30');
  if (cidrsOverlap(pool, subnet)) throw new InvalidArgument(`the pool ${pool} overlaps the subnet ${subnet}`);
  return pool;
}

export function formatPool(pool: string): string {
  return `# Written by gdn setup --network-pool; read by the setuid CNI gate. Root-owned on purpose.\npool=${pool}\n`;
}

/** The user's network with its pool, if root granted one. */
export function withPool(n: UserNetwork, uid: number, dir = NET_CONF_DIR): UserNetwork {
  const path = `${dir}/${uid}.pool`;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return n;
  }
  try {
    return { ...n, pool: parsePool(text, n.subnet) };
  } catch (err) {
    throw new FailedPrecondition('ERR_TRELLIS_NETWORK_CONFIG', `${path}: ${(err as Error).message}`);
  }
}

/** Do two CIDRs share an address? */
export function cidrsOverlap(a: string, b: string): boolean {
  const span = (c: string): [number, number] => {
    const { network, prefix } = parseCidr(c);
    return [ipToInt(network), ipToInt(network) + 2 ** (32 - prefix) - 1];
  };
  const [a0, a1] = span(a);
  const [b0, b1] = span(b);
  return a0 <= b1 && b0 <= a1;
}

/** Addresses a subnet gives containers: all but the network, the gateway and the broadcast address. */
export function containerAddresses(subnet: string): number {
  const { prefix } = parseCidr(subnet);
  return Math.max(0, 2 ** (32 - prefix) - 3);
}

export function loadUserNetwork(uid: number, dir = NET_CONF_DIR): UserNetwork {
  const path = `${dir}/${uid}.conf`;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new FailedPrecondition(
      'ERR_TRELLIS_NO_NETWORK',
      `no network is configured for uid ${uid} (${path})`,
      `run 'sudo gdn setup --rootless-uid ${uid} --rootless-gid <gid>'`,
    );
  }
  let n: UserNetwork;
  try {
    n = parseUserNetwork(text);
  } catch (err) {
    throw new FailedPrecondition('ERR_TRELLIS_NETWORK_CONFIG', `${path}: ${(err as Error).message}`);
  }
  return withPool(n, uid, dir);
}

export function formatUserNetwork(n: UserNetwork): string {
  return [
    '# Written by gdn setup; read by the setuid CNI gate. Root-owned on purpose.',
    `bridge=${n.bridge}`,
    `subnet=${n.subnet}`,
    `gateway=${n.gateway}`,
    `port_start=${n.portStart}`,
    `port_end=${n.portEnd}`,
    `mtu=${n.mtu}`,
    '',
  ].join('\n');
}
