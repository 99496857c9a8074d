// scripts/bench's body: Trellis against bare rootless runc, same user, same
// namespaces, id maps, overlay rootfs and cgroup parent, timed in one run with
// the two sides interleaved so drift hits both. Prints a table; exits 0 unless
// something failed to run. Timings are reported, never asserted.
import { spawn } from 'node:child_process';
import {
  closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { median, now, p90 } from './stats.mjs';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const TARGET_CRD = 1.5;
const TARGET_RUN = 1.1;
const TARGET_PODMAN = 3; // Trellis at least this many times faster than podman run --rm (issue #10)

const USAGE = `usage: scripts/bench [user] [-n N] [--warmup W] [--containers K] [--cache-n N] [--unpack-n N] [--no-images]
                     [--net-n N] [--net-mib M] [--updown-n N] [--no-network] [--runc-only] [--gdn-flag=F]...
                     [--par K] [--par-rounds R] [--no-podman]
  user            only as root: re-run as that user (runuser, XDG_RUNTIME_DIR=/run/user/<uid>)
  -n N            measured iterations per case (default 30; the issue asks for >= 20)
  --warmup W      unmeasured iterations per case first (default 3)
  --containers K  idle containers for the memory numbers (default 10)
  --cache-n N     creates of each image for create-from-cached-registry-image vs directory image (default 20)
  --unpack-n N    cold unpacks of a ~100 MiB 5-layer image on each side, Trellis vs podman import (default 5)
  --no-images     skip both image measurements (they need docker-registry, skopeo and podman)
  --net-n N       TCP transfers per path and direction: Trellis, podman (slirp4netns), loopback (default 5)
  --net-mib M     MiB per transfer (default 1024)
  --updown-n N    create + destroy pairs on each server, networker vs /bin/true, and gate add/del (default 20)
  --no-network    skip the network measurements (they need gdn setup's network, gcc with a static libc, podman)
  --par K         lifecycles started at once in the parallel rows (default 50)
  --par-rounds R  parallel rounds per side, interleaved (default 3; 0: no parallel rows)
  --no-podman     leave out podman run --rm (slirp4netns and --network none, --runtime runc)
  --runc-only     measure bare runc only (no gdn server, no image or network measurements)
  --gdn-flag=F    extra argument for 'gdn server' (repeatable; use the = form for flags)
  --quota-store S a quota-enforcing store gdn setup made (default: /var/lib/trellis/<uid>/quota-store
                  when it exists, else the default store when it is btrfs): lifecycles on it with
                  and without a disk limit (issue #11)`;

let opt;
try {
  ({ values: opt } = parseArgs({
  options: {
    n: { type: 'string', short: 'n', default: '30' },
    warmup: { type: 'string', default: '3' },
    containers: { type: 'string', default: '10' },
    'cache-n': { type: 'string', default: '20' },
    'unpack-n': { type: 'string', default: '5' },
    'no-images': { type: 'boolean', default: false },
    'net-n': { type: 'string', default: '5' },
    'net-mib': { type: 'string', default: '1024' },
    'updown-n': { type: 'string', default: '20' },
    'no-network': { type: 'boolean', default: false },
    par: { type: 'string', default: '50' },
    'par-rounds': { type: 'string', default: '3' },
    'no-podman': { type: 'boolean', default: false },
    'runc-only': { type: 'boolean', default: false },
    'gdn-flag': { type: 'string', multiple: true, default: [] },
    'quota-store': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
}));
} catch (err) {
  console.error(`scripts/bench: ${err.message}\n${USAGE}`);
  process.exit(2);
}
if (opt.help) {
  console.log(USAGE);
  process.exit(0);
}
const N = Number(opt.n);
const WARMUP = Number(opt.warmup);
const K = Number(opt.containers);
const CACHE_N = Number(opt['cache-n']);
const UNPACK_N = Number(opt['unpack-n']);
const IMAGES = !opt['no-images'] && !opt['runc-only'];
const NET_N = Number(opt['net-n']);
const NET_MIB = Number(opt['net-mib']);
const UPDOWN_N = Number(opt['updown-n']);
const NETWORK = !opt['no-network'] && !opt['runc-only'];
const PAR = Number(opt.par);
const PAR_ROUNDS = Number(opt['par-rounds']);
const PODMAN = !opt['no-podman'] && !opt['runc-only'];
if (![N, WARMUP, K, CACHE_N, UNPACK_N, NET_N, NET_MIB, UPDOWN_N, PAR, PAR_ROUNDS].every((x) => Number.isInteger(x) && x >= 0) || N < 1
  || (PAR_ROUNDS > 0 && PAR < 1) || (IMAGES && (CACHE_N < 1 || UNPACK_N < 1)) || (NETWORK && (NET_N < 1 || NET_MIB < 1 || UPDOWN_N < 1))) {
  console.error(USAGE);
  process.exit(2);
}

const uid = process.getuid();
const gid = process.getgid();
if (uid === 0) {
  console.error('scripts/bench: run as the ordinary user (as root: scripts/bench <user>)');
  process.exit(2);
}
const XDG = process.env.XDG_RUNTIME_DIR || `/run/user/${uid}`;
const ENV = {
  ...process.env,
  XDG_RUNTIME_DIR: XDG,
  PATH: `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${process.env.PATH ? `:${process.env.PATH}` : ''}`,
};
const TAG = `bench-${process.pid}`;

// ---------------------------------------------------------------- host facts

function userName(id) {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f.length > 2 && Number(f[2]) === id) return f[0];
  }
  return undefined;
}

function subRange(file, name, id) {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [who, start, count] = line.trim().split(':');
    if ((who === name || who === String(id)) && start !== undefined && count !== undefined) {
      return { start: Number(start), count: Number(count) };
    }
  }
  throw new Error(`no entry for ${name ?? id} in ${file} (run 'gdn setup' as root)`);
}

const USER = userName(uid);
const SUBUID = subRange('/etc/subuid', USER, uid);

/** The quota-enforcing store to measure limited creates on (issue #11), or undefined. */
function quotaStorePath() {
  if (opt['quota-store']) return opt['quota-store'];
  const own = `/var/lib/trellis/${uid}/quota-store`;
  if (existsSync(join(own, 'meta', 'namespace.json'))) return own;
  const dflt = `/var/lib/trellis/${uid}/store`;
  try {
    if (readFileSync(join(dflt, 'meta', 'driver'), 'utf8').trim() === 'btrfs') return dflt;
  } catch {
    // no recorded driver: an overlay store
  }
  return undefined;
}
const SUBGID = subRange('/etc/subgid', USER, uid);
const ROOTFS = `/var/lib/trellis/${uid}/rootfs`;

function which(cmd) {
  for (const d of ENV.PATH.split(':')) if (existsSync(join(d, cmd))) return join(d, cmd);
  throw new Error(`${cmd} not found in PATH`);
}
const RUNC = which('runc');


// ---------------------------------------------------------------- bare runc bundles

const PATH_ROOT = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

// The baseline runs Trellis's own container config (same namespaces, id maps, mounts and
// seccomp filter), from the build: bare runc then differs from Trellis only in the path to it.
const { buildBundle, UNPRIVILEGED_CAPS, BUILT_INIT, INIT_PATH } = await import(join(REPO, 'dist/src/runtime/bundle.js'));
const { DEFAULT_PROFILE, loadProfile } = await import(join(REPO, 'dist/src/runtime/seccomp.js'));
const { lockedFlags } = await import(join(REPO, 'dist/src/runtime/mountinfo.js'));
const SECCOMP = loadProfile(DEFAULT_PROFILE, UNPRIVILEGED_CAPS);
const configSource = 'Trellis buildBundle with its seccomp filter (dist/src/runtime)';

const UID_MAPS = [{ containerID: 0, hostID: uid, size: 1 }, { containerID: 1, hostID: SUBUID.start, size: SUBUID.count }];
const GID_MAPS = [{ containerID: 0, hostID: gid, size: 1 }, { containerID: 1, hostID: SUBGID.start, size: SUBGID.count }];
const INIT_FLAGS = lockedFlags(BUILT_INIT);

let TMP; // everything of ours lives here: bundles, runc root, the server's socket, depot and log
let RUNC_ROOT;
let bundleSeq = 0;

/** A fresh bundle: overlay of the default rootfs with its own upper/work, `args` as the process. */
function makeBundle(args) {
  const id = `${TAG}-${bundleSeq++}`;
  const b = join(TMP, 'bundles', id);
  for (const d of ['upper', 'work', 'rootfs']) mkdirSync(join(b, d), { recursive: true });
  const cgroupsPath = `/garden/${uid}/${id}`;
  const config = buildBundle({
    handle: id, rootfsPath: join(b, 'rootfs'),
    imageMounts: [{ destination: '/', type: 'overlay', source: 'overlay', options: [`lowerdir=${ROOTFS},upperdir=${b}/upper,workdir=${b}/work`] }],
    env: [PATH_ROOT], uidMappings: UID_MAPS, gidMappings: GID_MAPS, initBinary: BUILT_INIT, initLockedFlags: INIT_FLAGS,
    bindMounts: [], cgroupsPath, limits: {}, seccomp: SECCOMP,
  });
  config.process.args = args;
  writeFileSync(join(b, 'config.json'), JSON.stringify(config));
  return { id, b };
}

// ---------------------------------------------------------------- processes

/** Run to completion; stdout/stderr collected. Resolves on 'close' (all stdio ended). */
function run(cmd, args, { env = ENV, stdio = ['ignore', 'pipe', 'pipe'] } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { env, stdio });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d) => (out += d));
    child.stderr?.on('data', (d) => (err += d));
    child.once('error', rej);
    child.once('close', (code, signal) => res({ code: code ?? 128, signal, out, err }));
  });
}

async function must(cmd, args, what) {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${what}: ${cmd} ${args.join(' ')} exited ${r.code}: ${(r.err || r.out).trim()}`);
  return r;
}

/**
 * `runc run --detach`: the container's init inherits runc's stdio, so pipes would stay
 * open for its lifetime; stderr goes to a file and only runc's own exit is awaited.
 */
async function runcDetached(b, id, what) {
  const errFile = join(TMP, `${id}.stderr`);
  const fd = openSync(errFile, 'w');
  const child = spawn(RUNC, ['--root', RUNC_ROOT, 'run', '--detach', '--bundle', b, id], { env: ENV, stdio: ['ignore', 'ignore', fd] });
  closeSync(fd);
  const code = await new Promise((res, rej) => child.once('error', rej).once('exit', (c) => res(c ?? 128)));
  if (code !== 0) throw new Error(`${what}: runc run --detach exited ${code}: ${tail(errFile)}`);
}

const runc = (...args) => must(RUNC, ['--root', RUNC_ROOT, ...args], `runc ${args[0]}`);


// ---------------------------------------------------------------- the cases

/**
 * The kernel closes a dying process's files before it becomes a zombie, and runc
 * refuses to delete a container whose init is not yet a zombie: wait for that.
 */
async function dead(pid) {
  for (let i = 0; ; i++) {
    let state;
    try {
      state = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0];
    } catch {
      return; // reaped
    }
    if (state === 'Z' || state === 'X') return;
    if (i > 10_000) throw new Error(`pid ${pid} still ${state} long after its stdout closed`);
    await new Promise((r) => setImmediate(r));
  }
}

/** runc create + start + wait for `true` to exit + delete: the issue's baseline. */
async function runcCreateStartDelete() {
  const { id, b } = makeBundle(['true']);
  const t0 = now();
  // The container's init inherits runc create's stdout: its EOF is `true` exiting.
  const pidFile = join(b, 'pid');
  const create = spawn(RUNC, ['--root', RUNC_ROOT, 'create', '--pid-file', pidFile, '--bundle', b, id], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  create.stderr.on('data', (d) => (err += d));
  const eof = new Promise((res) => create.stdout.once('end', res).resume());
  const code = await new Promise((res, rej) => create.once('error', rej).once('exit', (c) => res(c ?? 128)));
  if (code !== 0) throw new Error(`runc create exited ${code}: ${err.trim()}`);
  const pid = readFileSync(pidFile, 'utf8').trim();
  await runc('start', id);
  await eof;
  await dead(pid);
  await runc('delete', id);
  return now() - t0;
}

/** runc run (create, start, wait, delete in one invocation): reference only. */
async function runcRun() {
  const { id, b } = makeBundle(['true']);
  const t0 = now();
  await must(RUNC, ['--root', RUNC_ROOT, 'run', '--bundle', b, id], 'runc run');
  return now() - t0;
}

/** What Trellis does underneath, without Trellis: init container, exec `true`, force delete. Reference only. */
async function runcTrellisSteps() {
  const { id, b } = makeBundle([INIT_PATH]);
  const t0 = now();
  await runcDetached(b, id, 'Trellis steps');
  await runc('exec', id, 'true');
  await runc('delete', '--force', id);
  return now() - t0;
}

/** The same, but kill the init, wait for it to die and delete without --force (runc 1.1's --force polls every 100 ms). */
async function runcTrellisStepsKill() {
  const { id, b } = makeBundle([INIT_PATH]);
  const t0 = now();
  // The init holds this pipe: its EOF is the init's death.
  const pidFile = join(b, 'pid');
  const child = spawn(RUNC, ['--root', RUNC_ROOT, 'run', '--detach', '--pid-file', pidFile, '--bundle', b, id], { env: ENV, stdio: ['ignore', 'pipe', 'ignore'] });
  const eof = new Promise((res) => child.stdout.once('end', res).resume());
  const code = await new Promise((res, rej) => child.once('error', rej).once('exit', (c) => res(c ?? 128)));
  if (code !== 0) throw new Error(`runc run --detach exited ${code}`);
  const pid = readFileSync(pidFile, 'utf8').trim();
  await runc('exec', id, 'true');
  await runc('kill', id, 'KILL');
  await eof;
  await dead(pid);
  await runc('delete', id);
  return now() - t0;
}

let execTarget; // a long-running bare container for `runc exec`
async function runcExec() {
  const t0 = now();
  await runc('exec', execTarget, 'true');
  return now() - t0;
}

// ---------------------------------------------------------------- Trellis

let GardenClient;
let server; // { child, pid, log, socket, client, cmd }: the bench's own gdn server
const servers = new Set(); // every gdn server launched and not yet stopped (network.mjs starts a second)
let images; // scripts/bench.d/images.mjs's ImageBench, unless --no-images
let podman; // scripts/bench.d/podman.mjs's PodmanBench, unless --no-podman
let network; // scripts/bench.d/network.mjs's NetworkBench, unless --no-network
let client;
/** Live handles, each with the client (server) that made it. */
const trellisHandles = new Map();
let handleSeq = 0;
const sink = () => new Writable({ write: (_c, _e, cb) => cb() });
const LIMITS = { bandwidth_limits: {}, cpu_limits: {}, disk_limits: {}, memory_limits: {}, pid_limits: {} };

async function trellisCreate(c = client, limits = LIMITS) {
  const handle = `${TAG}-${handleSeq++}`;
  trellisHandles.set(handle, c);
  const h = await c.create({ handle, image: {}, limits });
  if (h !== handle) trellisHandles.set(h, c);
  return h;
}

async function trellisRunTrue(h) {
  const p = await trellisHandles.get(h).run(h, { path: 'true', args: [], user: 'root', rlimits: {}, image: {} }, { stdout: sink(), stderr: sink() });
  const code = await p.wait();
  if (code !== 0) throw new Error(`Trellis run of 'true' in ${h} exited ${code}`);
}

async function trellisDestroy(h) {
  await trellisHandles.get(h).destroy(h);
  trellisHandles.delete(h);
}

/** Containers in a server's depot (a directory with a container.json), torn down or not. */
function depotEntries(depot) {
  try {
    return readdirSync(depot).filter((d) => existsSync(join(depot, d, 'container.json'))).length;
  } catch {
    return 0;
  }
}

/**
 * Waits until every server's depot holds only live containers: a destroy may reply before its
 * teardown ends (issue #10), and what is still being torn down must neither be counted as done
 * nor slow the next sample. Resolves with the ms it waited.
 */
async function trellisQuiet(timeoutMs = 120_000) {
  const t0 = now();
  for (;;) {
    let entries = 0;
    for (const s of servers) entries += depotEntries(join(s.dir, 'depot'));
    if (entries <= trellisHandles.size) return now() - t0;
    if (now() - t0 > timeoutMs) throw new Error(`teardowns still running after ${timeoutMs / 1000} s (${entries} depot entries, ${trellisHandles.size} live)`);
    await sleep(2);
  }
}

const phases = { create: [], run: [], destroy: [], teardown: [] };
async function trellisCreateRunDestroy() {
  const t0 = now();
  const h = await trellisCreate();
  const t1 = now();
  await trellisRunTrue(h);
  const t2 = now();
  await trellisDestroy(h);
  const t3 = now();
  phases.create.push(t1 - t0);
  phases.run.push(t2 - t1);
  phases.destroy.push(t3 - t2);
  // not in the sample: what the server still does after destroy's reply
  phases.teardown.push(await trellisQuiet());
  return t3 - t0;
}

/** The lifecycle on its own (parallel rows): no phase samples. */
async function trellisLifecycle() {
  const h = await trellisCreate();
  await trellisRunTrue(h);
  await trellisDestroy(h);
}

let quotaServer; // a second gdn server on the quota-enforcing store (issue #11)
const DISK_LIMITED = { ...LIMITS, disk_limits: { byte_hard: 64 * 1048576, scope: 1 } };
async function quotaLifecycle(limits) {
  const t0 = now();
  const h = await trellisCreate(quotaServer.client, limits);
  await trellisRunTrue(h);
  await trellisDestroy(h);
  const t = now() - t0;
  await trellisQuiet();
  return t;
}

let runTarget; // a long-running Trellis container for run-only
async function trellisRun() {
  const t0 = now();
  await trellisRunTrue(runTarget);
  return now() - t0;
}

function tail(path, lines = 20) {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** A gdn server of ours: socket, depot and log under TMP/<name>. Resolves once it answers ping. */
async function launchServer(name, extraFlags = []) {
  ({ GardenClient } = await import(join(REPO, 'dist/src/client/client.js')));
  const gdn = join(REPO, 'dist/cmd/gdn.js');
  if (!existsSync(gdn)) throw new Error(`${gdn} missing: run 'npm run build'`);
  const dir = name ? join(TMP, name) : TMP;
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'gdn.sock');
  const log = join(dir, 'gdn.log');
  const args = ['server', '--bind-socket', socket, '--depot', join(dir, 'depot'), '--log-level', 'error', ...extraFlags, ...opt['gdn-flag']];
  const fd = openSync(log, 'a');
  // As a program, as users run it: its #! line carries gdn's memory settings.
  const child = spawn(gdn, args, { env: ENV, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  let exited;
  child.once('exit', (code, sig) => (exited = `exited ${code ?? sig}`));
  const s = { child, pid: child.pid, dir, log, socket, cmd: [gdn, ...args].map((a) => a.replace(REPO + '/', '')).join(' ') };
  servers.add(s);
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`gdn server ${exited} before it served:\n${tail(log)}`);
    if (existsSync(socket)) {
      try {
        const c = new GardenClient(socket);
        await c.ping();
        s.client = c;
        return s;
      } catch {
        // not ready yet
      }
    }
    if (Date.now() > deadline) {
      await stopServer(s);
      throw new Error(`gdn server did not answer ping within 60 s:\n${tail(log)}`);
    }
    await sleep(50);
  }
}

async function stopServer(s) {
  servers.delete(s);
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const gone = new Promise((res) => s.child.once('exit', res));
  s.child.kill('SIGTERM');
  if (await Promise.race([gone.then(() => true), sleep(10_000).then(() => false)]) === false) {
    s.child.kill('SIGKILL');
    await gone;
  }
}

async function startServer(extraFlags = []) {
  server = await launchServer('', extraFlags);
  client = server.client;
  return server.cmd;
}

// ---------------------------------------------------------------- memory

function status(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN);
  let pss = NaN;
  try {
    pss = Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? NaN);
  } catch {
    // not ours to read
  }
  return { rss: kb('VmRSS'), pss };
}

/** Every process whose cgroup or command line names one of `ids`, with its comm. */
function processesOf(ids) {
  const found = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cg = readFileSync(`/proc/${e}/cgroup`, 'utf8');
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').join(' ');
      const id = ids.find((i) => cg.includes(`/${i}\n`) || cmd.split(/[\s/=]/).includes(i));
      if (id === undefined) continue;
      const comm = readFileSync(`/proc/${e}/comm`, 'utf8').trim();
      found.push({ pid: Number(e), id, comm, ...status(e) });
    } catch {
      // gone, or not readable
    }
  }
  return found;
}

/** Per comm: how many, median VmRSS and Pss in KiB. */
function byComm(procs) {
  const m = new Map();
  for (const p of procs) {
    const g = m.get(p.comm) ?? { comm: p.comm, n: 0, rss: [], pss: [] };
    g.n++;
    g.rss.push(p.rss);
    g.pss.push(p.pss);
    m.set(p.comm, g);
  }
  return [...m.values()].map((g) => ({ comm: g.comm, n: g.n, rss: median(g.rss), pss: median(g.pss) }));
}

// ---------------------------------------------------------------- stats and output

const ms = (x) => (Number.isNaN(x) ? '-' : `${x.toFixed(1)} ms`);
const mib = (kb) => (Number.isNaN(kb) ? '-' : `${(kb / 1024).toFixed(1)} MiB`);
const pad = (s, n) => String(s).padEnd(n);
const lpad = (s, n) => String(s).padStart(n);

// ---------------------------------------------------------------- cleanup

let cleaning;
async function cleanup() {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    const problems = [];
    if (images) problems.push(...(await images.cleanup()));
    if (podman) problems.push(...(await podman.cleanup()));
    if (network) problems.push(...(await network.cleanup()));
    if (client) {
      for (const [h, c] of [...trellisHandles]) {
        try {
          await Promise.race([c.destroy(h), sleep(30_000).then(() => Promise.reject(new Error('timed out')))]);
          trellisHandles.delete(h);
        } catch (err) {
          problems.push(`Trellis destroy ${h}: ${err.message}`);
        }
      }
    }
    if (server) await stopServer(server);
    for (const s of [...servers]) await stopServer(s);
    if (RUNC_ROOT && existsSync(RUNC_ROOT)) {
      try {
        const list = JSON.parse((await run(RUNC, ['--root', RUNC_ROOT, 'list', '--format', 'json'])).out || 'null') ?? [];
        for (const c of list) {
          const r = await run(RUNC, ['--root', RUNC_ROOT, 'delete', '--force', c.id]);
          if (r.code !== 0) problems.push(`runc delete ${c.id}: ${r.err.trim()}`);
        }
      } catch (err) {
        problems.push(`runc list: ${err.message}`);
      }
    }
    // Cgroups runc left behind (only ours: named after this run's tag).
    for (const base of cgroupBases()) {
      try {
        for (const d of readdirSync(base)) if (d.startsWith(TAG)) rmdirSync(join(base, d));
      } catch {
        // not there
      }
    }
    if (TMP) {
      try {
        rmSync(TMP, { recursive: true, force: true });
      } catch (err) {
        problems.push(`rm ${TMP}: ${err.message}`);
      }
    }
    if (trellisHandles.size > 0) problems.push(`left behind by Trellis: ${[...trellisHandles.keys()].join(', ')}`);
    return problems;
  })();
  return cleaning;
}

function cgroupBases() {
  const root = '/sys/fs/cgroup';
  const out = [];
  try {
    for (const c of readdirSync(root)) out.push(join(root, c, 'garden', String(uid)));
  } catch {
    // no cgroupfs
  }
  out.push(join(root, 'garden', String(uid)));
  return out;
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  // `on`, not `once`: execa (loaded by the image part) re-raises a signal nobody else still listens for.
  process.on(sig, () => {
    if (cleaning) return;
    console.error(`\nscripts/bench: ${sig}, cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- main

async function main() {
  if (!existsSync(ROOTFS)) throw new Error(`${ROOTFS} missing (run 'gdn setup' as root)`);
  mkdirSync(XDG, { recursive: true });
  TMP = mkdtempSync(join(XDG, 'trellis-bench-'));
  RUNC_ROOT = join(TMP, 'runc');
  mkdirSync(RUNC_ROOT);
  const runcVersion = (await run(RUNC, ['--version'])).out.split('\n')[0];

  let serverCmd;
  let serverIdleFresh;
  if (IMAGES) {
    const { ImageBench } = await import('./images.mjs');
    images = new ImageBench({ repo: REPO, tmp: TMP, env: ENV, tag: TAG, subuid: SUBUID, subgid: SUBGID });
  }
  if (!opt['runc-only']) {
    serverCmd = await startServer(images ? await images.startRegistry() : []);
    serverIdleFresh = status(server.pid);
    const qstore = quotaStorePath();
    if (qstore) quotaServer = { ...(await launchServer('quota', ['--store', qstore])), store: qstore };
  }

  // Long-running containers for the exec/run cases.
  const ex = makeBundle([INIT_PATH]);
  execTarget = ex.id;
  await runcDetached(ex.b, ex.id, 'exec target');
  if (client) runTarget = await trellisCreate();
  if (PODMAN) {
    const { PodmanBench } = await import('./podman.mjs');
    podman = new PodmanBench({ tmp: TMP, env: ENV, tag: TAG, rootfs: ROOTFS, subuid: SUBUID, subgid: SUBGID });
    await podman.prepare();
    if (podman.skip) podman = undefined;
  }

  const cases = [
    { key: 'csd', group: 'crd', label: 'runc create + start + wait + delete   [baseline]', fn: runcCreateStartDelete },
    { key: 'run', group: 'crd', label: 'runc run (all four in one call)       [ref]', fn: runcRun },
    { key: 'steps', group: 'crd', label: "runc run -d init, exec, delete -f     [ref: Trellis's steps]", fn: runcTrellisSteps },
    { key: 'stepsk', group: 'crd', label: 'runc run -d init, exec, kill, delete  [ref]', fn: runcTrellisStepsKill },
    ...(client ? [{ key: 'tcrd', group: 'crd', label: 'Trellis create, run true, destroy', fn: trellisCreateRunDestroy }] : []),
    ...(quotaServer ? [
      { key: 'tq', group: 'crd', label: 'Trellis, quota store, no disk limit', fn: () => quotaLifecycle(LIMITS) },
      { key: 'tql', group: 'crd', label: 'Trellis, quota store, disk limit 64 MiB exclusive', fn: () => quotaLifecycle(DISK_LIMITED) },
    ] : []),
    ...(podman?.slirp ? [{ key: 'pslirp', group: 'crd', label: 'podman run --rm true (slirp4netns)    [podman]', fn: () => podman.run('slirp4netns') }] : []),
    ...(podman ? [{ key: 'pnone', group: 'crd', label: 'podman run --rm --network none true    [podman]', fn: () => podman.run('none') }] : []),
    { key: 'exec', group: 'run', label: 'runc exec true                        [baseline]', fn: runcExec },
    ...(client ? [{ key: 'trun', group: 'run', label: 'Trellis run true', fn: trellisRun }] : []),
  ];
  const times = Object.fromEntries(cases.map((c) => [c.key, []]));
  const t0 = Date.now();
  for (let i = 0; i < WARMUP + N; i++) {
    // A,B,C,..., then ...,C,B,A: neither side always goes first.
    const order = i % 2 === 0 ? cases : [...cases].reverse();
    for (const c of order) {
      const t = await c.fn();
      if (i >= WARMUP) times[c.key].push(t);
    }
  }
  const timedSecs = (Date.now() - t0) / 1000;

  // Parallel: PAR lifecycles started at once, wall time until the last one ends; sides interleaved per round.
  const parCases = PAR_ROUNDS > 0 ? [
    { key: 'csd', label: `runc create + start + wait + delete x${PAR}   [baseline]`, fn: runcCreateStartDelete },
    ...(client ? [{ key: 'tcrd', label: `Trellis create, run true, destroy x${PAR}`, fn: trellisLifecycle }] : []),
    ...(podman?.slirp ? [{ key: 'pslirp', label: `podman run --rm true (slirp4netns) x${PAR}`, fn: () => podman.run('slirp4netns') }] : []),
    ...(podman ? [{ key: 'pnone', label: `podman run --rm --network none x${PAR}`, fn: () => podman.run('none') }] : []),
  ] : [];
  const par = Object.fromEntries(parCases.map((c) => [c.key, { walls: [], quiet: [], failures: 0, first: undefined }]));
  for (let r = 0; r < PAR_ROUNDS; r++) {
    for (const c of r % 2 === 0 ? parCases : [...parCases].reverse()) {
      const t = now();
      const results = await Promise.allSettled(Array.from({ length: PAR }, () => c.fn()));
      par[c.key].walls.push(now() - t);
      if (c.key === 'tcrd') {
        // throughput: until the last teardown has ended, whenever the destroys replied
        await trellisQuiet();
        par[c.key].quiet.push(now() - t);
      }
      for (const x of results) {
        if (x.status === 'rejected') {
          par[c.key].failures++;
          par[c.key].first ??= x.reason?.message ?? String(x.reason);
        }
      }
      await sleep(1000); // let the last teardowns' page cache and cgroup removals settle
    }
  }

  // Memory: K idle containers on each side, then the processes that carry them.
  let serverIdleAfter;
  let serverWithK;
  let trellisProcs = [];
  if (client) {
    await sleep(500);
    serverIdleAfter = status(server.pid);
    const hs = [];
    for (let i = 0; i < K; i++) hs.push(await trellisCreate());
    await sleep(1000);
    serverWithK = status(server.pid);
    trellisProcs = processesOf(hs);
    for (const h of hs) await trellisDestroy(h);
  }
  const bare = [];
  for (let i = 0; i < K; i++) {
    const { id, b } = makeBundle([INIT_PATH]);
    await runcDetached(b, id, 'memory');
    bare.push(id);
  }
  await sleep(500);
  const bareProcs = processesOf(bare);
  for (const id of bare) await runc('delete', '--force', id);

  // Network: throughput on every path, then what the networker's up and down cost.
  if (NETWORK && client) {
    const { NetworkBench } = await import('./network.mjs');
    network = new NetworkBench({
      repo: REPO, tmp: TMP, env: ENV, tag: TAG, subuid: SUBUID, subgid: SUBGID, rootfs: ROOTFS, launchServer, stopServer,
    });
    await network.prepare();
    await network.measureThroughput(client, NET_N, NET_MIB * 1048576);
    await network.measureUpDown(client, UPDOWN_N);
  }

  // Images: create from a cached registry image, then the cold unpacks (the bulky part) last.
  if (images) {
    await images.measureCachedCreate(client, CACHE_N);
    await images.prepareUnpack(UNPACK_N);
    await images.measureUnpack(UNPACK_N);
  }

  // ---- report
  const W = 66;
  console.log(`Trellis bench: uid ${uid} (${USER}), ${runcVersion}, N=${N} per case after ${WARMUP} warm-up, interleaved (${timedSecs.toFixed(0)} s)`);
  console.log(`  rootfs: overlay of ${ROOTFS} with a fresh upper; userns maps 0->${uid}, 1->${SUBUID.start}+${SUBUID.count}; pid net ipc uts mount user; cgroup /garden/${uid}/<id>`);
  console.log(`  bare runc config: ${configSource}; bundle dirs are made before the clock starts`);
  console.log("  baseline = the issue's: runc create + runc start + wait for `true` to exit + runc delete; [ref] rows are context only");
  console.log('  (runc 1.1 delete --force of a running container polls in 100 ms steps, hence the delete -f row)');
  if (serverCmd) console.log(`  server: ${serverCmd}`);
  if (quotaServer) console.log(`  quota rows: a second server, --store ${quotaServer.store} (it enforces disk limits: issue #11)`);
  else if (client) console.log('  quota rows left out: no quota-enforcing store for this user (--quota-store)');
  if (podman) for (const line of podman.header()) console.log(line);
  else if (PODMAN) console.log('  podman: not measured (podman --version failed)');
  if (images) for (const line of images.header()) console.log(line);
  if (network) for (const line of network.header()) console.log(line);
  console.log('');
  console.log(`${pad('', W)}${lpad('median', 10)}${lpad('p90', 10)}${lpad('ratio', 8)}  target`);
  const verdicts = [];
  for (const [group, title, baseKey, trellisKey, target] of [
    ['crd', 'create + run `true` + destroy', 'csd', 'tcrd', TARGET_CRD],
    ['run', 'run `true` in a running container', 'exec', 'trun', TARGET_RUN],
  ]) {
    console.log(title);
    const base = median(times[baseKey]);
    for (const c of cases.filter((x) => x.group === group)) {
      const med = median(times[c.key]);
      const ratio = med / base;
      let verdict = '';
      if (c.key === trellisKey || c.key === 'tq' || c.key === 'tql') {
        verdict = `<= ${target}x  ${ratio <= target ? 'PASS' : 'MISS'}`;
        const what = c.key === trellisKey ? title : `${title} (${c.label.replace(/^Trellis, /, '')})`;
        verdicts.push(`${what}: ${ratio.toFixed(2)}x ${ratio <= target ? 'PASS' : 'MISS'}`);
      }
      console.log(`  ${pad(c.label, W - 2)}${lpad(ms(med), 10)}${lpad(ms(p90(times[c.key])), 10)}${lpad(`${ratio.toFixed(2)}x`, 8)}  ${verdict}`);
      if (c.key === 'tcrd') {
        // Phases include warm-up; drop it so they describe the same samples.
        for (const [name, xs] of Object.entries(phases)) {
          const m = xs.slice(WARMUP);
          const label = name === 'teardown' ? 'teardown after destroy replied (not in the row above)' : name;
          console.log(`    ${pad(label, W - 4)}${lpad(ms(median(m)), 10)}${lpad(ms(p90(m)), 10)}`);
        }
      }
    }
  }
  if (client && podman) {
    const t = median(times.tcrd);
    for (const [key, what] of [['pslirp', 'slirp4netns'], ['pnone', '--network none']]) {
      if (!times[key]?.length) continue;
      const x = median(times[key]) / t;
      const ok = x >= TARGET_PODMAN;
      console.log(`  ${pad(`Trellis vs podman run --rm (${what}): times faster`, W - 2)}${lpad('', 20)}${lpad(`${x.toFixed(2)}x`, 8)}  >= ${TARGET_PODMAN}x  ${ok ? 'PASS' : 'MISS'}`);
      verdicts.push(`create + run \`true\` + destroy vs podman run --rm (${what}): ${x.toFixed(2)}x faster ${ok ? 'PASS' : 'MISS'}`);
    }
  }
  if (parCases.length) {
    console.log(`${PAR} lifecycles at once, wall time to the last one's end (${PAR_ROUNDS} interleaved rounds)`);
    const base = median(par.csd.walls);
    for (const c of parCases) {
      const p = par[c.key];
      const med = median(p.walls);
      console.log(`  ${pad(c.label, W - 2)}${lpad(ms(med), 10)}${lpad(ms(Math.max(...p.walls)), 10)}${lpad(`${(med / base).toFixed(2)}x`, 8)}  ${p.failures} failed${p.first ? ` (first: ${p.first.slice(0, 200)})` : ''}`);
      if (p.quiet.length) {
        const q = median(p.quiet);
        console.log(`    ${pad('until the last teardown ended (the ratios below use this)', W - 4)}${lpad(ms(q), 10)}${lpad(ms(Math.max(...p.quiet)), 10)}${lpad(`${(q / base).toFixed(2)}x`, 8)}`);
      }
    }
    if (client) {
      const fails = par.tcrd.failures;
      verdicts.push(`${PAR} parallel lifecycles: ${fails} failures ${fails === 0 ? 'PASS' : 'MISS'}`);
      for (const [key, what] of [['pslirp', 'slirp4netns'], ['pnone', '--network none']]) {
        if (!par[key]) continue;
        const x = median(par[key].walls) / median(par.tcrd.quiet);
        const ok = x >= TARGET_PODMAN;
        console.log(`  ${pad(`Trellis x${PAR} vs podman x${PAR} (${what}): times faster`, W - 2)}${lpad('', 20)}${lpad(`${x.toFixed(2)}x`, 8)}  >= ${TARGET_PODMAN}x  ${ok ? 'PASS' : 'MISS'}`);
        verdicts.push(`${PAR} parallel lifecycles vs ${PAR} podman run --rm (${what}): ${x.toFixed(2)}x faster ${ok ? 'PASS' : 'MISS'}`);
      }
    }
  }
  if (!client) console.log('  (Trellis not measured: --runc-only)');
  if (images) verdicts.push(...images.report(W));
  if (network) verdicts.push(...network.report(W));

  console.log('');
  console.log('memory (VmRSS from /proc/<pid>/status; Pss from smaps_rollup shares libraries fairly)');
  if (client) {
    const d = (serverWithK.rss - serverIdleAfter.rss) / K;
    console.log(`  gdn server idle, fresh                  VmRSS ${mib(serverIdleFresh.rss)}  Pss ${mib(serverIdleFresh.pss)}`);
    console.log(`  gdn server idle, after the timed runs   VmRSS ${mib(serverIdleAfter.rss)}  Pss ${mib(serverIdleAfter.pss)}`);
    console.log(`  gdn server with ${K} containers          VmRSS ${mib(serverWithK.rss)}  Pss ${mib(serverWithK.pss)}  (${d >= 0 ? '+' : ''}${mib(d)} per container)`);
  }
  const perContainer = (label, procs, n) => {
    const groups = byComm(procs);
    if (groups.length === 0) {
      console.log(`  ${label}: no processes found`);
      return;
    }
    let rss = 0;
    let pss = 0;
    for (const g of groups) {
      rss += (g.rss * g.n) / n;
      pss += (g.pss * g.n) / n;
    }
    console.log(`  ${label}: ~VmRSS ${mib(rss)}  Pss ${mib(pss)} per container`);
    for (const g of groups) {
      console.log(`    ${pad(g.comm, 14)} ${lpad(`${g.n}/${n}`, 6)} processes, median VmRSS ${mib(g.rss)}  Pss ${mib(g.pss)}`);
    }
  };
  if (client) perContainer(`Trellis, ${K} idle containers, processes outside gdn`, trellisProcs, K);
  perContainer(`bare runc, ${K} detached garden-init containers (no monitor)`, bareProcs, K);
  if (client) {
    const mon = byComm(trellisProcs).find((g) => g.comm === 'conmon');
    console.log(`  per-container monitor (conmon): ${mon ? `VmRSS ${mib(mon.rss)}, Pss ${mib(mon.pss)}` : 'none found'}; bare runc: none`);
  }
  if (verdicts.length) {
    console.log('');
    for (const v of verdicts) console.log(v);
  }
}

let rc = 0;
try {
  await main();
} catch (err) {
  console.error(`scripts/bench: ${err instanceof Error ? err.message : err}`);
  if (server) {
    const t = tail(server.log);
    if (t) console.error(`--- gdn server log (tail)\n${t}`);
  }
  rc = 1;
}
const problems = await cleanup();
for (const p of problems) console.error(`scripts/bench: cleanup: ${p}`);
if (problems.length) rc = rc || 1;
process.exit(rc);
