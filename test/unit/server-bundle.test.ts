// The OCI bundle and process specs handed to runc (src/runtime/bundle.ts).

import { expect } from 'chai';
import fc from 'fast-check';
import {
  DEFAULT_PATH_ROOT, DEFAULT_PATH_USER, INIT_PATH, MASKED_PATHS, READONLY_PATHS, UNPRIVILEGED_CAPS,
  buildBundle, buildProcess, containerHostname, type BundleInput, type ProcessInput,
} from '../../src/runtime/bundle.js';

const GARDEN_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

function input(over: Partial<BundleInput> = {}): BundleInput {
  return {
    handle: 'c1',
    rootfsPath: '/depot/c1/rootfs',
    imageMounts: [{ destination: '/', type: 'overlay', source: 'overlay', options: ['lowerdir=/l', 'upperdir=/u', 'workdir=/w'] }],
    env: ['FOO=bar'],
    uidMappings: [{ containerID: 0, hostID: 1000, size: 1 }, { containerID: 1, hostID: 100000, size: 65536 }],
    gidMappings: [{ containerID: 0, hostID: 1000, size: 1 }, { containerID: 1, hostID: 200000, size: 65536 }],
    initBinary: '/usr/libexec/trellis/catatonit',
    initLockedFlags: ['nosuid', 'nodev', 'relatime'],
    bindMounts: [],
    limits: {},
    ...over,
  };
}

function proc(over: Partial<ProcessInput> = {}): ProcessInput {
  return {
    args: ['sh', '-c', 'echo hi'],
    containerEnv: [],
    env: [],
    uid: 0,
    gid: 0,
    username: 'root',
    cwd: '/',
    rlimits: {},
    terminal: false,
    ...over,
  };
}

describe('buildBundle', () => {
  it('unshares every namespace, the user namespace included', () => {
    const c = buildBundle(input());
    expect(c.linux.namespaces.map((n) => n.type)).to.have.members(['pid', 'network', 'ipc', 'uts', 'mount', 'user']);
    expect(c.linux.namespaces).to.have.length(6);
  });

  it('passes the uid and gid mappings through unchanged', () => {
    const i = input();
    const c = buildBundle(i);
    expect(c.linux.uidMappings).to.deep.equal(i.uidMappings);
    expect(c.linux.gidMappings).to.deep.equal(i.gidMappings);
  });

  it('performs the image mounts first, in their order', () => {
    const imageMounts = [
      { destination: '/', type: 'overlay', source: 'overlay', options: ['lowerdir=/a'] },
      { destination: '/etc/hosts', type: 'bind', source: '/depot/hosts', options: ['bind', 'rw'] },
    ];
    const c = buildBundle(input({ imageMounts }));
    expect(c.mounts.slice(0, 2)).to.deep.equal(imageMounts);
    const dests = c.mounts.map((m) => m.destination);
    expect(dests.indexOf('/proc')).to.be.greaterThan(1);
  });

  it('bind-mounts the init binary read-only at /tmp/garden-init with its source mount\'s locked flags', () => {
    const c = buildBundle(input({ initLockedFlags: ['nosuid', 'nodev', 'noexec', 'relatime'] }));
    const init = c.mounts.find((m) => m.destination === INIT_PATH);
    expect(INIT_PATH).to.equal('/tmp/garden-init');
    expect(init).to.deep.equal({
      destination: '/tmp/garden-init',
      type: 'bind',
      source: '/usr/libexec/trellis/catatonit',
      options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec', 'relatime'],
    });
    // Without arguments garden-init is the reaping init.
    expect(c.process.args).to.deep.equal(['/tmp/garden-init']);
  });

  it('never repeats bind/ro/rw from the locked flags', () => {
    const c = buildBundle(input({ initLockedFlags: ['rw', 'bind', 'nosuid', 'ro'] }));
    expect(c.mounts.find((m) => m.destination === INIT_PATH)!.options).to.deep.equal(['bind', 'ro', 'nosuid']);
  });

  it('adds user bind mounts after the init binary, ro or rw with their locked flags', () => {
    const c = buildBundle(input({
      bindMounts: [
        { source: '/tmp', destination: '/mnt', readOnly: true, lockedFlags: ['nosuid', 'nodev'] },
        { source: '/var', destination: '/v', readOnly: false, lockedFlags: [] },
      ],
    }));
    const n = c.mounts.length;
    expect(c.mounts[n - 3]!.destination).to.equal('/tmp/garden-init');
    expect(c.mounts[n - 2]).to.deep.equal({ destination: '/mnt', type: 'bind', source: '/tmp', options: ['bind', 'ro', 'nosuid', 'nodev'] });
    expect(c.mounts[n - 1]).to.deep.equal({ destination: '/v', type: 'bind', source: '/var', options: ['bind', 'rw'] });
  });

  it('grants exactly Garden\'s 14 unprivileged capabilities in every set', () => {
    const c = buildBundle(input());
    expect(UNPRIVILEGED_CAPS).to.have.members(GARDEN_CAPS);
    expect(UNPRIVILEGED_CAPS).to.have.length(14);
    const caps = c.process.capabilities;
    for (const set of [caps.bounding, caps.effective, caps.inheritable, caps.permitted]) expect(set).to.have.members(GARDEN_CAPS).and.length(14);
    expect(caps.bounding).to.not.include('CAP_SYS_ADMIN');
  });

  it('masks and read-only-mounts the /proc and /sys paths', () => {
    const c = buildBundle(input());
    expect(c.linux.maskedPaths).to.deep.equal(MASKED_PATHS);
    expect(c.linux.readonlyPaths).to.deep.equal(READONLY_PATHS);
    expect(c.linux.maskedPaths).to.include.members(['/proc/kcore', '/proc/keys', '/sys/firmware', '/proc/timer_list']);
    expect(c.linux.readonlyPaths).to.include.members(['/proc/sys', '/proc/sysrq-trigger', '/proc/bus', '/proc/fs', '/proc/irq']);
  });

  it('names the host after the handle, keeping the last 49 characters', () => {
    expect(buildBundle(input({ handle: 'c1' })).hostname).to.equal('c1');
    const long = 'a'.repeat(10) + 'b'.repeat(49);
    expect(buildBundle(input({ handle: long })).hostname).to.equal('b'.repeat(49));
    expect(containerHostname('x'.repeat(49))).to.equal('x'.repeat(49));
    expect(containerHostname('y' + 'x'.repeat(49))).to.equal('x'.repeat(49));
  });

  it('hostname: ASCII handles keep exactly their last 49 characters', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (h) => {
        const n = containerHostname(h);
        expect(h.endsWith(n)).to.equal(true);
        expect(n.length).to.equal(Math.min(49, h.length));
      }),
    );
  });

  // BUG candidate: Go's Guardian slices the handle in *bytes* (hostname[len-49:]); this slices
  // UTF-16 units, so a non-ASCII handle gives a hostname over the kernel's 64-byte limit
  // (sethostname: EINVAL, so runc create fails) or splits a surrogate pair.
  it('hostname never exceeds the kernel\'s 64-byte HOST_NAME_MAX, whatever the handle', () => {
    const handle = 'é'.repeat(49); // a handle validateHandle accepts (98 bytes)
    expect(Buffer.byteLength(containerHostname(handle))).to.be.at.most(64);
    fc.assert(
      fc.property(fc.fullUnicodeString({ maxLength: 200 }), (h) => {
        expect(Buffer.byteLength(containerHostname(h))).to.be.at.most(64);
      }),
    );
  });

  it('sets cgroupsPath only when one is given', () => {
    expect(buildBundle(input()).linux).to.not.have.property('cgroupsPath');
    expect(buildBundle(input({ cgroupsPath: '/garden/1001/c1' })).linux.cgroupsPath).to.equal('/garden/1001/c1');
  });

  it('sets resources only for non-zero limits', () => {
    expect(buildBundle(input({ limits: {} })).linux).to.not.have.property('resources');
    expect(buildBundle(input({ limits: { memoryBytes: 0, cpuShares: 0, pidsMax: 0 } })).linux).to.not.have.property('resources');
    expect(buildBundle(input({ limits: { memoryBytes: 1048576 } })).linux.resources).to.deep.equal({ memory: { limit: 1048576, swap: 1048576 } });
    expect(buildBundle(input({ limits: { cpuShares: 10 } })).linux.resources).to.deep.equal({ cpu: { shares: 10 } });
    expect(buildBundle(input({ limits: { pidsMax: 100 } })).linux.resources).to.deep.equal({ pids: { limit: 100 } });
    expect(buildBundle(input({ limits: { memoryBytes: 1, cpuShares: 2, pidsMax: 3 } })).linux.resources).to.deep.equal({
      memory: { limit: 1, swap: 1 }, cpu: { shares: 2 }, pids: { limit: 3 },
    });
  });

  it('runs init as container root in the rootfs, with the container env', () => {
    const c = buildBundle(input({ env: ['A=1', 'B=2'] }));
    expect(c.process.user).to.deep.equal({ uid: 0, gid: 0 });
    expect(c.process.env).to.deep.equal(['A=1', 'B=2']);
    expect(c.root.path).to.equal('/depot/c1/rootfs');
    expect(c.process.cwd).to.equal('/');
  });

  it('is plain JSON (no undefined, survives a round trip)', () => {
    const c = buildBundle(input({ cgroupsPath: '/g/c1', limits: { memoryBytes: 5 } }));
    expect(JSON.parse(JSON.stringify(c))).to.deep.equal(c);
  });
});

describe('buildProcess', () => {
  it('adds the root PATH and USER when neither is set', () => {
    const p = buildProcess(proc());
    expect(p.env).to.deep.equal([DEFAULT_PATH_ROOT, 'USER=root']);
    expect(DEFAULT_PATH_ROOT).to.equal('PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  });

  it('adds the non-root PATH for a non-zero uid', () => {
    const p = buildProcess(proc({ uid: 1000, gid: 1000, username: 'vcap' }));
    expect(p.env).to.have.members([DEFAULT_PATH_USER, 'USER=vcap']);
    expect(DEFAULT_PATH_USER).to.equal('PATH=/usr/local/bin:/usr/bin:/bin');
  });

  it('keeps a PATH from the container or the process and adds none', () => {
    expect(buildProcess(proc({ containerEnv: ['PATH=/c'] })).env.filter((e) => e.startsWith('PATH='))).to.deep.equal(['PATH=/c']);
    expect(buildProcess(proc({ env: ['PATH=/p'] })).env.filter((e) => e.startsWith('PATH='))).to.deep.equal(['PATH=/p']);
  });

  it('does not take PATHX= or a lowercase path= for PATH', () => {
    const env = buildProcess(proc({ env: ['PATHX=1', 'path=/x'] })).env;
    expect(env).to.include(DEFAULT_PATH_ROOT);
  });

  it('keeps a USER that is set and adds none', () => {
    const env = buildProcess(proc({ env: ['USER=alice'] })).env;
    expect(env.filter((e) => e.startsWith('USER='))).to.deep.equal(['USER=alice']);
  });

  it('orders the env container first, then process, then the defaults', () => {
    fc.assert(
      fc.property(
        fc.array(fc.stringMatching(/^[A-Z_]{1,6}=[a-z]{0,4}$/), { maxLength: 6 }),
        fc.array(fc.stringMatching(/^[A-Z_]{1,6}=[a-z]{0,4}$/), { maxLength: 6 }),
        fc.nat({ max: 70000 }),
        (containerEnv, env, uid) => {
          const out = buildProcess(proc({ containerEnv, env, uid, username: 'u' })).env;
          const given = [...containerEnv, ...env];
          expect(out.slice(0, given.length)).to.deep.equal(given);
          const added = out.slice(given.length);
          const hasPath = given.some((e) => e.startsWith('PATH='));
          const hasUser = given.some((e) => e.startsWith('USER='));
          const expected = [
            ...(hasPath ? [] : [uid === 0 ? DEFAULT_PATH_ROOT : DEFAULT_PATH_USER]),
            ...(hasUser ? [] : ['USER=u']),
          ];
          expect(added).to.have.members(expected);
          expect(added).to.have.length(expected.length);
        },
      ),
    );
  });

  it('gives root the full effective set, and the launcher of a non-root user the same (setresuid drops it)', () => {
    const root = buildProcess(proc()).capabilities;
    expect(root.effective).to.have.members(GARDEN_CAPS);
    const user = buildProcess(proc({ uid: 1000, gid: 1000, username: 'vcap' })).capabilities;
    for (const set of [user.bounding, user.effective, user.permitted, user.inheritable]) expect(set).to.have.members(GARDEN_CAPS).and.length(14);
  });

  it('runs a non-root user through garden-init --run with its ids and groups, as container root', () => {
    const p = buildProcess(proc({ uid: 1000, gid: 1001, additionalGids: [50, 999, 50], home: '/home/vcap', username: 'vcap', args: ['/bin/sh', '-l'] }));
    expect(p.user).to.deep.equal({ uid: 0, gid: 0, username: 'vcap' });
    expect(p.args).to.deep.equal(['/tmp/garden-init', '--run', '1000', '1001', '50,999', '--', '/bin/sh', '-l']);
    expect(p.env).to.include('HOME=/home/vcap');
    const none = buildProcess(proc({ uid: 1000, gid: 1000, username: 'vcap', args: ['id'] }));
    expect(none.args).to.deep.equal(['/tmp/garden-init', '--run', '1000', '1000', '', '--', 'id']);
    expect(buildProcess(proc({ uid: 1000, gid: 1000, home: '/h', env: ['HOME=/x'] })).env.filter((e) => e.startsWith('HOME='))).to.deep.equal(['HOME=/x']);
  });

  it('runs a user directly in a container made before garden-init (no launcher there): runc sets its ids', () => {
    const p = buildProcess(proc({ uid: 1000, gid: 1001, additionalGids: [50], username: 'vcap', args: ['id'], launcher: false }));
    expect(p.user).to.deep.equal({ uid: 1000, gid: 1001, username: 'vcap' });
    expect(p.args).to.deep.equal(['id']);
  });

  it('runs root directly, with no launcher and runc\'s own HOME', () => {
    const p = buildProcess(proc({ additionalGids: [10], home: '/root', args: ['id'] }));
    expect(p.args).to.deep.equal(['id']);
    expect(p.env.some((e) => e.startsWith('HOME='))).to.equal(false);
  });

  it('maps Garden rlimits to RLIMIT_* with soft = hard, ignoring unknown keys', () => {
    const p = buildProcess(proc({ rlimits: { nofile: 1024, nproc: 64, bogus: 5 } }));
    expect(p.rlimits).to.have.deep.members([
      { type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 },
      { type: 'RLIMIT_NPROC', hard: 64, soft: 64 },
    ]);
    expect(buildProcess(proc({ rlimits: { as: 0 } })).rlimits).to.deep.equal([{ type: 'RLIMIT_AS', hard: 0, soft: 0 }]);
  });

  it('maps all 15 Garden rlimit keys', () => {
    const keys = ['as', 'core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss', 'rtprio', 'sigpending', 'stack'];
    const p = buildProcess(proc({ rlimits: Object.fromEntries(keys.map((k, i) => [k, i + 1])) }));
    expect(p.rlimits!.map((r) => r.type)).to.deep.equal(keys.map((k) => `RLIMIT_${k.toUpperCase()}`));
    for (const r of p.rlimits!) expect(r.soft).to.equal(r.hard);
  });

  it('leaves rlimits and terminal out when unset', () => {
    const p = buildProcess(proc());
    expect(p).to.not.have.property('rlimits');
    expect(p).to.not.have.property('terminal');
    expect(buildProcess(proc({ terminal: true })).terminal).to.equal(true);
  });

  it('carries the user, args and cwd', () => {
    const p = buildProcess(proc({ uid: 0, gid: 1001, username: 'root', cwd: '/home/vcap', args: ['/bin/sh', '-l'] }));
    expect(p.user).to.deep.equal({ uid: 0, gid: 1001, username: 'root' });
    expect(p.args).to.deep.equal(['/bin/sh', '-l']);
    expect(p.cwd).to.equal('/home/vcap');
  });
});

describe('buildBundle: the container details Garden clients see (issue 8)', () => {
  it('mounts /dev/shm as "tmpfs", devpts with the tty group, and the cgroups read-only', () => {
    const c = buildBundle(input());
    const at = (d: string) => c.mounts.find((m) => m.destination === d)!;
    expect(at('/dev/shm')).to.include({ type: 'tmpfs', source: 'tmpfs' });
    expect(at('/dev/shm').options).to.include.members(['nosuid', 'nodev', 'noexec']);
    expect(at('/dev/pts').options).to.include.members(['gid=5', 'mode=0620', 'ptmxmode=0666', 'nosuid', 'noexec']);
    expect(at('/sys/fs/cgroup')).to.include({ type: 'cgroup' });
    expect(at('/sys/fs/cgroup').options).to.include('ro');
    const dests = c.mounts.map((m) => m.destination);
    expect(dests.indexOf('/sys')).to.be.lessThan(dests.indexOf('/sys/fs/cgroup'));
  });

  it('masks the OCI default paths', () => {
    const c = buildBundle(input());
    expect(c.linux.maskedPaths).to.include.members([
      '/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats',
      '/proc/sched_debug', '/proc/scsi', '/sys/firmware',
    ]);
  });
});
