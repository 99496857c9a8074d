// Container lifecycle against the real daemon: ping, capacity, create, list and
// its filters, info, bulk_info, properties, limits, stop, destroy, and what a
// destroyed container leaves on the host (nothing).

import { expect } from 'chai';
import { join } from 'node:path';
import { ContainerNotFound } from '../../src/errors.js';
import { GardenError } from '../../src/client/errors.js';
import {
  cleanupServer, dumpLogsIfFailed, leftovers, leftoversNow, rawRequest, runAndWait, type Server, sh, spec, startServer,
} from './harness.js';

describe('lifecycle (integration)', function () {
  let server: Server;

  before(async function () {
    server = await startServer({ maxContainers: 250 });
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('answers ping with {} on the unix socket', async function () {
    await server.client.ping();
    const r = await rawRequest(server.socketPath, 'GET', '/ping');
    expect(r?.status).to.equal(200);
    expect(r?.text).to.equal('{}\n');
  });

  it('reports capacity: memory, disk and the configured max_containers', async function () {
    const cap = await server.client.capacity();
    expect(Number(cap.memory_in_bytes), 'memory_in_bytes').to.be.greaterThan(0);
    expect(Number(cap.disk_in_bytes), 'disk_in_bytes').to.be.greaterThan(0);
    expect(Number(cap.max_containers), 'max_containers').to.equal(250);
  });

  it('creates a container with a generated, URL-safe handle and lists it', async function () {
    const handle = await server.client.create(spec());
    expect(handle).to.match(/^[A-Za-z0-9._~-]+$/);
    expect(await server.client.list()).to.include(handle);
    const r = await runAndWait(server.client, handle, { path: 'echo', args: ['alive'] });
    expect(r).to.include({ code: 0, stdout: 'alive\n' });
    await server.client.destroy(handle);
  });

  it('creates a container with a chosen handle; info shows State active, ContainerPath, Properties', async function () {
    const handle = 'life-chosen';
    expect(await server.client.create(spec({ handle, properties: { owner: 'tests', 'a b': 'c&d' } }))).to.equal(handle);
    const info = await server.client.info(handle);
    expect(info.State).to.equal('active');
    expect(info.ContainerPath).to.equal(join(server.depot, handle));
    expect(info.Properties).to.include({ owner: 'tests', 'a b': 'c&d' });
    await server.client.destroy(handle);
  });

  it('answers info with every ContainerInfo key present, in Garden casing', async function () {
    const handle = await server.client.create(spec({ handle: 'life-info-keys' }));
    const r = await rawRequest(server.socketPath, 'GET', `/containers/${handle}/info`);
    expect(r?.status).to.equal(200);
    expect(r?.text.endsWith('\n'), 'body ends with \\n').to.equal(true);
    const info = JSON.parse(r!.text) as Record<string, unknown>;
    expect(Object.keys(info)).to.have.members([
      'State', 'Events', 'HostIP', 'ContainerIP', 'ContainerIPv6', 'ExternalIP', 'ContainerPath', 'ProcessIDs',
      'Properties', 'MappedPorts',
    ]);
    await server.client.destroy(handle);
  });

  it('filters list by properties with AND semantics, exact values, encoded keys', async function () {
    const a = await server.client.create(spec({ handle: 'life-filter-a', properties: { env: 'test', tier: 'web', 'a b': 'c&d' } }));
    const b = await server.client.create(spec({ handle: 'life-filter-b', properties: { env: 'test', tier: 'db' } }));
    const c = await server.client.create(spec({ handle: 'life-filter-c' }));
    try {
      const all = await server.client.list();
      expect(all).to.include.members([a, b, c]);
      expect((await server.client.list({ env: 'test' })).sort()).to.deep.equal([a, b].sort());
      expect(await server.client.list({ env: 'test', tier: 'web' })).to.deep.equal([a]);
      expect(await server.client.list({ env: 'test', tier: 'nope' })).to.deep.equal([]);
      expect(await server.client.list({ env: 'tes' }), 'values match exactly, not by prefix').to.deep.equal([]);
      expect(await server.client.list({ 'a b': 'c&d' })).to.deep.equal([a]);
      const r = await rawRequest(server.socketPath, 'GET', '/containers?tier=nope');
      expect(r?.text, 'no match is [] not null').to.equal('{"Handles":[]}\n');
    } finally {
      for (const h of [a, b, c]) await server.client.destroy(h);
    }
  });

  it('bulk_info returns an entry per handle, with a ContainerNotFound error for a missing one', async function () {
    const h = await server.client.create(spec({ handle: 'life-bulk', properties: { k: 'v' } }));
    const entries = await server.client.bulkInfo([h, 'life-missing']);
    expect(Object.keys(entries).sort()).to.deep.equal([h, 'life-missing'].sort());
    expect(entries[h]!.Err).to.equal(null);
    expect(entries[h]!.Info.State).to.equal('active');
    expect(entries[h]!.Info.Properties).to.include({ k: 'v' });
    const missing = entries['life-missing']!;
    expect(missing.Err, 'Err for the missing handle').to.be.instanceOf(Error);
    expect(missing.Err!.message).to.equal('unknown handle: life-missing');
    expect(missing.Info.State).to.equal('');
    const empty = await rawRequest(server.socketPath, 'GET', '/containers/bulk_info?handles=');
    expect(empty?.status).to.equal(200);
    expect(empty?.text).to.equal('{}\n');
    await server.client.destroy(h);
  });

  it('gets, sets, overwrites and removes properties; a missing key is "property does not exist: k"', async function () {
    const h = await server.client.create(spec({ handle: 'life-props', properties: { initial: 'one' } }));
    expect(await server.client.property(h, 'initial')).to.equal('one');
    await server.client.setProperty(h, 'k', 'v1');
    await server.client.setProperty(h, 'k', 'v2');
    await server.client.setProperty(h, 'k/with slash', 'x y&z');
    expect(await server.client.property(h, 'k')).to.equal('v2');
    expect(await server.client.property(h, 'k/with slash')).to.equal('x y&z');
    expect(await server.client.properties(h)).to.include({ initial: 'one', k: 'v2', 'k/with slash': 'x y&z' });
    expect(await server.client.list({ k: 'v2' })).to.deep.equal([h]);

    await server.client.removeProperty(h, 'k');
    const err = await server.client.property(h, 'k').then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(GardenError);
    expect((err as Error).message).to.equal('property does not exist: k');
    expect(await server.client.properties(h)).to.not.have.property('k');
    expect(await server.client.list({ k: 'v2' })).to.deep.equal([]);
    await server.client.destroy(h);
  });

  it('stores and reports limits (memory limit_in_bytes)', async function () {
    const limit = 64 * 1024 * 1024;
    const h = await server.client.create(spec({ handle: 'life-limits', limits: { memory_limits: { limit_in_bytes: limit } } }));
    const mem = await server.client.currentMemoryLimits(h);
    expect(Number(mem.limit_in_bytes)).to.equal(limit);
    const none = await server.client.create(spec({ handle: 'life-nolimits' }));
    expect(Number((await server.client.currentMemoryLimits(none)).limit_in_bytes)).to.equal(0);
    await server.client.destroy(h);
    await server.client.destroy(none);
  });

  it('stop ends the processes (SIGTERM → 143) and info then says State stopped', async function () {
    const h = await server.client.create(spec({ handle: 'life-stop' }));
    const proc = await server.client.run(h, { path: 'sleep', args: ['100'] }, {});
    const t0 = Date.now();
    await server.client.stop(h, false);
    expect(Date.now() - t0, 'stop took (ms)').to.be.lessThan(9000);
    expect(await proc.wait()).to.equal(143);
    expect((await server.client.info(h)).State).to.equal('stopped');
    expect(await server.client.list(), 'a stopped container still exists').to.include(h);
    await server.client.destroy(h);
  });

  it('destroy removes the container and everything it had on the host; a second destroy is ContainerNotFound', async function () {
    const h = await server.client.create(spec({ handle: 'life-destroy' }));
    const proc = await server.client.run(h, sh('sleep 100'), {});
    proc.detach();
    // The checker must see a live container, or "nothing left" would prove nothing.
    const live = await leftoversNow(h, { depot: server.depot });
    expect(live.some((l) => l.startsWith('depot dir')), `depot dir seen in ${JSON.stringify(live)}`).to.equal(true);
    expect(live.some((l) => l.startsWith('process')), `a conmon/runc process seen in ${JSON.stringify(live)}`).to.equal(true);
    expect(live.some((l) => l.startsWith('mount')), `a mount seen in ${JSON.stringify(live)}`).to.equal(true);
    await server.client.destroy(h);
    expect(await server.client.list()).to.not.include(h);
    const infoErr = await server.client.info(h).then(() => null, (e: unknown) => e);
    expect(infoErr).to.be.instanceOf(ContainerNotFound);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);

    const again = await server.client.destroy(h).then(() => null, (e: unknown) => e);
    expect(again).to.be.instanceOf(ContainerNotFound);
    expect((again as ContainerNotFound).handle).to.equal(h);
    expect((again as Error).message).to.equal(`unknown handle: ${h}`);
  });

  it('issue #10: destroy replies before its teardown ends, and a create of the same handle at once gets a fresh container', async function () {
    for (let i = 0; i < 5; i++) {
      const h = await server.client.create(spec({ handle: 'life-again', properties: { round: String(i) } }));
      await runAndWait(server.client, h, sh(`echo ${i} > /round`));
      await server.client.destroy(h);
      // Gone from every view at the reply, whatever the teardown still has to do.
      expect(await server.client.list({ 'garden.state': 'all' }), `round ${i}`).to.not.include(h);
      const infoErr = await server.client.info(h).then(() => null, (e: unknown) => e);
      expect(infoErr, `round ${i}: info`).to.be.instanceOf(ContainerNotFound);
      const bulk = await server.client.bulkInfo([h]);
      expect(bulk[h]?.Err?.message, `round ${i}: bulk_info`).to.equal(`unknown handle: ${h}`);
      const again = await server.client.create(spec({ handle: h, properties: { round: `${i}-again` } }));
      expect(again).to.equal(h);
      expect(await server.client.property(h, 'round')).to.equal(`${i}-again`);
      const fresh = await runAndWait(server.client, h, sh('cat /round 2>&1; echo ok'));
      expect(fresh.stdout, 'a fresh rootfs').to.match(/No such file[^\n]*\nok\n$/);
      await server.client.destroy(h);
    }
    expect(await leftovers('life-again', { depot: server.depot })).to.deep.equal([]);
  });

  it('enforces the pid and memory limits through the delegated cgroup, and metrics report them', async function () {
    const h = await server.client.create(spec({
      handle: 'life-limits',
      limits: { pid_limits: { max: 20 }, memory_limits: { limit_in_bytes: 32 * 1024 * 1024 } },
    }));
    // 30 background sleeps against a limit of 20 pids: some forks must fail.
    const forks = await runAndWait(server.client, h, sh('n=0; for i in $(seq 30); do sleep 5 & n=$((n+1)); done 2>/dev/null; jobs -p | wc -l'));
    expect(Number(forks.stdout.trim())).to.be.lessThan(20);
    // The sleeps still hold the cgroup near its limit, where even runc's own exec helper
    // (a Go program, several threads) cannot start: wait for them to end by themselves,
    // watching from outside (metrics), before the next run.
    const { eventually } = await import('./harness.js');
    expect(await eventually(async () => Number((await server.client.metrics(h)).PidStat.Current) <= 1, 20_000)).to.equal(true);
    // dd's 64 MiB block in a 32 MiB cgroup (no swap allowed): the kernel kills it.
    const dd = (size: string) => ({ path: 'dd', args: ['if=/dev/zero', 'of=/dev/null', `bs=${size}`, 'count=1'] });
    expect((await runAndWait(server.client, h, dd('64M'))).code).to.equal(137);
    expect((await runAndWait(server.client, h, dd('8M'))).code).to.equal(0);
    const m = await server.client.metrics(h);
    expect(Number(m.PidStat.Max)).to.equal(20);
    expect(Number(m.MemoryStat.hierarchical_memory_limit)).to.equal(32 * 1024 * 1024);
    expect(Number(m.CPUStat.Usage)).to.be.greaterThan(0);
    expect(Number(m.Age)).to.be.greaterThan(0);
    expect(Number(m.DiskStat.TotalBytesUsed)).to.be.greaterThan(0);
    await server.client.destroy(h);
  });

  it('issue 10: a run into a container whose cgroup is briefly too full for runc\'s own helper still starts (no transient failure reaches the client)', async function () {
    const h = await server.client.create(spec({ handle: 'life-pids-transient', limits: { pid_limits: { max: 20 } } }));
    try {
      for (let round = 0; round < 3; round++) {
        // 30 one-second sleeps against 20 pids (a subshell: busybox sh gives up at the first
        // failed fork): the cgroup stays at its limit for about a second, where runc's exec
        // helper (nsexec's clones, then Go's threads) cannot get a pid.
        const fill = await runAndWait(server.client, h, sh('(for i in $(seq 30); do sleep 1 </dev/null >/dev/null 2>&1 & done) 2>/dev/null; echo filled'));
        expect(fill.stdout).to.equal('filled\n');
        const r = await runAndWait(server.client, h, sh('echo ran'));
        expect(r.code, r.stderr).to.equal(0);
        expect(r.stdout).to.equal('ran\n');
      }
    } finally {
      await server.client.destroy(h);
    }
  });
});
