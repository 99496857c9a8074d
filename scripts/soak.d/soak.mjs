// scripts/soak's body (issue 10): N sustained lifecycles with output against a gdn server of
// its own, then a search for anything they left behind and gdn's RSS against its fresh value.
import { spawn } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const USAGE = `usage: scripts/soak [user] [-n N] [-j J] [--warmup W] [--rss-slack MIB] [--gdn-flag=F]...
  -n N             lifecycles (default 1000)
  -j J             lifecycles at a time (default 1)
  --warmup W       of them, the first W are warm-up for the "after warm-up" RSS (default 20)
  --rss-slack MIB  gdn's RSS at the end may exceed its fresh value by this much (default 10)
  --gdn-flag=F     extra argument for 'gdn server' (repeatable)`;

let opt;
try {
  ({ values: opt } = parseArgs({
    options: {
      n: { type: 'string', short: 'n', default: '1000' },
      j: { type: 'string', short: 'j', default: '1' },
      warmup: { type: 'string', default: '20' },
      'rss-slack': { type: 'string', default: '10' },
      'gdn-flag': { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  console.error(`scripts/soak: ${err.message}\n${USAGE}`);
  process.exit(2);
}
if (opt.help) {
  console.log(USAGE);
  process.exit(0);
}
const N = Number(opt.n);
const J = Number(opt.j);
const WARMUP = Number(opt.warmup);
const SLACK_MIB = Number(opt['rss-slack']);
if (![N, J, WARMUP].every((x) => Number.isInteger(x) && x >= 0) || N < 1 || J < 1 || !(SLACK_MIB >= 0)) {
  console.error(USAGE);
  process.exit(2);
}
const uid = process.getuid();
if (uid === 0) {
  console.error('scripts/soak: run as the ordinary user (as root: scripts/soak <user>)');
  process.exit(2);
}

const gdn = join(REPO, 'dist/cmd/gdn.js');
if (!existsSync(gdn)) {
  console.error(`scripts/soak: ${gdn} missing: run 'npm run build'`);
  process.exit(1);
}
const { GardenClient } = await import(join(REPO, 'dist/src/client/client.js'));
const { userPaths } = await import(join(REPO, 'dist/src/paths.js'));
const { gateId } = await import(join(REPO, 'dist/plugins/networker/networker.js'));

const XDG = process.env.XDG_RUNTIME_DIR || `/run/user/${uid}`;
const TAG = `soak-${process.pid}`;
const TMP = mkdtempSync(join(XDG, 'trellis-soak-'));
const DEPOT = join(TMP, 'depot');
const SOCK = join(TMP, 'gdn.sock');
const LOG = join(TMP, 'gdn.log');
const PATHS = userPaths(uid);
const NET_STATE = join(PATHS.runtimeDir, 'network');
const LIMITS = { bandwidth_limits: {}, cpu_limits: {}, disk_limits: {}, memory_limits: {}, pid_limits: {} };
const now = () => performance.now();

function rssKiB(pid) {
  return Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
}
const mib = (kb) => `${(kb / 1024).toFixed(1)} MiB`;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[s.length >> 1] : (s[(s.length >> 1) - 1] + s[s.length >> 1]) / 2;
};

function hostVeths() {
  const out = new Set();
  for (const name of readdirSync('/sys/class/net')) {
    if (existsSync(`/sys/class/net/${name}/brport`) && name.startsWith('veth')) out.add(name);
  }
  return out;
}

// ---- the server
const fd = openSync(LOG, 'a');
// As a program, as users run it: its #! line carries gdn's memory settings.
const child = spawn(gdn, ['server', '--bind-socket', SOCK, '--depot', DEPOT, '--log-level', 'error', ...opt['gdn-flag']], {
  stdio: ['ignore', fd, fd],
});
closeSync(fd);
let exited;
child.once('exit', (code, sig) => (exited = `exited ${code ?? sig}`));
let client;
for (const deadline = Date.now() + 60_000; ;) {
  if (exited) {
    console.error(`scripts/soak: gdn server ${exited}:\n${readFileSync(LOG, 'utf8').slice(-2000)}`);
    process.exit(1);
  }
  if (existsSync(SOCK)) {
    try {
      const c = new GardenClient(SOCK);
      await c.ping();
      client = c;
      break;
    } catch {
      // not yet
    }
  }
  if (Date.now() > deadline) {
    console.error('scripts/soak: gdn server did not answer ping within 60 s');
    child.kill('SIGKILL');
    process.exit(1);
  }
  await sleep(50);
}
await sleep(500);
const rssFresh = rssKiB(child.pid);
const vethsBefore = hostVeths();

// ---- the lifecycles
const handles = [];
const failures = [];
const times = [];
let rssWarm;
let next = 0;
let done = 0;
const t0 = now();

class Collect extends Writable {
  text = '';
  _write(chunk, _enc, cb) {
    this.text += chunk;
    cb();
  }
}

async function lifecycle(i) {
  const handle = `${TAG}-${i}`;
  handles.push(handle);
  const t = now();
  await client.create({ handle, image: {}, limits: LIMITS });
  try {
    const out = new Collect();
    const err = new Collect();
    const p = await client.run(handle, { path: 'sh', args: ['-c', `echo out-${i}; echo err-${i} >&2; exit 7`], user: 'root', rlimits: {}, image: {} }, { stdout: out, stderr: err });
    const code = await p.wait();
    if (code !== 7 || out.text !== `out-${i}\n` || err.text !== `err-${i}\n`) {
      throw new Error(`run: exit ${code}, stdout ${JSON.stringify(out.text)}, stderr ${JSON.stringify(err.text)}`);
    }
  } finally {
    await client.destroy(handle);
  }
  times.push(now() - t);
}

// Ctrl-C (or SIGTERM): no new lifecycles; those in flight finish and what is left is still checked.
let stopped = false;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (stopped) process.exit(130);
    stopped = true;
    console.log(`scripts/soak: ${sig}: finishing the lifecycles in flight, then checking what is left (again to quit at once)`);
  });
}

async function worker() {
  while (next < N && !stopped) {
    const i = next++;
    try {
      await lifecycle(i);
    } catch (err) {
      failures.push(`#${i}: ${err?.message ?? err}`);
      console.log(`lifecycle ${i} FAILED: ${err?.message ?? err}`);
    }
    done++;
    if (done === WARMUP) rssWarm = rssKiB(child.pid);
    if (done % 50 === 0 || done === N || stopped) {
      const last = times.slice(-50);
      console.log(`${String(done).padStart(5)}/${N}  ${failures.length} failed  last 50: median ${median(last).toFixed(0)} ms  gdn RSS ${mib(rssKiB(child.pid))}  ${((now() - t0) / 1000).toFixed(0)} s`);
    }
  }
}
await Promise.all(Array.from({ length: J }, () => worker()));
const secs = (now() - t0) / 1000;

// ---- what is left
// A destroy may reply before its teardown ends (issue #10): wait for the depot to empty first.
const teardownT0 = now();
while (readdirSync(DEPOT).some((e) => !e.startsWith('.')) && now() - teardownT0 < 120_000) await sleep(20);
const teardownWait = now() - teardownT0;
await sleep(1000);
const rssLast = rssKiB(child.pid);
// The verdict's value: after 10 s idle, when V8 has shrunk what its collector no longer needs
// (right after a burst the young generation alone can hold tens of MiB).
await sleep(10_000);
const rssEnd = rssKiB(child.pid);
const leaks = [];
const depotLeft = readdirSync(DEPOT).filter((e) => !e.startsWith('.'));
if (depotLeft.length) leaks.push(`depot entries: ${depotLeft.slice(0, 5).join(', ')}${depotLeft.length > 5 ? ` (+${depotLeft.length - 5})` : ''}`);
const imagesLeft = handles.filter((h) => existsSync(join(PATHS.store, 'images', h)));
if (imagesLeft.length) leaks.push(`image dirs: ${imagesLeft.length} (${imagesLeft.slice(0, 3).join(', ')})`);
const mounts = new Set();
const procs = [];
for (const name of readdirSync('/proc')) {
  if (!/^\d+$/.test(name) || Number(name) === process.pid || Number(name) === child.pid) continue;
  try {
    for (const line of readFileSync(`/proc/${name}/mountinfo`, 'utf8').split('\n')) {
      if (line.includes(TMP) || line.includes(`/images/${TAG}-`)) mounts.add(line);
    }
    const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ');
    const cg = readFileSync(`/proc/${name}/cgroup`, 'utf8');
    if (cmd.includes(TAG) || cmd.includes(TMP) || cg.includes(`/${TAG}-`)) procs.push(`${name}: ${cmd.slice(0, 120)}`);
  } catch {
    // gone, or not ours to read
  }
}
if (mounts.size) leaks.push(`mounts: ${mounts.size} (${[...mounts][0]})`);
if (procs.length) leaks.push(`processes: ${procs.length} (${procs.slice(0, 3).join('; ')})`);
const cgroupsLeft = [];
for (const base of ['/sys/fs/cgroup', ...readdirSync('/sys/fs/cgroup').map((c) => join('/sys/fs/cgroup', c))]) {
  const dir = join(base, 'garden', String(uid));
  try {
    for (const e of readdirSync(dir)) if (e.startsWith(`${TAG}-`)) cgroupsLeft.push(join(dir, e));
  } catch {
    // no such hierarchy
  }
}
if (cgroupsLeft.length) leaks.push(`cgroups: ${cgroupsLeft.length} (${cgroupsLeft[0]})`);
const ids = handles.map((h) => gateId(h));
const netLeft = ids.filter((id) => existsSync(join(NET_STATE, `${id}.json`)));
if (netLeft.length) leaks.push(`networker state files: ${netLeft.length}`);
// Host veths cannot be told apart by an ordinary user (other servers of this uid make them too):
// a count, not a verdict; as root, scripts/soak checks the gate's records of every container instead.
const vethsAfter = hostVeths();
const vethNote = `host veths on bridges: ${vethsBefore.size} before, ${vethsAfter.size} after (counts every server of every user: run the soak alone to read it)`;
if (process.env.SOAK_IDS_FILE) appendFileSync(process.env.SOAK_IDS_FILE, ids.map((id) => `${id}\n`).join(''));

// ---- report
const slackOk = rssEnd - rssFresh <= SLACK_MIB * 1024;
console.log('');
console.log(`scripts/soak: ${done} lifecycles${stopped ? ` (stopped early, of ${N})` : ''} (create, run sh with stdout/stderr/exit code checked, destroy), ${J} at a time, in ${secs.toFixed(0)} s`);
console.log(`  failures: ${failures.length}${failures.length ? ` (first: ${failures[0]})` : ''}`);
console.log(`  lifecycle median ${median(times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms`);
console.log(`  gdn RSS: fresh ${mib(rssFresh)}, after ${WARMUP} warm-up ${rssWarm === undefined ? '-' : mib(rssWarm)}, 1 s after the last ${mib(rssLast)}, after 10 s idle ${mib(rssEnd)} (${rssEnd >= rssFresh ? '+' : ''}${mib(rssEnd - rssFresh)} over fresh; at most +${SLACK_MIB} MiB: ${slackOk ? 'PASS' : 'MISS'})`);
console.log(`  teardowns still running after the last destroy replied: waited ${teardownWait.toFixed(0)} ms for the depot to empty`);
console.log(`  left behind: ${leaks.length === 0 ? 'nothing (depot, image dirs, mounts, processes, cgroups, networker state)' : ''}`);
for (const l of leaks) console.log(`    LEAK ${l}`);
console.log(`  ${vethNote}`);

child.kill('SIGTERM');
await Promise.race([new Promise((r) => child.once('exit', r)), sleep(10_000)]);
if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
if (leaks.length === 0 && failures.length === 0) rmSync(TMP, { recursive: true, force: true });
else console.log(`  (kept ${TMP} with the server's log)`);
process.exit(failures.length === 0 && leaks.length === 0 && slackOk && !stopped ? 0 : 1);
