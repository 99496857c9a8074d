#!/usr/bin/env -S MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 node --max-semi-space-size=2 --optimize-for-size
// (Issue 10, flat memory: V8's young generation grows to 3 x 16 MiB under a burst and stays;
// glibc gives each libuv worker thread an arena of its own, and raises its mmap threshold as
// large buffers are freed, keeping them in the heap; and V8 is told to favour size (smaller
// heap growth steps, leaner code). Launch gdn as a program so these apply.)
// gdn: `gdn server` (an ordinary user) and `gdn setup` (root, once). The composition
// root: flags in, plain constructors wired together, nothing else.
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { isIP } from 'node:net';
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, unlinkSync } from 'node:fs';
import { userInfo, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import pino, { type Logger } from 'pino';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { buildApp, buildHijack } from '../src/api/routes.js';
import { createFront, guardedHandler, sameUserPeerCheck } from '../src/api/front.js';
import { isLoopback } from '../src/api/peer.js';
import { createDebugServer, debugVars } from '../src/api/debug.js';
import { parseGoDuration } from '../src/client/duration.js';
import { InvalidArgument, TrellisError, errorMessage } from '../src/errors.js';
import { Gardener } from '../src/gardener/gardener.js';
import { ExecImagePlugin, InProcessImagePlugin, type ImagePlugin } from '../src/image/plugin.js';
import { buildMappings, primaryRange, readSubIdFile } from '../src/idmap/subid.js';
import { ExecNetworkPlugin, InProcessNetwork, LoopbackOnly, type NetworkPlugin } from '../src/network/plugin.js';
import { DEFAULT_GATE, NET_CONF_DIR, containerAddresses, loadUserNetwork } from '../plugins/networker/config.js';
import { defaultDnsServers, networkerFor } from '../plugins/networker/wiring.js';
import { Metrics, metricsHandler } from '../src/metrics/metrics.js';
import { userPaths } from '../src/paths.js';
import { planCgroups, probeOverlayInUserns, requireBinary, requireSetuid, requireWritableDir, requireSetuidRoot } from '../src/probe.js';
import { CgroupReader } from '../src/runtime/cgroupstats.js';
import { applyV2 } from '../src/runtime/cgroupv2.js';
import { BUILT_EXEC, BUILT_INIT, UNPRIVILEGED_CAPS } from '../src/runtime/bundle.js';
import { DEFAULT_PROFILE, loadProfile, type OciSeccomp } from '../src/runtime/seccomp.js';
import { Conmon } from '../src/runtime/conmon.js';
import { Containerizer } from '../src/runtime/containerizer.js';
import { Depot } from '../src/runtime/depot.js';
import { Runc } from '../src/runtime/runc.js';
import { SPAWNER_BINARY, sealRuntimeInSharedSpawner, sharedSpawner } from '../src/runtime/spawner/spawner.js';
import { setupCommand } from '../src/setup/command.js';
import { defaultEnv, formatFindings, runChecks } from '../src/doctor/doctor.js';
import { ImageStore } from '../plugins/grootfs/store.js';
import { TOOL_ENV } from '../plugins/grootfs/remove.js';

interface ServerArgs {
  'bind-ip'?: string;
  'bind-port': number;
  'bind-socket'?: string;
  depot?: string;
  'uid-map-start'?: number;
  'uid-map-length'?: number;
  'gid-map-start'?: number;
  'gid-map-length'?: number;
  'image-plugin'?: string;
  'image-plugin-extra-arg': string[];
  store?: string;
  'docker-registry': string;
  'insecure-docker-registry': string[];
  'network-plugin'?: string;
  'network-plugin-extra-arg': string[];
  'network-gate': string;
  'deny-network': string[];
  'allow-network': string[];
  'dns-server': string[];
  'additional-dns-server': string[];
  'runtime-plugin': string;
  'runtime-plugin-extra-arg': string[];
  'default-rootfs'?: string;
  'default-grace-time': string;
  'max-containers': number;
  'properties-path'?: string;
  'log-level': string;
  'skip-setup': boolean;
  'assets-dir'?: string;
  'init-bin'?: string;
  'conmon-bin'?: string;
  'external-ip'?: string;
  'seccomp-profile': string;
  'process-retention': string;
  'process-start-timeout': string;
  'process-log-max-bytes': number;
  'metrics-bind-ip': string;
  'metrics-bind-port'?: number;
  'debug-bind-ip'?: string;
  'debug-bind-port': number;
}

function serverFlags(y: Argv) {
  return y
    .option('bind-ip', { type: 'string', describe: 'listen on TCP at this address (default 127.0.0.1 unless --bind-socket)' })
    .option('bind-port', { type: 'number', default: 7777, describe: 'TCP port' })
    .option('bind-socket', { type: 'string', describe: 'listen on this unix socket instead of TCP' })
    .option('depot', { type: 'string', describe: 'container state directory (default $XDG_RUNTIME_DIR/gdn/depot)' })
    .option('uid-map-start', { type: 'number', describe: 'host uid that container uid 1 maps to (default: your /etc/subuid entry)' })
    .option('uid-map-length', { type: 'number', describe: 'number of uids mapped from container uid 1' })
    .option('gid-map-start', { type: 'number', describe: 'host gid that container gid 1 maps to (default: your /etc/subgid entry)' })
    .option('gid-map-length', { type: 'number', describe: 'number of gids mapped from container gid 1' })
    .option('image-plugin', { type: 'string', describe: 'image plugin executable (default: the built-in grootfs store)' })
    .option('image-plugin-extra-arg', { type: 'string', array: true, default: [] as string[], describe: 'argument put before the plugin subcommand (repeatable)' })
    .option('store', { type: 'string', describe: 'image store of the built-in grootfs, one gdn setup prepared (default /var/lib/trellis/UID/store)' })
    .option('docker-registry', { type: 'string', default: 'registry-1.docker.io', describe: 'registry for docker:///repo images (built-in store)' })
    .option('insecure-docker-registry', { type: 'string', array: true, default: [] as string[], describe: 'host[:port] reached without TLS verification or over plain HTTP (repeatable; built-in store)' })
    .option('network-plugin', { type: 'string', describe: 'network plugin executable (default: the built-in networker when gdn setup gave you a network)' })
    .option('network-gate', { type: 'string', default: DEFAULT_GATE, describe: 'the setuid CNI gate gdn setup installed (built-in networker)' })
    .option('deny-network', { type: 'string', array: true, default: [] as string[], describe: 'CIDR no container may reach, whatever its rules (repeatable; built-in networker)' })
    .option('allow-network', { type: 'string', array: true, default: [] as string[], describe: 'CIDR every container may reach without a rule (repeatable; built-in networker)' })
    .option('dns-server', { type: 'string', array: true, default: [] as string[], describe: "resolver for containers, instead of the host's (repeatable)" })
    .option('additional-dns-server', { type: 'string', array: true, default: [] as string[], describe: 'resolver added after the others (repeatable)' })
    .option('network-plugin-extra-arg', { type: 'string', array: true, default: [] as string[], describe: 'argument put before --action (repeatable)' })
    .option('runtime-plugin', { type: 'string', default: 'runc', describe: 'OCI runtime binary' })
    .option('runtime-plugin-extra-arg', { type: 'string', array: true, default: [] as string[], describe: 'extra global runtime flag (repeatable)' })
    .option('default-rootfs', { type: 'string', describe: 'rootfs used when a create names none (default: the one gdn setup made)' })
    .option('default-grace-time', { type: 'string', default: '0', describe: 'Go duration; 0 = containers never expire' })
    .option('max-containers', { type: 'number', default: 0, describe: '0 = unlimited' })
    .option('properties-path', { type: 'string', describe: 'also write every container\'s properties here as JSON' })
    .option('log-level', { type: 'string', default: 'info', choices: ['debug', 'info', 'error', 'fatal'] })
    .option('skip-setup', { type: 'boolean', default: false, describe: 'accepted for Garden compatibility; the server never needs root' })
    .option('assets-dir', { type: 'string', describe: 'accepted for Garden compatibility; binaries come from PATH' })
    .option('init-bin', { type: 'string', describe: "container pid 1 and launcher of non-root processes (default: Trellis's garden-init)" })
    .option('conmon-bin', { type: 'string', describe: 'conmon binary (default: conmon from PATH)' })
    .option('external-ip', { type: 'string', describe: 'host address reported for net-in' })
    .option('process-log-max-bytes', { type: 'number', default: 256 * 1024 * 1024, describe: 'bytes a process may log before its log starts over; a reader behind at that moment loses what it had not read (0: no limit)' })
    .option('process-start-timeout', { type: 'string', default: '30s', describe: 'Go duration runc may take to start a process before it is given up' })
    .option('process-retention', { type: 'string', default: '5m', describe: 'Go duration a finished process is kept once its exit status and all its output were read' })
    .option('seccomp-profile', { type: 'string', default: DEFAULT_PROFILE, describe: "Docker-format seccomp profile for every container, or 'unconfined'" })
    // Prometheus metrics (issue #12): off unless a port is given.
    .option('metrics-bind-ip', { type: 'string', default: '127.0.0.1', describe: 'address the Prometheus /metrics endpoint listens on' })
    .option('metrics-bind-port', { type: 'number', describe: 'serve Prometheus metrics on this TCP port at /metrics (default: off)' })
    // Garden's debug server: GET /debug/vars, expvar-style (issue 8).
    .option('debug-bind-ip', { type: 'string', describe: 'serve GET /debug/vars (expvar-style JSON: memstats, cmdline) at this address; off when unset' })
    .option('debug-bind-port', { type: 'number', default: 17013, describe: 'port of the debug server' });
}

async function server(args: ServerArgs): Promise<void> {
  const log = pino({ level: args['log-level'] === 'fatal' ? 'fatal' : args['log-level'], base: { source: 'gdn' } });
  const uid = process.getuid!();
  const gid = process.getgid!();
  if (uid === 0) throw new TrellisError('ERR_TRELLIS_ROOT', 'gdn server runs as an ordinary user, not root', { hint: 'run it as the user you gave gdn setup' });
  metricsAddress(args); // bad metrics flags fail before anything starts
  const paths = userPaths(uid);
  let limitsUnavailable: string | undefined;
  const user = userInfo().username;

  // Id maps: flags, else the user's own /etc/subuid and /etc/subgid entries.
  const mapFrom = (file: string, start: number | undefined, length: number | undefined, kind: string) => {
    if (start !== undefined && length !== undefined) return { start, count: length };
    const r = primaryRange(readSubIdFile(file), { name: user, id: uid });
    if (r === undefined) {
      throw new TrellisError('ERR_TRELLIS_SUBUID_MISSING', `no ${file} entry for user '${user}'`, {
        hint: `run 'sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}'`,
      });
    }
    if (r.count < 65536) log.info({ kind, count: r.count }, 'probe.small-id-range');
    return { start: start ?? r.start, count: length ?? r.count };
  };
  const uidRange = mapFrom('/etc/subuid', args['uid-map-start'], args['uid-map-length'], 'uid');
  const gidRange = mapFrom('/etc/subgid', args['gid-map-start'], args['gid-map-length'], 'gid');
  const uidMappings = buildMappings(uid, uidRange);
  const gidMappings = buildMappings(gid, gidRange);

  requireSetuid('newuidmap');
  requireSetuid('newgidmap');
  const runcBin = requireBinary(args['runtime-plugin'], 'runc');
  // runc itself only: another runtime (a wrapper script, say) may look for files beside its own path.
  if (isRuncBinary(runcBin)) sealRuntimeInSharedSpawner(runcBin);
  const conmonBin = requireBinary(args['conmon-bin'] ?? 'conmon', 'conmon');
  const initBin = args['init-bin'] !== undefined ? requireBinary(args['init-bin'], 'trellis (npm run build)') : BUILT_INIT;
  if (!existsSync(initBin)) {
    throw new TrellisError('ERR_TRELLIS_INIT_NOT_BUILT', `garden-init was not built (${initBin})`, { hint: "run 'npm run build' (it compiles src/runtime/init with gcc)" });
  }
  const toolsBin = requireBinary('busybox', 'busybox-static');
  let seccomp: OciSeccomp | undefined;
  if (args['seccomp-profile'] !== 'unconfined') {
    try {
      seccomp = loadProfile(args['seccomp-profile'], UNPRIVILEGED_CAPS);
    } catch (err) {
      throw new TrellisError('ERR_TRELLIS_SECCOMP', `cannot read the seccomp profile ${args['seccomp-profile']}: ${errorMessage(err)}`, {
        hint: "install it ('apt-get install golang-github-containers-common'), or pass --seccomp-profile",
      });
    }
  }
  const depotDir = args.depot ?? paths.depot;
  requireWritableDir(depotDir, 'depot', uid, gid);
  const scratch = mkdtempSync(join(tmpdir(), 'gdn-probe-'));
  try {
    probeOverlayInUserns(scratch);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const cg = planCgroups(paths.cgroupParent, readFileSync('/proc/self/mountinfo', 'utf8'), readFileSync('/proc/self/cgroup', 'utf8'), uid, gid);
  let cgroupParent: string | undefined;
  if (cg.mode === 'none' && cg.refuse) {
    // Pure cgroup v2 outside a delegated subtree: no container could get its cgroup.
    throw new TrellisError('ERR_TRELLIS_CGROUP_V2', cg.why, { hint: cg.fix });
  }
  if (cg.mode === 'v2') {
    const placed = applyV2(cg.mount, cg.placement, uid, gid);
    log.info({ kind: cg.placement.kind, leaf: cg.placement.leaf, moved: placed.moved, controllers: placed.controllers }, 'probe.cgroup-v2');
  }
  if (cg.mode === 'none') {
    // Containers still run; limits are refused at create, naming this reason.
    log.error({ why: cg.why, fix: cg.fix }, 'probe.cgroups-unavailable');
    limitsUnavailable = `${cg.why}; to enable limits: ${cg.fix}`;
  } else {
    cgroupParent = cg.parent;
    log.info({ mode: cg.mode, parent: cg.parent }, 'probe.cgroups');
  }

  let image: ImagePlugin;
  const storePath = args.store ?? paths.store;
  if (args['image-plugin'] !== undefined) {
    image = new ExecImagePlugin(args['image-plugin'], args['image-plugin-extra-arg'], log.child({ component: 'image-plugin' }), sharedSpawner());
  } else {
    if (!existsSync(join(storePath, 'meta', 'namespace.json'))) {
      throw new TrellisError('ERR_TRELLIS_STORE', `the image store ${storePath} is not initialised`, {
        hint: `run 'sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}'`,
      });
    }
    const store = new ImageStore({
      storePath,
      gate: args['network-gate'],
      logger: log.child({ component: 'grootfs' }),
      // Its tools (btrfs, unshare, the gate's quota calls) start without forking gdn (issue 10).
      run: async (file, argv, o) => {
        const r = await sharedSpawner().run(file, argv, { env: TOOL_ENV, timeoutMs: o?.timeoutMs });
        return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.failure ? `${file}: ${r.failure.message}` : r.stderr };
      },
      defaultRegistry: args['docker-registry'],
      insecureRegistries: args['insecure-docker-registry'],
    });
    // Issue #11: say at start whether disk limits will hold.
    if ((await store.driver()) === 'btrfs') log.info({ store: storePath, driver: 'btrfs' }, 'disk-limits.enforced');
    else if (await store.quotaXfs()) log.info({ store: storePath, driver: 'overlay', quota: 'xfs' }, 'disk-limits.enforced');
    else {
      log.warn(
        { store: storePath, driver: 'overlay', hint: 'gdn setup --store <new path> makes a btrfs (or, with --store-driver xfs, an XFS) store that enforces them' },
        'disk-limits.not-enforced: the overlay store records and reports disk limits but does not enforce them',
      );
    }
    image = new InProcessImagePlugin(store);
  }
  let network: NetworkPlugin;
  let addressPool: number | undefined;
  // Where the host reaches mapped ports: with the built-in networker, its bridge address.
  let externalIp = args['external-ip'] ?? '127.0.0.1';
  if (args['network-plugin'] !== undefined) {
    network = new ExecNetworkPlugin(args['network-plugin'], args['network-plugin-extra-arg'], log.child({ component: 'network-plugin' }), sharedSpawner());
  } else if (existsSync(join(NET_CONF_DIR, `${uid}.conf`))) {
    const gate = args['network-gate'];
    requireSetuidRoot(gate);
    const dns = [...(args['dns-server'].length > 0 ? args['dns-server'] : defaultDnsServers()), ...args['additional-dns-server']];
    const userNet = loadUserNetwork(uid);
    if (args['external-ip'] === undefined) externalIp = userNet.gateway;
    addressPool = containerAddresses(userNet.subnet);
    network = new InProcessNetwork(
      networkerFor(uid, { gate, allowNetworks: args['allow-network'], denyNetworks: args['deny-network'], dnsServers: dns, holdPorts: true }, log.child({ component: 'networker' }), sharedSpawner()),
    );
  } else {
    log.warn({ config: join(NET_CONF_DIR, `${uid}.conf`), fix: `sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}` }, 'probe.network: no network set up for this user; containers get loopback only');
    network = new LoopbackOnly();
  }

  const defaultRootfs = args['default-rootfs'] ?? (existsSync(paths.defaultRootfs) ? paths.defaultRootfs : '');
  const depot = new Depot(depotDir);
  // One small process starts conmon, runc and the gate for gdn: a fork of gdn itself blocks its event loop (issue 10).
  const spawner = sharedSpawner();
  if (!existsSync(SPAWNER_BINARY) || spawner.pid() === undefined) {
    throw new TrellisError('ERR_TRELLIS_SPAWNER_NOT_BUILT', `cannot start trellis-spawner (${SPAWNER_BINARY})`, { hint: "run 'npm run build' (it compiles src/runtime/spawner with gcc)" });
  }
  const startTimeoutMs = Number(parseGoDuration(args['process-start-timeout']) / 1_000_000n);
  // runc from the spawner's sealed copy: no copy of itself in every container's init (issue 10).
  const runtime = () => spawner.sealedRuntime() ?? runcBin;
  const runc = new Runc(runtime, args['runtime-plugin-extra-arg'], spawner, startTimeoutMs);
  const conmon = new Conmon(conmonBin, runtime, {}, startTimeoutMs, args['process-log-max-bytes'], spawner);
  const gardener = new Gardener({
    depot,
    containerizer: new Containerizer(depot, runc, conmon),
    image,
    network,
    externalIp,
    log,
    uidMappings,
    gidMappings,
    initBinary: initBin,
    // garden-init's spawn server is ours: a foreign --init-bin gets every process by `runc exec`
    execBinary: initBin === BUILT_INIT && existsSync(BUILT_EXEC) ? BUILT_EXEC : undefined,
    toolsBinary: toolsBin,
    seccomp,
    defaultRootfs,
    defaultGraceTimeNs: parseGoDuration(args['default-grace-time']),
    maxContainers: args['max-containers'],
    addressPool,
    cgroupParent,
    limitsUnavailable,
    processRetentionMs: Number(parseGoDuration(args['process-retention']) / 1_000_000n),
    cgroups: new CgroupReader(readFileSync('/proc/self/mountinfo', 'utf8')),
    propertiesPath: args['properties-path'],
  });
  await gardener.restore();
  // gdn's sockets on the mapped ports of the containers it adopted (reservation, loopback path).
  if (network instanceof InProcessNetwork) await network.resume();

  const deps = { gardener, network, log, storePath, externalIp };
  const http = createHttpServer({ requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 5_000 }, buildApp(deps));
  // Prometheus metrics (issue #12): their own listener, off unless --metrics-bind-port.
  const metricsServer = await startMetrics(args, gardener, http, log);
  // Container root is this user: whoever can drive the API can act as this user (a bind
  // mount of its home is enough), so only this user (and root) is served on loopback.
  const front = createFront(http, buildHijack(deps), log, sameUserPeerCheck(uid));

  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    if (args['bind-socket'] !== undefined) {
      const sock = args['bind-socket'];
      if (existsSync(sock)) unlinkSync(sock);
      front.listen(sock, () => {
        // Owner only (Garden made it 0777): on a shared host nobody else may act as this user.
        chmodSync(sock, 0o600);
        log.info({ network: 'unix', addr: sock }, 'started');
        resolve();
      });
    } else {
      const ip = args['bind-ip'] ?? '127.0.0.1';
      if (!isLoopback(ip)) {
        log.error({ addr: ip }, 'started.reachable-from-other-hosts: anyone who can connect can act as this user through its containers');
      }
      front.listen(args['bind-port'], ip, () => {
        log.info({ network: 'tcp', addr: `${ip}:${args['bind-port']}` }, 'started');
        resolve();
      });
    }
  });

  let debugServer: ReturnType<typeof createDebugServer> | undefined;
  const debugIp = args['debug-bind-ip'];
  if (debugIp !== undefined) {
    const server = createDebugServer(() => debugVars(process.argv, gardener.count), (h) => guardedHandler(sameUserPeerCheck(uid), h, log));
    debugServer = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new TrellisError('ERR_TRELLIS_DEBUG_BIND', `cannot serve debug vars on ${debugIp}:${args['debug-bind-port']}: ${err.message}`)));
      server.listen(args['debug-bind-port'], debugIp, () => {
        log.info({ addr: `${debugIp}:${args['debug-bind-port']}` }, 'debug-server.started');
        resolve();
      });
    });
  }

  const shutdown = (signal: string) => {
    log.info({ signal }, 'stopping');
    debugServer?.close();
    front.close();
    http.close();
    metricsServer?.close();
    // Containers and processes keep running under their monitors; destroys already replied
    // to get a bounded time to finish their teardown (the next start finishes the rest).
    void gardener.shutdown(TEARDOWN_WAIT_MS).finally(() => {
      log.info({ signal }, 'stopped');
      setTimeout(() => process.exit(0), 100).unref();
    });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

/** How long a graceful stop waits for teardowns in flight (under the 10 s the test harness and the bench allow before SIGKILL). */
const TEARDOWN_WAIT_MS = 8000;

/** The metrics listener's address, checked before anything starts; undefined: metrics off. */
function metricsAddress(args: ServerArgs): { ip: string; port: number } | undefined {
  const port = args['metrics-bind-port'];
  if (port === undefined) return undefined;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgument(`--metrics-bind-port must be a TCP port (0-65535), got ${port}`);
  const ip = args['metrics-bind-ip'];
  if (isIP(ip) === 0) throw new InvalidArgument(`--metrics-bind-ip must be an IP address, got '${ip}'`);
  return { ip, port };
}

/** Prometheus metrics (issue #12): undefined when --metrics-bind-port is not given. */
async function startMetrics(args: ServerArgs, gardener: Gardener, api: HttpServer, log: Logger): Promise<HttpServer | undefined> {
  const addr = metricsAddress(args);
  if (addr === undefined) return undefined;
  const { ip, port } = addr;
  const metrics = new Metrics();
  metrics.attach(gardener);
  metrics.instrument(gardener);
  metrics.observe(api);
  // Like the API: only this user (and root) may read it over loopback.
  const handler = guardedHandler(sameUserPeerCheck(process.getuid!()), metricsHandler(metrics), log);
  const server = createHttpServer({ requestTimeout: 30_000, headersTimeout: 30_000, keepAliveTimeout: 5_000 }, handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new TrellisError('ERR_TRELLIS_METRICS_LISTEN', `cannot serve metrics on ${ip}:${port}: ${err.message}`)));
    server.listen(port, ip, () => resolve());
  });
  if (!isLoopback(ip)) log.info({ addr: ip }, 'metrics.reachable-from-other-hosts');
  const bound = server.address();
  log.info({ network: 'tcp', addr: typeof bound === 'object' && bound !== null ? `${bound.address}:${bound.port}` : `${ip}:${port}` }, 'metrics.started');
  return server;
}

const REPEATABLE = new Set([
  'image-plugin-extra-arg', 'network-plugin-extra-arg', 'runtime-plugin-extra-arg', 'insecure-docker-registry',
  'deny-network', 'allow-network', 'dns-server', 'additional-dns-server',
]);

/** As go-flags: a single-value flag given twice takes its last value; only repeatable flags collect. */
function lastValueWins(argv: Record<string, unknown>, repeatable: Set<string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(argv)) out[k] = Array.isArray(v) && !repeatable.has(k) ? v[v.length - 1] : v;
  return out;
}

function report(err: unknown): never {
  const hint = err instanceof TrellisError && err.hint ? ` (${err.hint})` : '';
  process.stderr.write(`error: ${errorMessage(err)}${hint}\n`);
  process.exit(1);
}

await yargs(hideBin(process.argv))
  .scriptName('gdn')
  // Flags are named only as written (no camelCase twins, no --no- negation), as go-flags does.
  .parserConfiguration({ 'camel-case-expansion': false, 'boolean-negation': false })
  .command(
    'server',
    'run the Garden API server as this (ordinary) user',
    (y) => serverFlags(y),
    async (argv) => {
      try {
        await server(lastValueWins(argv, REPEATABLE) as unknown as ServerArgs);
      } catch (err) {
        report(err);
      }
    },
  )
  .command(setupCommand)
  // ---- gdn doctor (issue #9) ----
  .command(
    'doctor',
    "check this host for gdn as this (ordinary) user: one line per prerequisite, 'ok' or the problem and its fix",
    (y) => y.option('network-gate', { type: 'string', default: DEFAULT_GATE, describe: 'the setuid CNI gate to check (as gdn server takes it)' }),
    (argv) => {
      try {
        const findings = runChecks(defaultEnv(argv['network-gate'] as string));
        process.stdout.write(`${formatFindings(findings)}\n`);
        const hard = findings.filter((f) => f.level === 'fail').length;
        process.stdout.write(hard === 0 ? 'doctor: ready for gdn server\n' : `doctor: ${hard} problem(s) to fix\n`);
        process.exitCode = hard === 0 ? 0 : 1;
      } catch (err) {
        report(err);
      }
    },
  )
  // ---- end gdn doctor ----
  .demandCommand(1, 'name a command: server, setup or doctor')
  .strict()
  .fail((msg, err) => report(err ?? new Error(msg)))
  .version(false)
  .help()
  .parseAsync();

/** An ELF binary named runc: what runc 1.1's sealed-copy check (issue 10) is for. */
function isRuncBinary(path: string): boolean {
  if (basename(path) !== 'runc') return false;
  try {
    const fd = openSync(path, 'r');
    try {
      const head = Buffer.alloc(4);
      return readSync(fd, head, 0, 4, 0) === 4 && head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}
