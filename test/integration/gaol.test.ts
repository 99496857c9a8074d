// The gaol CLI (dist/cmd/gaol.js, as a user runs it) against the real daemon
// over its unix socket: output, exit codes and error lines.

import { expect } from 'chai';
import {
  cleanupServer, dumpLogsIfFailed, eventually, GAOL, leftovers, type Server, startServer, runGaol, type GaolResult } from './harness.js';



describe('gaol CLI (integration)', function () {
  let server: Server;
  const gaol = (args: string[], stdin?: string): Promise<GaolResult> => runGaol(server.socketPath, args, { stdin: stdin ?? '' });

  before(async function () {
    server = await startServer();
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('ping exits 0 silently', async function () {
    expect(await gaol(['ping'])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
  });

  it('create -n prints the handle; list shows it; plain create prints a generated one', async function () {
    expect(await gaol(['create', '-n', 'gaol-c1'])).to.deep.equal({ code: 0, stdout: 'gaol-c1\n', stderr: '' });
    const gen = await gaol(['create']);
    expect(gen.code).to.equal(0);
    const generated = gen.stdout.trim();
    expect(generated).to.match(/^[A-Za-z0-9._~-]+$/);
    const list = await gaol(['list']);
    expect(list.code).to.equal(0);
    expect(list.stdout.split('\n')).to.include.members(['gaol-c1', generated]);
    expect((await gaol(['destroy', generated])).code).to.equal(0);
  });

  it('run -a -c "sh -c \'echo hi; exit 3\'" prints hi and exits 3', async function () {
    expect(await gaol(['run', '-a', '-c', "sh -c 'echo hi; exit 3'", 'gaol-c1'])).to.deep.equal({ code: 3, stdout: 'hi\n', stderr: '' });
  });

  it('run -a forwards stdin and separates stderr', async function () {
    const r = await gaol(['run', '-a', '-c', "sh -c 'cat; echo oops >&2'", 'gaol-c1'], 'piped input\n');
    expect(r).to.deep.equal({ code: 0, stdout: 'piped input\n', stderr: 'oops\n' });
  });

  it('run -a with -e, -d and -u', async function () {
    const r = await gaol(['run', '-a', '-e', 'GREETING=hello there', '-d', '/tmp', '-u', 'alice', '-c', 'sh -c \'echo "$GREETING"; pwd; id -u\'', 'gaol-c1']);
    expect(r).to.deep.equal({ code: 0, stdout: 'hello there\n/tmp\n1000\n', stderr: '' });
  });

  it('run without -a prints a process id; attach -p gets the output and exits 0', async function () {
    const started = await gaol(['run', '-c', "sh -c 'sleep 1; echo later; exit 4'", 'gaol-c1']);
    expect(started.code).to.equal(0);
    expect(started.stderr).to.equal('');
    expect(started.stdout).to.match(/^\S+\n$/);
    const pid = started.stdout.trim();
    const attached = await gaol(['attach', '-p', pid, 'gaol-c1']);
    expect(attached).to.deep.equal({ code: 0, stdout: 'later\n', stderr: '' });
  });

  it('properties prints key<TAB>value lines, and -j JSON', async function () {
    await server.client.setProperty('gaol-c1', 'colour', 'blue');
    await server.client.setProperty('gaol-c1', 'size', 'L');
    const r = await gaol(['properties', 'gaol-c1']);
    expect(r.code).to.equal(0);
    expect(r.stdout.split('\n')).to.include.members(['colour\tblue', 'size\tL']);
    const j = await gaol(['properties', '-j', 'gaol-c1']);
    expect(j.code).to.equal(0);
    expect(JSON.parse(j.stdout)).to.include({ colour: 'blue', size: 'L' });
    const filtered = await gaol(['list', '-p', 'colour=blue']);
    expect(filtered).to.deep.equal({ code: 0, stdout: 'gaol-c1\n', stderr: '' });
  });

  it('set-gracetime -g 1h keeps the container; -g 2s reaps it once idle', async function () {
    expect((await gaol(['create', '-n', 'gaol-grace'])).code).to.equal(0);
    expect(await gaol(['set-gracetime', '-g', '1h', 'gaol-grace'])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
    expect(await server.client.list()).to.include('gaol-grace');
    expect(await gaol(['set-gracetime', '-g', '2s', 'gaol-grace'])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
    const t0 = Date.now();
    const gone = await eventually(async () => !(await server.client.list()).includes('gaol-grace'), 10_000, 200);
    expect(gone, 'reaped within 10 s').to.equal(true);
    expect(Date.now() - t0, 'not reaped before the grace time').to.be.greaterThan(1500);
    expect(await leftovers('gaol-grace', { depot: server.depot })).to.deep.equal([]);
  });

  it('destroy removes the container; errors print one "error:" line and exit 1', async function () {
    expect(await gaol(['destroy', 'gaol-c1'])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
    expect((await gaol(['list'])).stdout.split('\n')).to.not.include('gaol-c1');
    expect(await leftovers('gaol-c1', { depot: server.depot })).to.deep.equal([]);

    expect(await gaol(['destroy', 'gaol-c1'])).to.deep.equal({ code: 1, stdout: '', stderr: 'error: unknown handle: gaol-c1\n' });
    expect(await gaol(['run', '-a', '-c', 'true', 'gaol-nosuch'])).to.deep.equal({ code: 1, stdout: '', stderr: 'error: unknown handle: gaol-nosuch\n' });

    expect((await gaol(['create', '-n', 'gaol-c2'])).code).to.equal(0);
    expect(await gaol(['attach', '-p', 'nope', 'gaol-c2'])).to.deep.equal({ code: 1, stdout: '', stderr: 'error: unknown process: nope\n' });
    const dup = await gaol(['create', '-n', 'gaol-c2']);
    expect(dup).to.deep.equal({ code: 1, stdout: '', stderr: "error: Handle 'gaol-c2' already in use\n" });
    const missing = await gaol(['run', '-a', '-c', '/no/such/binary', 'gaol-c2']);
    expect(missing.code).to.equal(1);
    expect(missing.stdout).to.equal('');
    expect(missing.stderr).to.match(/^error: [^\n]+\n$/);
    const badRootfs = await gaol(['create', '-n', 'gaol-badroot', '-r', '/no/such/rootfs']);
    expect(badRootfs.code).to.equal(1);
    expect(badRootfs.stderr).to.match(/^error: [^\n]*\/no\/such\/rootfs[^\n]*\n$/);
    expect(await leftovers('gaol-badroot', { depot: server.depot })).to.deep.equal([]);
    expect((await gaol(['destroy', 'gaol-c2'])).code).to.equal(0);
  });
});
