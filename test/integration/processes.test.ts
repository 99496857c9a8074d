// Processes in a real container: exit codes, output streams, environment,
// working directory, users, stdin, big output, concurrency, detach/attach,
// signals, and the process errors.

import { expect } from 'chai';
import { Readable } from 'node:stream';
import { ExecutableNotFound, ProcessNotFound } from '../../src/errors.js';
import {
  cleanupServer, Collector, dumpLogsIfFailed, leftovers, runAndWait, type Server, sh, sleep, spec, startServer,
} from './harness.js';

const ROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const USER_PATH = '/usr/local/bin:/usr/bin:/bin';

const envLines = (out: string): string[] => out.split('\n').filter((l) => l !== '');

describe('processes (integration)', function () {
  let server: Server;
  let h: string;

  before(async function () {
    server = await startServer();
    h = await server.client.create(spec({ handle: 'proc-main', env: ['FROM_CONTAINER=yes', 'LANG=C'] }));
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  for (const code of [0, 3, 42]) {
    it(`reports exit code ${code}`, async function () {
      const r = await runAndWait(server.client, h, sh(`exit ${code}`));
      expect(r.code).to.equal(code);
    });
  }

  it('keeps stdout and stderr apart', async function () {
    const r = await runAndWait(server.client, h, sh('echo out1; echo err1 >&2; echo out2; echo err2 >&2'));
    expect(r).to.include({ code: 0, stdout: 'out1\nout2\n', stderr: 'err1\nerr2\n' });
  });

  it('gives root the container env, the process env, and the default PATH and USER', async function () {
    const r = await runAndWait(server.client, h, { path: 'env', env: ['FROM_PROCESS=1'] });
    expect(r.code).to.equal(0);
    const env = envLines(r.stdout);
    expect(env.filter((l) => l.startsWith('PATH=')), 'PATH for root').to.deep.equal([`PATH=${ROOT_PATH}`]);
    expect(env).to.include.members(['FROM_CONTAINER=yes', 'LANG=C', 'FROM_PROCESS=1', 'USER=root']);
  });

  it('uses the non-root default PATH for another user and keeps an explicit PATH', async function () {
    const alice = await runAndWait(server.client, h, { path: 'env', user: 'alice' });
    const aliceEnv = envLines(alice.stdout);
    expect(aliceEnv.filter((l) => l.startsWith('PATH=')), 'PATH for a non-root user').to.deep.equal([`PATH=${USER_PATH}`]);
    expect(aliceEnv).to.include.members(['USER=alice', 'FROM_CONTAINER=yes']);
    const own = await runAndWait(server.client, h, { path: '/usr/bin/env', env: ['PATH=/bin', 'USER=someone'] });
    const env = envLines(own.stdout);
    expect(env).to.include.members(['PATH=/bin', 'USER=someone']);
    expect(env.filter((l) => l.startsWith('PATH=')), 'exactly one PATH').to.have.length(1);
  });

  it('runs in the given dir, and in the user home by default', async function () {
    expect((await runAndWait(server.client, h, { path: 'pwd', dir: '/tmp' })).stdout).to.equal('/tmp\n');
    expect((await runAndWait(server.client, h, { path: 'pwd', user: 'alice' })).stdout).to.equal('/home/alice\n');
    expect((await runAndWait(server.client, h, { path: 'pwd', user: 'root' })).stdout).to.equal('/root\n');
  });

  it('runs as a named user (alice → uid 1000) and as uid:gid', async function () {
    const byName = await runAndWait(server.client, h, { path: 'id', user: 'alice' });
    expect(byName.code).to.equal(0);
    expect(byName.stdout).to.match(/^uid=1000\(alice\) gid=1000\(alice\)/);
    const byIds = await runAndWait(server.client, h, { path: 'id', user: '1000:1000' });
    expect(byIds.stdout).to.match(/^uid=1000(\(alice\))? gid=1000(\(alice\))?/);
    const vcap = await runAndWait(server.client, h, { path: 'sh', args: ['-c', 'id -u; id -g'], user: 'vcap' });
    expect(vcap.stdout).to.equal('2000\n2000\n');
    const root = await runAndWait(server.client, h, { path: 'id', args: ['-u'], user: 'root' });
    expect(root.stdout).to.equal('0\n');
  });

  it('round-trips stdin through cat, including input larger than one stdin message', async function () {
    expect((await runAndWait(server.client, h, { path: 'cat' }, 'hello\nworld\n')).stdout).to.equal('hello\nworld\n');
    const big = Buffer.from('0123456789abcdef\n'.repeat(10_000)); // 170 kB: several 32 KiB messages
    const r = await runAndWait(server.client, h, { path: 'cat' }, big);
    expect(r.code).to.equal(0);
    expect(r.stdoutBytes.length).to.equal(big.length);
    expect(r.stdoutBytes.equals(big), 'bytes identical').to.equal(true);
  });

  it('a process printing megabytes while its stdin stays open neither stalls nor loses stdin sent afterwards', async function () {
    // conmon writes output to every socket attached to it: a stdin relay that never
    // read its socket made conmon block after ~400 KB, and the process with it.
    const size = 2 * 1024 * 1024;
    const { PassThrough } = await import('node:stream');
    const stdin = new PassThrough();
    const chunks: Buffer[] = [];
    let got = 0;
    let sent = false;
    const stdout = new PassThrough();
    stdout.on('data', (b: Buffer) => {
      chunks.push(b);
      got += b.length;
      if (got >= size && !sent) {
        sent = true;
        stdin.end('after\n');
      }
    });
    stdin.write('before\n'); // the relay to conmon's attach socket is up from here on
    const proc = await server.client.run(h, sh(`read first; head -c ${size} /dev/zero; read line; echo "read $first $line"`), { stdin, stdout });
    expect(await proc.wait()).to.equal(0);
    const out = Buffer.concat(chunks);
    expect(out.subarray(size).toString()).to.equal('read before after\n');
    expect(out.length).to.equal(size + 'read before after\n'.length);
  });

  it('delivers output larger than a pipe buffer intact (1 MiB on each stream)', async function () {
    const size = 1024 * 1024;
    const r = await runAndWait(server.client, h, sh(`yes abcdefghi | head -c ${size}; yes ERR | head -c ${size} >&2; exit 4`));
    expect(r.code).to.equal(4);
    expect(r.stdoutBytes.length, 'stdout length').to.equal(size);
    expect(r.stderrBytes.length, 'stderr length').to.equal(size);
    const expectedOut = Buffer.from('abcdefghi\n'.repeat(Math.ceil(size / 10))).subarray(0, size);
    const expectedErr = Buffer.from('ERR\n'.repeat(Math.ceil(size / 4))).subarray(0, size);
    expect(r.stdoutBytes.equals(expectedOut), 'stdout bytes').to.equal(true);
    expect(r.stderrBytes.equals(expectedErr), 'stderr bytes').to.equal(true);
  });

  it('runs several processes at once in one container, each with its own output and status', async function () {
    const runs = [1, 2, 3, 4, 5].map((i) =>
      runAndWait(server.client, h, sh('sleep 0.5; echo "n=$N"; echo "e=$N" >&2; exit $N', { env: [`N=${i}`] })),
    );
    const results = await Promise.all(runs);
    results.forEach((r, idx) => {
      const i = idx + 1;
      expect(r, `process ${i}`).to.include({ code: i, stdout: `n=${i}\n`, stderr: `e=${i}\n` });
    });
  });

  it('runs without attaching, then attach by id gets the output and the real exit code', async function () {
    const proc = await server.client.run(h, sh('echo early; sleep 1; echo late; exit 5'), {});
    const id = proc.id;
    expect(id).to.be.a('string').and.not.equal('');
    proc.detach();
    await sleep(300);
    const out = new Collector();
    const err = new Collector();
    const attached = await server.client.attach(h, id, { stdout: out, stderr: err });
    expect(attached.id).to.equal(id);
    expect(await attached.wait()).to.equal(5);
    // "early" was written before anyone read it: the contract is that unread output goes to the next attacher.
    expect(out.text()).to.equal('early\nlate\n');
  });

  it('attach to a process that already exited returns its unread output and exit code', async function () {
    const proc = await server.client.run(h, { id: 'proc-finished', path: 'sh', args: ['-c', 'echo done; exit 9'] }, {});
    expect(proc.id).to.equal('proc-finished');
    proc.detach();
    await sleep(1000);
    const out = new Collector();
    const attached = await server.client.attach(h, 'proc-finished', { stdout: out, stderr: new Collector() });
    expect(await attached.wait()).to.equal(9);
    expect(out.text()).to.equal('done\n');
  });

  it('signal terminate ends a process with 143, kill with 137', async function () {
    const out = new Collector();
    const p = await server.client.run(h, sh('echo ready; exec sleep 100'), { stdout: out, stderr: new Collector() });
    await out.waitFor('ready\n');
    await p.signal(0);
    expect(await p.wait()).to.equal(143);

    const out2 = new Collector();
    const p2 = await server.client.run(h, sh('echo ready; exec sleep 100'), { stdout: out2, stderr: new Collector() });
    await out2.waitFor('ready\n');
    await p2.signal(1);
    expect(await p2.wait()).to.equal(137);
  });

  it('attach to an unknown pid is ProcessNotFound carrying the id', async function () {
    const err = await server.client.attach(h, 'no-such-pid', {}).then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(ProcessNotFound);
    expect((err as ProcessNotFound).processId).to.equal('no-such-pid');
    expect((err as Error).message).to.equal('unknown process: no-such-pid');
  });

  it('a missing executable is ExecutableNotFound (absolute path and PATH lookup)', async function () {
    for (const path of ['/no/such/binary', 'no-such-command']) {
      const err = await server.client.run(h, { path }, { stdin: Readable.from([]) }).then(() => null, (e: unknown) => e);
      expect(err, path).to.be.instanceOf(ExecutableNotFound);
    }
    // the container is still usable
    expect((await runAndWait(server.client, h, { path: 'true' })).code).to.equal(0);
  });

  it('a duplicate process id is refused while the first runs', async function () {
    const first = await server.client.run(h, { id: 'proc-dup', path: 'sleep', args: ['5'] }, {});
    const err = await server.client.run(h, { id: 'proc-dup', path: 'true' }, {}).then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(Error);
    first.detach();
  });

  it('creates 20 containers at once, runs in each, destroys them all, leaves nothing behind', async function () {
    this.timeout(240_000);
    const handles = Array.from({ length: 20 }, (_, i) => `proc-many-${i}`);
    const results = await Promise.allSettled(handles.map((handle) => server.client.create(spec({ handle }))));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${handles[i]}: ${(r.reason as Error).message}`] : []));
    expect(failed, 'creates that failed').to.deep.equal([]);
    expect(await server.client.list()).to.include.members(handles);

    const runs = await Promise.all(handles.map((handle) => runAndWait(server.client, handle, { path: 'echo', args: [handle] })));
    runs.forEach((r, i) => expect(r, handles[i]).to.include({ code: 0, stdout: `${handles[i]}\n` }));

    const destroyed = await Promise.allSettled(handles.map((handle) => server.client.destroy(handle)));
    const destroyFailed = destroyed.flatMap((r, i) => (r.status === 'rejected' ? [`${handles[i]}: ${(r.reason as Error).message}`] : []));
    expect(destroyFailed, 'destroys that failed').to.deep.equal([]);
    expect((await server.client.list()).filter((x) => handles.includes(x)), 'still listed').to.deep.equal([]);
    const left = (await Promise.all(handles.map((handle) => leftovers(handle, { depot: server.depot })))).flat();
    expect(left).to.deep.equal([]);
  });
});
