// Issue 8: what Garden's own clients and suite expect of a container, in our words.
// A process's real groups (through garden-init's launcher), pid 1, the mounts Garden shows,
// nested user namespaces refused, capacity, stream-in errors, the debug server, Garden's
// docker:///repo#tag form, and adduser/addgroup in the default rootfs.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { get } from 'node:http';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { parseNamespaceFile } from '../../plugins/grootfs/store.js';
import { containerAddresses, loadUserNetwork, NET_CONF_DIR } from '../../plugins/networker/config.js';
import {
  cleanupServer, dumpLogsIfFailed, leftovers, runAndWait, runtimeDir, type Server, sh, spec, startServer, STORE,
} from './harness.js';
import { busyboxLayerEntries, gzip, layerTar, writeOciLayout } from './images.js';
import { freePort, type Registry, startRegistry, stopAllRegistries } from './registry.js';

/** Every capability Garden gives a container (the 14 of bundle.ts), as /proc shows the mask. */
const GARDEN_CAP_MASK = '00000000a80425fb';

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a failure');
}

describe('issue 8: Garden conformance (integration)', function () {
  let server: Server;
  let registry: Registry;
  let debugPort: number;
  const h = 'conf';
  const run = (script: string, extra: Parameters<typeof sh>[1] = {}) => runAndWait(server.client, h, sh(script, extra));

  before(async function () {
    this.timeout(120_000);
    registry = await startRegistry();
    debugPort = await freePort();
    server = await startServer({
      extraArgs: [
        '--docker-registry', registry.host, '--insecure-docker-registry', registry.host,
        '--debug-bind-ip', '127.0.0.1', '--debug-bind-port', String(debugPort),
      ],
    });
    await server.client.create(spec({ handle: h }));
    // bob: his own group and a member of team; carol: no group but her own
    const made = await run('addgroup -g 3000 team && adduser -D -u 3001 bob && addgroup bob team && adduser -D -H carol && echo made');
    expect(made.stdout, made.stderr).to.equal('made\n');
  });

  after(async function () {
    this.timeout(120_000);
    await cleanupServer(server);
    await stopAllRegistries();
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  describe('groups', function () {
    it('gives a user exactly its primary group and the groups /etc/group lists it in, never group 0', async function () {
      const bob = await run('id -u; id -g; id -G; grep "^Groups:" /proc/self/status', { user: 'bob' });
      expect(bob.stdout).to.match(/^3001\n3001\n3001 3000\nGroups:\s+3000\s*\n$/);
      const carol = await run('id -G; grep "^Groups:" /proc/self/status', { user: 'carol' });
      expect(carol.stdout).to.match(/^\d+\nGroups:\s*\n$/);
      expect(carol.stdout.split('\n')[0]).to.not.equal('0');
    });

    it('keeps root as it was: uid 0, gid 0, its own groups', async function () {
      const r = await run('id -u; id -g; grep "^CapEff:" /proc/self/status');
      expect(r.stdout).to.equal(`0\n0\nCapEff:\t${GARDEN_CAP_MASK}\n`);
    });

    it('lets setgroups work inside: su as root takes the target user\'s groups from /etc/group', async function () {
      const r = await run('su -s /bin/sh bob -c "id -G; grep ^Groups: /proc/self/status"');
      // initgroups (su's way) also lists the primary group
      expect(r.stdout, r.stderr).to.match(/^3001 3000\nGroups:\s+3000 3001\s*\n$/);
    });

    it('leaves a non-root process the capabilities runc gives a user: none effective or permitted, Garden\'s set inheritable and bounding', async function () {
      const r = await run('grep "^Cap" /proc/self/status', { user: 'bob' });
      expect(r.stdout).to.equal(
        `CapInh:\t${GARDEN_CAP_MASK}\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t${GARDEN_CAP_MASK}\nCapAmb:\t0000000000000000\n`,
      );
    });

    it('runs the program itself: its exit code, its HOME and USER, no launcher left in the process table', async function () {
      expect((await run('exit 7', { user: 'bob' })).code).to.equal(7);
      expect((await run('echo $HOME $USER; pwd', { user: 'bob' })).stdout).to.equal('/home/bob bob\n/home/bob\n');
      expect((await run('echo $HOME', { user: 'bob', env: ['HOME=/elsewhere'] })).stdout).to.equal('/elsewhere\n');
      const p = await server.client.run(h, { path: 'sleep', args: ['30'], user: 'bob' }, {});
      try {
        const ps = await run('for d in /proc/[0-9]*; do cat $d/cmdline | tr "\\0" " "; echo; done');
        expect(ps.stdout).to.include('sleep 30');
        expect(ps.stdout).to.not.include('--run');
      } finally {
        await p.signal(1);
        await p.wait();
      }
    });

    it('gives a user its stdio, so /dev/stdout and /dev/stderr reopen', async function () {
      const r = await run('echo out > /dev/stdout; echo err > /dev/stderr; cat /dev/stdin', { user: 'bob' });
      expect(r.stdout).to.equal('out\n');
      expect(r.stderr).to.equal('err\n');
      expect(r.code).to.equal(0);
    });

    it('hands a user its terminal', async function () {
      const r = await runAndWait(server.client, h, { path: 'sh', args: ['-c', 'stat -c "%U %g" $(tty); id -G'], user: 'bob', tty: {} });
      expect(r.stdout.replace(/\r/g, '')).to.equal('bob 5\n3001 3000\n');
    });

    it('fails Run, not the process, when a user\'s executable is missing or not executable', async function () {
      // every time: the daemon must not take runc's half-started init for the program
      for (let i = 0; i < 5; i++) {
        const missing = await failure(server.client.run(h, { path: 'no-such-program', user: 'bob' }, {}));
        expect(missing.message).to.include('executable file not found in $PATH');
      }
      // /sbin is not on a user's PATH
      const sbin = await failure(server.client.run(h, { path: 'ifconfig', user: 'bob' }, {}));
      expect(sbin.message).to.include('executable file not found in $PATH');
      await run('printf "#!/bin/sh\\necho hi\\n" > /tmp/noexec && chmod 644 /tmp/noexec');
      const noexec = await failure(server.client.run(h, { path: '/tmp/noexec', user: 'bob' }, {}));
      expect(noexec.message).to.match(/permission denied/i);
      // and as root, runc's own check says the same
      expect((await failure(server.client.run(h, { path: 'no-such-program' }, {}))).message).to.include('executable file not found');
    });
  });

  describe('container details', function () {
    it('runs garden-init as pid 1', async function () {
      expect((await run('cat /proc/1/comm')).stdout).to.equal('garden-init\n');
    });

    it('mounts /dev/shm and /dev/pts as Garden does', async function () {
      const r = await run('cat /proc/mounts', { user: 'bob' });
      const shm = r.stdout.split('\n').filter((l) => l.includes(' /dev/shm '));
      expect(shm).to.have.length(1);
      expect(shm[0]).to.match(/^tmpfs \/dev\/shm tmpfs rw,nosuid,nodev,noexec,relatime[ ,]/);
      expect(shm[0], 'no size cap').to.not.include('size=');
      expect(r.stdout).to.match(/^devpts \/dev\/pts devpts rw,nosuid,noexec,relatime,gid=\d+,mode=620,ptmxmode=666[ ,]/m);
      // No 64 MiB cap (Garden's suite writes 65 MB there); the container's memory limit bounds it.
      expect((await run('dd if=/dev/zero of=/dev/shm/x bs=1M count=65 2>/dev/null && rm /dev/shm/x && echo ok', { user: 'bob' })).stdout).to.equal('ok\n');
    });

    it('masks the OCI default paths', async function () {
      const r = await run('ls -A /sys/firmware; echo "[$?]"; stat -c "%F %t,%T" /proc/kcore /proc/keys /proc/timer_list 2>/dev/null');
      expect(r.stdout.split('\n')[0]).to.equal('[0]');
      for (const line of r.stdout.split('\n').slice(1).filter((l) => l !== '')) expect(line).to.equal('character special file 1,3');
    });

    it('shows cgroup filesystems inside read-only', async function () {
      const r = await run('grep -E " - cgroup2? " /proc/self/mountinfo');
      const lines = r.stdout.split('\n').filter((l) => l !== '');
      expect(lines, 'cgroup mounts').to.not.be.empty;
      for (const l of lines) expect(l.split(' ')[5]!.split(',')).to.include('ro');
      const w = await run('for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do [ -e $f ] && { echo 1 > $f 2>/dev/null && echo wrote $f; }; done; echo done');
      expect(w.stdout).to.equal('done\n');
    });

    it('refuses nested user namespaces to root and users alike (EPERM)', async function () {
      for (const user of ['root', 'bob']) {
        const r = await run('unshare --user id', { user });
        expect(r.code, user).to.not.equal(0);
        expect(r.stderr, user).to.include('Operation not permitted');
      }
      // fork, threads and the like stay allowed
      expect((await run('(echo child) | cat; sleep 0 & wait; echo $?', { user: 'bob' })).stdout).to.equal('child\n0\n');
    });

    it('reports a capacity of as many containers as the address pool holds', async function () {
      const cap = await server.client.capacity();
      const confPath = join(NET_CONF_DIR, `${process.getuid!()}.conf`);
      expect(Number(cap.max_containers)).to.be.greaterThan(0);
      if (existsSync(confPath)) expect(Number(cap.max_containers)).to.equal(containerAddresses(loadUserNetwork(process.getuid!()).subnet));
    });

    it('says "error streaming in" when a stream-in fails, e.g. for a user the container lacks', async function () {
      const tar = layerTar([{ name: 'f', type: 'file', content: 'x' }]);
      const err = await failure(server.client.streamIn(h, { path: '/tmp', user: 'batman', tarStream: Readable.from([tar]) }));
      expect(err.message).to.include('error streaming in');
      expect(err.message).to.include('unable to find user batman');
    });

    it('serves expvar-style debug vars on --debug-bind-ip/--debug-bind-port', async function () {
      const r = await httpGet(`http://127.0.0.1:${debugPort}/debug/vars`);
      expect(r.status).to.equal(200);
      const vars = JSON.parse(r.body) as { memstats: { Alloc: number }; cmdline: string[] };
      expect(vars.memstats.Alloc).to.be.greaterThan(0);
      expect(vars.cmdline).to.include('--debug-bind-port');
      expect((await httpGet(`http://127.0.0.1:${debugPort}/other`)).status).to.equal(404);
    });
  });

  describe('docker:///repo#tag', function () {
    before(async function () {
      this.timeout(120_000);
      const dir = await mkdtemp(join(runtimeDir(), 'conf-image-'));
      await writeOciLayout(dir, [{ tag: 'v', layers: [gzip(layerTar(busyboxLayerEntries()))], config: { Env: ['TAGGED=1.36.1'] } }]);
      await registry.push(dir, 'v', 'tagged/busybox:1.36.1');
    });

    it('takes the tag after # as Garden\'s clients send it', async function () {
      await server.client.create(spec({ handle: 'hash-tag', image: { uri: 'docker:///tagged/busybox#1.36.1' } }));
      try {
        expect((await runAndWait(server.client, 'hash-tag', sh('echo $TAGGED'))).stdout).to.equal('1.36.1\n');
      } finally {
        await server.client.destroy('hash-tag');
      }
    });

    it('runs a user\'s pea from a #tag image through the launcher: its own groups, and Run fails on a missing executable', async function () {
      const image = { uri: 'docker:///tagged/busybox#1.36.1' };
      const r = await runAndWait(server.client, h, { path: 'sh', args: ['-c', 'id -u; id -G; grep "^Groups:" /proc/self/status; unshare --user id'], user: 'alice', image });
      expect(r.stdout).to.match(/^1000\n1000\nGroups:\s*\n$/);
      expect(r.stderr).to.include('Operation not permitted');
      const missing = await failure(server.client.run(h, { path: 'no-such-program', user: 'alice', image }, {}));
      expect(missing.message).to.include('executable file not found in $PATH');
    });

    it('refuses a # with no tag, or a tag that does not exist, leaving nothing behind', async function () {
      const noTag = await failure(server.client.create(spec({ handle: 'no-tag', image: { uri: 'docker:///tagged/busybox#' } })));
      expect(noTag.message).to.include('`#` must be followed by a tag');
      const twice = await failure(server.client.create(spec({ handle: 'twice', image: { uri: 'docker:///tagged/busybox:1.36.1#1.36.1' } })));
      expect(twice.message).to.include('give the tag once');
      const unknown = await failure(server.client.create(spec({ handle: 'unknown-tag', image: { uri: 'docker:///tagged/busybox#9.9' } })));
      expect(unknown.message).to.not.equal('');
      expect(await server.client.list()).to.not.include.members(['no-tag', 'twice', 'unknown-tag']);
      for (const handle of ['no-tag', 'twice', 'unknown-tag']) expect(await leftovers(handle, { depot: server.depot, store: STORE })).to.deep.equal([]);
    });
  });

  describe('default rootfs', function () {
    it('has busybox-style adduser and addgroup, and an /etc/os-release', async function () {
      const r = await run([
        'addgroup -S sysgrp && addgroup -g 60000 big && adduser -D -u 60000 -G big -h /opt/big -s /bin/false big',
        'adduser -S -D -H svc && adduser -D dave && adduser dave sysgrp',
        'grep -E "^(big|svc|dave):" /etc/passwd | cut -d: -f1,3,4,6,7',
        'grep -E "^(sysgrp|big):" /etc/group | cut -d: -f1,3,4',
        'ls -dn /opt/big | awk "{print \\$3, \\$4}"; [ -e /home/svc ] || echo no-svc-home',
        'adduser -D dave; echo "again=$?"; addgroup big; echo "again=$?"; adduser -D "a:b"; echo "bad=$?"',
        'grep -c "^NAME=" /etc/os-release',
      ].join('; '));
      const svcUid = /^svc:(\d+):/m.exec(r.stdout)?.[1];
      expect(Number(svcUid)).to.be.within(100, 999);
      expect(r.stdout).to.include('big:60000:60000:/opt/big:/bin/false\n');
      expect(r.stdout).to.match(/^dave:(\d+):\1:\/home\/dave:\/bin\/sh$/m);
      expect(r.stdout).to.match(/^sysgrp:\d{3}:dave$/m);
      expect(r.stdout).to.include('big:60000:\n');
      expect(r.stdout).to.include('60000 60000\nno-svc-home\n');
      expect(r.stdout).to.include('again=1\nagain=1\nbad=1\n1\n');
      expect(r.stderr).to.include("adduser: user 'dave' in use");
      expect((await run('id -G', { user: 'dave' })).stdout).to.match(/^(\d+) \d{3}\n$/);
    });

    it('makes a user whose id the container cannot map, and Run as it says why it cannot start', async function () {
      // The first id past the user's range (65537 with setup's default; scripts/test grants more, issue #8).
      const maps = parseNamespaceFile(await readFile(join(STORE, 'meta', 'namespace.json'), 'utf8'));
      const huge = Math.max(...maps.uidMappings.map((m) => m.containerID + m.size), ...maps.gidMappings.map((m) => m.containerID + m.size));
      const r = await run(`adduser -D -u ${huge} huge; echo "rc=$?"; grep -c "^huge:x:${huge}:" /etc/passwd`);
      expect(r.stdout).to.equal('rc=0\n1\n');
      expect(r.stderr).to.include(`cannot give it to ${huge}`);
      const err = await failure(server.client.run(h, { path: 'true', user: 'huge' }, {}));
      expect(err.message).to.include(`gid ${huge} is not mapped`);
    });
  });
});
