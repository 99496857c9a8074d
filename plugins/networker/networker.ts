// The external networker (spec/plugins.md §3), unprivileged. Addresses, the veth
// and port mappings come from the setuid gate (CNI bridge, host-local, portmap as
// root, inside the user's own network and port range); egress rules are written by
// this process into the container's own network namespace, entered through the
// user's ownership of the container's user namespace.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino, type Logger } from 'pino';
import { ExternalFailure, InvalidArgument, TrellisError, errorMessage } from '../../src/errors.js';
import { inSubnet, intToIp, ipToInt, type UserNetwork } from './config.js';
import type { Gate, PortMapping } from './gate.js';
import type { Spawner } from '../../src/runtime/spawner/spawner.js';
import { PortHolder, PortInUse } from './loopback.js';
import { ipv4Table, ipv6Table, parseCidr, parseRule, type NetOutRule } from './netout.js';

export interface NetworkerOptions {
  network: UserNetwork;
  gate: Gate;
  /** gdn's spawner (issue 10: no fork of the large daemon per call); absent, execa. */
  spawner?: Spawner;
  /** Per-container state (JSON); survives daemon restarts (it lives as long as the containers). */
  stateDir: string;
  allowNetworks?: string[];
  denyNetworks?: string[];
  /** Resolvers the containers may reach; default: the host's, but loopback ones. */
  dnsServers?: string[];
  logger?: Logger;
  /**
   * Hold a socket on every mapped host port (gdn, a long-lived process): it reserves the
   * port and answers 127.0.0.1/::1 by splicing to the container. Off for the one-shot CLI.
   */
  holdPorts?: boolean;
}

interface State {
  handle: string;
  id: string;
  pid: number;
  /** The init's start time (/proc/<pid>/stat field 22): a recycled pid never passes for it. */
  startTime?: string;
  ip: string;
  rules: NetOutRule[];
  mappings: PortMapping[];
  /** A container on a subnet of the user's address pool (issue #8): that subnet and its gateway. */
  subnet?: string;
  gateway?: string;
}

export interface UpInput {
  Pid: number;
  Properties?: Record<string, string>;
  netout_rules?: unknown[];
  netin?: { host_port?: number; container_port?: number }[];
  /** Trellis: the create spec's `network` (an IP, or a CIDR inside the user's subnet). */
  network?: string;
}

export interface UpOutput {
  properties: Record<string, string>;
  dns_servers: string[];
}

/** The gate's container id: the user's own name space, any handle. */
export function gateId(handle: string): string {
  return `n${createHash('sha256').update(handle).digest('hex').slice(0, 32)}`;
}

export function hostResolvers(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m && isIPv4(m[1] as string) && !(m[1] as string).startsWith('127.')) out.push(m[1] as string);
  }
  return out;
}

/** What a create's `network` asks the gate for. */
export interface NetworkRequest {
  ip?: string;
  range?: string;
  /** A subnet of the user's pool, or an address in one (the gate's `net=`), with that subnet and its gateway. */
  net?: string;
  subnet?: string;
  gateway?: string;
}

/**
 * In the user's subnet: `a.b.c.d` → a static IP; `a.b.c.d/nn` → that range (network address)
 * or that IP (host address). In the user's address pool (issue #8): `a.b.c.d/nn` → that
 * subnet, its own bridge, any free address (network address) or exactly that one.
 */
export function parseRequest(spec: string | undefined, net: UserNetwork): NetworkRequest {
  if (spec === undefined || spec === '') return {};
  const [addr, bits] = spec.split('/');
  if (addr === undefined || !isIPv4(addr) || (bits !== undefined && !/^\d{1,2}$/.test(bits))) {
    throw new InvalidArgument(`invalid network \`${spec}\`: want an IPv4 address or CIDR`);
  }
  const user = parseCidr(net.subnet);
  const inUserNet = (ipToInt(addr) & maskOf(user.prefix)) >>> 0 === ipToInt(user.network);
  if (!inUserNet && net.pool !== undefined) {
    const pool = parseCidr(net.pool);
    if ((ipToInt(addr) & maskOf(pool.prefix)) >>> 0 === ipToInt(pool.network)) return poolRequest(spec, addr, bits, pool);
  }
  const outside = (): InvalidArgument =>
    new InvalidArgument(
      net.pool === undefined
        ? `network \`${spec}\` is outside this user's subnet ${net.subnet} (gdn setup decides the subnet; root may grant an address pool with gdn setup --network-pool)`
        : `network \`${spec}\` is outside this user's subnet ${net.subnet} and address pool ${net.pool} (gdn setup decides both)`,
    );
  if (bits === undefined || bits === '32') {
    if (!inSubnet(addr, net.subnet) || addr === net.gateway) throw outside();
    return { ip: addr };
  }
  let exact = true;
  try {
    parseCidr(spec);
  } catch {
    exact = false;
  }
  if (!exact) {
    if (!inSubnet(addr, net.subnet) || addr === net.gateway) throw outside();
    return { ip: addr };
  }
  const { prefix } = parseCidr(spec);
  if (prefix < user.prefix || !inSubnet(addr, net.subnet) && addr !== user.network) throw outside();
  return { range: spec };
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** A subnet of the pool (the gate checks all of it again). */
function poolRequest(spec: string, addr: string, bits: string | undefined, pool: { network: string; prefix: number }): NetworkRequest {
  if (bits === undefined) throw new InvalidArgument(`network \`${spec}\` is in this user's address pool: give its subnet too (a.b.c.d/nn)`);
  const prefix = Number(bits);
  if (prefix < 16 || prefix > 30 || prefix < pool.prefix) {
    throw new InvalidArgument(`network \`${spec}\`: a subnet of the address pool ${pool.network}/${pool.prefix} must be a /${Math.max(16, pool.prefix)} to a /30`);
  }
  const network = (ipToInt(addr) & maskOf(prefix)) >>> 0;
  const gateway = intToIp(network + 1);
  if (addr === gateway || ipToInt(addr) === (network | ~maskOf(prefix)) >>> 0) {
    throw new InvalidArgument(`network \`${spec}\`: ${addr} is the gateway or the broadcast address of its subnet`);
  }
  return { net: spec, subnet: `${intToIp(network)}/${prefix}`, gateway };
}

/** Field 22 of /proc/<pid>/stat (after the parenthesised name, which may hold anything). */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export class Networker {
  private readonly log: Logger;
  private readonly dns: string[];
  private portLock: Promise<unknown> = Promise.resolve();
  /** One change at a time per container: rules and mappings are read, changed and written back. */
  private readonly handleLocks = new Map<string, Promise<unknown>>();
  private readonly holder?: PortHolder;

  private serial<T>(handle: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.handleLocks.get(handle) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const settled = next.catch(() => undefined);
    this.handleLocks.set(handle, settled);
    void settled.then(() => {
      if (this.handleLocks.get(handle) === settled) this.handleLocks.delete(handle);
    });
    return next;
  }

  /** The container's init, if it is still the process `up` was given (not a recycled pid). */
  private alive(s: State): boolean {
    return s.startTime !== undefined && processStartTime(s.pid) === s.startTime;
  }

  private requireAlive(s: State): void {
    if (!this.alive(s)) throw new TrellisError('ERR_TRELLIS_CONTAINER_GONE', `the init process of container [${s.handle}] is gone`);
  }

  constructor(private readonly o: NetworkerOptions) {
    this.log = o.logger ?? pino({ level: 'silent' });
    this.dns = o.dnsServers ?? [];
    if (o.holdPorts) this.holder = new PortHolder(this.log);
    for (const c of [...(o.allowNetworks ?? []), ...(o.denyNetworks ?? [])]) parseCidr(c);
  }

  private statePath(id: string): string {
    return join(this.o.stateDir, `${id}.json`);
  }

  private async load(handle: string): Promise<State | undefined> {
    try {
      return JSON.parse(await readFile(this.statePath(gateId(handle)), 'utf8')) as State;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  private async must(handle: string): Promise<State> {
    const s = await this.load(handle);
    if (!s) throw new TrellisError('ERR_TRELLIS_NETWORK_NOT_FOUND', `cannot find container [${handle}]`);
    return s;
  }

  private async save(s: State): Promise<void> {
    await mkdir(this.o.stateDir, { recursive: true, mode: 0o700 });
    const p = this.statePath(s.id);
    await writeFile(`${p}.tmp`, JSON.stringify(s), { mode: 0o600 });
    await rename(`${p}.tmp`, p);
  }

  /** Writes the whole table into the container's netns (iptables-restore replaces it atomically). */
  private async applyFirewall(s: State): Promise<void> {
    const v4 = ipv4Table({
      subnet: s.subnet ?? this.o.network.subnet,
      gateway: s.gateway ?? this.o.network.gateway,
      dnsServers: this.dns,
      allowNetworks: this.o.allowNetworks ?? [],
      denyNetworks: this.o.denyNetworks ?? [],
      rules: s.rules,
    });
    await Promise.all(([['iptables-restore', v4], ['ip6tables-restore', ipv6Table()]] as const).map(async ([bin, input]) => {
      const argv = ['--preserve-credentials', '--target', String(s.pid), '--user', '--net', bin];
      const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' };
      const r = this.o.spawner
        ? await this.o.spawner.run('nsenter', argv, { input, env })
        : await execa('nsenter', argv, { input, reject: false, extendEnv: false, env });
      if (r.exitCode !== 0) {
        throw new ExternalFailure(bin, `${bin} in the container's network namespace: ${r.stderr.trim().split('\n').pop() || `exit status ${r.exitCode}`}`);
      }
    }));
  }

  async up(handle: string, input: UpInput): Promise<UpOutput> {
    const log = this.log.child({ session: 'up', handle });
    if (!Number.isInteger(input.Pid) || input.Pid <= 1) throw new InvalidArgument(`invalid pid ${String(input.Pid)}`);
    // Everything is checked before anything changes.
    const rules = (input.netout_rules ?? []).map(parseRule);
    const netin = (input.netin ?? []).map((n) => this.checkNetIn(n.host_port ?? 0, n.container_port ?? 0));
    const request = parseRequest(input.network, this.o.network);
    const id = gateId(handle);
    const startTime = processStartTime(input.Pid);
    if (startTime === undefined) throw new InvalidArgument(`no process ${input.Pid}`);
    log.info({ id, pid: input.Pid }, 'up.start');
    const s: State = { handle, id, pid: input.Pid, startTime, ip: '', rules, mappings: [], ...(request.subnet !== undefined ? { subnet: request.subnet, gateway: request.gateway } : {}) };
    // The egress table does not depend on the address: write it while the gate works.
    const timed = async <T>(step: string, p: Promise<T>): Promise<T> => {
      const t0 = performance.now();
      const out = await p;
      log.debug({ step, ms: Math.round((performance.now() - t0) * 10) / 10 }, 'up.step');
      return out;
    };
    const [added, firewall] = await Promise.allSettled([timed('gate-add', this.o.gate.add(id, input.Pid, request)), timed('egress', this.applyFirewall(s))]);
    if (added.status === 'rejected') throw added.reason;
    const address = added.value.ips?.[0]?.address?.split('/')[0];
    s.ip = address ?? '';
    try {
      if (firewall.status === 'rejected') throw firewall.reason;
      if (!address || !isIPv4(address)) throw new ExternalFailure('cni-gate', 'the bridge plugin gave the container no IPv4 address');
      await this.save(s);
      for (const [h, c] of netin) await this.addMapping(s, h, c);
    } catch (err) {
      log.error({ error: errorMessage(err) }, 'up.failed');
      await this.o.gate.del(id, input.Pid).catch(() => undefined);
      await rm(this.statePath(id), { force: true });
      for (const m of s.mappings) await this.holder?.release(m.hostPort, m.protocol);
      throw err;
    }
    log.info({ ip: s.ip }, 'up.finished');
    return {
      properties: {
        'garden.network.container-ip': s.ip,
        'garden.network.host-ip': s.gateway ?? this.o.network.gateway,
        'garden.network.mapped-ports': JSON.stringify(s.mappings.map((m) => ({ HostPort: m.hostPort, ContainerPort: m.containerPort }))),
      },
      dns_servers: this.dns,
    };
  }

  /** Idempotent: everything up made goes (veth, lease, NAT and filter rules); unknown handles are fine. */
  async down(handle: string): Promise<void> {
    return this.serial(handle, () => this.downNow(handle));
  }

  private async downNow(handle: string): Promise<void> {
    const s = await this.load(handle);
    const id = gateId(handle);
    const alive = s !== undefined && this.alive(s);
    await this.o.gate.del(id, alive ? s.pid : undefined).catch(async (err: unknown) => {
      // The process may have died between the check and the call: try once without its netns.
      if (alive) await this.o.gate.del(id);
      else throw err;
    });
    await rm(this.statePath(id), { force: true });
    for (const m of s?.mappings ?? []) await this.holder?.release(m.hostPort, m.protocol);
    this.log.info({ handle }, 'down.finished');
  }

  private checkNetIn(hostPort: number, containerPort: number): [number, number] {
    for (const [v, what] of [[hostPort, 'host port'], [containerPort, 'container port']] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 65535) throw new InvalidArgument(`invalid ${what} ${v}`);
    }
    const { portStart, portEnd } = this.o.network;
    if (hostPort !== 0 && (hostPort < portStart || hostPort > portEnd)) {
      throw new InvalidArgument(`host port ${hostPort} is outside this user's range ${portStart}-${portEnd}`);
    }
    return [hostPort, containerPort];
  }

  private async usedPorts(): Promise<Set<number>> {
    const used = new Set<number>();
    for (const f of await readdir(this.o.stateDir).catch(() => [] as string[])) {
      if (!f.endsWith('.json')) continue;
      try {
        const s = JSON.parse(await readFile(join(this.o.stateDir, f), 'utf8')) as State;
        for (const m of s.mappings) used.add(m.hostPort);
      } catch {
        // a state file being rewritten
      }
    }
    return used;
  }

  private async addMapping(s: State, hostPort: number, containerPort: number): Promise<PortMapping> {
    const run = async (): Promise<PortMapping> => {
      const used = await this.usedPorts();
      for (;;) {
        let h = hostPort;
        if (h === 0) {
          for (let p = this.o.network.portStart; p <= this.o.network.portEnd; p++) {
            if (!used.has(p)) {
              h = p;
              break;
            }
          }
          if (h === 0) throw new TrellisError('ERR_TRELLIS_NO_PORTS', `no free host port left in ${this.o.network.portStart}-${this.o.network.portEnd}`);
        }
        const m: PortMapping = { hostPort: h, containerPort: containerPort === 0 ? h : containerPort, protocol: 'tcp' };
        const next = [...s.mappings, m];
        try {
          // gdn's socket first: it proves no one else holds the port and keeps it so.
          const bound = await this.holder?.hold(m.hostPort, m.protocol, { ip: s.ip, port: m.containerPort });
          try {
            await this.o.gate.ports(s.id, s.pid, next);
          } catch (err) {
            if (bound) await this.holder?.release(m.hostPort, m.protocol);
            throw err;
          }
        } catch (err) {
          // Another server of this user (another state dir), another user or the host holds it.
          if (hostPort === 0 && (err instanceof PortInUse || /already mapped|in use on this host/.test(errorMessage(err)))) {
            used.add(h);
            continue;
          }
          throw err;
        }
        s.mappings = next;
        await this.save(s);
        return m;
      }
    };
    // Port choice and the gate call go one at a time, so two net-ins never pick the same port.
    const p = this.portLock.then(run, run);
    this.portLock = p.catch(() => undefined);
    return p;
  }

  /** After a restart: gdn's sockets on the mapped ports of every container still alive. */
  async resume(): Promise<void> {
    if (!this.holder) return;
    for (const f of await readdir(this.o.stateDir).catch(() => [] as string[])) {
      if (!f.endsWith('.json')) continue;
      let s: State;
      try {
        s = JSON.parse(await readFile(join(this.o.stateDir, f), 'utf8')) as State;
      } catch {
        continue;
      }
      if (!this.alive(s)) continue;
      await this.serial(s.handle, async () => {
        for (const m of s.mappings) {
          await this.holder?.hold(m.hostPort, m.protocol, { ip: s.ip, port: m.containerPort }).catch((err: unknown) => {
            this.log.error({ handle: s.handle, hostPort: m.hostPort, err: errorMessage(err) }, 'resume.hold-failed');
          });
        }
      });
    }
  }

  /** Closes gdn's sockets (the mappings stay: a restarted gdn takes them up again). */
  async close(): Promise<void> {
    await this.holder?.releaseAll();
  }

  async netIn(handle: string, input: { HostPort?: number; ContainerPort?: number }): Promise<{ host_port: number; container_port: number }> {
    const [h, c] = this.checkNetIn(input.HostPort ?? 0, input.ContainerPort ?? 0);
    const m = await this.serial(handle, async () => {
      const s = await this.must(handle);
      this.requireAlive(s);
      return this.addMapping(s, h, c);
    });
    this.log.info({ handle, hostPort: m.hostPort, containerPort: m.containerPort }, 'net-in.finished');
    return { host_port: m.hostPort, container_port: m.containerPort };
  }

  async netOut(handle: string, rules: unknown[]): Promise<void> {
    const parsed = rules.map(parseRule);
    await this.serial(handle, async () => {
      const s = await this.must(handle);
      this.requireAlive(s);
      const next: State = { ...s, rules: [...s.rules, ...parsed] };
      await this.applyFirewall(next);
      await this.save(next);
    });
    this.log.info({ handle, rules: parsed.length }, 'net-out.finished');
  }
}
