// Issue #9: where gdn places containers on pure cgroup v2, and the setup records and
// units that bring a host back after a reboot.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ownV2Cgroup, planV2 } from '../../src/runtime/cgroupv2.js';
import { readRecords, recordName, unitTexts, writeRecord } from '../../src/setup/systemd.js';

describe('cgroup v2 placement (issue #9)', function () {
  const M = '/user.slice/user-1001.slice/user@1001.service';

  it('reads its own cgroup from /proc/self/cgroup', function () {
    expect(ownV2Cgroup('0::/user.slice/x.scope\n')).to.equal('/user.slice/x.scope');
    expect(ownV2Cgroup('')).to.equal('/');
  });

  it('under systemd: containers beside the unit, in user@UID.service/garden', function () {
    for (const own of [`${M}/app.slice/gdn.service`, `${M}/app.slice/run-r1.scope`]) {
      expect(planV2(own, '/garden/1001', 1001, 1001, true, 7)).to.deep.equal({ ok: true, kind: 'systemd', parent: `${M}/garden`, enable: [M, `${M}/garden`] });
    }
  });

  it("the user manager's own cgroup, or another user's, is not a place to run from", function () {
    expect(planV2(M, '/garden/1001', 1001, 1001, true, 7).ok).to.equal(false);
    expect(planV2('/user.slice/user-1002.slice/user@1002.service/app.slice/gdn.service', '/garden/1001', 1001, 1001, true, 7).ok).to.equal(false);
  });

  it("without systemd: in setup's subtree, gdn moves into the leaf when it is at the top", function () {
    expect(planV2('/garden/1001', '/garden/1001', 1001, 1001, false, 7)).to.deep.equal({ ok: true, kind: 'setup', parent: '/garden/1001', leaf: '/garden/1001/.gdn', enable: ['/garden/1001'] });
    expect(planV2('/garden/1001/.gdn', '/garden/1001', 1001, 1001, false, 7)).to.deep.equal({ ok: true, kind: 'setup', parent: '/garden/1001', enable: ['/garden/1001'] });
    expect(planV2('/garden/10011', '/garden/1001', 1001, 1001, false, 7).ok).to.equal(false);
  });

  it('anywhere else: refused, with the fix for a systemd host and for one without', function () {
    const sd = planV2('/user.slice/user-1001.slice/session-3.scope', '/garden/1001', 1001, 1001, true, 4242);
    expect(sd.ok).to.equal(false);
    if (!sd.ok) {
      expect(sd.why).to.include('it runs in /user.slice/user-1001.slice/session-3.scope');
      expect(sd.fix).to.include("'systemctl --user start gdn'").and.include("'systemd-run --user --scope -p Delegate=yes gdn server ...'");
    }
    const bare = planV2('/', '/garden/1001', 1001, 1001, false, 4242);
    if (bare.ok) throw new Error('expected a refusal');
    expect(bare.fix).to.include("sudo sh -c 'echo 4242 > /sys/fs/cgroup/garden/1001/.gdn/cgroup.procs'");
  });
});

describe('setup records and units (issue #9)', function () {
  let dir: string;
  beforeEach(function () {
    dir = mkdtempSync(join(tmpdir(), 'rec-'));
  });
  afterEach(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  it('one record per user and store, written once, replayed default stores first', function () {
    const me = { uid: process.getuid!(), gid: process.getgid!() };
    expect(writeRecord({ uid: 1001, gid: 1001, store: '/var/lib/x/btrfs', storeDriver: 'btrfs' }, dir, me)).to.equal('created');
    expect(writeRecord({ uid: 1001, gid: 1001 }, dir, me)).to.equal('created');
    expect(writeRecord({ uid: 1001, gid: 1001 }, dir, me)).to.equal('already present');
    expect(writeRecord({ uid: 1001, gid: 1001, hostPorts: '30000-30099' }, dir, me)).to.equal('updated');
    expect(readRecords(dir).map(recordName)).to.deep.equal(['1001.json', '1001-var_lib_x_btrfs.json']);
  });

  it('the shipped units point at the gdn that installs them', function () {
    const u = unitTexts('/opt/x/gdn.js');
    expect(u.user).to.match(/^ExecStart=\/opt\/x\/gdn\.js server \$GDN_ARGS$/m).and.match(/^Delegate=yes$/m).and.match(/^KillMode=process$/m).and.match(/^Restart=on-failure$/m);
    expect(u.boot).to.match(/^ExecStart=\/opt\/x\/gdn\.js setup --boot$/m).and.match(/^Type=oneshot$/m).and.match(/^Before=systemd-user-sessions\.service/m);
  });
});
