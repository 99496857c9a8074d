// The cgroup v2 suite (issue #9), run inside the Debian 12 guest by
// scripts/guest/guest-main as the ordinary user, with Debian's nodejs, against the gdn
// that user's systemd runs (gdn.service). One Node process for the whole suite (Node
// starts slowly under TCG); no mocha. Prints "ok - name" or "not ok - name: why" per
// test and ends with "N passed, M failed".
//
// Environment: GDN_TARGET (the service's socket, or host:port), TRELLIS_GW (the user's bridge
// address), GDN_BIN (the installed gdn).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { GardenClient } from '../../src/client/client.js';
import { runAndWait, sh, spec } from '../integration/harness.js';
import { assert, eq, eventually, sleep } from './checks.js';

const uid = process.getuid!();
const gid = process.getgid!();
const TARGET = process.env.GDN_TARGET ?? '127.0.0.1:7777';
const GW = process.env.TRELLIS_GW ?? '';
const GDN = process.env.GDN_BIN ?? '/usr/local/bin/gdn';
const MANAGER = `/sys/fs/cgroup/user.slice/user-${uid}.slice/user@${uid}.service`;
const PARENT = `${MANAGER}/garden`;
const MiB = 1024 * 1024;
let client = new GardenClient(TARGET);

const read = (p: string) => readFileSync(p, 'utf8').trim();


const systemctl = (...args: string[]) => execFileSync('systemctl', ['--user', ...args], { encoding: 'utf8' }).trim();
const mainPid = () => Number(systemctl('show', '-p', 'MainPID', '--value', 'gdn'));

/** A TCP server on the guest's side of the user's bridge. */
async function guestTcp(reply: string): Promise<{ port: number; close(): void }> {
  const srv = net.createServer((c) => {
    c.on('error', () => {});
    c.end(`${reply}\n`);
  });
  await new Promise<void>((res, rej) => {
    srv.once('error', rej);
    srv.listen(0, GW, res);
  });
  return { port: (srv.address() as net.AddressInfo).port, close: () => srv.close() };
}

function connectRead(host: string, port: number): Promise<string> {
  return new Promise((res, rej) => {
    const c = net.connect(port, host);
    let got = '';
    c.setTimeout(10_000, () => c.destroy(new Error('timeout')));
    c.on('data', (d) => (got += d.toString()));
    c.on('end', () => res(got));
    c.on('error', rej);
  });
}

// ---------------------------------------------------------------------------

const tests: Array<[string, () => Promise<void>]> = [];
const test = (name: string, f: () => Promise<void>) => tests.push([name, f]);

/** Destroy, then its end: the reply comes at the journal (issue #10), the cgroup goes with the teardown. */
async function destroyed(h: string): Promise<void> {
  await client.destroy(h);
  assert(await eventually(() => !existsSync(`${PARENT}/${h}`), 30_000), `${PARENT}/${h} outlived its teardown`);
}

test('hello rootless: the quickstart container prints Hello Rootless, as the unit runs gdn', async () => {
  eq(systemctl('is-active', 'gdn'), 'active', 'gdn.service');
  const own = read(`/proc/${mainPid()}/cgroup`);
  assert(own.startsWith(`0::/user.slice/user-${uid}.slice/user@${uid}.service/app.slice/gdn.service`), `gdn runs in ${own}`);
  const h = await client.create(spec({ handle: 'v2-hello' }));
  const r = await runAndWait(client, h, { path: 'echo', args: ['Hello Rootless'] });
  eq(r.stdout, 'Hello Rootless\n', 'stdout');
  eq(r.code, 0, 'exit');
  await destroyed(h);
});

test('memory limit: memory.max in the container cgroup, an OOM exits 137, metrics report the limit', async () => {
  const h = await client.create(spec({ handle: 'v2-mem', limits: { memory_limits: { limit_in_bytes: 32 * MiB } } }));
  eq(read(`${PARENT}/v2-mem/memory.max`), String(32 * MiB), 'memory.max');
  eq(read(`${PARENT}/v2-mem/memory.swap.max`), '0', 'memory.swap.max (no swap to escape to)');
  const dd = (size: string) => ({ path: 'dd', args: ['if=/dev/zero', 'of=/dev/null', `bs=${size}`, 'count=1'] });
  eq((await runAndWait(client, h, dd('64M'))).code, 137, 'dd of 64 MiB in 32 MiB');
  eq((await runAndWait(client, h, dd('8M'))).code, 0, 'dd of 8 MiB');
  assert(Number(read(`${PARENT}/v2-mem/memory.events`).match(/oom_kill (\d+)/)?.[1]) >= 1, 'memory.events counts the OOM kill');
  const m = await client.metrics(h);
  eq(Number(m.MemoryStat.hierarchical_memory_limit), 32 * MiB, 'metrics hierarchical_memory_limit');
  assert(Number(m.MemoryStat.TotalUsageTowardLimit) > 0, 'metrics memory usage > 0');
  await destroyed(h);
});

test('pid limit: a fork bomb is held at pids.max, metrics report it, the host is unharmed', async () => {
  const h = await client.create(spec({ handle: 'v2-pids', limits: { pid_limits: { max: 24 } } }));
  eq(read(`${PARENT}/v2-pids/pids.max`), '24', 'pids.max');
  const bomb = await client.run(h, sh('b() { b | b & }; b; sleep 30'), {});
  bomb.detach();
  assert(await eventually(() => Number(read(`${PARENT}/v2-pids/pids.events`).match(/max (\d+)/)?.[1]) > 0, 20_000), 'pids.events max > 0 (forks refused)');
  const m = await client.metrics(h);
  eq(Number(m.PidStat.Max), 24, 'metrics PidStat.Max');
  assert(Number(m.PidStat.Current) <= 24 && Number(m.PidStat.Current) > 10, `metrics PidStat.Current ${m.PidStat.Current}`);
  // The host still forks: a process of ours outside the container.
  eq(spawnSync('true').status, 0, 'a fork on the host');
  await client.stop(h, true);
  await destroyed(h);
  // destroy replies at the journal (issue #10): the cgroup goes with the teardown
  assert(await eventually(() => !existsSync(`${PARENT}/v2-pids`), 30_000), 'the fork bomb cgroup is gone');
});

test('cpu limit: shares become cpu.weight, and metrics report the cpu used', async () => {
  const h = await client.create(spec({ handle: 'v2-cpu', limits: { cpu_limits: { limit_in_shares: 512 } } }));
  // runc's conversion of shares to weight: 1 + ((shares - 2) * 9999) / 262142.
  eq(read(`${PARENT}/v2-cpu/cpu.weight`), String(1 + Math.floor(((512 - 2) * 9999) / 262142)), 'cpu.weight');
  eq((await runAndWait(client, h, sh('i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'))).code, 0, 'busy loop');
  const m = await client.metrics(h);
  assert(Number(m.CPUStat.Usage) > 0 && Number(m.CPUStat.User) + Number(m.CPUStat.System) > 0, `metrics CPUStat ${JSON.stringify(m.CPUStat)}`);
  eq(Number((await client.currentCPULimits(h)).limit_in_shares), 512, 'limit_in_shares reported');
  await destroyed(h);
});

test('destroy leaves no cgroup: the container cgroup goes, the parent keeps only what it had', async () => {
  const before = readdirSync(PARENT).filter((n) => !n.startsWith('cgroup.') && existsSync(join(PARENT, n, 'cgroup.procs'))).sort();
  const h = await client.create(spec({ handle: 'v2-destroy', limits: { memory_limits: { limit_in_bytes: 64 * MiB }, pid_limits: { max: 50 } } }));
  const p = await client.run(h, sh('sleep 300 & sleep 300'), {});
  p.detach();
  assert(await eventually(() => read(`${PARENT}/v2-destroy/cgroup.procs`).split('\n').length >= 3, 10_000), 'processes in the container cgroup');
  await destroyed(h);
  // destroy replies at the journal (issue #10): the cgroup goes with the teardown
  assert(await eventually(() => !existsSync(`${PARENT}/v2-destroy`), 30_000), `${PARENT}/v2-destroy still exists`);
  const after = readdirSync(PARENT).filter((n) => !n.startsWith('cgroup.') && existsSync(join(PARENT, n, 'cgroup.procs'))).sort();
  eq(after.join(','), before.join(','), 'child cgroups of the parent');
});

test('restart survival: kill -9 of gdn.service, systemd restarts it, the process and its output are kept', async () => {
  const h = await client.create(spec({ handle: 'v2-restart', limits: { memory_limits: { limit_in_bytes: 64 * MiB } } }));
  const p = await client.run(h, sh('echo before; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo after; exit 7'), {});
  const id = p.id;
  await sleep(500);
  p.detach();
  const old = mainPid();
  process.kill(old, 'SIGKILL');
  assert(await eventually(() => { const n = mainPid(); return n !== 0 && n !== old; }, 30_000), 'systemd started gdn again');
  // A new client each try: the new gdn makes its socket again when it listens.
  assert(await eventually(async () => { client = new GardenClient(TARGET); await client.ping(); return true; }, 60_000, 500), 'the new gdn answers');
  assert(Number(systemctl('show', '-p', 'NRestarts', '--value', 'gdn')) >= 1, 'NRestarts >= 1');
  eq((await client.list()).includes(h), true, 'the container is listed after the restart');
  eq(read(`${PARENT}/v2-restart/memory.max`), String(64 * MiB), 'its cgroup and limit are untouched');
  eq((await runAndWait(client, h, sh('touch /tmp/go'))).code, 0, 'a new process in the container');
  let out = '';
  const again = await client.attach(h, id, { stdout: new (await import('node:stream')).Writable({ write(c, _e, cb) { out += c.toString(); cb(); } }) });
  eq(await again.wait(), 7, 'the exit status of the process started before the kill');
  eq(out, 'before\nafter\n', 'its output, before and after the kill');
  await destroyed(h);
});

test('net-in and net-out in the guest: a mapped port reaches the container; a rule opens the way out', async () => {
  assert(GW !== '', 'TRELLIS_GW is set');
  const srv = await guestTcp('pong');
  try {
    const h = await client.create(spec({ handle: 'v2-net' }));
    const tcp = async () => {
      const r = await runAndWait(client, h, sh(`echo hi | nc -w 3 ${GW} ${srv.port}`));
      return r.stdout === 'pong\n' ? 'open' : `closed (exit ${r.code}, ${r.stderr.trim()})`;
    };
    assert((await tcp()) !== 'open', 'the guest port before any rule');
    await client.netOut(h, { protocol: 1, networks: [{ start: GW, end: GW }], ports: [{ start: srv.port, end: srv.port }] });
    eq(await tcp(), 'open', 'net-out after the rule');
    const serve = await client.run(h, sh("printf '#!/bin/sh\\necho hello-from-the-container\\n' > /tmp/hello.sh && chmod +x /tmp/hello.sh && exec nc -ll -p 8080 -e /tmp/hello.sh"), {});
    serve.detach();
    assert((await runAndWait(client, h, sh("for i in $(seq 100); do netstat -tln | grep -q ':8080 ' && exit 0; sleep 0.1; done; exit 1"))).code === 0, 'nc listening');
    const { host_port: hostPort } = await client.netIn(h, 0, 8080);
    const info = await client.info(h);
    eq((await connectRead(info.ExternalIP, hostPort)).trim(), 'hello-from-the-container', `net-in ${info.ExternalIP}:${hostPort}`);
    await destroyed(h);
  } finally {
    srv.close();
  }
});

test('gdn by hand outside a delegated cgroup refuses, naming the exact fix', async () => {
  // This process runs where guest-main put it (a system service's cgroup, as a login
  // shell would be a session scope): not the user's to delegate.
  const own = read('/proc/self/cgroup');
  assert(!own.includes(`user@${uid}.service`), `the suite runs in ${own}`);
  const dir = mkdtempSync('/tmp/gdn-byhand-');
  const r = spawnSync(GDN, ['server', '--bind-socket', join(dir, 'sock'), '--depot', join(dir, 'depot')], { encoding: 'utf8', timeout: 60_000 });
  eq(r.status, 1, `exit status (stderr: ${r.stderr})`);
  assert(r.stderr.includes('on cgroup v2 gdn must run inside a cgroup subtree delegated to uid'), `why: ${r.stderr}`);
  assert(r.stderr.includes("'systemctl --user start gdn'") && r.stderr.includes("'systemd-run --user --scope -p Delegate=yes gdn server ...'"), `fix: ${r.stderr}`);
  assert(!existsSync(join(dir, 'sock')), 'it did not listen');
});

test('gdn by hand in a delegated scope (the fix it names): limits work beside the unit', async () => {
  const dir = mkdtempSync('/tmp/gdn-scope-');
  const sock = join(dir, 'sock');
  const child = spawn('systemd-run', ['--user', '--scope', '-p', 'Delegate=yes', '--quiet', GDN, 'server', '--bind-socket', sock, '--depot', join(dir, 'depot')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d.toString()));
  try {
    assert(await eventually(() => existsSync(sock), 60_000, 500), `the scoped gdn listens (stderr: ${err})`);
    const c = new GardenClient(sock);
    await c.ping();
    const h = await c.create(spec({ handle: 'v2-scope', limits: { memory_limits: { limit_in_bytes: 48 * MiB } } }));
    eq(read(`${PARENT}/v2-scope/memory.max`), String(48 * MiB), 'memory.max of its container');
    const own = read(`/proc/${child.pid}/cgroup`);
    assert(/app\.slice\/run-[^/]+\.scope$/.test(own), `the scoped gdn runs in ${own}`);
    await c.destroy(h);
    // destroy replies at the journal (issue #10): the cgroup goes with the teardown
  assert(await eventually(() => !existsSync(`${PARENT}/v2-scope`), 30_000), 'its container cgroup is gone');
  } finally {
    child.kill('SIGTERM');
    await eventually(() => child.exitCode !== null || child.signalCode !== null, 15_000);
  }
});

// ---------------------------------------------------------------------------

let passed = 0;
let failed = 0;
const only = process.argv[2];
for (const [name, f] of tests) {
  if (only !== undefined && !name.includes(only)) continue;
  const t0 = Date.now();
  try {
    await f();
    passed++;
    console.log(`ok - ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (err) {
    failed++;
    console.log(`not ok - ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${(err as Error).stack ?? err}`);
  }
}
void gid;
void writeFileSync;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
