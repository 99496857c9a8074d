// Stream-in/out (tar run inside the container as the requested user) and TTY
// processes (a real pty through conmon, window size and resize).
import { expect } from 'chai';
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { cleanupServer, Collector, dumpLogsIfFailed, runAndWait, runtimeDir, type Server, sh, spec, startServer } from './harness.js';

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

async function tarOf(dir: string, ...args: string[]): Promise<Buffer> {
  const r = await execa('tar', ['-C', dir, '-cf', '-', ...args], { encoding: 'buffer', stripFinalNewline: false });
  return Buffer.from(r.stdout);
}

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(Buffer.from(c as Buffer));
  return Buffer.concat(parts);
}

async function tarList(archive: Buffer): Promise<string[]> {
  const r = await execa('tar', ['-tf', '-'], { input: archive });
  return r.stdout.split('\n').filter((l) => l !== '').sort();
}

describe('stream-in and stream-out (integration)', function () {
  let server: Server;
  let work: string;
  const h = 'files';
  const blob = randomBytes(300_000);

  before(async function () {
    server = await startServer();
    await server.client.create(spec({ handle: h }));
    work = await mkdtemp(join(runtimeDir(), 'files-'));
    await mkdir(join(work, 'src', 'sub'), { recursive: true });
    await writeFile(join(work, 'src', 'blob.bin'), blob);
    await writeFile(join(work, 'src', 'sub', 'run.sh'), '#!/bin/sh\necho ran\n', { mode: 0o755 });
  });

  after(async function () {
    await cleanupServer(server);
    await rm(work, { recursive: true, force: true });
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('unpacks a tar into a new directory as root, bytes and exec bits intact', async function () {
    await server.client.streamIn(h, { path: '/data/in', tarStream: Readable.from([await tarOf(join(work, 'src'), '.')]) });
    const r = await runAndWait(server.client, h, sh('md5sum /data/in/blob.bin; /data/in/sub/run.sh; stat -c "%u:%g" /data/in/blob.bin'));
    expect(r.code).to.equal(0);
    expect(r.stdout).to.equal(`${md5(blob)}  /data/in/blob.bin\nran\n0:0\n`);
  });

  it('unpacks as the given user, a relative destination under their home, owned by them', async function () {
    await server.client.streamIn(h, { path: 'inbox', user: 'alice', tarStream: Readable.from([await tarOf(join(work, 'src'), '.')]) });
    const r = await runAndWait(server.client, h, sh('stat -c "%u:%g %n" /home/alice/inbox/blob.bin /home/alice/inbox/sub'));
    expect(r.stdout).to.equal('1000:1000 /home/alice/inbox/blob.bin\n1000:1000 /home/alice/inbox/sub\n');
  });

  it('a user cannot unpack where they may not write', async function () {
    let err: Error | undefined;
    try {
      await server.client.streamIn(h, { path: '/root/nope', user: 'alice', tarStream: Readable.from([await tarOf(join(work, 'src'), '.')]) });
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).to.match(/Permission denied/);
    expect(await server.client.list()).to.include(h);
  });

  it('packs a path as one top-level entry, and a trailing slash as ./ entries', async function () {
    const named = await readAll(await server.client.streamOut(h, { path: '/data/in' }));
    expect(await tarList(named)).to.include.members(['in/', 'in/blob.bin', 'in/sub/', 'in/sub/run.sh']);
    const contents = await readAll(await server.client.streamOut(h, { path: '/data/in/' }));
    expect(await tarList(contents)).to.include.members(['./', './blob.bin', './sub/', './sub/run.sh']);
    const blobBack = await execa('tar', ['-xOf', '-', './blob.bin'], { input: contents, encoding: 'buffer' });
    expect(md5(Buffer.from(blobBack.stdout))).to.equal(md5(blob));
  });

  it('a missing source is an error before any byte is sent', async function () {
    let err: Error | undefined;
    try {
      await readAll(await server.client.streamOut(h, { path: '/no/such/thing' }));
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).to.match(/No such file or directory/);
  });

  it('hostile archives and symlinks never write outside the container', async function () {
    // A host directory the test user can write: an escape would land here.
    const target = join(work, 'host-target');
    await mkdir(target);
    const evil = join(work, 'evil');
    await mkdir(evil);
    await writeFile(join(evil, 'x'), 'pwned\n');
    await symlink(target, join(evil, 'link'));
    // 1. a symlink inside the container pointing at the host path, then unpack through it:
    // it resolves inside the container, where that path is the container's own directory
    expect((await runAndWait(server.client, h, sh(`mkdir -p ${target} && ln -s ${target} /escape`))).code).to.equal(0);
    await server.client.streamIn(h, { path: '/escape', tarStream: Readable.from([await tarOf(evil, 'x')]) });
    // 2. entries with ../ and absolute names
    const dotdot = await tarOf(evil, '--transform', `s,^x$,../../../../../../..${target}/dotdot,`, 'x');
    await server.client.streamIn(h, { path: '/tmp/d', tarStream: Readable.from([dotdot]) }).catch(() => {});
    const absolute = await tarOf(evil, '-P', '--transform', `s,^x$,${target}/absolute,`, 'x');
    await server.client.streamIn(h, { path: '/tmp/a', tarStream: Readable.from([absolute]) }).catch(() => {});
    // 3. an archive carrying a symlink to the host path and a file through it
    const linked = await tarOf(evil, 'link', '--transform', 's,^x$,link/through,', 'x');
    await server.client.streamIn(h, { path: '/tmp/l', tarStream: Readable.from([linked]) }).catch(() => {});
    expect(await readdir(target)).to.deep.equal([]);
    // what landed, landed inside the container
    const r = await runAndWait(server.client, h, sh(`cat ${target}/x`));
    expect(r.stdout).to.equal('pwned\n');
    expect(existsSync(join(target, 'x'))).to.equal(false);
  });
});

describe('TTY processes (integration)', function () {
  let server: Server;
  const h = 'tty';

  before(async function () {
    server = await startServer();
    await server.client.create(spec({ handle: h }));
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('runs on a pty with the requested size, resizes, and merges output on stdout', async function () {
    const stdout = new Collector();
    const stderr = new Collector();
    const stdin = new PassThrough();
    const p = await server.client.run(
      h,
      { path: 'sh', args: [], user: 'root', tty: { window_size: { columns: 100, rows: 40 } } },
      { stdin, stdout, stderr },
    );
    stdin.write('stty size; tty; echo to-stderr >&2\n');
    // The pty echoes what is typed: wait for the command's own output line.
    await stdout.waitFor('\nto-stderr\r\n');
    await p.setTTY({ window_size: { columns: 132, rows: 50 } });
    stdin.write('stty size; exit 4\n');
    expect(await p.wait()).to.equal(4);
    const out = stdout.text();
    expect(out).to.include('40 100\r\n');
    expect(out).to.include('/dev/pts/0\r\n');
    expect(out).to.include('50 132\r\n');
    expect(stderr.text()).to.equal('');
  });

  it('defaults to 80x24 when no size is given', async function () {
    const r = await runAndWait(server.client, h, { path: 'stty', args: ['size'], user: 'root', tty: {} });
    expect(r.code).to.equal(0);
    expect(r.stdout).to.equal('24 80\r\n');
  });
});
