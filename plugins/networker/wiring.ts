// How a networker is put together, for the CLI and for gdn: the user's network from
// setup, the gate, a state dir, and the operator's allow/deny lists and resolvers.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { InvalidArgument } from '../../src/errors.js';
import { userPaths } from '../../src/paths.js';
import { DEFAULT_GATE, loadUserNetwork } from './config.js';
import { Gate } from './gate.js';
import type { Spawner } from '../../src/runtime/spawner/spawner.js';
import { hostResolvers, Networker } from './networker.js';

export interface NetworkerConfig {
  gate?: string;
  stateDir?: string;
  allowNetworks?: string[];
  denyNetworks?: string[];
  dnsServers?: string[];
  /** gdn: hold a socket on each mapped port (reservation and the loopback path). */
  holdPorts?: boolean;
}

/** Keys of the seed's garden-cni-config.json that the gate decides instead (root-owned config). */
const SEED_KEYS = new Set([
  'cni_plugin_dir', 'cni_config_dir', 'bind_mount_dir', 'overlay_network', 'state_file', 'start_port', 'total_ports',
  'iptables_lock_file', 'instance_address', 'iptables_asg_logging', 'search_domains', 'log_prefix',
]);

const strings = (v: unknown, key: string): string[] | undefined => {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw new InvalidArgument(`config: ${key} must be a list of strings`);
  return v as string[];
};

/** A JSON config file: Trellis's keys, and the seed's (which are accepted and ignored). */
export function loadNetworkerConfig(path: string | undefined, log: Logger): NetworkerConfig {
  if (path === undefined || path === '') return {};
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new InvalidArgument(`config ${path}: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new InvalidArgument(`config ${path}: not a JSON object`);
  const o = raw as Record<string, unknown>;
  const ignored = Object.keys(o).filter((k) => SEED_KEYS.has(k));
  if (ignored.length > 0) log.info({ ignored }, 'config.seed-keys-ignored: the CNI plugins, subnet and ports come from gdn setup');
  const str = (k: string): string | undefined => {
    if (o[k] === undefined) return undefined;
    if (typeof o[k] !== 'string') throw new InvalidArgument(`config: ${k} must be a string`);
    return o[k] as string;
  };
  return {
    gate: str('gate'),
    stateDir: str('state_dir'),
    allowNetworks: strings(o.allow_networks, 'allow_networks'),
    denyNetworks: strings(o.deny_networks, 'deny_networks'),
    dnsServers: strings(o.dns_servers, 'dns_servers'),
  };
}

export function defaultDnsServers(): string[] {
  try {
    return hostResolvers(readFileSync('/etc/resolv.conf', 'utf8'));
  } catch {
    return [];
  }
}

/** `spawner`: gdn's (issue 10); the networker command line spawns directly. */
export function networkerFor(uid: number, cfg: NetworkerConfig, log: Logger, spawner?: Spawner): Networker {
  return new Networker({
    network: loadUserNetwork(uid),
    gate: new Gate(cfg.gate ?? DEFAULT_GATE, spawner),
    spawner,
    stateDir: cfg.stateDir ?? join(userPaths(uid).runtimeDir, 'network'),
    allowNetworks: cfg.allowNetworks,
    denyNetworks: cfg.denyNetworks,
    dnsServers: cfg.dnsServers ?? defaultDnsServers(),
    logger: log,
    holdPorts: cfg.holdPorts,
  });
}
