// What a container cannot do: escape its rootfs, gain capabilities it was not given,
// see masked /proc files, write /proc/sys, or run as anything but mapped ids.
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readSubIdFile, primaryRange } from '../../src/idmap/subid.js';
import { cleanupServer, dumpLogsIfFailed, PATHS, runAndWait, type Server, sh, spec, startServer } from './harness.js';

/** A fingerprint of a tree: names, sizes, modes and link targets (no atime). */
async function fingerprint(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    for (const name of (await readdir(d)).sort()) {
      const p = join(d, name);
      const st = await stat(p).catch(() => undefined);
      const link = await readlink(p).catch(() => '');
      h.update(`${p} ${st?.size} ${st?.mode} ${st?.mtimeMs} ${link}\n`);
      if (st?.isDirectory() && link === '') await walk(p).catch(() => {});
    }
  };
  await walk(dir);
  return h.digest('hex');
}

describe('container security (integration)', function () {
  let server: Server;
  const h = 'sec';

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

  it('runs every process under a seccomp filter', async function () {
    const r = await runAndWait(server.client, h, sh('grep "^Seccomp:" /proc/self/status'));
    expect(r.stdout).to.equal('Seccomp:\t2\n');
  });

  it("gives root Garden's 14 capabilities and a non-root user none", async function () {
    const root = await runAndWait(server.client, h, sh('grep "^CapEff:" /proc/self/status'));
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
    expect(root.stdout).to.equal('CapEff:\t00000000a80425fb\n');
    const alice = await runAndWait(server.client, h, sh('grep "^CapEff:" /proc/self/status', { user: 'alice' }));
    expect(alice.stdout).to.equal('CapEff:\t0000000000000000\n');
  });

  it('masks sensitive /proc files and keeps /proc/sys read-only', async function () {
    // /proc/keys is on the masked list and exists on every kernel (kcore does not).
    const r = await runAndWait(server.client, h, sh('wc -c < /proc/keys; echo 1 > /proc/sys/kernel/ns_last_pid && echo wrote || echo refused'));
    expect(r.stdout).to.equal('0\nrefused\n');
  });

  it('cannot mount, even as container root', async function () {
    const r = await runAndWait(server.client, h, sh('mkdir -p /mnt/x && mount -t tmpfs tmpfs /mnt/x && echo mounted || echo refused'));
    expect(r.stdout).to.include('refused');
  });

  it('writes and deletes in the container never touch the image directory', async function () {
    const before = await fingerprint(PATHS.defaultRootfs);
    const r = await runAndWait(server.client, h, sh('echo new > /etc/new-file && rm -f /bin/true /etc/passwd- && chmod 777 /bin && echo done'));
    expect(r.stdout).to.equal('done\n');
    expect(await fingerprint(PATHS.defaultRootfs)).to.equal(before);
    expect((await runAndWait(server.client, h, sh('ls /bin/true 2>&1; cat /etc/new-file'))).stdout).to.equal('ls: /bin/true: No such file or directory\nnew\n');
  });

  it('runs container users as the mapped subordinate ids on the host', async function () {
    const user = (await readFile('/proc/self/status', 'utf8')).match(/^Uid:\s+(\d+)/m)![1]!;
    const range = primaryRange(readSubIdFile('/etc/subuid'), { name: process.env.USER, id: Number(user) })!;
    const proc = await server.client.run(h, sh('sleep 30', { user: 'alice' }), {});
    try {
      let hostUid: string | undefined;
      for (let i = 0; i < 50 && hostUid === undefined; i++) {
        for (const pid of await readdir('/proc')) {
          const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
          if (cmd === 'sleep\u000030\u0000') hostUid = (await readFile(`/proc/${pid}/status`, 'utf8')).match(/^Uid:\s+(\d+)/m)?.[1];
        }
        if (hostUid === undefined) await new Promise((r) => setTimeout(r, 50));
      }
      expect(Number(hostUid)).to.equal(range.start + 1000 - 1);
    } finally {
      proc.signal(1);
      await proc.wait();
    }
  });

  it('a FIFO as /etc/passwd does not stall the server, only that container, and only for a while (runc exec)', async function () {
    const { startServer: start, runtimeDir } = await import('./harness.js');
    const { copyFile, mkdtemp, rm } = await import('node:fs/promises');
    const { BUILT_INIT } = await import('../../src/runtime/bundle.js');
    // runc reads the container's /etc/passwd to start a process: the path containers made by
    // an older gdn, or given --init-bin (this copy of garden-init), still take
    const initDir = await mkdtemp(join(runtimeDir(), 'init-bin-'));
    await copyFile(BUILT_INIT, join(initDir, 'garden-init'));
    const quick = await start({ extraArgs: ['--process-start-timeout', '2s', '--init-bin', join(initDir, 'garden-init')] });
    try {
      await quick.client.create(spec({ handle: 'sec-fifo' }));
      await quick.client.create(spec({ handle: 'sec-fine' }));
      expect((await runAndWait(quick.client, 'sec-fifo', sh('rm /etc/passwd && mkfifo /etc/passwd && echo made'))).stdout).to.equal('made\n');
      // Five at once: more than the daemon's I/O threads, which a blocking open in the daemon would all take.
      const stuck = Array.from({ length: 5 }, () => runAndWait(quick.client, 'sec-fifo', sh('id -u')).then(() => null, (e: unknown) => e as Error));
      const fine = await runAndWait(quick.client, 'sec-fine', sh('id -u'));
      expect(fine).to.include({ code: 0, stdout: '0\n' });
      for (const err of await Promise.all(stuck)) expect(err?.message).to.match(/did not start the process within 2s/);
      const { monitorsMentioning } = await import('./harness.js');
      const { eventually } = await import('./harness.js');
      expect(await eventually(async () => (await monitorsMentioning('sec-fifo')).length <= 1, 5000), 'only the init monitor is left').to.equal(true);
    } finally {
      const { cleanupServer: clean } = await import('./harness.js');
      await clean(quick);
      await rm(initDir, { recursive: true, force: true });
    }
  });

  it('a FIFO as /etc/passwd does not stall the spawn server (issue 10): Run starts, only the program reading it blocks, and is killed', async function () {
    await server.client.create(spec({ handle: 'sec-fifo-spawn' }));
    try {
      expect((await runAndWait(server.client, 'sec-fifo-spawn', sh('rm /etc/passwd && mkfifo /etc/passwd && echo made'))).stdout).to.equal('made\n');
      const { Collector } = await import('./harness.js');
      const stuck = await Promise.all(Array.from({ length: 5 }, () => server.client.run('sec-fifo-spawn', sh('id -u'), { stdout: new Collector(), stderr: new Collector() })));
      expect((await runAndWait(server.client, 'sec-fifo-spawn', sh('echo still-running'))).stdout).to.equal('still-running\n');
      for (const p of stuck) await p.signal(1);
      for (const p of stuck) expect(await p.wait()).to.equal(137);
    } finally {
      await server.client.destroy('sec-fifo-spawn');
    }
  });

  it('an /etc/passwd symlink to a host path is not followed on the host', async function () {
    const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
    const { join } = await import('node:path');
    const { runtimeDir } = await import('./harness.js');
    const hostDir = await mkdtemp(join(runtimeDir(), 'hostpasswd-'));
    const hostFile = join(hostDir, 'passwd');
    await writeFile(hostFile, 'mallory:x:4242:4242::/:/bin/sh\n');
    try {
      await server.client.create(spec({ handle: 'sec-link' }));
      expect((await runAndWait(server.client, 'sec-link', sh(`ln -sf ${hostFile} /etc/passwd && echo linked`))).stdout).to.equal('linked\n');
      const err = await runAndWait(server.client, 'sec-link', sh('id -u', { user: 'mallory' })).then(() => null, (e: unknown) => e as Error);
      expect(err?.message).to.match(/unable to find user mallory/);
      await server.client.destroy('sec-link');
    } finally {
      await rm(hostDir, { recursive: true, force: true });
    }
  });

  it('a user whose home directory is missing starts in /', async function () {
    await server.client.create(spec({ handle: 'sec-home' }));
    await runAndWait(server.client, 'sec-home', sh('rm -rf /home/alice'));
    expect((await runAndWait(server.client, 'sec-home', { path: 'pwd', user: 'alice' })).stdout).to.equal('/\n');
    await server.client.destroy('sec-home');
  });
});
