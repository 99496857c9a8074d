// The Gardener: container lifecycle over the depot, runtime, image and network seams.
// create = image -> bundle -> runtime -> network, rolled back in reverse on failure;
// destroy journals the teardown in the depot and replies; the teardown (which gathers every
// step's failure and removes the record only when all succeeded) runs on in the background.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { isAbsolute, join, posix } from 'node:path';
import type { Logger } from 'pino';
import {
  AlreadyExists, ContainerNotFound, ExecutableNotFound, ExternalFailure, InvalidArgument, ProcessNotFound,
  TrellisError, errorMessage,
} from '../errors.js';
import type { IdMapping } from '../idmap/subid.js';
import type { ImagePlugin } from '../image/plugin.js';
import type { NetworkPlugin } from '../network/plugin.js';
import { TOOLS_PATH, buildBundle, buildProcess, buildSpawnRequest, type BindMountSpec, type ProcessInput } from '../runtime/bundle.js';
import { encodeExecRequest, encodeSpawnRequest } from '../runtime/spawnrequest.js';
import type { CgroupReader } from '../runtime/cgroupstats.js';
import type { OciSeccomp } from '../runtime/seccomp.js';
import type { Containerizer } from '../runtime/containerizer.js';
import { containerKey, type ContainerRecord, type Depot } from '../runtime/depot.js';
import { lockedFlags } from '../runtime/mountinfo.js';
import { ProcessHandle, processFiles } from '../runtime/process.js';
import { confirmLaunch } from '../runtime/launch.js';
import { PeaRuntime } from '../runtime/pea.js';
import { Peas } from './peas.js';
import { Reaper } from './reaper.js';
import { readContainerFile } from './containerfs.js';
import { resolveUser } from './users.js';

export interface CreateSpec {
  handle: string;
  graceTimeNs: bigint;
  image: string;
  username: string;
  password: string;
  env: string[];
  properties: Record<string, string>;
  privileged: boolean;
  /** uint64 values as bigints, keyed as on the wire. */
  limits: {
    bandwidth_limits: Record<string, bigint>;
    cpu_limits: Record<string, bigint>;
    disk_limits: Record<string, bigint>;
    memory_limits: Record<string, bigint>;
    pid_limits: Record<string, bigint>;
  };
  bindMounts: { src_path: string; dst_path: string; mode: number; origin: number }[];
  network: string;
  netin: { host_port: number; container_port: number }[];
  netoutRules: unknown[];
}

export interface RunSpec {
  id: string;
  path: string;
  args: string[];
  env: string[];
  dir: string;
  user: string;
  rlimits: Record<string, number>;
  tty: boolean;
  windowSize?: { rows: number; columns: number };
  image: string;
  bindMounts: number;
  /** Garden's OverrideContainerLimits (peas only): present, even empty, means limits of its own. */
  overrideLimits?: { memoryBytes: bigint; cpuShares: bigint };
}

export interface ContainerInfo {
  State: string;
  Events: string[];
  HostIP: string;
  ContainerIP: string;
  ContainerIPv6: string;
  ExternalIP: string;
  ContainerPath: string;
  ProcessIDs: string[];
  Properties: Record<string, string>;
  MappedPorts: { HostPort: number; ContainerPort: number }[];
}

interface Container {
  record: ContainerRecord;
  properties: Record<string, string>;
  processes: Map<string, ProcessHandle>;
  /** The teardown round in progress once destroy has replied (phase 'destroying'). */
  teardown?: Promise<void>;
}

export interface GardenerConfig {
  depot: Depot;
  containerizer: Containerizer;
  image: ImagePlugin;
  network: NetworkPlugin;
  /** spec/plugins.md §3.3: the host address for net-in, set as `garden.network.external-ip` before `up`. */
  externalIp?: string;
  log: Logger;
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
  initBinary: string;
  /**
   * trellis-exec (src/runtime/exec): new containers' garden-init runs its spawn server and `run`
   * goes through it, not `runc exec`. Undefined: every process by `runc exec` (e.g. --init-bin).
   */
  execBinary?: string;
  seccomp?: OciSeccomp;
  /** Static busybox bound into every container for stream-in/out. */
  toolsBinary?: string;
  defaultRootfs: string;
  defaultGraceTimeNs: bigint;
  maxContainers: number;
  /** Container addresses the network can hand out (undefined: no limit known). */
  addressPool?: number;
  /** cgroup parent (e.g. /garden/1001), or undefined when cgroups are not delegated. */
  cgroupParent?: string;
  cgroups?: CgroupReader;
  /** How long a finished, fully read and reported process is kept before it is removed (ms). */
  processRetentionMs?: number;
  /** Why cgroup limits cannot be applied on this host (when cgroupParent is undefined). */
  limitsUnavailable?: string;
  /** Where a snapshot of every container's properties is written (--properties-path). */
  propertiesPath?: string;
  /** A failed teardown is retried this many times in all, waiting firstDelayMs, doubling up to maxDelayMs, between tries. */
  teardownRetry?: { attempts: number; firstDelayMs: number; maxDelayMs: number };
}

const TEARDOWN_RETRY = { attempts: 6, firstDelayMs: 250, maxDelayMs: 4000 };

const NS_PER_MS = 1_000_000n;

export class Gardener {
  private readonly containers = new Map<string, Container>();
  /** Handles reserved by creates in flight: hidden from list, but taken. */
  private readonly creating = new Set<string>();
  readonly reaper: Reaper;

  private sweeper: NodeJS.Timeout | undefined;
  /** Per container, the chain its record and properties are written in: the last state lands last. */
  private readonly writes = new Map<string, Promise<void>>();
  private snapshotChain: Promise<void> = Promise.resolve();
  private peasCache: Peas | undefined;
  /** Aborted by shutdown: teardowns stop retrying (the next start finishes them). */
  private readonly stopping = new AbortController();

  /** Processes with their own image (src/gardener/peas.ts); made on first use. */
  private get peas(): Peas {
    this.peasCache ??= new Peas({
      depot: this.cfg.depot,
      runtime: new PeaRuntime(this.cfg.containerizer.runc, this.cfg.containerizer.conmon),
      image: this.cfg.image,
      log: this.cfg.log,
      uidMappings: this.cfg.uidMappings,
      gidMappings: this.cfg.gidMappings,
      initBinary: this.cfg.initBinary,
      toolsBinary: this.cfg.toolsBinary,
      seccomp: this.cfg.seccomp,
      cgroupParent: this.cfg.cgroupParent,
      limitsUnavailable: this.cfg.limitsUnavailable,
      liveInitPid: (key) => this.cfg.containerizer.initPid(key),
    });
    return this.peasCache;
  }

  private persist(c: Container, what: { record?: boolean; properties?: boolean; durable?: boolean }): Promise<void> {
    const key = c.record.key;
    const next = (this.writes.get(key) ?? Promise.resolve())
      .then(async () => {
        // Once the teardown is journaled only the journal is written: a write of a request that
        // began before destroy must not land in the entry (nor in a new one of the same handle).
        if (c.record.phase !== 'created' && what.durable !== true) return;
        if (what.record) await this.cfg.depot.saveContainer(c.record, what.durable === true);
        if (what.properties) await this.cfg.depot.saveProperties(key, c.properties);
      });
    const settled = next.catch(() => {});
    this.writes.set(key, settled);
    void settled.then(() => {
      if (this.writes.get(key) === settled) this.writes.delete(key);
    });
    this.snapshotProperties();
    return next;
  }

  constructor(private readonly cfg: GardenerConfig) {
    this.reaper = new Reaper((handle) => void this.reap(handle));
    const retention = cfg.processRetentionMs ?? 5 * 60_000;
    // Without this a long-lived container that runs a health check every few seconds
    // would fill the depot with finished processes' logs.
    this.sweeper = setInterval(() => void this.sweepProcesses(retention), Math.max(250, Math.min(retention, 60_000)));
    this.sweeper.unref();
  }

  /** Removes finished processes whose exit status reached a client and whose output was all read. */
  async sweepProcesses(retentionMs: number): Promise<number> {
    let removed = 0;
    for (const c of this.containers.values()) {
      if (c.record.phase !== 'created') continue;
      for (const [id, p] of c.processes) {
        if (!(await p.reclaimable(retentionMs))) continue;
        if (!(await this.peas.release(p))) continue;
        c.processes.delete(id);
        p.close();
        await rm(p.files.dir, { recursive: true, force: true }).catch(() => {});
        removed++;
      }
    }
    if (removed > 0) this.log.debug({ removed }, 'processes.reclaimed');
    return removed;
  }

  private get log() {
    return this.cfg.log;
  }

  private get(handle: string): Container {
    const c = this.containers.get(handle);
    if (c === undefined || c.record.phase !== 'created') throw new ContainerNotFound(handle);
    return c;
  }

  exists(handle: string): boolean {
    return this.containers.get(handle)?.record.phase === 'created';
  }

  // ---- create ----

  async create(spec: CreateSpec): Promise<string> {
    const handle = spec.handle === '' ? randomUUID() : spec.handle;
    validateHandle(handle);
    if (spec.privileged) throw new InvalidArgument('privileged container creation is disabled');
    // A container being torn down still holds its address, its host ports and its place under
    // --max-containers: a create that needs one of them waits for the teardowns, so that it
    // succeeds as it did when destroy replied only after its teardown.
    const full = () => this.cfg.maxContainers > 0 && this.containers.size + this.creating.size >= this.cfg.maxContainers;
    if (spec.network !== '' || spec.netin.some((n) => n.host_port !== 0) || full()) await this.teardownsSettled();
    for (let prev = this.containers.get(handle); prev?.record.phase === 'destroying'; prev = this.containers.get(handle)) {
      // The client destroyed this handle: it is free once the teardown has finished, never before.
      try {
        await this.startTeardown(prev);
      } catch (err) {
        throw new TrellisError('ERR_TRELLIS_DESTROY', `handle '${handle}' cannot be reused yet: the teardown of its destroyed container failed: ${errorMessage(err)}`);
      }
    }
    if (this.containers.has(handle) || this.creating.has(handle)) throw new AlreadyExists(`Handle '${handle}' already in use`);
    if (full()) {
      throw new TrellisError('ERR_TRELLIS_MAX_CONTAINERS', 'max containers reached');
    }
    const key = containerKey(handle);
    const log = this.log.child({ session: 'create', handle });
    log.info('create.start');
    this.creating.add(handle);
    const graceTimeNs = spec.graceTimeNs === 0n ? this.cfg.defaultGraceTimeNs : spec.graceTimeNs;
    const record: ContainerRecord = {
      handle,
      key,
      createdAt: new Date().toISOString(),
      phase: 'creating',
      stopped: false,
      graceTimeNs: graceTimeNs.toString(),
      env: [],
      limits: Object.fromEntries(
        Object.entries(spec.limits).map(([k, v]) => [k, Object.fromEntries(Object.entries(v).map(([f, n]) => [f, n.toString()]))]),
      ),
      imagePlugin: this.cfg.image.name,
      launcher: true,
    };
    let reserved = false;
    const undo: Array<[string, () => Promise<void>]> = [];
    try {
      try {
        await this.cfg.depot.reserve(record);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExists(`Handle '${handle}' already in use`);
        throw err;
      }
      reserved = true;
      undo.push(['depot', () => this.cfg.depot.remove(key)]);

      const bindMounts = await this.bindMounts(spec, key);
      const imageUri = spec.image === '' ? this.cfg.defaultRootfs : spec.image;
      if (imageUri === '') throw new InvalidArgument('no rootfs given and the server has no --default-rootfs');
      const image = await this.step('image', () =>
        this.cfg.image.create({
          handle,
          key,
          image: imageUri,
          diskLimitBytes: spec.limits.disk_limits.byte_hard,
          diskLimitInodes: spec.limits.disk_limits.inode_hard,
          excludeImageFromQuota: spec.limits.disk_limits.scope === 1n,
          username: spec.username || undefined,
          password: spec.password || undefined,
        }),
      );
      undo.push(['image', () => this.cfg.image.destroy(handle, key)]);

      record.env = [...image.env, ...spec.env];
      if (image.user) record.imageUser = image.user;
      if (image.workingDir) record.imageWorkdir = image.workingDir;
      const memory = spec.limits.memory_limits.limit_in_bytes ?? 0n;
      const cpu = spec.limits.cpu_limits.weight || spec.limits.cpu_limits.limit_in_shares || 0n;
      const pids = spec.limits.pid_limits.max ?? 0n;
      if ((memory > 0n || cpu > 0n || pids > 0n) && this.cfg.cgroupParent === undefined) {
        throw new InvalidArgument(`cannot apply memory, cpu or pid limits: ${this.cfg.limitsUnavailable ?? 'cgroups are not delegated to this user'}`);
      }
      const config = buildBundle({
        handle,
        rootfsPath: image.rootfsPath,
        imageMounts: image.mounts,
        env: record.env,
        uidMappings: this.cfg.uidMappings,
        gidMappings: this.cfg.gidMappings,
        initBinary: this.cfg.initBinary,
        initLockedFlags: lockedFlags(this.cfg.initBinary),
        toolsBinary: this.cfg.toolsBinary,
        toolsLockedFlags: this.cfg.toolsBinary === undefined ? undefined : lockedFlags(this.cfg.toolsBinary),
        bindMounts,
        cgroupsPath: this.cfg.cgroupParent === undefined ? undefined : `${this.cfg.cgroupParent}/${key}`,
        seccomp: this.cfg.seccomp,
        limits: { memoryBytes: Number(memory), cpuShares: Number(cpu), pidsMax: Number(pids) },
        spawnServer: this.cfg.execBinary !== undefined,
      });
      const initPid = await this.step('runtime', () => this.cfg.containerizer.createStopped(key, config));
      undo.push(['runtime', () => this.cfg.containerizer.destroy(key)]);
      record.initPid = initPid;

      const props = propertyMap(spec.properties);
      if (this.cfg.externalIp) props['garden.network.external-ip'] = this.cfg.externalIp;
      // The namespaces exist once the container is created: its init starts while the
      // network is set up in them (nothing of the client's runs before create returns).
      const [started, upped] = await Promise.allSettled([
        this.step('runtime', () => this.cfg.containerizer.start(key), 'runtime.start'),
        this.step('network', () =>
          this.cfg.network.up(handle, initPid, props, { netoutRules: spec.netoutRules, netin: spec.netin, network: spec.network }),
        ),
      ]);
      if (upped.status === 'fulfilled') undo.push(['network', () => this.cfg.network.down(handle)]);
      if (started.status === 'rejected') throw started.reason;
      if (upped.status === 'rejected') throw upped.reason;
      // After start: an init that died before it is a start failure, in runc's words.
      if (this.cfg.execBinary !== undefined) record.spawnServer = await this.step('runtime', () => this.cfg.containerizer.namespaceIds(initPid));
      const up = upped.value;
      Object.assign(props, up.properties);
      await this.writeNetworkFiles(key, handle, props, up.dnsServers, up.searchDomains);
      if (graceTimeNs !== 0n) props['garden.grace-time'] = graceTimeNs.toString();
      props['garden.state'] = 'created';

      record.phase = 'created';
      await this.cfg.depot.saveProperties(key, props);
      await this.cfg.depot.saveContainer(record);
      this.containers.set(handle, { record, properties: props, processes: new Map() });
      this.reaper.track(handle, graceTimeNs);
      this.snapshotProperties();
      log.info({ initPid }, 'create.finished');
      return handle;
    } catch (err) {
      log.error({ err: errorMessage(err) }, 'create.failed');
      for (const [name, fn] of undo.reverse()) {
        try {
          await fn();
        } catch (undoErr) {
          log.error({ step: name, err: errorMessage(undoErr) }, 'create.rollback-failed');
        }
      }
      if (!reserved && err instanceof AlreadyExists) throw err;
      throw err;
    } finally {
      this.creating.delete(handle);
    }
  }

  /** `label`: the step's name in the debug log, where one step has parts. */
  private async step<T>(name: string, fn: () => Promise<T>, label = name): Promise<T> {
    const t0 = performance.now();
    try {
      const out = await fn();
      this.log.debug({ step: label, ms: Math.round((performance.now() - t0) * 10) / 10 }, 'create.step');
      return out;
    } catch (err) {
      if (err instanceof TrellisError && !(err instanceof ExternalFailure)) throw err;
      const wrapped = new ExternalFailure(name, `${name}: ${errorMessage(err)}`, err);
      throw wrapped;
    }
  }

  private async bindMounts(spec: CreateSpec, key: string): Promise<BindMountSpec[]> {
    const dir = this.cfg.depot.dir(key);
    const out: BindMountSpec[] = [];
    for (const b of spec.bindMounts) {
      if (b.origin !== 0) throw new InvalidArgument('bind mounts from inside the container (origin 1) are not supported');
      if (!isAbsolute(b.src_path) || !posix.isAbsolute(b.dst_path)) {
        throw new InvalidArgument(`bind mount paths must be absolute: '${b.src_path}' -> '${b.dst_path}'`);
      }
      try {
        await stat(b.src_path);
      } catch {
        throw new InvalidArgument(`bind mount source does not exist: ${b.src_path}`);
      }
      out.push({ source: b.src_path, destination: b.dst_path, readOnly: b.mode !== 1, lockedFlags: lockedFlags(b.src_path) });
    }
    for (const name of ['hosts', 'resolv.conf']) {
      const p = join(dir, name);
      await writeFile(p, '', { mode: 0o644 });
      out.push({ source: p, destination: `/etc/${name}`, readOnly: false, lockedFlags: lockedFlags(p) });
    }
    return out;
  }

  private async writeNetworkFiles(key: string, handle: string, props: Record<string, string>, dnsServers?: string[], searchDomains?: string[]): Promise<void> {
    const dir = this.cfg.depot.dir(key);
    const host = handle.length > 49 ? handle.slice(-49) : handle;
    const ip = props['garden.network.container-ip'];
    const hosts = ['127.0.0.1 localhost', '::1 localhost ip6-localhost ip6-loopback'];
    hosts.push(ip ? `${ip} ${host}` : `127.0.1.1 ${host}`);
    await writeFile(join(dir, 'hosts'), `${hosts.join('\n')}\n`);
    let resolv = '';
    if (dnsServers !== undefined) {
      // spec/plugins.md §3.3: servers the plugin names (even none) are the only ones.
      resolv = dnsServers.map((s) => `nameserver ${s}\n`).join('');
    } else {
      try {
        resolv = (await readFile('/etc/resolv.conf', 'utf8'))
          .split('\n')
          .filter((l) => !/^\s*nameserver\s+127\./.test(l) && !(searchDomains?.length && /^\s*search\s/.test(l)))
          .join('\n');
      } catch {
        // no host resolver configuration
      }
    }
    if (searchDomains?.length) resolv += `${resolv === '' || resolv.endsWith('\n') ? '' : '\n'}search ${searchDomains.join(' ')}\n`;
    await writeFile(join(dir, 'resolv.conf'), resolv);
  }

  // ---- destroy ----

  /**
   * Journals the teardown (phase 'destroying', on disk before the reply), takes the handle out
   * of every view and returns; the teardown runs on in the background and, if this process
   * dies, the next start finishes it (restore).
   */
  async destroy(handle: string): Promise<void> {
    const c = this.containers.get(handle);
    if (c === undefined || c.record.phase !== 'created') throw new ContainerNotFound(handle);
    const log = this.log.child({ session: 'destroy', handle });
    log.info('destroy.start');
    // From here on every request answers as for an unknown handle, the reaper's included.
    c.record.phase = 'destroying';
    this.reaper.untrack(handle);
    try {
      await this.persist(c, { record: true, durable: true });
    } catch (err) {
      c.record.phase = 'created';
      this.reaper.track(handle, BigInt(c.record.graceTimeNs));
      this.snapshotProperties();
      log.error({ err: errorMessage(err) }, 'destroy.journal-failed');
      throw err;
    }
    log.debug('destroy.journaled');
    void this.startTeardown(c).catch(() => {}); // logged where it fails
  }

  /** The container's teardown round: the running one, or a new one (retried with backoff). */
  private startTeardown(c: Container): Promise<void> {
    if (c.teardown !== undefined) return c.teardown;
    const round = this.tearDown(c).finally(() => {
      if (c.teardown === round) c.teardown = undefined;
    });
    c.teardown = round;
    return round;
  }

  private async tearDown(c: Container): Promise<void> {
    const { attempts, firstDelayMs, maxDelayMs } = this.cfg.teardownRetry ?? TEARDOWN_RETRY;
    const log = this.log.child({ session: 'destroy', handle: c.record.handle });
    for (let attempt = 1; ; attempt++) {
      try {
        await this.finishDestroy(c);
        return;
      } catch (err) {
        if (attempt >= attempts || this.stopping.signal.aborted) {
          // Still journaled: the next start (or a create of the same handle) tries again.
          log.error({ attempt, err: errorMessage(err) }, 'destroy.gave-up');
          throw err;
        }
        const delayMs = Math.min(firstDelayMs * 2 ** (attempt - 1), maxDelayMs);
        log.info({ attempt, delayMs }, 'destroy.retrying');
        try {
          await sleep(delayMs, undefined, { signal: this.stopping.signal, ref: false });
        } catch {
          throw err; // shutting down
        }
      }
    }
  }

  /** One pass over every teardown step of a journaled container; the entry goes only when all succeeded. */
  private async finishDestroy(c: Container): Promise<void> {
    const { handle, key } = c.record;
    const log = this.log.child({ session: 'destroy', handle });
    const started = performance.now();
    const failures: string[] = [];
    const attempt = async (name: string, fn: () => Promise<void>) => {
      const t0 = performance.now();
      try {
        await fn();
        log.debug({ step: name, ms: Math.round((performance.now() - t0) * 10) / 10 }, 'destroy.step');
      } catch (err) {
        failures.push(`${name}: ${errorMessage(err)}`);
        log.error({ step: name, err: errorMessage(err) }, 'destroy.step-failed');
      }
    };
    await attempt('peas', () => this.peas.destroyAll(c));
    // The network's teardown does not need the container stopped (nor running): both at once.
    await Promise.all([
      attempt('runtime', () => this.cfg.containerizer.destroy(key, c.record.initPid)),
      attempt('network', () => this.cfg.network.down(handle)),
    ]);
    await attempt('image', () => this.cfg.image.destroy(handle, key));
    for (const p of c.processes.values()) p.close();
    if (failures.length > 0) {
      log.error({ failures }, 'destroy.failed');
      throw new TrellisError('ERR_TRELLIS_DESTROY', `destroying ${handle}: ${failures.join('; ')}`);
    }
    await attempt('depot', () => this.cfg.depot.remove(key));
    if (failures.length > 0) throw new TrellisError('ERR_TRELLIS_DESTROY', `destroying ${handle}: ${failures.join('; ')}`);
    this.containers.delete(handle);
    log.info({ ms: Math.round(performance.now() - started) }, 'destroy.finished');
  }

  /** Settles once the teardowns running now have ended, however they ended (or after `ms`). */
  async teardownsSettled(ms = 30_000): Promise<void> {
    const running = [...this.containers.values()].flatMap((c) => (c.teardown === undefined ? [] : [c.teardown]));
    if (running.length === 0) return;
    await Promise.race([Promise.allSettled(running), sleep(ms, undefined, { ref: false })]);
  }

  private async reap(handle: string): Promise<void> {
    const c = this.containers.get(handle);
    if (c === undefined || c.record.phase !== 'created') return;
    this.log.info({ handle }, 'reaper.expired');
    try {
      await this.destroy(handle);
    } catch (err) {
      this.log.error({ handle, err: errorMessage(err) }, 'reaper.destroy-failed');
    }
  }

  // ---- queries ----

  list(filter: Record<string, string>): string[] {
    const f = propertyMap(filter);
    if (f['garden.state'] === undefined) f['garden.state'] = 'created';
    if (f['garden.state'] === 'all') delete f['garden.state'];
    const out: string[] = [];
    for (const c of this.containers.values()) {
      if (c.record.phase !== 'created') continue;
      if (Object.entries(f).every(([k, v]) => Object.hasOwn(c.properties, k) && c.properties[k] === v)) out.push(c.record.handle);
    }
    return out;
  }

  info(handle: string): ContainerInfo {
    const c = this.get(handle);
    let mapped: { HostPort: number; ContainerPort: number }[] = [];
    try {
      const parsed = JSON.parse(Object.hasOwn(c.properties, 'garden.network.mapped-ports') ? c.properties['garden.network.mapped-ports']! : '[]') as unknown;
      // a client may have set the property to anything
      mapped = Array.isArray(parsed)
        ? parsed.filter((m): m is { HostPort: number; ContainerPort: number } => typeof m?.HostPort === 'number' && typeof m?.ContainerPort === 'number')
        : [];
    } catch {
      mapped = [];
    }
    return {
      State: c.record.stopped ? 'stopped' : 'active',
      Events: [],
      HostIP: c.properties['garden.network.host-ip'] ?? '',
      ContainerIP: c.properties['garden.network.container-ip'] ?? '',
      ContainerIPv6: c.properties['garden.network.container-ipv6'] ?? '',
      ExternalIP: c.properties['garden.network.external-ip'] ?? '',
      ContainerPath: this.cfg.depot.dir(c.record.key),
      ProcessIDs: [...c.processes.values()].filter((p) => !p.exited).map((p) => p.id),
      Properties: propertyMap(c.properties),
      MappedPorts: mapped,
    };
  }

  limits(handle: string): ContainerRecord['limits'] {
    return this.get(handle).record.limits;
  }

  /** A running pea by its process id, unless its container is being destroyed. */
  private pea(processId: string) {
    const rec = this.peas.find(processId);
    if (rec === undefined) return undefined;
    for (const c of this.containers.values()) if (c.record.key === rec.sandboxKey) return c.record.phase === 'created' ? rec : undefined;
    return undefined;
  }

  async stats(handle: string) {
    const pea = this.exists(handle) ? undefined : this.pea(handle);
    if (pea !== undefined) return this.cfg.image.stats(pea.imageKey, pea.imageKey);
    const c = this.get(handle);
    return this.cfg.image.stats(handle, c.record.key);
  }

  /** Memory, CPU and pid figures from the container's cgroup (zeros where there is none). */
  async cgroupStats(handle: string) {
    // Garden's bulk metrics take a pea's process id as a handle.
    const pea = this.exists(handle) ? undefined : this.pea(handle);
    const c = pea === undefined ? this.get(handle) : undefined;
    const reader = this.cfg.cgroups;
    if (reader === undefined || this.cfg.cgroupParent === undefined) return undefined;
    if (pea !== undefined) return pea.cgroupsPath === undefined ? undefined : reader.stats(pea.cgroupsPath);
    return reader.stats(`${this.cfg.cgroupParent}/${c!.record.key}`);
  }

  createdAt(handle: string): Date {
    const pea = this.exists(handle) ? undefined : this.pea(handle);
    if (pea !== undefined) return new Date(pea.createdAt);
    return new Date(this.get(handle).record.createdAt);
  }

  // ---- properties ----

  properties(handle: string): Record<string, string> {
    return propertyMap(this.get(handle).properties);
  }

  property(handle: string, key: string): string {
    const props = this.get(handle).properties;
    const v = Object.hasOwn(props, key) ? props[key] : undefined;
    if (v === undefined) throw new TrellisError('ERR_TRELLIS_NO_PROPERTY', `property does not exist: ${key}`);
    return v;
  }

  async setProperty(handle: string, key: string, value: string): Promise<void> {
    const c = this.get(handle);
    c.properties[key] = value;
    await this.persist(c, { properties: true });
  }

  async removeProperty(handle: string, key: string): Promise<void> {
    const c = this.get(handle);
    delete c.properties[key];
    await this.persist(c, { properties: true });
  }

  async setGraceTime(handle: string, ns: bigint): Promise<void> {
    const c = this.get(handle);
    c.record.graceTimeNs = ns.toString();
    if (ns === 0n) delete c.properties['garden.grace-time'];
    else c.properties['garden.grace-time'] = ns.toString();
    await this.persist(c, { record: true, properties: true });
    this.reaper.track(handle, ns);
  }

  private snapshotProperties(): void {
    const path = this.cfg.propertiesPath;
    if (path === undefined || path === '') return;
    // One write at a time, each of the state when it runs, so the file ends as the last state.
    this.snapshotChain = this.snapshotChain.then(async () => {
      const all: Record<string, Record<string, string>> = {};
      for (const c of this.containers.values()) if (c.record.phase === 'created') all[c.record.handle] = c.properties;
      const tmp = `${path}.tmp-${process.pid}`;
      try {
        await writeFile(tmp, JSON.stringify(all));
        await rename(tmp, path);
      } catch (err) {
        this.log.error({ err: errorMessage(err) }, 'properties.snapshot-failed');
      }
    });
  }

  // ---- stop ----

  async stop(handle: string, kill: boolean): Promise<void> {
    const c = this.get(handle);
    // runc checks the init's start time: a stored pid may by now belong to another process.
    const initPid = await this.cfg.containerizer.initPid(c.record.key);
    if (initPid !== undefined) await this.cfg.containerizer.stopProcesses(initPid, kill);
    c.record.stopped = true;
    await this.persist(c, { record: true });
  }

  // ---- processes ----

  async run(handle: string, spec: RunSpec): Promise<ProcessHandle> {
    const c = this.get(handle);
    if (spec.image !== '') {
      if (spec.path === '') throw new ExecutableNotFound('no executable given: the process spec has an empty path');
      const id = spec.id === '' ? randomUUID() : spec.id;
      if (c.processes.has(id)) throw new AlreadyExists(`process ID '${id}' already in use`);
      const p = await this.peas.run(c, id, spec);
      c.processes.set(id, p);
      return p;
    }
    if (spec.bindMounts > 0) throw new InvalidArgument('Running a process with bind mounts and no image provided is not allowed');
    if (spec.path === '') throw new ExecutableNotFound('no executable given: the process spec has an empty path');
    const id = spec.id === '' ? randomUUID() : spec.id;
    if (c.processes.has(id)) throw new AlreadyExists(`process ID '${id}' already in use`);
    const p = await this.spawn(c, id, spec);
    c.processes.set(id, p);
    return p;
  }

  private async userIn(c: Container, user: string) {
    const initPid = c.record.initPid;
    if (initPid === undefined) throw new TrellisError('ERR_TRELLIS_NO_INIT', `container ${c.record.handle} has no init process`);
    const root = `/proc/${initPid}/root`;
    const readIn = (p: string) => readContainerFile(root, p);
    return { root, user: resolveUser(user, await readIn('/etc/passwd'), await readIn('/etc/group')) };
  }

  private async spawn(
    c: Container,
    id: string,
    spec: Omit<RunSpec, 'id' | 'image' | 'bindMounts' | 'tty'> & { tty?: boolean },
    opts: { unlimitedLog?: boolean } = {},
  ): Promise<ProcessHandle> {
    const { key } = c.record;
    // A process that names no user or dir gets the image's USER and WORKDIR, as docker would.
    const userName = spec.user === '' ? (c.record.imageUser ?? '') : spec.user;
    const { user } = await this.userIn(c, userName);
    // The home directory is checked by runc, inside the container: a missing one falls back to /.
    let cwd = spec.dir === '' ? (c.record.imageWorkdir ?? '') : spec.dir;
    const homeAsDefault = cwd === '';
    if (homeAsDefault) cwd = user.home;
    else if (!posix.isAbsolute(cwd)) cwd = posix.join(user.home, cwd);
    const input = (dir: string): ProcessInput => ({
      args: [spec.path, ...spec.args],
      containerEnv: c.record.env,
      env: spec.env,
      uid: user.uid,
      gid: user.gid,
      additionalGids: user.groups,
      home: user.home,
      username: userName === '' ? 'root' : userName,
      cwd: dir,
      rlimits: spec.rlimits,
      terminal: spec.tty === true,
      windowSize: spec.windowSize,
      launcher: c.record.launcher === true,
    });
    const build = (dir: string) => buildProcess(input(dir));
    // By garden-init's spawn server when the container has one (no runc, no launcher to watch);
    // a process too large for one request, and containers made before, by `runc exec`.
    const spawnBody = (dir: string): Buffer | undefined => {
      if (this.cfg.execBinary === undefined || c.record.spawnServer === undefined || c.record.initPid === undefined) return undefined;
      try {
        return encodeSpawnRequest(buildSpawnRequest(input(dir)));
      } catch (err) {
        if (err instanceof RangeError && /more than the spawn server takes|too many/.test(err.message)) return undefined;
        throw new InvalidArgument(err instanceof Error ? err.message : String(err));
      }
    };
    const spawnOpts = (dir: string) => {
      const body = spawnBody(dir);
      const ns = c.record.spawnServer;
      if (body === undefined || ns === undefined || c.record.initPid === undefined) return undefined;
      const id = (x: { dev: string; ino: string }) => ({ dev: BigInt(x.dev), ino: BigInt(x.ino) });
      return { binary: this.cfg.execBinary!, request: encodeExecRequest(c.record.initPid, id(ns.userNs), id(ns.netNs), body) };
    };
    const launched = user.uid !== 0 && c.record.launcher === true;
    const dir = this.cfg.depot.processDir(key, id);
    const files = processFiles(dir, key);
    const attempt = async (cwdNow: string) => {
      try {
        await mkdir(dir, { mode: 0o700 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExists(`process ID '${id}' already in use`);
        throw err;
      }
      try {
        const spawn = spawnOpts(cwdNow);
        const s = await this.cfg.containerizer.exec(key, id, dir, build(cwdNow), { ...opts, spawn });
        if (launched && spawn === undefined) await confirmLaunch(s.pid, s.exited, files.logPath, this.cfg.initBinary);
        return s;
      } catch (err) {
        await rm(dir, { recursive: true, force: true }).catch(() => {});
        throw err;
      }
    };
    let started;
    try {
      try {
        started = await attempt(cwd);
      } catch (err) {
        if (!(homeAsDefault && cwd !== '/' && /chdir|cwd/i.test(errorMessage(err)))) throw err;
        started = await attempt('/');
      }
    } catch (err) {
      const msg = errorMessage(err);
      if (/executable file not found|no such file or directory/i.test(msg) && !/chdir|cwd/i.test(msg)) {
        throw new ExecutableNotFound(msg);
      }
      // as the launcher's confirmLaunch did for a user: a program that cannot be executed
      if (launched && /exec: ".*": permission denied/i.test(msg)) throw new ExecutableNotFound(msg);
      throw err;
    }
    const p = new ProcessHandle(id, files, started.pid);
    started.exited.then((code) => p.reportExit(code)).catch(() => {});
    await this.cfg.depot.saveProcess(key, { id, createdAt: new Date().toISOString(), pid: started.pid, tty: spec.tty === true });
    return p;
  }

  /**
   * A helper process of our own (tar, mkdir for streaming): not listed, removed when done,
   * killed if `signal` aborts. Its stdout reaches `onStdout` as conmon logs it.
   */
  private async runTool(c: Container, args: string[], user: string, signal: AbortSignal, stdout?: { write(d: Buffer): void; congested(): boolean; onDrain(cb: () => void): void }) {
    if (this.cfg.toolsBinary === undefined) throw new TrellisError('ERR_TRELLIS_NO_TOOLS', 'streaming needs busybox-static on the server host');
    if (signal.aborted) throw new TrellisError('ERR_TRELLIS_ABORTED', 'the client went away');
    const p = await this.spawn(c, `trellis-tool-${randomUUID()}`, { path: TOOLS_PATH, args, env: [], dir: '/', user, rlimits: {} }, { unlimitedLog: true });
    const stderr: Buffer[] = [];
    const sink = {
      stdout: (d: Buffer) => stdout?.write(d),
      stderr: (d: Buffer) => void (stderr.length < 64 && stderr.push(d)),
      congested: () => stdout?.congested() === true,
      onDrain: (cb: () => void) => stdout?.onDrain(cb),
    };
    p.addSink(sink);
    const kill = () => p.signal('SIGKILL');
    signal.addEventListener('abort', kill, { once: true });
    const finished = p.waitFinished().then(async () => {
      signal.removeEventListener('abort', kill);
      await p.drainTo(sink, () => !signal.aborted);
      p.removeSink(sink);
      p.close();
      await rm(p.files.dir, { recursive: true, force: true }).catch(() => {});
      const { exitCode, error } = p.result;
      return { exitCode: exitCode ?? -1, error, stderr: Buffer.concat(stderr).toString('utf8').trim() };
    });
    return { proc: p, finished };
  }

  private async toolPath(c: Container, user: string, path: string): Promise<string> {
    if (posix.isAbsolute(path)) return path;
    const { user: u } = await this.userIn(c, user);
    return posix.join(u.home, path);
  }

  /** Unpacks a tar stream into `destination` inside the container, as `user`. */
  async streamIn(handle: string, opts: { destination: string; user: string }, body: NodeJS.ReadableStream, signal: AbortSignal): Promise<void> {
    const c = this.get(handle);
    try {
      await this.unpackIn(c, opts, body, signal);
    } catch (err) {
      // Garden's words for any failure here, whatever its class (clients match on them).
      if (err instanceof Error && !err.message.startsWith('error streaming in')) err.message = `error streaming in: ${err.message}`;
      throw err;
    }
  }

  private async unpackIn(c: Container, opts: { destination: string; user: string }, body: NodeJS.ReadableStream, signal: AbortSignal): Promise<void> {
    body.pause();
    const dest = await this.toolPath(c, opts.user, opts.destination);
    const mk = await this.runTool(c, ['mkdir', '-p', '--', dest], opts.user, signal);
    const made = await mk.finished;
    if (made.exitCode !== 0) throw new TrellisError('ERR_TRELLIS_STREAM_IN', `creating ${dest}: ${made.stderr || made.error || `exit ${made.exitCode}`}`);
    const tar = await this.runTool(c, ['tar', '-x', '-o', '--no-same-permissions', '-f', '-', '-C', dest], opts.user, signal);
    tar.proc.holdStdin();
    try {
      await new Promise<void>((resolve, reject) => {
        if (signal.aborted) return reject(new TrellisError('ERR_TRELLIS_ABORTED', 'the client went away'));
        signal.addEventListener('abort', () => reject(new TrellisError('ERR_TRELLIS_ABORTED', 'the client went away')), { once: true });
        body.on('data', (d: Buffer) => {
          // Back-pressure: hold the upload while the helper's stdin is behind.
          if (!tar.proc.writeStdin(d)) {
            body.pause();
            tar.proc.onStdinDrain(() => body.resume());
          }
        });
        body.on('end', () => resolve());
        body.on('error', reject);
        body.resume();
      });
    } finally {
      tar.proc.releaseStdin();
    }
    const res = await tar.finished;
    if (res.exitCode !== 0) throw new TrellisError('ERR_TRELLIS_STREAM_IN', res.stderr || `tar: ${res.error ?? `exit ${res.exitCode}`}`);
  }

  /** Packs `source` inside the container, as `user`, into a tar stream (trailing '/' = its contents). */
  async streamOut(handle: string, opts: { source: string; user: string }, signal: AbortSignal): Promise<NodeJS.ReadableStream> {
    const c = this.get(handle);
    const src = await this.toolPath(c, opts.user, opts.source);
    const [dir, name] = src.endsWith('/') ? [src, '.'] : [posix.dirname(src), posix.basename(src)];
    // Hold the first bytes until tar has either exited or produced plenty: a tar that
    // fails early (a missing path) then becomes a JSON error with nothing yet sent.
    const { PassThrough } = await import('node:stream');
    const out = new PassThrough();
    const HOLD = 64 * 1024;
    const held: Buffer[] = [];
    let heldBytes = 0;
    let streaming = false;
    let enough: () => void = () => {};
    const enoughData = new Promise<void>((r) => (enough = r));
    const tar = await this.runTool(c, ['tar', '-c', '-f', '-', '-C', dir, '--', name], opts.user, signal, {
      write: (d) => {
        if (streaming) return void out.write(d);
        held.push(d);
        heldBytes += d.length;
        if (heldBytes >= HOLD) enough();
      },
      // a slow client holds the archive on disk rather than in the server's memory
      congested: () => streaming && out.writableNeedDrain,
      onDrain: (cb) => out.once('drain', cb),
    });
    const res = await Promise.race([enoughData.then(() => undefined), tar.finished]);
    if (res !== undefined && res.exitCode !== 0) {
      throw new TrellisError('ERR_TRELLIS_STREAM_OUT', res.stderr || `tar: ${res.error ?? `exit ${res.exitCode}`}`);
    }
    streaming = true;
    for (const d of held.splice(0)) out.write(d);
    // Past this point a failure cannot be reported: the archive is cut short, as with Garden.
    void tar.finished.then(() => out.end());
    return out;
  }

  process(handle: string, id: string): ProcessHandle {
    const p = this.get(handle).processes.get(id);
    if (p === undefined) throw new ProcessNotFound(id);
    return p;
  }

  // ---- restart ----

  /** Rebuilds memory from the depot: adopts what runs, finishes interrupted destroys. */
  async restore(): Promise<void> {
    const records = await this.cfg.depot.loadContainers();
    for (const record of records) {
      const log = this.log.child({ session: 'restore', handle: record.handle });
      const c: Container = { record, properties: propertyMap(await this.cfg.depot.loadProperties(record.key)), processes: new Map() };
      if (record.phase !== 'created') {
        // An interrupted create or destroy: finish it off before serving. It stays out of
        // every view and counts against --max-containers until its teardown has finished.
        this.containers.set(record.handle, c);
        if (record.phase !== 'destroying') {
          record.phase = 'destroying';
          await this.cfg.depot.saveContainer(record, true).catch((err: unknown) => log.error({ err: errorMessage(err) }, 'restore.journal-failed'));
        }
        try {
          await this.finishDestroy(c);
          log.info('restore.finished-destroy');
        } catch (err) {
          log.error({ err: errorMessage(err) }, 'restore.destroy-failed');
          void this.startTeardown(c).catch(() => {}); // retried in the background, logged there
        }
        continue;
      }
      for (const pr of await this.cfg.depot.loadProcesses(record.key)) {
        const p = new ProcessHandle(pr.id, processFiles(this.cfg.depot.processDir(record.key, pr.id), record.key), pr.pid);
        p.watchForExit();
        c.processes.set(pr.id, p);
      }
      this.containers.set(record.handle, c);
      await this.peas.restore(c).catch((err: unknown) => log.error({ err: errorMessage(err) }, 'restore.peas-failed'));
      this.reaper.track(record.handle, BigInt(record.graceTimeNs));
      log.info({ processes: c.processes.size }, 'restore.adopted');
    }
  }

  /**
   * Graceful stop: no more reaping or retrying; teardowns already running get up to
   * `teardownWaitMs` to finish (what is left, the next start finishes).
   */
  async shutdown(teardownWaitMs = 0): Promise<void> {
    this.reaper.stop();
    if (this.sweeper !== undefined) clearInterval(this.sweeper);
    this.stopping.abort();
    await this.teardownsSettled(teardownWaitMs);
    for (const c of this.containers.values()) for (const p of c.processes.values()) p.close();
  }

  /** Garden's max_containers: the flag, bounded by the addresses the network has (0: no bound known). */
  capacity(): { maxContainers: number } {
    return { maxContainers: maxContainers(this.cfg.maxContainers, this.cfg.addressPool) };
  }

  get count(): number {
    return this.containers.size;
  }
}

/** Property maps have no prototype: "__proto__" or "constructor" are keys like any other. */
export function propertyMap(from: Record<string, string> = {}): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(from)) out[k] = v;
  return out;
}

/**
 * Characters a Garden client cannot put back into a URL path after create (issue #12): Go
 * clients paste the handle into the path unescaped, and the server decodes `+` as a space
 * and `%XX` as a byte, so `+`, `%` and a space never round-trip; `?` and `#` end the path;
 * control characters (C0, DEL, C1) are refused by Go's URL parser or mangled on the way.
 */
const UNADDRESSABLE = /[+% ?#\u0000-\u001f\u007f-\u009f]/u;

function describeChar(ch: string): string {
  if (ch === ' ') return 'a space';
  const code = ch.codePointAt(0)!;
  if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return `the control character U+${code.toString(16).toUpperCase().padStart(4, '0')}`;
  return `'${ch}'`;
}

/** Handles become directory names and URL segments: refuse the ones that would escape or that clients cannot address. */
export function validateHandle(handle: string): void {
  if (handle.includes('/')) throw new InvalidArgument(`invalid handle '${handle}': must not contain '/'`);
  if (handle === '.' || handle === '..' || handle.includes('..')) throw new InvalidArgument(`invalid handle '${handle}': must not contain '..'`);
  if (handle.includes('\0')) throw new InvalidArgument('invalid handle: must not contain NUL');
  if (Buffer.byteLength(handle) > 512) throw new InvalidArgument('invalid handle: longer than 512 bytes');
  const bad = UNADDRESSABLE.exec(handle);
  if (bad !== null) {
    throw new InvalidArgument(
      `invalid handle ${JSON.stringify(handle)}: must not contain ${describeChar(bad[0])} (Garden clients could not address the container in a URL path; avoid '+', '%', '?', '#', spaces and control characters)`,
    );
  }
}

export { NS_PER_MS };

/** The smaller of the configured limit and the address pool, either of which may be absent (0 / undefined). */
export function maxContainers(flag: number, pool: number | undefined): number {
  if (pool === undefined || pool <= 0) return flag;
  return flag > 0 ? Math.min(flag, pool) : pool;
}
