import { expect } from 'chai';
import { existsSync } from 'node:fs';
import fc from 'fast-check';
import { allowedPatterns, BTRFS_SUBVOLUME_IOCTLS, CLONE_NAMESPACE_FLAGS, DEFAULT_PROFILE, loadProfile, narrowSocket, refuseNamespaces, refuseSubvolumeIoctls, toOci, type DockerProfile } from '../../src/runtime/seccomp.js';
import { UNPRIVILEGED_CAPS } from '../../src/runtime/bundle.js';

const profile: DockerProfile = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 38,
  archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }, { architecture: 'SCMP_ARCH_AARCH64', subArchitectures: ['SCMP_ARCH_ARM'] }],
  syscalls: [
    { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW', args: [] },
    { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32'] } },
    { names: ['set_tls'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm', 'arm64'] } },
    { names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['chroot'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_CHROOT'] } },
    { names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 2114060288, op: 'SCMP_CMP_MASKED_EQ' }], excludes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['new_one'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '9.0' } },
    { names: ['ptrace'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, includes: { minKernel: '4.8' } },
  ],
};

describe('seccomp profile conversion', function () {
  const oci = toOci(profile, UNPRIVILEGED_CAPS, 'x64', '6.18.44-fc');
  const names = oci.syscalls.flatMap((s) => s.names);

  it('keeps the default action and errno, and the architectures of this machine', function () {
    expect(oci.defaultAction).to.equal('SCMP_ACT_ERRNO');
    expect(oci.defaultErrnoRet).to.equal(38);
    expect(oci.architectures).to.deep.equal(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  });

  it('keeps rules for this architecture only', function () {
    expect(names).to.include('arch_prctl');
    expect(names).to.not.include('set_tls');
  });

  it('keeps capability-gated rules only for the capabilities containers have', function () {
    expect(names).to.include('chroot');
    expect(names).to.not.include('mount');
    expect(names).to.include('clone');
    expect(oci.syscalls.find((s) => s.names.includes('clone'))?.args).to.have.length(1);
  });

  it('honours minKernel and keeps errnoRet', function () {
    expect(names).to.not.include('new_one');
    expect(oci.syscalls.find((s) => s.names.includes('ptrace'))).to.deep.equal({ names: ['ptrace'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 });
  });

  it('drops empty args', function () {
    expect(oci.syscalls.find((s) => s.names.includes('read'))).to.not.have.property('args');
  });

  it('converts the installed default profile (containers-common)', function () {
    expect(existsSync(DEFAULT_PROFILE), `${DEFAULT_PROFILE} is installed by scripts/install-deps`).to.equal(true);
    const real = loadProfile(DEFAULT_PROFILE, UNPRIVILEGED_CAPS);
    const all = real.syscalls.flatMap((s) => s.names);
    expect(all).to.include.members(['read', 'execve', 'exit_group']);
    const allowed = real.syscalls.filter((s) => s.action === 'SCMP_ACT_ALLOW').flatMap((s) => s.names);
    expect(allowed).to.not.include.members(['kexec_load', 'mount', 'bpf']);
  });
});

describe('packet sockets (issue #4 review)', () => {
  it('narrows an unconditional socket allow so AF_PACKET and SOCK_PACKET fall to the default', () => {
    const out = narrowSocket([{ names: ['read', 'socket'], action: 'SCMP_ACT_ALLOW' }]);
    expect(out[0]).to.deep.equal({ names: ['read'], action: 'SCMP_ACT_ALLOW' });
    const sockets = out.filter((r) => r.names.includes('socket'));
    expect(sockets).to.have.length(6);
    for (const r of sockets) {
      expect(r.action).to.equal('SCMP_ACT_ALLOW');
      expect(r.args?.[0]).to.deep.equal({ index: 0, value: 17, valueTwo: 0, op: 'SCMP_CMP_NE' });
      expect(r.args?.[1]?.op).to.equal('SCMP_CMP_MASKED_EQ');
      expect(r.args?.[1]?.valueTwo).to.not.equal(10);
    }
  });

  it('leaves a profile that never allowed socket alone', () => {
    const rules = [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }];
    expect(narrowSocket(rules)).to.equal(rules);
  });
});

describe('seccomp: no new namespaces inside a container (issue 8)', () => {
  const rules = refuseNamespaces([{ names: ['read', 'clone', 'unshare', 'clone3'], action: 'SCMP_ACT_ALLOW' }]);
  const ruleFor = (name: string) => rules.filter((r) => r.names.includes(name));

  it('takes clone, clone3 and unshare out of the unconditional allow', () => {
    expect(rules[0]).to.deep.equal({ names: ['read'], action: 'SCMP_ACT_ALLOW' });
    for (const n of ['clone', 'unshare', 'clone3']) expect(ruleFor(n).every((r) => r.args !== undefined || r.action !== 'SCMP_ACT_ALLOW')).to.equal(true);
  });

  it('allows clone and unshare only without namespace flags, and refuses each flag with EPERM', () => {
    for (const n of ['clone', 'unshare']) {
      const allow = ruleFor(n).filter((r) => r.action === 'SCMP_ACT_ALLOW');
      expect(allow).to.have.length(1);
      expect(allow[0]!.args![0]).to.include({ index: 0, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' });
      expect(allow[0]!.args![0]!.value & CLONE_NAMESPACE_FLAGS).to.equal(CLONE_NAMESPACE_FLAGS);
      const refused = ruleFor(n).filter((r) => r.action === 'SCMP_ACT_ERRNO');
      expect(refused.every((r) => r.errnoRet === 1 && r.args![0]!.value === r.args![0]!.valueTwo)).to.equal(true);
      // CLONE_NEWUSER, the one a process without CAP_SYS_ADMIN could otherwise use
      expect(refused.some((r) => r.args![0]!.value === 0x10000000)).to.equal(true);
    }
    expect(ruleFor('clone3')).to.deep.equal([{ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 }]);
  });

  it('is part of every converted profile', () => {
    const oci = toOci({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['unshare'], action: 'SCMP_ACT_ALLOW' }] }, UNPRIVILEGED_CAPS, 'x64', '6.18');
    expect(oci.syscalls.filter((r) => r.names.includes('unshare') && r.action === 'SCMP_ACT_ALLOW' && r.args === undefined)).to.deep.equal([]);
  });
});

describe('seccomp: no btrfs subvolumes from inside a container (issue 11)', function () {
  const patterns = allowedPatterns(BTRFS_SUBVOLUME_IOCTLS);
  const allows = (cmd: number) => patterns.some((p) => (cmd & p.mask) === p.value);

  it('the allow patterns cover every 16-bit request but the four that make subvolumes or snapshots', function () {
    for (let c = 0; c < 0x10000; c++) expect(allows(c), c.toString(16)).to.equal(!BTRFS_SUBVOLUME_IOCTLS.includes(c));
    expect(patterns.length).to.be.below(64);
  });

  it('whatever the size, direction or upper bits: SNAP_CREATE_V2 is refused, FICLONE and TCGETS are not', function () {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), (hi) => {
        const hiBits = hi * 0x10000;
        expect(allows(hiBits + 0x9417)).to.equal(false);
        expect(allows(hiBits + 0x9409)).to.equal(true); // FICLONE's type and number
        expect(allows(hiBits + 0x5401)).to.equal(true); // TCGETS
      }),
    );
  });

  it('the unconditional ioctl allow is replaced by the patterns and EPERM rules', function () {
    const out = refuseSubvolumeIoctls([{ names: ['ioctl', 'read'], action: 'SCMP_ACT_ALLOW' }]);
    expect(out[0]).to.deep.equal({ names: ['read'], action: 'SCMP_ACT_ALLOW' });
    const ioctl = out.filter((r) => r.names.includes('ioctl'));
    expect(ioctl.every((r) => r.args?.length === 1 && r.args[0]!.op === 'SCMP_CMP_MASKED_EQ' && r.args[0]!.index === 1)).to.equal(true);
    expect(ioctl.filter((r) => r.action === 'SCMP_ACT_ERRNO').map((r) => r.args![0]!.valueTwo)).to.deep.equal(BTRFS_SUBVOLUME_IOCTLS);
    expect(refuseSubvolumeIoctls([{ names: ['read'], action: 'SCMP_ACT_ALLOW' }])).to.deep.equal([{ names: ['read'], action: 'SCMP_ACT_ALLOW' }]);
  });
});
