// Processes with their own image (Garden's "peas"), as the ordinary user: own rootfs,
// the sandbox's namespaces but its own mount namespace, users from the pea's own
// /etc/passwd, shared /etc/hosts and /etc/resolv.conf, I/O, signals, attach, errors
// that leave nothing behind, destroy, restart, and limits of its own with metrics.

import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { ExecutableNotFound } from '../../src/errors.js';
import type { GardenClient } from '../../src/client/client.js';
import {
  cleanupServer, Collector, dumpLogsIfFailed, eventually, processes, restartServer, runAndWait, runtimeDir, type Server, sh, sleep, spec,
  startServer, STORE, teardownFinished, teardownsFinished,
} from './harness.js';
import { busyboxLayerEntries, type Entry, rootfsTarball } from './images.js';

const PEA_PASSWD =
  'root:x:0:0:root:/root:/bin/sh\n' +
  'operator:x:11:0:operator:/root:/bin/sh\n' +
  'peauser:x:4242:4243:only in the pea:/home/peauser:/bin/sh\n';
const PEA_GROUP = 'root:x:0:\npeagroup:x:4243:\n';

/** The pea's image: busybox, its own users, an os-release that says whose it is. */
function peaEntries(): Entry[] {
  const base = busyboxLayerEntries().filter((e) => e.name !== 'etc/passwd' && e.name !== 'etc/group');
  return [
    ...base,
    ...['dd', 'tty', 'stty', 'seq', 'sh'].filter((a) => !base.some((e) => e.name === `bin/${a}`))
      .map((a): Entry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
    { name: 'etc/passwd', type: 'file', content: PEA_PASSWD },
    { name: 'etc/group', type: 'file', content: PEA_GROUP },
    { name: 'etc/os-release', type: 'file', content: 'NAME="Pea Linux"\n' },
  ];
}

const uid = process.getuid?.() ?? 0;
const MEMORY_CGROUP = `/sys/fs/cgroup/memory/garden/${uid}`;
const MiB = 1024 * 1024;

/** Pea images (p-<hex>) and pea cgroups the store and the user's cgroup tree hold now. */
async function peaTraces(): Promise<string[]> {
  const out: string[] = [];
  for (const n of await readdir(join(STORE, 'images')).catch(() => [] as string[])) if (/^p-[0-9a-f]{40}$/.test(n)) out.push(`image ${n}`);
  const walk = async (dir: string, depth: number): Promise<void> => {
    for (const n of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (!n.isDirectory()) continue;
      if (/^p-[0-9a-f]{40}$/.test(n.name)) out.push(`cgroup ${join(dir, n.name)}`);
      if (depth > 0) await walk(join(dir, n.name), depth - 1);
    }
  };
  if (existsSync(MEMORY_CGROUP)) await walk(MEMORY_CGROUP, 1);
  return out;
}

async function noPeaTraces(ms = 10_000): Promise<string[]> {
  let last: string[] = [];
  await eventually(async () => (last = await peaTraces()).length === 0, ms, 200);
  return last;
}

const readlinkNs = async (client: GardenClient, h: string, ns: string, image?: string) => {
  const r = await runAndWait(client, h, { path: 'readlink', args: [`/proc/self/ns/${ns}`], ...(image ? { image: { uri: image } } : {}) });
  expect(r.code, `readlink ${ns} (${image ? 'pea' : 'sandbox'}): ${r.stderr}`).to.equal(0);
  return r.stdout.trim();
};

describe('peas: processes with their own image (integration)', function () {
  let server: Server;
  let dir: string;
  let image: string;
  /** An image with no /etc/passwd or /etc/group at all. */
  let noPasswd: string;
  let h: string;
  const pea = (s: Parameters<GardenClient['run']>[1]) => ({ ...s, image: { uri: image } });

  before(async function () {
    dir = await mkdtemp(join(runtimeDir(), 'peas-'));
    image = join(dir, 'pea.tar');
    await rootfsTarball(image, peaEntries());
    noPasswd = join(dir, 'no-passwd.tar');
    await rootfsTarball(noPasswd, peaEntries().filter((e) => e.name !== 'etc/passwd' && e.name !== 'etc/group'));
    server = await startServer();
    h = await server.client.create(spec({ handle: 'pea-main', env: ['FROM_SANDBOX=1'] }));
  });

  after(async function () {
    await cleanupServer(server);
    await rm(dir, { recursive: true, force: true });
  });

  afterEach(async function () {
    dumpLogsIfFailed(this, server);
    // Issue #10: teardowns run on after destroy replied; the next test's "nothing left" starts here.
    expect(await teardownsFinished(server.depot), 'teardowns finished').to.equal(true);
  });

  it('runs in its own rootfs, with its image env and the spec env, not the sandbox env', async function () {
    const r = await runAndWait(server.client, h, pea(sh('cat /etc/os-release; echo "sandbox=${FROM_SANDBOX:-no} own=$OWN"', { env: ['OWN=yes'] })));
    expect(r).to.include({ code: 0, stdout: 'NAME="Pea Linux"\nsandbox=no own=yes\n' });
    const plain = await runAndWait(server.client, h, { path: 'cat', args: ['/etc/os-release'] });
    expect(plain.stdout, 'the sandbox has its own (or none)').to.not.include('Pea Linux');
    // its writable layer is its own
    await runAndWait(server.client, h, pea(sh('echo mine > /tmp/written')));
    expect((await runAndWait(server.client, h, sh('cat /tmp/written'))).code).to.not.equal(0);
  });

  it('shares the sandbox user, network, ipc, uts and pid namespaces, with a mount namespace of its own', async function () {
    for (const ns of ['user', 'net', 'ipc', 'uts', 'pid']) {
      expect(await readlinkNs(server.client, h, ns, image), ns).to.equal(await readlinkNs(server.client, h, ns));
    }
    expect(await readlinkNs(server.client, h, 'mnt', image)).to.not.equal(await readlinkNs(server.client, h, 'mnt'));
    // same id maps: the pea's root is the sandbox's root
    const maps = (await runAndWait(server.client, h, pea({ path: 'cat', args: ['/proc/self/uid_map', '/proc/self/gid_map'] }))).stdout;
    expect(maps).to.equal((await runAndWait(server.client, h, { path: 'cat', args: ['/proc/self/uid_map', '/proc/self/gid_map'] })).stdout);
    // one pid namespace: the sandbox sees the pea's process
    const p = await server.client.run(h, pea({ path: 'sleep', args: ['37'] }), {});
    try {
      const ps = await runAndWait(server.client, h, sh('ps -o args'));
      expect(ps.stdout).to.include('sleep 37');
    } finally {
      await p.signal(1);
      await p.wait();
    }
  });

  it('runs as 0:0 by default, as uid:gid, or as a user of its own /etc/passwd; working dir / by default', async function () {
    expect((await runAndWait(server.client, h, pea(sh('echo -n $(id -u):$(id -g)')))).stdout).to.equal('0:0');
    expect((await runAndWait(server.client, h, pea(sh('echo -n $(id -u):$(id -g)', { user: '1001:1002' })))).stdout).to.equal('1001:1002');
    expect((await runAndWait(server.client, h, pea(sh('echo -n $(id -u):$(id -g); whoami', { user: 'operator' })))).stdout).to.equal('11:0operator\n');
    // peauser exists only in the pea's image, not in the sandbox's
    expect((await runAndWait(server.client, h, pea(sh('echo -n $(id -u):$(id -g):$USER', { user: 'peauser' })))).stdout).to.equal('4242:4243:peauser');
    expect((await runAndWait(server.client, h, pea({ path: 'pwd' }))).stdout).to.equal('/\n');
    expect((await runAndWait(server.client, h, pea({ path: 'pwd', user: 'peauser' }))).stdout, 'not the home dir').to.equal('/\n');
    expect((await runAndWait(server.client, h, pea({ path: 'pwd', dir: '/tmp' }))).stdout).to.equal('/tmp\n');
    // without an /etc/passwd, root still works; uid:gid too
    expect((await runAndWait(server.client, h, { ...sh('echo -n $(id -u):$(id -g)'), user: 'root', image: { uri: noPasswd } })).stdout).to.equal('0:0');
    expect((await runAndWait(server.client, h, { ...sh('echo -n $(id -u):$(id -g)'), user: '7:8', image: { uri: noPasswd } })).stdout).to.equal('7:8');
  });

  it('reports exit codes and keeps stdout and stderr apart', async function () {
    expect((await runAndWait(server.client, h, pea(sh('exit 123')))).code).to.equal(123);
    const r = await runAndWait(server.client, h, pea(sh('echo stdout && echo stderr >&2')));
    expect(r).to.include({ code: 0, stdout: 'stdout\n', stderr: 'stderr\n' });
  });

  it('takes stdin and a TTY', async function () {
    const r = await runAndWait(server.client, h, pea({ path: 'sh', args: ['-c', 'cat; echo end'] }), 'from stdin\n');
    expect(r).to.include({ code: 0, stdout: 'from stdin\nend\n' });
    const t = await runAndWait(server.client, h, pea({ path: 'sh', args: ['-c', '[ -t 0 ] && [ -t 1 ] && tty'], tty: { window_size: { columns: 90, rows: 30 } } }));
    expect(t.code).to.equal(0);
    expect(t.stdout).to.match(/^\/dev\/pts\/\d+\r?\n$/);
    // an interactive shell on the pea's pty: the size given, then a resize
    const stdout = new Collector();
    const stdin = new PassThrough();
    const p = await server.client.run(h, pea({ path: 'sh', args: [], tty: { window_size: { columns: 100, rows: 40 } } }), { stdin, stdout, stderr: new Collector() });
    stdin.write('stty size; echo first-done\n');
    await stdout.waitFor('\nfirst-done\r\n');
    await p.setTTY({ window_size: { columns: 132, rows: 50 } });
    stdin.write('stty size; exit 4\n');
    expect(await p.wait()).to.equal(4);
    expect(stdout.text()).to.include('40 100\r\n');
    expect(stdout.text()).to.include('50 132\r\n');
  });

  it('binds the sandbox /etc/hosts and /etc/resolv.conf: an edit in the pea shows in the sandbox', async function () {
    for (const file of ['/etc/hosts', '/etc/resolv.conf']) {
      const before = (await runAndWait(server.client, h, { path: 'cat', args: [file] })).stdout;
      expect((await runAndWait(server.client, h, pea({ path: 'cat', args: [file] }))).stdout, file).to.equal(before);
      expect((await runAndWait(server.client, h, pea(sh(`echo pea-was-here >> ${file}`)))).code).to.equal(0);
      expect((await runAndWait(server.client, h, { path: 'cat', args: [file] })).stdout, file).to.equal(`${before}pea-was-here\n`);
    }
  });

  it('is signalled like any process, and attach by id gets its output and exit code', async function () {
    const out = new Collector();
    const p = await server.client.run(h, pea(sh("trap 'echo termed; exit 42' TERM; while true; do echo waiting; sleep 0.2; done")), { stdout: out, stderr: new Collector() });
    expect(await eventually(() => out.text().includes('waiting'), 10_000)).to.equal(true);
    await p.signal(0);
    expect(await p.wait()).to.equal(42);
    expect(out.text()).to.include('termed');

    const d = await server.client.run(h, pea({ id: 'pea-attach', ...sh('echo early; sleep 1; echo late; exit 9') }), {});
    d.detach();
    expect((await server.client.info(h)).ProcessIDs).to.include('pea-attach');
    const again = new Collector();
    const a = await server.client.attach(h, 'pea-attach', { stdout: again, stderr: new Collector() });
    expect(await a.wait()).to.equal(9);
    expect(again.text()).to.equal('early\nlate\n');
  });

  it('refuses a missing executable, a missing image and an unknown user with a Garden error, leaving nothing behind', async function () {
    expect(await noPeaTraces(), 'pea traces before').to.deep.equal([]);
    const processDirs = async () => readdir(join(server.depot, 'pea-main', 'processes'));
    const before = new Set(await processDirs());
    const fail = async (s: Parameters<GardenClient['run']>[1]) => {
      try {
        await server.client.run(h, s, {});
      } catch (err) {
        return err as Error;
      }
      throw new Error('run succeeded');
    };
    const noExe = await fail(pea({ id: 'pea-noexe', path: 'does-not-exist' }));
    expect(noExe).to.be.instanceOf(ExecutableNotFound);
    expect(noExe.message).to.include('executable file not found in $PATH');
    const noExeUser = await fail(pea({ id: 'pea-noexe-user', path: 'does-not-exist', user: 'peauser' }));
    expect(noExeUser, 'as a non-root user').to.be.instanceOf(ExecutableNotFound);
    const noImage = await fail({ id: 'pea-noimage', path: 'true', image: { uri: join(dir, 'no-such-image.tar') } });
    expect(noImage.message).to.match(/no-such-image\.tar/);
    const noUser = await fail(pea({ id: 'pea-nouser', path: 'true', user: 'alice' }));
    expect(noUser.message).to.include('unable to find user alice: no matching entries in passwd file');
    const noUserNoPasswd = await fail({ id: 'pea-nouser2', path: 'true', user: 'operator', image: { uri: noPasswd } });
    expect(noUserNoPasswd.message).to.include('unable to find user operator: no matching entries in passwd file');
    expect(await noPeaTraces(), 'pea images or cgroups left').to.deep.equal([]);
    expect((await processDirs()).filter((d) => !before.has(d)), 'process dirs left').to.deep.equal([]);
    expect((await server.client.info(h)).ProcessIDs).to.not.include.members(['pea-noexe', 'pea-noexe-user', 'pea-noimage', 'pea-nouser', 'pea-nouser2']);
    const monitors = (await processes()).filter((x) => x.state !== 'Z' && /pea-no(exe|image|user)/.test(x.cmdline.join(' ')));
    expect(monitors, 'conmon or runc left for a failed pea').to.deep.equal([]);
    // the sandbox still runs processes, and ids of failed runs are free again
    expect((await runAndWait(server.client, h, pea({ id: 'pea-noexe', path: 'true' }))).code).to.equal(0);
  });

  it('refuses a pea in a container whose init has died, never joining whatever process has its pid now', async function () {
    const dead = await server.client.create(spec({ handle: 'pea-dead-init' }));
    const { readFile } = await import('node:fs/promises');
    const record = JSON.parse(await readFile(join(server.depot, dead, 'container.json'), 'utf8')) as { initPid: number };
    process.kill(record.initPid, 'SIGKILL');
    expect(await eventually(() => !existsSync(`/proc/${record.initPid}`), 10_000), 'init gone').to.equal(true);
    const err = await server.client.run(dead, pea({ id: 'pea-orphan', path: 'true' }), {}).then(() => null, (e: unknown) => e as Error);
    expect(err, 'run succeeded').to.be.instanceOf(Error);
    expect(err!.message).to.include('is not running: its init process is gone');
    expect(await noPeaTraces(), 'pea images or cgroups left').to.deep.equal([]);
    await server.client.destroy(dead);
  });

  it('takes an exited pea down at once: its rootfs and cgroup go, its output stays', async function () {
    const r = await runAndWait(server.client, h, pea({ id: 'pea-gone', path: 'echo', args: ['bye'] }));
    expect(r).to.include({ code: 0, stdout: 'bye\n' });
    expect(await noPeaTraces(), 'pea images or cgroups left after exit').to.deep.equal([]);
  });

  it('destroy kills every pea (its client gets 137) and removes its rootfs, cgroup and monitor', async function () {
    const c = await server.client.create(spec({ handle: 'pea-destroy' }));
    const p = await server.client.run(c, pea({ path: 'sleep', args: ['10000'] }), { stdout: new Collector(), stderr: new Collector() });
    const p2 = await server.client.run(c, pea({ path: 'sleep', args: ['10001'], limits: { memory_limits: { limit_in_bytes: 64 * MiB } } }), {});
    p2.detach();
    expect((await peaTraces()).length, 'two pea images and cgroups while they run').to.be.greaterThan(1);
    const code = p.wait();
    await server.client.destroy(c);
    expect(await code).to.equal(137);
    expect(await teardownFinished(c, server.depot), 'teardown finished').to.equal(true);
    expect(await noPeaTraces(), 'pea images or cgroups left after destroy').to.deep.equal([]);
    expect(existsSync(join(server.depot, 'pea-destroy')), 'depot entry').to.equal(false);
    expect(existsSync(join(MEMORY_CGROUP, 'pea-destroy')), 'sandbox cgroup').to.equal(false);
    const left = (await processes()).filter((x) => x.state !== 'Z' && /sleep 1000[01]/.test(x.cmdline.join(' ')));
    expect(left, 'pea processes left').to.deep.equal([]);
  });

  it('shares the container memory limit unless it overrides it; an overriding pea has its own limit and metrics', async function () {
    this.timeout(120_000);
    const c = await server.client.create(spec({ handle: 'pea-limits', limits: { memory_limits: { limit_in_bytes: 32 * MiB }, pid_limits: { max: 20 } } }));
    // tmpfs pages count against the memory cgroup they were written from
    const fill = (mb: number) => sh(`dd if=/dev/zero of=/dev/shm/fill bs=1M count=${mb} 2>&1; rc=$?; rm -f /dev/shm/fill; exit $rc`);
    expect((await runAndWait(server.client, c, pea(fill(8)))).code, 'within the container limit').to.equal(0);
    expect((await runAndWait(server.client, c, pea(fill(48)))).code, 'beyond the container limit').to.not.equal(0);
    expect((await runAndWait(server.client, c, pea({ ...fill(48), limits: {} }))).code, 'empty override: not limited by the container').to.equal(0);
    const own = await runAndWait(server.client, c, pea({ ...fill(24), limits: { memory_limits: { limit_in_bytes: 16 * MiB } } }));
    expect(own.code, 'its own 16 MiB limit').to.not.equal(0);
    // the container's pid limit (20) holds a sharing pea, not an overriding one
    const forks = (limits?: object) => pea({ ...sh('for i in $(seq 30); do sleep 5 & done 2>/dev/null; jobs -p > /tmp/jobs; while read p; do kill $p; done < /tmp/jobs; wait; wc -l < /tmp/jobs'), ...(limits ? { limits } : {}) });
    expect(Number((await runAndWait(server.client, c, forks())).stdout.trim()), 'sharing pea').to.be.lessThan(20);
    expect(Number((await runAndWait(server.client, c, forks({}))).stdout.trim()), 'overriding pea').to.equal(30);

    // a pea sharing the container's limits is still reported under its own id
    const shared = new Collector();
    const sp = await server.client.run(c, pea({ id: 'pea-shared-metrics', ...sh('echo started; while true; do ls -la / >/dev/null; sleep 0.05; done') }), { stdout: shared, stderr: new Collector() });
    expect(await eventually(() => shared.text().includes('started'), 10_000)).to.equal(true);
    expect(await eventually(async () => {
      const e = (await server.client.bulkMetrics(['pea-shared-metrics']))['pea-shared-metrics'];
      return e !== undefined && !e.Err && Number(e.Metrics.MemoryStat.TotalUsageTowardLimit) > 0;
    }, 15_000), 'TotalUsageTowardLimit of a sharing pea').to.equal(true);
    await sp.signal(1);
    expect(await sp.wait()).to.equal(137);

    // bulk metrics take the pea's process id as a handle
    const out = new Collector();
    const p = await server.client.run(c, pea({ id: 'pea-metrics', ...sh('echo started; while true; do ls -la / >/dev/null; sleep 0.05; done'), limits: { memory_limits: { limit_in_bytes: 20 * MiB } } }), { stdout: out, stderr: new Collector() });
    expect(await eventually(() => out.text().includes('started'), 10_000)).to.equal(true);
    let usage = 0;
    let limit = 0;
    expect(await eventually(async () => {
      const m = await server.client.bulkMetrics(['pea-metrics']);
      const e = m['pea-metrics'];
      if (e === undefined || e.Err) return false;
      usage = Number(e.Metrics.MemoryStat.TotalUsageTowardLimit);
      limit = Number(e.Metrics.MemoryStat.hierarchical_memory_limit);
      return usage > 0;
    }, 15_000)).to.equal(true);
    expect(limit).to.equal(20 * MiB);
    await p.signal(1);
    expect(await p.wait()).to.equal(137);
    await server.client.destroy(c);
    expect(await teardownFinished(c, server.depot), 'teardown finished').to.equal(true);
    expect(await noPeaTraces()).to.deep.equal([]);
  });

  it('a restart keeps running peas attached and takes down the ones that finished meanwhile', async function () {
    this.timeout(120_000);
    const c = await server.client.create(spec({ handle: 'pea-restart' }));
    const long = await server.client.run(c, pea({ id: 'pea-long', ...sh("trap 'echo termed; exit 5' TERM; echo one; while true; do sleep 0.1; done") }), {});
    long.detach();
    const short = await server.client.run(c, pea({ id: 'pea-short', ...sh('sleep 1; echo short done; exit 3') }), {});
    short.detach();
    await sleep(300);
    await server.kill9();
    await sleep(2000);
    server = await restartServer(server);
    // the finished one: output and exit code kept, its rootfs and cgroup taken down
    const so = new Collector();
    const s = await server.client.attach(c, 'pea-short', { stdout: so, stderr: new Collector() });
    expect(await s.wait()).to.equal(3);
    expect(so.text()).to.equal('short done\n');
    expect(await eventually(async () => (await peaTraces()).filter((t) => t.startsWith('image')).length === 1, 10_000), 'only the running pea keeps an image').to.equal(true);
    // the running one: attach, signal it, get all its output and its exit code
    const lo = new Collector();
    const l = await server.client.attach(c, 'pea-long', { stdout: lo, stderr: new Collector() });
    expect(await eventually(() => lo.text() === 'one\n', 10_000)).to.equal(true);
    await l.signal(0);
    expect(await l.wait()).to.equal(5);
    expect(lo.text()).to.equal('one\ntermed\n');
    expect(await noPeaTraces()).to.deep.equal([]);
    await server.client.destroy(c);
  });
});
