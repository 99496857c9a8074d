// Issue #9: `gdn doctor`'s checks on broken hosts, with the host's files swapped for
// made-up ones (no subuid entry, cgroups not delegated on v2, a bridge gone).
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultEnv, formatFindings, runChecks, type DoctorEnv } from '../../src/doctor/doctor.js';

describe('gdn doctor checks (issue #9)', function () {
  this.timeout(30_000);
  let dir: string;
  let base: DoctorEnv;
  before(function () {
    dir = mkdtempSync(join(tmpdir(), 'doctor-'));
    base = defaultEnv();
  });
  after(function () {
    rmSync(dir, { recursive: true, force: true });
  });
  const find = (e: DoctorEnv, check: string) => runChecks(e).filter((f) => f.check === check);

  it('no subuid or subgid entry: FAIL with gdn setup as the fix', function () {
    writeFileSync(join(dir, 'subuid'), 'someoneelse:100000:65536\n');
    const e = { ...base, subuidFile: join(dir, 'subuid'), subgidFile: join(dir, 'subuid') };
    const [u] = find(e, 'subuid');
    expect(u).to.deep.include({ level: 'fail', detail: `no ${join(dir, 'subuid')} entry for ${base.user}`, fix: `sudo gdn setup --rootless-uid ${base.uid} --rootless-gid ${base.gid}` });
    expect(formatFindings([u!])).to.match(/^FAIL {2}subuid {2}no .* entry for .* — fix: sudo gdn setup --rootless-uid \d+ --rootless-gid \d+$/);
  });

  it('a small range: warn, not fail', function () {
    writeFileSync(join(dir, 'small'), `${base.user}:200000:1000\n`);
    expect(find({ ...base, subuidFile: join(dir, 'small') }, 'subuid')[0]!.level).to.equal('warn');
  });

  it('pure v2 with nothing delegated: FAIL naming lingering and setup (systemd) or setup (none)', function () {
    const root = join(dir, 'cg');
    mkdirSync(root, { recursive: true });
    const mountinfo = `40 1 0:40 / ${root} rw - cgroup2 cgroup2 rw,nsdelegate\n`;
    const e = { ...base, mountinfo, cgroupRoot: root, selfCgroup: '0::/user.slice/user-1.slice/session-1.scope\n', systemd: true };
    const mode = find(e, 'cgroup-mode')[0]!;
    expect(mode.detail).to.equal('v2 (unified), systemd');
    const cg = find(e, 'cgroups')[0]!;
    expect(cg.level).to.equal('fail');
    expect(cg.detail).to.include('no cgroup subtree is delegated').and.include('session-1.scope');
    expect(cg.fix).to.equal(`sudo loginctl enable-linger ${base.user} (or log in through a systemd session), then sudo gdn setup --rootless-uid ${base.uid} --rootless-gid ${base.gid} --systemd`);
    expect(find({ ...e, systemd: false }, 'cgroups')[0]!.fix).to.equal(`sudo gdn setup --rootless-uid ${base.uid} --rootless-gid ${base.gid}`);
  });

  it("pure v2 with setup's subtree delegated: ok, naming the controllers", function () {
    const root = join(dir, 'cg2');
    const sub = join(root, 'garden', String(base.uid));
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
    writeFileSync(join(sub, 'cgroup.procs'), '');
    writeFileSync(join(sub, 'cgroup.subtree_control'), '');
    const e = { ...base, mountinfo: `40 1 0:40 / ${root} rw - cgroup2 cgroup2 rw\n`, cgroupRoot: root, systemd: false };
    expect(find(e, 'cgroups')[0]).to.deep.include({ level: 'ok', detail: `/garden/${base.uid} delegated by gdn setup (for gdn started by hand in it): cpu memory pids` });
  });

  it('a bridge a reboot removed and a missing /run/user dir: FAIL each', function () {
    mkdirSync(join(dir, 'net'), { recursive: true });
    writeFileSync(join(dir, 'net', `${base.uid}.conf`), 'bridge=trgone9\nsubnet=10.250.9.0/24\ngateway=10.250.9.1\nport_start=40000\nport_end=40009\nmtu=1500\n');
    const e = { ...base, netConfDir: join(dir, 'net'), runtimeDir: join(dir, 'no-run-user') };
    expect(find(e, 'bridge')[0]).to.deep.include({ level: 'fail', detail: 'the bridge trgone9 is missing (a reboot removes it)' });
    expect(find(e, 'ports')[0]).to.deep.include({ level: 'ok', detail: 'net-in host ports 40000-40009 (10)' });
    expect(find(e, 'run-user')[0]).to.deep.include({ level: 'fail', detail: `${join(dir, 'no-run-user')} is missing (a reboot removes it)` });
  });
});

describe('gdn doctor: disk limits (issue 11)', function () {
  let dir: string;
  before(function () {
    dir = mkdtempSync(join(tmpdir(), 'doctor-quota-'));
  });
  after(function () {
    rmSync(dir, { recursive: true, force: true });
  });
  const store = (driver: string | undefined): string => {
    const s = mkdtempSync(join(dir, 'store-'));
    mkdirSync(join(s, 'meta'));
    writeFileSync(join(s, 'meta', 'namespace.json'), '{}');
    if (driver !== undefined) writeFileSync(join(s, 'meta', 'driver'), `${driver}\n`);
    return s;
  };
  const diskLimits = (e: DoctorEnv) => runChecks(e).filter((f) => f.check === 'disk-limits');

  it('an overlay store (recorded, or from before drivers were recorded): warn, limits not enforced', function () {
    const base = defaultEnv();
    for (const s of [store('overlay'), store(undefined)]) {
      const [f] = diskLimits({ ...base, store: s, quotaConfDir: dir });
      expect(f).to.deep.include({ level: 'warn', detail: `${s} is an overlay store: disk limits are recorded and reported, not enforced` });
      expect(f!.fix).to.include('--store');
    }
  });

  it('a btrfs store root listed for the gate: ok; one it did not list: FAIL with setup as the fix', function () {
    const base = defaultEnv();
    const s = store('btrfs');
    expect(diskLimits({ ...base, store: s, quotaConfDir: dir })[0]).to.deep.include({ level: 'fail', fix: `sudo gdn setup --rootless-uid ${base.uid} --rootless-gid ${base.gid}` });
    writeFileSync(join(dir, `${base.uid}.conf`), `# setup\nstore=${s}\n`);
    expect(diskLimits({ ...base, store: s, quotaConfDir: dir })[0]).to.deep.include({ level: 'ok', detail: `${s}: btrfs qgroups, limits set through the gate` });
  });
});
