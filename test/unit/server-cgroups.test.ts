import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { planCgroups } from '../../src/probe.js';
import { CgroupReader, parseFlatKeyed } from '../../src/runtime/cgroupstats.js';

const line = (id: number, mp: string, fs: string, superOpts: string) => `${id} 1 0:${id} / ${mp} rw,nosuid,nodev,noexec,relatime - ${fs} ${fs} ${superOpts}`;

describe('cgroup planning', function () {
  let root: string;
  before(function () {
    root = mkdtempSync(join(tmpdir(), 'cg-'));
    for (const c of ['memory', 'pids', 'unified', 'v2']) mkdirSync(join(root, c, 'garden', '1001'), { recursive: true });
  });
  after(function () {
    rmSync(root, { recursive: true, force: true });
  });

  const hybrid = () => [line(30, join(root, 'memory'), 'cgroup', 'rw,memory'), line(31, join(root, 'pids'), 'cgroup', 'rw,pids'), line(32, join(root, 'unified'), 'cgroup2', 'rw')].join('\n');
  const pure = () => line(40, join(root, 'v2'), 'cgroup2', 'rw,nsdelegate');

  it('v1 or hybrid: the delegated parent, wherever gdn runs', function () {
    expect(planCgroups('garden/1001', hybrid(), '0::/\n4:memory:/user.slice\n', 1001, 1001)).to.deep.equal({ mode: 'v1', parent: '/garden/1001' });
  });

  it('pure v2 with gdn inside the delegated subtree: the parent', function () {
    expect(planCgroups('garden/1001', pure(), '0::/garden/1001/.gdn\n', 1001, 1001)).to.deep.include({ mode: 'v2', parent: '/garden/1001' });
  });

  it('pure v2 with gdn elsewhere: no cgroups, and the fix named', function () {
    const plan = planCgroups('garden/1001', pure(), '0::/init.scope\n', 1001, 1001, false, 4321);
    expect(plan).to.include({ mode: 'none', refuse: true });
    if (plan.mode === 'none') {
      expect(plan.why).to.include('/init.scope');
      expect(plan.fix).to.include("echo 4321 > /sys/fs/cgroup/garden/1001/.gdn/cgroup.procs");
    }
  });

  it('nothing delegated: no cgroups, and gdn setup named', function () {
    const plan = planCgroups('garden/4242', hybrid(), '0::/\n', 4242, 4242);
    expect(plan).to.include({ mode: 'none', fix: 'sudo gdn setup --rootless-uid 4242 --rootless-gid 4242' });
  });
});

describe('cgroup stats parsing', function () {
  it('reads flat keyed files, keeping uint64 values exact', function () {
    expect(parseFlatKeyed('cache 4096\nrss 18446744073709551615\nbogus\n')).to.deep.equal({ cache: 4096n, rss: 18446744073709551615n });
  });

  it('finds v1 controllers from the super options, not the mount options', async function () {
    const root = mkdtempSync(join(tmpdir(), 'cgs-'));
    try {
      const mem = join(root, 'memory', 'garden', 'x');
      mkdirSync(mem, { recursive: true });
      const { writeFileSync } = await import('node:fs');
      writeFileSync(join(mem, 'memory.stat'), 'total_inactive_file 100\nrss 7\n');
      writeFileSync(join(mem, 'memory.usage_in_bytes'), '1100\n');
      const reader = new CgroupReader(line(30, join(root, 'memory'), 'cgroup', 'rw,memory'));
      const s = await reader.stats('/garden/x');
      expect(s.memory.rss).to.equal(7n);
      expect(s.memory.TotalUsageTowardLimit).to.equal(1000n);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
