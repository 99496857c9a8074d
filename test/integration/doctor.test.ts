// Issue #9: `gdn doctor` on this (cgroup v1, hybrid) host, as the ordinary user
// scripts/test prepared, healthy and with a broken gate.
import { expect } from 'chai';
import { execa } from 'execa';
import { GDN } from './harness.js';

const uid = process.getuid!();
const gid = process.getgid!();
const doctor = (...args: string[]) => execa(GDN, ['doctor', ...args], { reject: false });

describe('gdn doctor on this host (integration, issue #9)', function () {
  it('a prepared host: one ok line per prerequisite, exit 0', async function () {
    const r = await doctor();
    expect(r.exitCode, r.stdout + r.stderr).to.equal(0);
    const lines = r.stdout.split('\n');
    for (const check of ['subuid', 'subgid', 'newuidmap', 'newgidmap', 'runc', 'conmon', 'catatonit', 'overlay', 'cgroup-mode', 'cgroups', 'bridge', 'gate', 'ports', 'store', 'run-user']) {
      expect(lines.some((l) => new RegExp(`^ok +${check} `).test(l)), `${check} in\n${r.stdout}`).to.equal(true);
    }
    expect(r.stdout).to.match(/^ok +cgroup-mode +hybrid/m);
    expect(r.stdout).to.match(new RegExp(`^ok +cgroups +garden/${uid} delegated in every hierarchy`, 'm'));
    expect(r.stdout).to.match(/^ok +runc +runc \d+\.\d+/m);
    expect(r.stdout.trim().split('\n').pop()).to.equal('doctor: ready for gdn server');
  });

  it('a missing gate: FAIL with the exact fix, exit 1', async function () {
    const r = await doctor('--network-gate', '/nonexistent/cni-gate');
    expect(r.exitCode).to.equal(1);
    expect(r.stdout).to.include(`FAIL  gate         the CNI gate /nonexistent/cni-gate is missing — fix: sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}`);
    expect(r.stdout.trim().split('\n').pop()).to.equal('doctor: 1 problem(s) to fix');
  });

  it('a gate that is not setuid root: FAIL, exit 1', async function () {
    const r = await doctor('--network-gate', '/usr/bin/true');
    expect(r.exitCode).to.equal(1);
    expect(r.stdout).to.match(/^FAIL +gate +the CNI gate \/usr\/bin\/true is not setuid root — fix: sudo gdn setup/m);
  });
});
