// Containers and processes outlive the daemon: kill -9 the server while a
// process is writing, start a new one on the same depot and socket, and
// everything is still there: containers, properties, grace times, unread
// output and real exit codes.

import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ContainerNotFound } from '../../src/errors.js';
import { gateId } from '../../plugins/networker/networker.js';
import { intToIp, ipToInt, loadUserNetwork } from '../../plugins/networker/config.js';
import {
  cleanupServer, Collector, dumpLogsIfFailed, eventually, leftovers, monitorsMentioning, PATHS, processes, restartServer, runAndWait, SECOND,
  type Server, sh, sleep, spec, startServer,
} from './harness.js';

const NET = loadUserNetwork(process.getuid?.() ?? 0);

/** The directories of a cgroup path in every hierarchy mounted under /sys/fs/cgroup (v1 controllers, v2). */
function cgroupDirs(path: string): string[] {
  const roots = ['/sys/fs/cgroup', ...readdirSync('/sys/fs/cgroup').map((e) => join('/sys/fs/cgroup', e))];
  return roots.map((r) => join(r, path)).filter((d) => existsSync(d));
}

/** Host links by index (ip -j link). */
function linkIndexes(): Set<number> {
  return new Set((JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { ifindex: number }[]).map((l) => l.ifindex));
}

describe('restart (integration)', function () {
  let server: Server | undefined;
  let first: Server | undefined;
  // The newest server per dir: the one to clean up with (it restarts a dead one to destroy what is left).
  const latest = new Map<string, Server>();
  const track = (s: Server): Server => {
    latest.set(s.dir, s);
    return s;
  };

  after(async function () {
    for (const s of latest.values()) await cleanupServer(s);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, first);
    if (server !== first) dumpLogsIfFailed(this, server);
  });

  it('kill -9 mid-output, restart: containers, properties, grace time, unread output and exit codes survive', async function () {
    this.timeout(120_000);
    // A default grace time of 2 s makes a lost per-container grace time (1 h) visible: the container would be reaped.
    first = track(await startServer({ defaultGraceTime: '2s' }));
    server = first;
    const c = first.client;
    const h = await c.create(spec({ handle: 'rs-main', grace_time: 3600 * SECOND, properties: { owner: 'restart-test', 'a b': 'c&d' } }));
    const idle = await c.create(spec({ handle: 'rs-idle', grace_time: 3600 * SECOND }));

    const p1 = await c.run(h, { id: 'rs-p1', ...sh('for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done; exit 7') }, {});
    p1.detach();
    const p2 = await c.run(h, { id: 'rs-p2', ...sh('echo a; echo a-err >&2; sleep 4; echo b; exit 8') }, {});
    p2.detach();
    await sleep(300);

    await first.kill9();
    expect(first.running()).to.equal(false);
    const monitors = await monitorsMentioning(h);
    expect(monitors.length, 'conmon/runc monitors for the container still alive with the server dead').to.be.greaterThan(0);

    server = track(await restartServer(first));
    const t0 = Date.now();
    const c2 = server.client;
    expect(await c2.list()).to.include.members([h, idle]);
    expect(await c2.properties(h)).to.include({ owner: 'restart-test', 'a b': 'c&d' });
    expect(await c2.list({ owner: 'restart-test' })).to.deep.equal([h]);
    expect((await c2.info(h)).State).to.equal('active');

    // p2 is still running: attach gets what it wrote while nobody read it, then the rest.
    const out2 = new Collector();
    const err2 = new Collector();
    const a2 = await c2.attach(h, 'rs-p2', { stdout: out2, stderr: err2 });
    expect(await a2.wait(), 'p2 exit code').to.equal(8);
    expect(out2.text(), 'p2 stdout').to.equal('a\nb\n');
    expect(err2.text(), 'p2 stderr').to.equal('a-err\n');

    // p1 finished while the server was dead: all five lines (none read yet) and the real exit code.
    const out1 = new Collector();
    const a1 = await c2.attach(h, 'rs-p1', { stdout: out1, stderr: new Collector() });
    expect(await a1.wait(), 'p1 exit code').to.equal(7);
    expect(out1.text(), 'p1 stdout').to.equal('line1\nline2\nline3\nline4\nline5\n');

    // More than the 2 s default has passed since the new server started: the 1 h grace time was kept.
    const waited = Date.now() - t0;
    if (waited < 3500) await sleep(3500 - waited);
    expect(await c2.list(), 'rs-idle, grace time 1 h, still there after the restart').to.include(idle);

    // New work in the adopted container.
    expect(await runAndWait(c2, h, { path: 'echo', args: ['after restart'] })).to.include({ code: 0, stdout: 'after restart\n' });

    for (const handle of [h, idle]) {
      await c2.destroy(handle);
      expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    }
    const err = await c2.info(h).then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(ContainerNotFound);
  });

  it('issue 10: kill -9 of gdn takes its spawner with it; containers and their monitors stay', async function () {
    this.timeout(120_000);
    first = track(await startServer());
    server = first;
    const h = await first.client.create(spec({ handle: 'rs-spawner' }));
    const spawners = (await processes()).filter((p) => p.comm === 'trellis-spawner' && p.cmdline[1] === String(first!.proc.pid));
    expect(spawners, 'the server runs one spawner').to.have.length(1);
    const before = await monitorsMentioning(h);
    await first.kill9();
    expect(await eventually(async () => !(await processes()).some((p) => p.pid === spawners[0]!.pid && p.state !== 'Z'), 5000), 'spawner gone with gdn').to.equal(true);
    expect((await monitorsMentioning(h)).map((p) => p.pid), 'monitors alive with the server and its spawner dead').to.deep.equal(before.map((p) => p.pid));
    server = track(await restartServer(first));
    expect(await runAndWait(server.client, h, { path: 'echo', args: ['still here'] })).to.include({ code: 0, stdout: 'still here\n' });
    await server.client.destroy(h);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('a graceful stop and restart keeps containers and properties too', async function () {
    this.timeout(60_000);
    const s1 = track(await startServer());
    first = s1;
    server = s1;
    const h = await s1.client.create(spec({ handle: 'rs-graceful', properties: { kept: 'yes' } }));
    const p = await s1.client.run(h, { id: 'rs-g1', ...sh('sleep 2; echo slow; exit 6') }, {});
    p.detach();
    await s1.stop();
    server = track(await restartServer(s1));
    expect(await server.client.list()).to.include(h);
    expect(await server.client.property(h, 'kept')).to.equal('yes');
    const out = new Collector();
    const a = await server.client.attach(h, 'rs-g1', { stdout: out, stderr: new Collector() });
    expect(await a.wait()).to.equal(6);
    expect(out.text()).to.equal('slow\n');
    await server.client.destroy(h);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('issue #10: destroy, then kill -9 of gdn at once, then a restart: nothing is left (mounts, processes, veth, lease, depot, cgroup)', async function () {
    this.timeout(240_000);
    first = track(await startServer());
    server = first;
    // Killed at different points of the teardown that runs after the reply.
    for (const [i, delayMs] of [0, 40, 120].entries()) {
      const h = `rs-teardown-${i}`;
      const c = server.client;
      // An address of its own, asked for again after the restart: it is free only if the lease went.
      // (Picked at random mid-subnet: other servers of this user may share the subnet.)
      let ip = '';
      for (let attempt = 0; ip === '' && attempt < 10; attempt++) {
        const want = intToIp(ipToInt(NET.subnet.split('/')[0]!) + 100 + Math.floor(Math.random() * 120));
        try {
          await c.create(spec({ handle: h, network: want }));
          ip = want;
        } catch (err) {
          if (!/not available/.test((err as Error).message)) throw err;
        }
      }
      expect((await c.info(h)).ContainerIP, 'the container has its address').to.equal(ip);
      const p = await c.run(h, sh(`exec sleep 42${i}42`), {});
      p.detach();
      const eth0 = (await runAndWait(c, h, sh('ip link show eth0'))).stdout;
      const veth = Number(/eth0@if(\d+):/.exec(eth0)?.[1]);
      expect(linkIndexes().has(veth), `the veth (${eth0})`).to.equal(true);
      const cgroupsPath = (JSON.parse(readFileSync(join(server.depot, h, 'config.json'), 'utf8')) as { linux?: { cgroupsPath?: string } }).linux?.cgroupsPath;
      const cgroups = cgroupsPath === undefined ? [] : cgroupDirs(cgroupsPath);
      if (cgroupsPath !== undefined) expect(cgroups, `cgroup ${cgroupsPath}`).to.not.deep.equal([]);
      const sleeping = async () => (await processes()).filter((x) => x.state !== 'Z' && x.cmdline.join(' ') === `sleep 42${i}42`);
      expect(await sleeping(), 'the container process runs').to.have.length(1);
      const state = join(PATHS.runtimeDir, 'network', `${gateId(h)}.json`);
      expect(existsSync(state), 'networker state').to.equal(true);

      await c.destroy(h);
      if (delayMs > 0) await sleep(delayMs);
      await server.kill9();
      // (at once, the teardown cannot have finished: the kill really lands in the middle of it)
      if (delayMs === 0) expect(existsSync(join(server.depot, h)), 'depot entry at the kill').to.equal(true);
      server = track(await restartServer(server));

      expect(await server.client.list({ 'garden.state': 'all' }), 'after the restart').to.not.include(h);
      expect(await leftovers(h, { depot: server.depot }), `killed ${delayMs} ms after the reply`).to.deep.equal([]);
      expect(await sleeping(), 'container processes').to.deep.equal([]);
      expect(linkIndexes().has(veth), 'the veth').to.equal(false);
      expect(existsSync(state), 'networker state').to.equal(false);
      expect(cgroups.filter((d) => existsSync(d)), 'cgroups').to.deep.equal([]);
      // The address's lease went too: the same address can be had again.
      const again = await server.client.create(spec({ handle: `${h}-again`, network: ip }));
      expect((await server.client.info(again)).ContainerIP).to.equal(ip);
      await server.client.destroy(again);
    }
    expect(first.running()).to.equal(false);
  });

  it('issue #10: a graceful stop right after destroy finishes the teardown before gdn exits', async function () {
    this.timeout(60_000);
    first = track(await startServer());
    server = first;
    const h = await first.client.create(spec({ handle: 'rs-stop-teardown' }));
    await first.client.run(h, sh('sleep 100'), {}).then((p) => p.detach());
    await first.client.destroy(h);
    await first.stop(); // SIGTERM, and wait for the exit
    const logs = first.logs();
    expect(logs.indexOf('"msg":"stopping"'), 'gdn logged its stop').to.be.greaterThan(-1);
    // (the stop comes at once: the teardown was still running when it arrived)
    expect(logs.indexOf('"msg":"destroy.finished"'), 'the teardown finished, after the stop began').to.be.greaterThan(logs.indexOf('"msg":"stopping"'));
    expect(logs.indexOf('"msg":"destroy.finished"'), 'before gdn stopped').to.be.lessThan(logs.indexOf('"msg":"stopped"'));
    // Nothing started again: the dead server left nothing.
    expect(await leftovers(h, { depot: first.depot }, 3000, 0)).to.deep.equal([]);
  });

  it('finishes off a destroy (and a create) that a crash interrupted', async function () {
    first = track(await startServer());
    const c = first.client;
    await c.create(spec({ handle: 'half-destroyed' }));
    await c.run('half-destroyed', sh('sleep 100'), {}).then((p) => p.detach());
    await c.create(spec({ handle: 'half-created' }));
    await first.kill9();
    // What a crash mid-destroy and mid-create leave in the depot: the record's phase.
    const { readFile, writeFile } = await import('node:fs/promises');
    const { join } = await import('node:path');
    for (const [h, phase] of [['half-destroyed', 'destroying'], ['half-created', 'creating']] as const) {
      const file = join(first.depot, h, 'container.json');
      const rec = JSON.parse(await readFile(file, 'utf8')) as { phase: string };
      rec.phase = phase;
      await writeFile(file, JSON.stringify(rec));
    }
    server = track(await restartServer(first));
    const list = await server.client.list();
    expect(list).to.not.include('half-destroyed');
    expect(list).to.not.include('half-created');
    for (const h of ['half-destroyed', 'half-created']) {
      expect(await leftovers(h, { depot: server.depot }), h).to.deep.equal([]);
    }
    // and the names are free again
    await server.client.create(spec({ handle: 'half-destroyed' }));
    await server.client.destroy('half-destroyed');
  });
});
