// Issue #10: destroy journals the teardown and replies; the teardown runs on in the background
// (src/gardener/gardener.ts destroy/tearDown/restore, src/runtime/depot.ts). Real depot on a
// temporary directory, recording fakes for the runtime, image and network.

import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Gardener, type CreateSpec } from '../../src/gardener/gardener.js';
import { ContainerNotFound, TrellisError } from '../../src/errors.js';
import type { Containerizer } from '../../src/runtime/containerizer.js';
import { Depot, type ContainerRecord } from '../../src/runtime/depot.js';
import type { ImagePlugin } from '../../src/image/plugin.js';
import type { NetworkPlugin } from '../../src/network/plugin.js';

interface Gate {
  promise: Promise<void>;
  open: () => void;
}
const gate = (): Gate => {
  let open = () => {};
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
};

/** What every fake did, in order, and knobs to hold or fail a step. */
class World {
  calls: string[] = [];
  holdDown: Gate | undefined;
  failDown = 0;
  runtime = {
    runc: {},
    conmon: {},
    createStopped: async (key: string) => (this.calls.push(`runtime.create ${key}`), 4242),
    start: async () => {},
    initPid: async () => undefined,
    destroy: async (key: string) => void this.calls.push(`runtime.destroy ${key}`),
  } as unknown as Containerizer;
  image: ImagePlugin = {
    name: 'fake',
    create: async (req) => (this.calls.push(`image.create ${req.key}`), { rootfsPath: '/nonexistent', env: [], mounts: [] }),
    destroy: async (_h, key) => void this.calls.push(`image.destroy ${key}`),
    stats: async () => ({ totalBytesUsed: 0, exclusiveBytesUsed: 0 }),
  };
  network: NetworkPlugin = {
    name: 'fake',
    up: async (handle) => (this.calls.push(`network.up ${handle}`), { properties: {} }),
    down: async (handle) => {
      this.calls.push(`network.down ${handle}`);
      if (this.holdDown !== undefined) await this.holdDown.promise;
      if (this.failDown > 0) {
        this.failDown--;
        throw new Error('gate says no');
      }
    },
    netIn: async () => ({ host_port: 0, container_port: 0 }),
    netOut: async () => {},
    bulkNetOut: async () => {},
  };
  count = (what: string) => this.calls.filter((c) => c === what).length;
}

const spec = (handle: string): CreateSpec => ({
  handle, graceTimeNs: 0n, image: '', username: '', password: '', env: [], properties: {}, privileged: false,
  limits: { bandwidth_limits: {}, cpu_limits: {}, disk_limits: {}, memory_limits: {}, pid_limits: {} },
  bindMounts: [], network: '', netin: [], netoutRules: [],
});

/** The error `p` rejects with (fails the test if it resolves). */
const rejection = async (p: Promise<unknown>): Promise<Error> => {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
};

const until = async (check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('issue #10: destroy replies once the teardown is journaled', () => {
  let root: string;
  let depot: Depot;
  let world: World;
  const gardeners: Gardener[] = [];
  const gardener = (opts: { maxContainers?: number; depot?: Depot; attempts?: number } = {}) => {
    const g = new Gardener({
      depot: opts.depot ?? depot,
      containerizer: world.runtime,
      image: world.image,
      network: world.network,
      log: pino({ level: 'silent' }),
      uidMappings: [{ containerID: 0, hostID: 1000, size: 1 }],
      gidMappings: [{ containerID: 0, hostID: 1000, size: 1 }],
      initBinary: '/nonexistent/init',
      defaultRootfs: 'fake:///rootfs',
      defaultGraceTimeNs: 0n,
      maxContainers: opts.maxContainers ?? 0,
      teardownRetry: { attempts: opts.attempts ?? 4, firstDelayMs: 5, maxDelayMs: 20 },
    });
    gardeners.push(g);
    return g;
  };
  const onDisk = async (key: string): Promise<ContainerRecord> => JSON.parse(await readFile(join(root, key, 'container.json'), 'utf8')) as ContainerRecord;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'trellis-teardown-'));
    depot = new Depot(root);
    world = new World();
  });
  afterEach(async () => {
    world.holdDown?.open();
    for (const g of gardeners.splice(0)) await g.shutdown(1000);
    await rm(root, { recursive: true, force: true });
  });

  it('journals phase "destroying" on disk, hides the handle everywhere and replies before the teardown ends', async () => {
    const g = gardener();
    await g.create(spec('c1'));
    world.holdDown = gate();
    await g.destroy('c1');
    expect((await onDisk('c1')).phase).to.equal('destroying');
    expect(g.exists('c1')).to.equal(false);
    expect(g.list({})).to.deep.equal([]);
    expect(g.list({ 'garden.state': 'all' })).to.deep.equal([]);
    expect(() => g.info('c1')).to.throw(ContainerNotFound);
    expect(() => g.properties('c1')).to.throw(ContainerNotFound);
    expect(() => g.process('c1', 'p')).to.throw(ContainerNotFound);
    expect(await rejection(g.setProperty('c1', 'k', 'v'))).to.be.instanceOf(ContainerNotFound);
    const run = g.run('c1', { id: '', path: '/bin/true', args: [], env: [], dir: '', user: '', rlimits: {}, tty: false, image: '', bindMounts: 0 });
    expect(await rejection(run)).to.be.instanceOf(ContainerNotFound);
    expect(await rejection(g.destroy('c1')), 'a second destroy').to.be.instanceOf(ContainerNotFound);
    expect(world.count('image.destroy c1')).to.equal(0);
    world.holdDown.open();
    // The entry goes by rename to .gone-* first and is removed last: wait for the directory to empty.
    await until(async () => (await readdir(root)).length === 0);
    expect(world.calls.slice(-3)).to.deep.equal(['runtime.destroy c1', 'network.down c1', 'image.destroy c1']);
  });

  it('a create of the handle while its teardown runs waits for it, then succeeds (never AlreadyExists)', async () => {
    const g = gardener();
    await g.create(spec('c1'));
    world.holdDown = gate();
    await g.destroy('c1');
    let created = false;
    const again = g.create(spec('c1')).then((h) => ((created = true), h));
    await new Promise((r) => setTimeout(r, 50));
    expect(created, 'create went ahead while the teardown ran').to.equal(false);
    world.holdDown.open();
    expect(await again).to.equal('c1');
    const order = world.calls.filter((c) => c.endsWith(' c1'));
    expect(order.indexOf('image.destroy c1')).to.be.lessThan(order.lastIndexOf('image.create c1'));
    expect((await onDisk('c1')).phase).to.equal('created');
    expect(g.list({})).to.deep.equal(['c1']);
  });

  it('two creates of a handle being torn down: one wins, the other gets AlreadyExists for the new container', async () => {
    const g = gardener();
    await g.create(spec('c1'));
    world.holdDown = gate();
    await g.destroy('c1');
    const a = g.create(spec('c1'));
    const b = g.create(spec('c1'));
    world.holdDown.open();
    const results = await Promise.allSettled([a, b]);
    expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect((lost.reason as TrellisError).code).to.match(/ALREADY_EXISTS|already/i);
  });

  it('a failed step is retried with backoff until it succeeds; the handle never comes back meanwhile', async () => {
    const g = gardener({ attempts: 4 });
    await g.create(spec('c1'));
    world.failDown = 2;
    await g.destroy('c1');
    await until(() => !existsSync(join(root, 'c1')));
    expect(world.count('network.down c1')).to.equal(3);
    expect(world.count('image.destroy c1')).to.equal(3);
    expect(g.list({ 'garden.state': 'all' })).to.deep.equal([]);
  });

  it('a teardown that keeps failing stays journaled; a create of the handle retries it; the next start finishes it', async () => {
    const g = gardener({ attempts: 2 });
    await g.create(spec('c1'));
    world.failDown = 100;
    await g.destroy('c1');
    await until(() => world.count('network.down c1') === 2);
    await new Promise((r) => setTimeout(r, 50));
    expect(world.count('network.down c1'), 'gave up after its attempts').to.equal(2);
    expect((await onDisk('c1')).phase).to.equal('destroying');
    expect(g.exists('c1')).to.equal(false);
    const refused = await rejection(g.create(spec('c1')));
    expect(refused).to.be.instanceOf(TrellisError);
    expect(refused.message).to.match(/cannot be reused yet.*gate says no/);
    expect(world.count('network.down c1'), 'the create ran another round').to.equal(4);
    await g.shutdown(0);

    world.failDown = 0;
    const next = gardener();
    await next.restore();
    expect(world.count('network.down c1')).to.equal(5);
    expect(existsSync(join(root, 'c1'))).to.equal(false);
    expect(next.list({ 'garden.state': 'all' })).to.deep.equal([]);
    expect(await next.create(spec('c1'))).to.equal('c1');
  });

  it('restore finishes a journaled teardown (as after kill -9 just past the reply) before anything is served', async () => {
    const g = gardener();
    await g.create(spec('c1'));
    await g.create(spec('c2'));
    world.holdDown = gate();
    await g.destroy('c1');
    // the process "dies" here: its teardown never finishes
    const next = gardener();
    const restored = next.restore();
    world.holdDown.open();
    await restored;
    expect(existsSync(join(root, 'c1'))).to.equal(false);
    expect(next.list({})).to.deep.equal(['c2']);
    expect(world.count('image.destroy c1')).to.be.greaterThan(0);
    expect(world.count('image.destroy c2')).to.equal(0);
  });

  it('--max-containers counts containers whose teardown has not finished: a create at the limit waits for it', async () => {
    const g = gardener({ maxContainers: 1 });
    await g.create(spec('c1'));
    world.holdDown = gate();
    await g.destroy('c1');
    const c2 = g.create(spec('c2'));
    await new Promise((r) => setTimeout(r, 50));
    expect(world.count('image.create c2'), 'c2 started while c1 held its place').to.equal(0);
    world.holdDown.open();
    expect(await c2).to.equal('c2');
    expect(world.calls.indexOf('image.destroy c1')).to.be.lessThan(world.calls.indexOf('image.create c2'));
  });

  it('--max-containers: a teardown that gave up keeps its place (the create is refused, not held)', async () => {
    const g = gardener({ maxContainers: 1, attempts: 1 });
    await g.create(spec('c1'));
    world.failDown = 100;
    await g.destroy('c1');
    await until(() => world.count('network.down c1') === 1);
    await new Promise((r) => setTimeout(r, 20));
    expect((await rejection(g.create(spec('c2')))).message).to.match(/max containers/);
  });

  it('a create that asks for an address or a host port waits for the teardowns running (they may hold it)', async () => {
    const g = gardener();
    await g.create(spec('c1'));
    world.holdDown = gate();
    await g.destroy('c1');
    const dynamic = await g.create(spec('c2'));
    expect(dynamic, 'a create that needs nothing particular does not wait').to.equal('c2');
    const fixed = g.create({ ...spec('c3'), network: '10.254.0.9' });
    const ported = g.create({ ...spec('c4'), netin: [{ host_port: 61001, container_port: 8080 }] });
    await new Promise((r) => setTimeout(r, 50));
    expect(world.count('image.create c3') + world.count('image.create c4')).to.equal(0);
    world.holdDown.open();
    expect(await Promise.all([fixed, ported])).to.deep.equal(['c3', 'c4']);
    expect(world.calls.indexOf('image.destroy c1')).to.be.lessThan(world.calls.indexOf('image.create c3'));
  });

  it('graceful stop waits for a running teardown, within its bound', async () => {
    const g = gardener();
    await g.create(spec('c1'));
    world.holdDown = gate();
    await g.destroy('c1');
    let stopped = false;
    const stop = g.shutdown(5000).then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(stopped).to.equal(false);
    world.holdDown.open();
    await stop;
    expect(existsSync(join(root, 'c1'))).to.equal(false);

    const h = gardener();
    await h.create(spec('c2'));
    world.holdDown = gate();
    await h.destroy('c2');
    const t0 = Date.now();
    await h.shutdown(100);
    expect(Date.now() - t0).to.be.lessThan(2000);
    expect((await onDisk('c2')).phase, 'left for the next start').to.equal('destroying');
  });

  it('a journal that cannot be written fails the destroy and leaves the container as it was', async () => {
    class Refusing extends Depot {
      override async saveContainer(record: ContainerRecord, durable = false): Promise<void> {
        if (durable) throw new Error('disk full');
        return super.saveContainer(record, durable);
      }
    }
    const g = gardener({ depot: new Refusing(root) });
    await g.create(spec('c1'));
    expect((await rejection(g.destroy('c1'))).message).to.match(/disk full/);
    expect(g.exists('c1')).to.equal(true);
    expect(g.list({})).to.deep.equal(['c1']);
    expect((await onDisk('c1')).phase).to.equal('created');
    expect(world.count('network.down c1')).to.equal(0);
  });
});

describe('Depot.remove and leftovers of a removal cut short', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'trellis-depot-'));
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  it('removes the whole entry; a missing one is fine', async () => {
    const d = new Depot(root);
    await d.reserve({ handle: 'a', key: 'a', createdAt: '', phase: 'created', stopped: false, graceTimeNs: '0', env: [], limits: {}, imagePlugin: 'x' });
    await writeFile(join(root, 'a', 'hosts'), 'x');
    await d.remove('a');
    await d.remove('a');
    expect(await readdir(root)).to.deep.equal([]);
  });

  it('the next start removes an entry whose removal was cut short, record and all, and does not load it', async () => {
    const gone = join(root, '.gone-a-123-xyz');
    await mkdir(join(gone, 'processes', 'p1'), { recursive: true });
    await writeFile(join(gone, 'container.json'), JSON.stringify({ handle: 'a', key: 'a', phase: 'destroying' }));
    await writeFile(join(gone, 'hosts'), 'x');
    const d = new Depot(root);
    expect(await d.loadContainers()).to.deep.equal([]);
    expect(await readdir(root)).to.deep.equal([]);
  });

  it('a durable save writes the record whole', async () => {
    const d = new Depot(root);
    const rec: ContainerRecord = { handle: 'a', key: 'a', createdAt: '', phase: 'created', stopped: false, graceTimeNs: '0', env: [], limits: {}, imagePlugin: 'x' };
    await d.reserve(rec);
    await d.saveContainer({ ...rec, phase: 'destroying' }, true);
    expect((await d.loadContainers()).map((r) => r.phase)).to.deep.equal(['destroying']);
    expect((await readdir(join(root, 'a'))).filter((n) => n.includes('.tmp-'))).to.deep.equal([]);
  });
});
