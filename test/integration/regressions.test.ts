// Regressions from the review of issue #2's server (each named for what it broke).
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { cleanupServer, dumpLogsIfFailed, restartServer, runAndWait, type Server, sh, spec, startServer } from './harness.js';

describe('regressions (integration)', function () {
  let server: Server;

  before(async function () {
    server = await startServer();
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  for (const handle of ['output.log', 'process.json', 'read-offset', 'delivered']) {
    it(`a container named ${handle} keeps its processes' output and exit codes (conmon's exit file is named after it)`, async function () {
      await server.client.create(spec({ handle }));
      const r = await runAndWait(server.client, handle, sh('echo hi; exit 4'));
      expect(r).to.include({ code: 4, stdout: 'hi\n' });
      await server.client.destroy(handle);
    });
  }

  it('list filters named like Object.prototype members filter (and match nothing here)', async function () {
    await server.client.create(spec({ handle: 'proto-filter' }));
    expect(await server.client.list({ constructor: 'x' })).to.deep.equal([]);
    expect(await server.client.list({ toString: 'y' })).to.deep.equal([]);
    await server.client.setProperty('proto-filter', 'constructor', 'x');
    expect(await server.client.list({ constructor: 'x' })).to.deep.equal(['proto-filter']);
    await server.client.destroy('proto-filter');
  });

  it('a mapped-ports property set to something not a list does not break info', async function () {
    await server.client.create(spec({ handle: 'ports-prop' }));
    await server.client.setProperty('ports-prop', 'garden.network.mapped-ports', 'null');
    expect((await server.client.info('ports-prop')).MappedPorts).to.deep.equal([]);
    await server.client.destroy('ports-prop');
  });

  it('control messages sent in the same write as the Run request are not lost', async function () {
    await server.client.create(spec({ handle: 'pipelined' }));
    const body = '{"path":"cat","user":"root","rlimits":{},"image":{}}\n';
    const sock = net.connect(server.socketPath);
    let got = '';
    sock.on('data', (d) => (got += d.toString('latin1')));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    // stdin data and stdin EOF right behind the body, before the server has answered
    sock.write(
      `POST /containers/pipelined/processes HTTP/1.1\r\nHost: api\r\nContent-Length: ${body.length}\r\n\r\n${body}` +
        '{"source":0,"data":"hello\\n"}\n{"source":0}\n',
    );
    await Promise.race([closed, new Promise((r) => setTimeout(r, 15_000))]);
    expect(got).to.match(/"exit_status":0\}\n$/);
    await server.client.destroy('pipelined');
  });

  it('restore leaves alone a depot entry that is not a container', async function () {
    const foreign = join(server.depot, 'not-a-container');
    await mkdir(foreign);
    await writeFile(join(foreign, 'precious.txt'), 'keep me');
    await server.stop();
    server = await restartServer(server);
    expect(existsSync(join(foreign, 'precious.txt'))).to.equal(true);
    expect(await server.client.list()).to.not.include('not-a-container');
  });

  it('a slow reader of a large output gets every byte, and the server holds it on disk, not in memory', async function () {
    const { readFile } = await import('node:fs/promises');
    const { Writable } = await import('node:stream');
    const rss = async () => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${server.proc.pid}/status`, 'utf8'))![1]) * 1024;
    await server.client.create(spec({ handle: 'slow-reader' }));
    const before = await rss();
    let got = 0;
    let peak = before;
    const slow = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        got += chunk.length;
        // about 25 MB/s, far slower than the process writes: a server that buffered would grow by ~150 MB
        setTimeout(cb, Math.ceil(chunk.length / 25_000));
      },
    });
    const sampler = setInterval(() => void rss().then((r) => (peak = Math.max(peak, r))), 100);
    try {
      const p = await server.client.run('slow-reader', sh('head -c 150000000 /dev/zero'), { stdout: slow, stderr: new Writable({ write: (_c, _e, cb) => cb() }) });
      expect(await p.wait()).to.equal(0);
    } finally {
      clearInterval(sampler);
    }
    expect(got).to.equal(150_000_000);
    expect(peak - before, `server grew by ${Math.round((peak - before) / 1e6)} MB`).to.be.lessThan(75_000_000);
    await server.client.destroy('slow-reader');
  });

  it('a client that aborts a stream-in mid-upload leaves no helper behind and does not hold the grace timer', async function () {
    await server.client.create(spec({ handle: 'aborted-upload', grace_time: 2_000_000_000 }));
    const sock = net.connect(server.socketPath);
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.once('connect', () => r()));
    // a chunked upload that starts and never finishes
    sock.write('PUT /containers/aborted-upload/files?destination=%2Ftmp&user= HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n');
    // the first 20 KiB of a real archive of a 1 MiB file: tar waits for the rest
    const { execa } = await import('execa');
    const { mkdtemp, writeFile: write } = await import('node:fs/promises');
    const { runtimeDir } = await import('./harness.js');
    const tmp = await mkdtemp(join(runtimeDir(), 'upload-'));
    await write(join(tmp, 'big'), Buffer.alloc(1 << 20, 1));
    const archive = Buffer.from((await execa('tar', ['-C', tmp, '-cf', '-', 'big'], { encoding: 'buffer' })).stdout).subarray(0, 20480);
    sock.write(`${archive.length.toString(16)}\r\n`);
    sock.write(archive);
    sock.write('\r\n');
    const { monitorsMentioning, eventually } = await import('./harness.js');
    expect(await eventually(async () => (await monitorsMentioning('trellis-tool')).length > 0, 10_000), 'a tar helper started').to.equal(true);
    sock.destroy();
    expect(await eventually(async () => (await monitorsMentioning('trellis-tool')).length === 0, 10_000), 'the helper is gone').to.equal(true);
    // the grace timer runs again: the idle container is reaped
    expect(await eventually(async () => !(await server.client.list()).includes('aborted-upload'), 10_000), 'reaped').to.equal(true);
    // and the destroy has finished (list hides a container as soon as its destroy starts)
    expect(await eventually(() => !existsSync(join(server.depot, 'aborted-upload')), 10_000), 'destroyed').to.equal(true);
    const { rm: remove } = await import('node:fs/promises');
    await remove(tmp, { recursive: true, force: true });
  });
});
