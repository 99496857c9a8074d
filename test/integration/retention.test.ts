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
    // it outlives the detach, so no client ever receives its exit status
    const p = await server.client.run(h, sh('sleep 1; echo unread; exit 5'), {});
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

  it('output nobody reads is capped on disk (--process-log-max-bytes); the newest is kept, with the exit code', async function () {
    const { startServer: start } = await import('./harness.js');
    const { stat } = await import('node:fs/promises');
    const capped = await start({ extraArgs: ['--process-log-max-bytes', '100000'] });
    try {
      await capped.client.create(spec({ handle: 'chatty' }));
      const p = await capped.client.run('chatty', sh('i=0; while [ $i -lt 20000 ]; do echo "line $i of a chatty process"; i=$((i+1)); done; echo last-line; exit 6'), {});
      p.detach();
      const log = join(capped.depot, 'chatty', 'processes', p.id, 'output.log');
      expect(await eventually(async () => existsSync(join(capped.depot, 'chatty', 'processes', p.id, 'exit', 'chatty')), 20_000)).to.equal(true);
      expect((await stat(log)).size).to.be.lessThan(200_000);
      const stdout = new Collector();
      const again = await capped.client.attach('chatty', p.id, { stdout, stderr: new Collector() });
      expect(await again.wait()).to.equal(6);
      expect(stdout.text().endsWith('line 19999 of a chatty process\nlast-line\n')).to.equal(true);
      expect(stdout.text().length).to.be.lessThan(200_000);
    } finally {
      await cleanupServer(capped);
    }
  });

  it('a process whose client asked for no output at all is reclaimed too', async function () {
    const p = await server.client.run(h, sh('echo nobody-wants-this'), {});
    expect(await p.wait()).to.equal(0);
    expect(await eventually(async () => !(await processDirs()).includes(p.id), 10_000)).to.equal(true);
  });
});
