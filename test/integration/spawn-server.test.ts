// Issue 10: `run` without `runc exec`. garden-init (pid 1) starts a container's processes when
// trellis-exec asks it from the host (src/runtime/init/spawn-server.c). What a process is and
// how it ends must not change, and nothing inside the container may use the spawn server.

import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { ExecutableNotFound } from '../../src/errors.js';
import {
  cleanupServer, Collector, dumpLogsIfFailed, REPO, restartServer, runAndWait, runtimeDir, type Server, sh, sleep, spec, startServer,
} from './harness.js';

// What `runc exec` settles for a process, read by the process itself (its shell, $$).
const PROBE = [
  'set -- $(cat /proc/$$/stat)',
  'echo "pgid-is-self=$([ "$5" = "$$" ] && echo y || echo n) sid-is-self=$([ "$6" = "$$" ] && echo y || echo n)"',
  "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/$$/status",
  'cat /proc/$$/cgroup',
  'echo "umask=$(umask)"',
  'cat /proc/$$/limits',
  'for f in /proc/$$/fd/*; do echo "fd ${f##*/}"; done',
  'env | sort',
].join('\n');

const ppid = (c: Server['client'], h: string, user = '') =>
  runAndWait(c, h, sh('grep ^PPid: /proc/$$/status', { user })).then((r) => r.stdout.trim());

describe('issue 10: run through garden-init\'s spawn server (integration)', function () {
  let server: Server;
  let probeDir: string;
  let h: string;

  before(async function () {
    this.timeout(120_000);
    probeDir = await mkdtemp(join(runtimeDir(), 'spawn-probe-'));
    await chmod(probeDir, 0o755);
    execFileSync('sh', [join(REPO, 'scripts/build-c'), join(REPO, 'test/integration/spawn-probe.c'), join(probeDir, 'spawn-probe'), 'static'], { stdio: 'pipe' });
    server = await startServer();
    h = await server.client.create(spec({ handle: 'spawn-main', bind_mounts: [{ src_path: probeDir, dst_path: '/opt/probe', mode: 0, origin: 0 }] }));
    const made = await runAndWait(server.client, h, sh('addgroup -g 3000 team && adduser -D -u 3001 bob && addgroup bob team && echo made'));
    expect(made.stdout).to.equal('made\n');
  });

  after(async function () {
    await cleanupServer(server);
    await rm(probeDir, { recursive: true, force: true });
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('starts processes as garden-init\'s children (not by runc exec), and the record says so', async function () {
    expect(await ppid(server.client, h)).to.equal('PPid:\t1');
    expect(await ppid(server.client, h, 'bob')).to.equal('PPid:\t1');
    const record = JSON.parse(await readFile(join(server.depot, h, 'container.json'), 'utf8')) as { spawnServer?: unknown };
    expect(record.spawnServer).to.have.keys('userNs', 'netNs');
  });

  it('refuses a non-root process of the container: connection closed unanswered, nothing started', async function () {
    const r = await runAndWait(server.client, h, sh('/opt/probe/spawn-probe; ls /tmp/spawn-probe-pwned 2>&1', { user: 'bob' }));
    expect(r.stdout).to.match(/^connected\nrefused/);
    expect(r.stdout).to.include('No such file or directory');
  });

  it('refuses root in the container too: its pid is in the container\'s pid namespace (only the host side, pid 0, is answered)', async function () {
    // root in the container is the daemon's own uid mapped: uid alone cannot tell it from the
    // host. The pid can: SO_PEERCRED shows init a pid it can see for any process inside.
    const r = await runAndWait(server.client, h, sh('/opt/probe/spawn-probe; ls /tmp/spawn-probe-pwned 2>&1'));
    expect(r.stdout).to.match(/^connected\nrefused/);
    expect(r.stdout).to.include('No such file or directory');
  });

  it('kill through the API ends the real process (137), not only its proxy', async function () {
    const out = new Collector();
    const p = await server.client.run(h, sh('echo $$; exec sleep 1000'), { stdout: out, stderr: new Collector() });
    await out.waitFor('\n');
    const pid = out.text().trim();
    await p.signal(1);
    expect(await p.wait()).to.equal(137);
    const gone = await runAndWait(server.client, h, sh(`kill -0 ${pid} 2>/dev/null && echo alive || echo gone`));
    expect(gone.stdout).to.equal('gone\n');
  });

  it('reports signals and exit codes as runc exec did: TERM 143, a self-inflicted SEGV 139, exit 42', async function () {
    const out = new Collector();
    const p = await server.client.run(h, sh('echo ready; exec sleep 1000'), { stdout: out, stderr: new Collector() });
    await out.waitFor('ready\n');
    await p.signal(0);
    expect(await p.wait()).to.equal(143);
    expect((await runAndWait(server.client, h, sh('kill -SEGV $$'))).code).to.equal(139);
    expect((await runAndWait(server.client, h, sh('exit 42'))).code).to.equal(42);
  });

  it('a missing or unexecutable program is ExecutableNotFound, as root and as a user, and starts nothing', async function () {
    for (const user of ['', 'bob']) {
      for (const path of ['no-such-program', '/no/such/binary']) {
        const err = await server.client.run(h, { path, user }, { stdin: Readable.from([]) }).then(() => null, (e: unknown) => e);
        expect(err, `${path} as ${user || 'root'}`).to.be.instanceOf(ExecutableNotFound);
        expect((err as Error).message).to.include(path === 'no-such-program' ? 'executable file not found in $PATH' : 'no such file or directory');
      }
    }
    await runAndWait(server.client, h, sh('printf "#!/bin/sh\\necho hi\\n" > /tmp/noexec && chmod 644 /tmp/noexec'));
    const noexec = await server.client.run(h, { path: '/tmp/noexec', user: 'bob' }, {}).then(() => null, (e: unknown) => e);
    expect(noexec).to.be.instanceOf(ExecutableNotFound);
    expect((noexec as Error).message).to.match(/permission denied/i);
    const cwd = await server.client.run(h, { path: 'true', dir: '/no/such/dir' }, {}).then(() => null, (e: unknown) => e);
    expect((cwd as Error).message).to.include('chdir to cwd ("/no/such/dir") set in config.json failed: no such file or directory');
  });

  it('gives a user a terminal of its own with the window size, resizes it, and keeps the session', async function () {
    const stdout = new Collector();
    const stdin = new PassThrough();
    const p = await server.client.run(h, { path: 'sh', args: [], user: 'bob', tty: { window_size: { columns: 100, rows: 30 } } }, { stdin, stdout, stderr: new Collector() });
    stdin.write('stty size; stat -c "%U %g" $(tty); echo marker-$((6*7))\n');
    await stdout.waitFor('marker-42\r\n');
    await p.setTTY({ window_size: { columns: 120, rows: 40 } });
    stdin.write('stty size; exit 3\n');
    expect(await p.wait()).to.equal(3);
    expect(stdout.text()).to.include('30 100\r\nbob 5\r\n');
    expect(stdout.text()).to.include('40 120\r\n');
  });

  it('runs 20 processes at once in one container, each with its own output and status', async function () {
    this.timeout(120_000);
    const runs = await Promise.all(Array.from({ length: 20 }, (_, i) => runAndWait(server.client, h, sh(`echo run-${i}; exit ${i}`))));
    runs.forEach((r, i) => expect(r, `run ${i}`).to.include({ stdout: `run-${i}\n`, code: i }));
  });

  it('a process keeps running across gdn kill -9 and a restart, and reports its exit; kill reaches it afterwards', async function () {
    this.timeout(120_000);
    const p = await server.client.run(h, { id: 'survivor', ...sh('sleep 2; echo done; exit 5') }, {});
    p.detach();
    const q = await server.client.run(h, { id: 'victim', ...sh('exec sleep 1000') }, {});
    q.detach();
    await server.kill9();
    server = await restartServer(server);
    const out = new Collector();
    const again = await server.client.attach(h, 'survivor', { stdout: out, stderr: new Collector() });
    expect(await again.wait()).to.equal(5);
    expect(out.text()).to.equal('done\n');
    const victim = await server.client.attach(h, 'victim', { stdout: new Collector(), stderr: new Collector() });
    await victim.signal(1);
    expect(await victim.wait()).to.equal(137);
  });

  it('a pid that is no longer the recorded init (its namespaces differ) starts nothing: a recycled pid leads nowhere', async function () {
    this.timeout(120_000);
    const path = join(server.depot, h, 'container.json');
    const original = await readFile(path, 'utf8');
    const record = JSON.parse(original) as { spawnServer: { userNs: { ino: string } } };
    record.spawnServer.userNs.ino = String(BigInt(record.spawnServer.userNs.ino) + 1n);
    await server.kill9();
    await writeFile(path, JSON.stringify(record));
    server = await restartServer(server);
    const err = await server.client.run(h, sh('echo should-not-run'), {}).then(() => null, (e: unknown) => e as Error);
    expect(err?.message).to.include('is no longer the container\'s init (its user namespace differs)');
    await server.kill9();
    await writeFile(path, original);
    server = await restartServer(server);
    expect((await runAndWait(server.client, h, sh('echo runs-again'))).stdout).to.equal('runs-again\n');
  });

  it('leaves a process exactly as runc exec would: ids, groups, caps, no_new_privs, seccomp, cgroup, umask, rlimits, session, fds, env', async function () {
    this.timeout(120_000);
    const rlimits = { nofile: 4321, nproc: 777 };
    const probe = async () => {
      const out: Record<string, string> = {};
      for (const user of ['', 'bob']) {
        const r = await runAndWait(server.client, h, { ...sh(PROBE), user, rlimits, env: ['DUP=first', 'OTHER=x', 'DUP=second'] }, '');
        expect(r.code, `probe as ${user || 'root'}: ${r.stderr}`).to.equal(0);
        out[user || 'root'] = r.stdout;
      }
      return out;
    };
    expect(await ppid(server.client, h)).to.equal('PPid:\t1');
    const spawned = await probe();
    // The same container as an older gdn made it (no spawn server in its record): runc exec.
    await server.kill9();
    const path = join(server.depot, h, 'container.json');
    const record = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    delete record.spawnServer;
    await writeFile(path, JSON.stringify(record));
    server = await restartServer(server);
    expect(await ppid(server.client, h), 'runc exec starts it from outside the pid namespace').to.equal('PPid:\t0');
    const execd = await probe();
    expect(spawned.root).to.include('Max open files            4321');
    expect(spawned.bob).to.match(/^Groups:\s+3000\s*$/m);
    expect(spawned).to.deep.equal(execd);
  });
});
