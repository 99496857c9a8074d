// Finished processes are reclaimed once their exit status reached a client and their
// output was read; a process nobody has read stays, output and exit code on disk.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ProcessNotFound } from '../../src/errors.js';
import { cleanupServer, Collector, dumpLogsIfFailed, eventually, runAndWait, type Server, sh, sleep, spec, startServer } from './harness.js';

describe('process retention (integration)', function () {
  let server: Server;
  const h = 'retain';

  before(async function () {
    server = await startServer({ extraArgs: ['--process-retention', '1s'] });
    await server.client.create(spec({ handle: h }));
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  const processDirs = () => readdir(join(server.depot, h, 'processes'));

  it('removes a process whose exit status and output were delivered', async function () {
    const stdout = new Collector();
    const p = await server.client.run(h, sh('echo read'), { stdout, stderr: new Collector() });
    expect(await p.wait()).to.equal(0);
    expect(stdout.text()).to.equal('read\n');
    expect(await eventually(async () => !(await processDirs()).includes(p.id), 10_000)).to.equal(true);
    const err = await server.client.attach(h, p.id, {}).then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(ProcessNotFound);
  });

  it('keeps a process nobody has read, then hands over its output and exit code', async function () {
    const p = await server.client.run(h, sh('echo unread; exit 5'), {});
    p.detach();
    await sleep(3000);
    expect(existsSync(join(server.depot, h, 'processes', p.id))).to.equal(true);
    const stdout = new Collector();
    const again = await server.client.attach(h, p.id, { stdout, stderr: new Collector() });
    expect(await again.wait()).to.equal(5);
    expect(stdout.text()).to.equal('unread\n');
    expect(await eventually(async () => !(await processDirs()).includes(p.id), 10_000)).to.equal(true);
  });

  it('a long-lived container running many short processes keeps no more than the recent ones', async function () {
    for (let i = 0; i < 20; i++) expect((await runAndWait(server.client, h, { path: 'true' })).code).to.equal(0);
    expect(await eventually(async () => (await processDirs()).length === 0, 10_000)).to.equal(true);
  });
});
