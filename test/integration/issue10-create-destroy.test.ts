// Issue #10: create's second half reads runc's exec fifo in gdn instead of running
// `runc start` (src/runtime/execfifo.ts), and destroy does runc's delete of the stopped
// container itself (src/runtime/runcdelete.ts). The container must end as runc would leave
// it; an init that dies first, a gdn killed between the halves, or a runc state that
// vanished must leave nothing: processes, monitors, cgroups, depot.
// A wrapper around runc (--runtime-plugin) does what a test asks right after `runc create`.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, open, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadUserNetwork } from '../../plugins/networker/config.js';
import { Protocol } from '../../src/client/types.js';
import {
  cleanupServer, dumpLogsIfFailed, eventually, leftovers, monitorsMentioning, restartServer, runAndWait, runtimeDir, type Server, sh, spec, startServer,
} from './harness.js';

const RUNC = '/usr/sbin/runc';

/** runc, and after a successful `create`: per `<dir>/mode`, kill the new init, or hold (gdn is killed meanwhile). */
async function runcWrapper(dir: string): Promise<string> {
  const path = join(dir, 'runc-wrapper');
  await writeFile(path, `#!/bin/sh
${RUNC} "$@" || exit $?
pidfile=; prev=; create=
for a do
  [ "$prev" = --pid-file ] && pidfile=$a
  [ "$a" = create ] && create=1
  prev=$a
done
[ -n "$create" ] && [ -n "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
case $(cat ${dir}/mode 2>/dev/null) in
  kill) cat /proc/$pid/cgroup > ${dir}/cgroup; kill -9 "$pid" ;;
  hold) echo "$pid" > ${dir}/held; sleep 2 ;;
esac
exit 0
`);
  await chmod(path, 0o755);
  return path;
}

/** The cgroup directories a /proc/<pid>/cgroup text names (v1 controllers and v2). */
function cgroupDirs(text: string): string[] {
  const out: string[] = [];
  for (const line of text.trim().split('\n')) {
    const [, controllers, path] = line.split(':');
    if (path === undefined || path === '/') continue;
    if (controllers === '') out.push(join('/sys/fs/cgroup/unified', path), join('/sys/fs/cgroup', path));
    else for (const c of controllers!.split(',')) out.push(join('/sys/fs/cgroup', c.replace(/^name=/, ''), path));
  }
  return out.filter((d) => !d.endsWith('/sys/fs/cgroup/') && d.includes('/sys/fs/cgroup/'));
}

function runcState(server: Server, handle: string): { status: string; pid: number } {
  const root = join(server.depot, handle, 'runc');
  return JSON.parse(execFileSync(RUNC, ['--root', root, 'state', handle], { encoding: 'utf8' })) as { status: string; pid: number };
}

describe('issue 10: create and destroy without runc start and runc delete processes (integration)', function () {
  let server: Server;
  let dir: string;

  before(async function () {
    dir = runtimeDir();
    dir = join(dir, `issue10-start-${process.pid}`);
    await rm(dir, { recursive: true, force: true });
    execFileSync('mkdir', ['-p', dir]);
    server = await startServer({ extraArgs: ['--runtime-plugin', await runcWrapper(dir)] });
  });

  after(async function () {
    await writeFile(join(dir, 'mode'), '');
    await cleanupServer(server);
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(async function () {
    await writeFile(join(dir, 'mode'), '');
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('after create runc reports the container running, its exec fifo gone, and processes run', async function () {
    const handle = 'fifo-started';
    await server.client.create(spec({ handle }));
    const st = runcState(server, handle);
    expect(st.status).to.equal('running');
    expect(existsSync(join(server.depot, handle, 'runc', handle, 'exec.fifo'))).to.equal(false);
    expect(await runAndWait(server.client, handle, sh('echo up'))).to.include({ code: 0, stdout: 'up\n' });
    // the init is garden-init, past its exec: no runc init left waiting
    expect((await readFile(`/proc/${st.pid}/cmdline`, 'utf8')).split('\0')[0]).to.not.match(/runc/);
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
  });

  it('an init that dies before it is started fails the create at once with runc\'s error, and leaves nothing (no cgroup either)', async function () {
    const handle = 'fifo-dead-init';
    await writeFile(join(dir, 'mode'), 'kill');
    const t0 = Date.now();
    const err = await server.client.create(spec({ handle })).then(() => undefined, (e: unknown) => e as Error);
    expect(err, 'the create failed').to.be.instanceOf(Error);
    expect(err!.message).to.match(/runc start: container process is already dead/);
    expect(Date.now() - t0, 'no wait for a timeout').to.be.below(10_000);
    expect(await server.client.list()).to.not.include(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    const cgroups = cgroupDirs(await readFile(join(dir, 'cgroup'), 'utf8')).filter((d) => d.includes(handle));
    expect(cgroups, 'the init had a cgroup of its own').to.not.deep.equal([]);
    expect(await eventually(() => cgroups.every((d) => !existsSync(d)), 5000), `cgroups left: ${cgroups.filter((d) => existsSync(d)).join(' ')}`).to.equal(true);
    // the server goes on creating containers
    await writeFile(join(dir, 'mode'), '');
    await server.client.create(spec({ handle }));
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
  });

  it('a gdn killed -9 between create\'s halves (init created, not started): the next start takes it all down', async function () {
    const handle = 'fifo-killed-between';
    await writeFile(join(dir, 'mode'), 'hold');
    await rm(join(dir, 'held'), { force: true });
    const creating = server.client.create(spec({ handle })).then(() => undefined, (e: unknown) => e);
    expect(await eventually(() => existsSync(join(dir, 'held')), 30_000, 20), 'runc create ran').to.equal(true);
    const pid = Number((await readFile(join(dir, 'held'), 'utf8')).trim());
    expect(runcState(server, handle).status).to.equal('created');
    await server.kill9();
    await creating;
    await writeFile(join(dir, 'mode'), '');
    server = await restartServer(server);
    expect(await server.client.list()).to.not.include(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    expect(await eventually(() => !existsSync(`/proc/${pid}`) || /\) Z /.test(execFileSync('cat', [`/proc/${pid}/stat`], { encoding: 'utf8' })), 5000), 'the init is gone').to.equal(true);
    await server.client.create(spec({ handle }));
    expect(runcState(server, handle).status).to.equal('running');
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
  });

  it('destroy removes the container\'s cgroups in every hierarchy and its runc state', async function () {
    const handle = 'own-delete';
    await server.client.create(spec({ handle }));
    const { pid } = runcState(server, handle);
    const cgroups = cgroupDirs(await readFile(`/proc/${pid}/cgroup`, 'utf8')).filter((d) => d.includes(handle) && existsSync(d));
    expect(cgroups, 'the container has cgroups of its own').to.not.deep.equal([]);
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    expect(cgroups.filter((d) => existsSync(d)), 'cgroups left').to.deep.equal([]);
    expect(existsSync(`/proc/${pid}`) && !/\) Z /.test(await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => ') Z ')), 'the init is gone').to.equal(false);
  });

  it('destroy of a container whose runc state vanished kills its init, its processes and its monitor, and removes its cgroups', async function () {
    const handle = 'state-vanished';
    await server.client.create(spec({ handle }));
    const { pid } = runcState(server, handle);
    const cgroups = cgroupDirs(await readFile(`/proc/${pid}/cgroup`, 'utf8')).filter((d) => d.includes(handle) && existsSync(d));
    expect(cgroups).to.not.deep.equal([]);
    const sleeper = await server.client.run(handle, sh('exec sleep 1000'), {});
    expect(sleeper).to.not.equal(undefined);
    await rm(join(server.depot, handle, 'runc', handle), { recursive: true, force: true });
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    expect(cgroups.filter((d) => existsSync(d)), 'cgroups left').to.deep.equal([]);
    const alive = async (p: number) => {
      try {
        return !/\) [ZX] /.test(await readFile(`/proc/${p}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    expect(await alive(pid), 'the init is gone').to.equal(false);
  });
});

describe('issue 10: runc runs from one sealed copy, not a copy of itself per container init (integration)', function () {
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

  it('the container\'s monitor runs runc as the spawner\'s sealed memfd, which no one can write', async function () {
    const handle = 'sealed-runc';
    await server.client.create(spec({ handle }));
    const monitors = (await monitorsMentioning(handle)).filter((p) => p.comm === 'conmon');
    expect(monitors, 'the init\'s monitor').to.have.length.greaterThan(0);
    const argv = monitors[0]!.cmdline;
    const runtime = argv[argv.indexOf('-r') + 1]!;
    expect(runtime).to.match(/^\/proc\/\d+\/fd\/1000$/);
    expect(await readlink(runtime)).to.match(/^\/memfd:trellis-runtime/);
    // a sealed copy: runc 1.1 runs from it without copying itself (F_SEAL_WRITE and the rest)
    const write = await open(runtime, 'r+').then(async (f) => {
      try {
        await f.write('x', 0);
        return 'written';
      } catch (err) {
        return (err as NodeJS.ErrnoException).code;
      } finally {
        await f.close();
      }
    }, (err: NodeJS.ErrnoException) => err.code);
    expect(write).to.equal('EPERM');
    expect(execFileSync(runtime, ['--version'], { encoding: 'utf8' })).to.match(/^runc version/);
    expect(await runAndWait(server.client, handle, sh('echo ran'))).to.include({ code: 0, stdout: 'ran\n' });
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
  });
});

describe('issue 10: the egress tables in the container\'s network namespace, exactly (integration)', function () {
  let server: Server;
  const NET = loadUserNetwork(process.getuid!());

  before(async function () {
    server = await startServer();
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  /** iptables-save (or ip6tables-save) inside the container's netns, without comments and packet counters. */
  const saved = (pid: number, bin: string): string[] =>
    execFileSync('nsenter', ['--preserve-credentials', '--target', String(pid), '--user', '--net', bin], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('#'))
      .map((l) => l.replace(/ \[\d+:\d+\]$/, ' [0:0]'));

  it('IPv4: deny by default, DNS, the subnet open, the host only through net-out rules; IPv6: nothing but loopback', async function () {
    const handle = 'egress-tables';
    await server.client.create(spec({ handle }));
    const { pid } = runcState(server, handle);
    const resolv = await readFile(join(server.depot, handle, 'resolv.conf'), 'utf8');
    const dns = [...resolv.matchAll(/^nameserver (\S+)$/gm)].map((m) => m[1]!);
    const gw = NET.gateway;
    const v4 = (netout: string[]) => [
      '*filter',
      ':INPUT ACCEPT [0:0]',
      ':FORWARD DROP [0:0]',
      ':OUTPUT ACCEPT [0:0]',
      ':trellis-netout - [0:0]',
      '-A OUTPUT -o lo -j ACCEPT',
      '-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
      ...dns.flatMap((d) => [`-A OUTPUT -d ${d}/32 -p udp -m udp --dport 53 -j ACCEPT`, `-A OUTPUT -d ${d}/32 -p tcp -m tcp --dport 53 -j ACCEPT`]),
      `-A OUTPUT -d ${gw}/32 -j trellis-netout`,
      `-A OUTPUT -d ${gw}/32 -p tcp -j REJECT --reject-with tcp-reset`,
      `-A OUTPUT -d ${gw}/32 -j REJECT --reject-with icmp-port-unreachable`,
      `-A OUTPUT -d ${NET.subnet} -j ACCEPT`,
      '-A OUTPUT -j trellis-netout',
      '-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset',
      '-A OUTPUT -j REJECT --reject-with icmp-port-unreachable',
      ...netout,
      'COMMIT',
    ];
    expect(saved(pid, 'iptables-save')).to.deep.equal(v4([]));
    expect(saved(pid, 'ip6tables-save')).to.deep.equal(['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD DROP [0:0]', ':OUTPUT DROP [0:0]', '-A OUTPUT -o lo -j ACCEPT', 'COMMIT']);
    await server.client.netOut(handle, { protocol: Protocol.TCP, networks: [{ start: gw, end: gw }], ports: [{ start: 8080, end: 8080 }] });
    expect(saved(pid, 'iptables-save')).to.deep.equal(v4([`-A trellis-netout -d ${gw}/32 -p tcp -m tcp --dport 8080 -j ACCEPT`]));
    await server.client.destroy(handle);
    expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
  });
});
