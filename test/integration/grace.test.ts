// Grace time (spec §5.7): idle containers are reaped after their grace time,
// a request in progress (an attached process, a properties call) keeps them
// alive, and set grace_time re-arms the timer.

import { expect } from 'chai';
import {
  cleanupServer, dumpLogsIfFailed, eventually, leftovers, runAndWait, SECOND, type Server, sh, sleep, spec,
  startServer,
} from './harness.js';

describe('grace time (integration)', function () {
  let server: Server;

  before(async function () {
    // Containers created without grace_time get this default.
    server = await startServer({ defaultGraceTime: '1s' });
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  const listed = async (h: string): Promise<boolean> => (await server.client.list()).includes(h);

  /** ms from now until `h` is no longer listed (fails the test past `ms`). */
  async function goneWithin(h: string, ms: number): Promise<number> {
    const t0 = Date.now();
    const gone = await eventually(async () => !(await listed(h)), ms, 100);
    expect(gone, `${h} reaped within ${ms} ms`).to.equal(true);
    return Date.now() - t0;
  }

  it('an idle container with grace_time 1s disappears after about 1-3 s, and leaves nothing behind', async function () {
    const h = await server.client.create(spec({ handle: 'grace-1s', grace_time: 1 * SECOND }));
    const t0 = Date.now();
    await goneWithin(h, 6000);
    const after = Date.now() - t0;
    expect(after, 'reaped no sooner than the grace time').to.be.greaterThan(800);
    expect(after, 'reaped within 3.5 s').to.be.lessThan(3500);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('grace_time 0 at create takes the server default (--default-grace-time 1s)', async function () {
    const h = await server.client.create(spec({ handle: 'grace-default' }));
    const ms = await goneWithin(h, 6000);
    expect(ms).to.be.lessThan(3500);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('an attached long-running process keeps its container alive; the timer restarts when it exits', async function () {
    const h = await server.client.create(spec({ handle: 'grace-busy', grace_time: 1 * SECOND }));
    const r = await runAndWait(server.client, h, sh('sleep 3; echo done'));
    expect(r).to.include({ code: 0, stdout: 'done\n' });
    expect(await listed(h), 'still there right after a 3 s attached process (grace 1 s)').to.equal(true);
    await goneWithin(h, 6000);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('a properties request resets the idle timer', async function () {
    const h = await server.client.create(spec({ handle: 'grace-touch', grace_time: 2 * SECOND }));
    const t0 = Date.now();
    await sleep(1200);
    await server.client.properties(h);
    await sleep(Math.max(0, 2600 - (Date.now() - t0)));
    expect(await listed(h), 'alive at 2.6 s after a request at 1.2 s (grace 2 s)').to.equal(true);
    await goneWithin(h, 6000);
  });

  it('set grace_time re-arms the timer with the new value', async function () {
    const h = await server.client.create(spec({ handle: 'grace-set', grace_time: 3600 * SECOND }));
    await sleep(2000);
    expect(await listed(h), 'grace 1 h: alive after 2 s').to.equal(true);
    await server.client.setGraceTime(h, 1 * SECOND);
    const ms = await goneWithin(h, 6000);
    expect(ms).to.be.lessThan(3500);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('a detached process does not keep the container alive', async function () {
    const h = await server.client.create(spec({ handle: 'grace-detached', grace_time: 1 * SECOND }));
    const p = await server.client.run(h, { path: 'sleep', args: ['100'] }, {});
    p.detach();
    await goneWithin(h, 6000);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });
});
