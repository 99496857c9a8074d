// Peas: the pea's runc bundle, where its image and cgroup are named, which directories
// its /etc/passwd is read from, and how OverrideContainerLimits arrives from the wire.

import { expect } from 'chai';
import fc from 'fast-check';
import { decodeRun } from '../../src/api/codec.js';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { imageLayers, peaCgroupPath, peaImageKey, readImageFile } from '../../src/gardener/peas.js';
import { buildBundle, buildProcess, INIT_PATH, type ProcessInput } from '../../src/runtime/bundle.js';
import { containerKey } from '../../src/runtime/depot.js';
import { buildPeaBundle, JOINED_NAMESPACES, type PeaBundleInput } from '../../src/runtime/pea.js';

function proc(over: Partial<ProcessInput> = {}): ProcessInput {
  return { args: ['sh', '-c', 'echo hi'], containerEnv: ['IMAGE=1'], env: ['SPEC=1'], uid: 1001, gid: 1002, username: 'peauser', cwd: '/', rlimits: {}, terminal: false, ...over };
}

function input(over: Partial<PeaBundleInput> = {}): PeaBundleInput {
  return {
    sandboxInitPid: 4321,
    rootfsPath: '/store/images/p-x/rootfs',
    imageMounts: [{ destination: '/', type: 'overlay', source: 'overlay', options: ['lowerdir=/l1:/l2,upperdir=/u,workdir=/w,userxattr'] }],
    env: ['IMAGE=1'],
    uidMappings: [{ containerID: 0, hostID: 1000, size: 1 }, { containerID: 1, hostID: 100000, size: 65536 }],
    gidMappings: [{ containerID: 0, hostID: 1000, size: 1 }, { containerID: 1, hostID: 100000, size: 65536 }],
    initBinary: '/usr/bin/catatonit',
    initLockedFlags: [],
    bindMounts: [{ source: '/depot/c1/hosts', destination: '/etc/hosts', readOnly: false, lockedFlags: [] }],
    cgroupsPath: '/garden/1000/c1/p-abc',
    process: proc(),
    ...over,
  };
}

describe('buildPeaBundle', () => {
  it('joins the sandbox init\'s user, network, ipc, uts and pid namespaces by path and keeps a mount namespace of its own', () => {
    const c = buildPeaBundle(input());
    const byType = Object.fromEntries(c.linux.namespaces.map((n) => [n.type, n.path]));
    expect(byType).to.deep.equal({
      user: '/proc/4321/ns/user', network: '/proc/4321/ns/net', ipc: '/proc/4321/ns/ipc', uts: '/proc/4321/ns/uts', pid: '/proc/4321/ns/pid',
      mount: undefined,
    });
    expect(JOINED_NAMESPACES.map(([t]) => t)).to.have.members(['user', 'network', 'ipc', 'uts', 'pid']);
  });

  it('keeps the sandbox id maps (runc joins the namespace and writes no maps), sets no hostname', () => {
    const i = input();
    const c = buildPeaBundle(i);
    expect(c.linux.uidMappings).to.deep.equal(i.uidMappings);
    expect(c.linux.gidMappings).to.deep.equal(i.gidMappings);
    expect(c.hostname).to.equal('');
  });

  it('is the container bundle otherwise: same mounts, masks, capabilities and seccomp as buildBundle makes', () => {
    const i = input({ seccomp: { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [] } as never });
    const pea = buildPeaBundle(i);
    const ctr = buildBundle({ ...i, handle: 'x', limits: {} });
    expect(pea.mounts).to.deep.equal(ctr.mounts);
    expect(pea.mounts[0]).to.deep.equal(i.imageMounts[0]);
    expect(pea.mounts.map((m) => m.destination)).to.include.members(['/etc/hosts', INIT_PATH, '/proc', '/dev']);
    expect(pea.linux.maskedPaths).to.deep.equal(ctr.linux.maskedPaths);
    expect(pea.linux.seccomp).to.deep.equal(ctr.linux.seccomp);
    expect(pea.linux.cgroupsPath).to.equal('/garden/1000/c1/p-abc');
  });

  it('runs the process itself as the container\'s init: args, user, env, cwd, terminal', () => {
    const p = proc({ terminal: true, windowSize: { rows: 30, columns: 90 }, cwd: '/tmp' });
    const c = buildPeaBundle(input({ process: p }));
    // whatever buildProcess makes of a user (a launcher for non-root users, say) is what the pea runs
    expect(c.process).to.deep.equal(buildProcess(p));
    const root = buildPeaBundle(input({ process: proc({ uid: 0, gid: 0, username: 'root' }) }));
    expect(root.process.args).to.deep.equal(['sh', '-c', 'echo hi']);
    expect(root.process.user).to.include({ uid: 0, gid: 0 });
    expect(c.process.env).to.include.members(['IMAGE=1', 'SPEC=1', 'USER=peauser']);
    expect(c.process.cwd).to.equal('/tmp');
    expect(c.process.terminal).to.equal(true);
    expect(c.process.consoleSize).to.deep.equal({ height: 30, width: 90 });
  });

  it('sets resources only when the process overrides the container limits', () => {
    expect(buildPeaBundle(input()).linux.resources).to.equal(undefined);
    expect(buildPeaBundle(input({ limits: {} })).linux.resources).to.equal(undefined);
    expect(buildPeaBundle(input({ limits: { memoryBytes: 32 << 20, cpuShares: 512 } })).linux.resources).to.deep.equal({
      memory: { limit: 32 << 20, swap: 32 << 20 },
      cpu: { shares: 512 },
    });
  });
});

describe('pea names', () => {
  it('image keys are digest-shaped, so no handle\'s key is ever one; stable per sandbox and process', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), fc.string({ maxLength: 80 }), fc.string({ minLength: 1, maxLength: 80 }), (sandbox, id, handle) => {
        const k = peaImageKey(sandbox, id);
        expect(k).to.match(/^p-[0-9a-f]{40}$/);
        expect(k).to.equal(peaImageKey(sandbox, id));
        expect(containerKey(handle)).to.not.equal(k);
      }),
    );
    expect(peaImageKey('a', 'b')).to.not.equal(peaImageKey('a', 'c'));
    expect(peaImageKey('a', 'b')).to.not.equal(peaImageKey('b', 'b'));
  });

  it('cgroup: inside the sandbox\'s (its limits shared), or beside it with limits of its own; none without delegation', () => {
    expect(peaCgroupPath('/garden/1001', 'c1', 'p-1', false)).to.equal('/garden/1001/c1/p-1');
    expect(peaCgroupPath('/garden/1001', 'c1', 'p-1', true)).to.equal('/garden/1001/p-1');
    expect(peaCgroupPath(undefined, 'c1', 'p-1', true)).to.equal(undefined);
  });
});

describe('imageLayers', () => {
  it('reads an overlay mount onto / as upper dir, then lower dirs top first', () => {
    expect(imageLayers({ rootfsPath: '/r', mounts: [{ destination: '/', type: 'overlay', source: 'overlay', options: ['lowerdir=/a:/b:/c,upperdir=/u,workdir=/w,userxattr'] }] }))
      .to.deep.equal(['/u', '/a', '/b', '/c']);
    expect(imageLayers({ rootfsPath: '/r', mounts: [{ destination: '/', type: 'overlay', source: 'overlay', options: ['lowerdir=/a', 'upperdir=/u', 'workdir=/w'] }] }))
      .to.deep.equal(['/u', '/a']);
  });

  it('is the rootfs itself when the plugin mounts nothing onto / (btrfs, or a plugin that made the rootfs)', () => {
    expect(imageLayers({ rootfsPath: '/r', mounts: [] })).to.deep.equal(['/r']);
    expect(imageLayers({ rootfsPath: '/r', mounts: [{ destination: '/data', type: 'bind', source: '/x' }] })).to.deep.equal(['/r']);
  });
});

describe('decodeRun: OverrideContainerLimits', () => {
  const b = (s: string) => Buffer.from(s);
  it('is absent when the spec has no limits, present (zeros) when they are empty, and carries memory and cpu', () => {
    expect(decodeRun(b('{"path":"sh","image":{"uri":"docker:///busybox"}}')).overrideLimits).to.equal(undefined);
    expect(decodeRun(b('{"path":"sh","limits":null,"image":{}}')).overrideLimits).to.equal(undefined);
    expect(decodeRun(b('{"path":"sh","limits":{"cpu_limits":{},"memory_limits":{}},"image":{}}')).overrideLimits).to.deep.equal({ memoryBytes: 0n, cpuShares: 0n });
    expect(decodeRun(b('{"path":"sh","limits":{"cpu_limits":{"limit_in_shares":512},"memory_limits":{"limit_in_bytes":33554432}},"image":{}}')).overrideLimits)
      .to.deep.equal({ memoryBytes: 33554432n, cpuShares: 512n });
    expect(decodeRun(b('{"path":"sh","limits":{"cpu_limits":{"weight":100},"memory_limits":{}},"image":{}}')).overrideLimits?.cpuShares).to.equal(100n);
  });
});

describe('readImageFile (the pea image\'s /etc/passwd before anything is mounted)', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'pea-layers-'));
    for (const l of ['upper', 'top', 'base']) await mkdir(join(root, l, 'etc'), { recursive: true });
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });
  const layers = () => ['upper', 'top', 'base'].map((l) => join(root, l));

  it('takes the topmost layer that has the file, and is undefined when none has it', async () => {
    await writeFile(join(root, 'base/etc/passwd'), 'base\n');
    expect(await readImageFile(layers(), '/etc/passwd')).to.equal('base\n');
    await writeFile(join(root, 'top/etc/passwd'), 'top\n');
    expect(await readImageFile(layers(), '/etc/passwd')).to.equal('top\n');
    expect(await readImageFile(layers(), '/etc/group')).to.equal(undefined);
  });

  it('stops at something that is not a regular file (a whiteout, a directory, a symlink): nothing below counts, nothing is followed', async () => {
    await writeFile(join(root, 'base/etc/passwd'), 'base\n');
    await writeFile(join(root, 'outside'), 'host file\n');
    await symlink(join(root, 'outside'), join(root, 'top/etc/passwd'));
    expect(await readImageFile(layers(), '/etc/passwd')).to.equal(undefined);
    await rm(join(root, 'top/etc/passwd'));
    await mkdir(join(root, 'upper/etc/passwd'));
    expect(await readImageFile(layers(), '/etc/passwd')).to.equal(undefined);
  });
});
