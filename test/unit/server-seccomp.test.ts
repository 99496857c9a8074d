import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { CLONE_NAMESPACE_FLAGS, DEFAULT_PROFILE, loadProfile, narrowSocket, refuseNamespaces, toOci, type DockerProfile } from '../../src/runtime/seccomp.js';
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
