import { expect } from 'chai';
import {
  controllersToEnable,
  cpusetFiles,
  hierarchyLabel,
  parseMountinfo,
  planCgroups,
} from '../../src/setup/cgroups.js';
import { FailedPrecondition } from '../../src/errors.js';

// This project's CI machines: v1 controllers, name=systemd, cgroup2 at unified.
const HYBRID = `25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;

// A systemd host with pure v2.
const PURE_V2 = `22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`;

describe('setup: cgroups', () => {
  describe('parseMountinfo', () => {
    it('reads the fields after the optional ones', () => {
      const [m] = parseMountinfo('26 23 0:24 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n');
      expect(m).to.deep.equal({
        mountId: 26,
        parentId: 23,
        device: '0:24',
        root: '/',
        mountPoint: '/sys/fs/cgroup',
        options: ['rw', 'nosuid'],
        fsType: 'cgroup2',
        source: 'cgroup2',
        superOptions: ['rw', 'nsdelegate'],
      });
    });

    it('unescapes octal sequences in paths', () => {
      const [m] = parseMountinfo('40 31 0:37 / /mnt/with\\040space\\134x rw - cgroup cg rw,pids\n');
      expect(m!.mountPoint).to.equal('/mnt/with space\\x');
    });

    it('skips lines without a separator', () => {
      expect(parseMountinfo('garbage line\n\n31 23 0:28 / /x rw\n')).to.deep.equal([]);
    });
  });

  describe('planCgroups', () => {
    it('takes every v1 hierarchy, the named one and the hybrid cgroup2 mount', () => {
      const plan = planCgroups(parseMountinfo(HYBRID));
      expect(plan.mode).to.equal('v1');
      expect(plan.hierarchies.map((h) => h.mountPoint)).to.deep.equal([
        '/sys/fs/cgroup/cpu',
        '/sys/fs/cgroup/cpuacct',
        '/sys/fs/cgroup/cpuset',
        '/sys/fs/cgroup/memory',
        '/sys/fs/cgroup/devices',
        '/sys/fs/cgroup/freezer',
        '/sys/fs/cgroup/blkio',
        '/sys/fs/cgroup/pids',
        '/sys/fs/cgroup/systemd',
        '/sys/fs/cgroup/unified',
      ]);
      expect(plan.hierarchies.map(hierarchyLabel)).to.deep.equal([
        'cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'blkio', 'pids', 'name=systemd', 'cgroup2',
      ]);
      expect(plan.hierarchies.at(-1)!.version).to.equal(2);
    });

    it('uses /sys/fs/cgroup alone on a pure v2 host', () => {
      const plan = planCgroups(parseMountinfo(PURE_V2));
      expect(plan).to.deep.equal({
        mode: 'v2',
        hierarchies: [{ mountPoint: '/sys/fs/cgroup', version: 2, controllers: [], noprefix: false }],
      });
    });

    it('keeps combined controllers together and drops mount flags', () => {
      const plan = planCgroups(
        parseMountinfo('32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,xattr,release_agent=/x,cpu,cpuacct\n'),
      );
      expect(plan.hierarchies[0]!.controllers).to.deep.equal(['cpu', 'cpuacct']);
    });

    it('delegates a hierarchy mounted twice once, at its whole-tree mount', () => {
      const plan = planCgroups(
        parseMountinfo(
          '90 31 0:36 /sub /mnt/pids-bind rw - cgroup cgroup rw,pids\n39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n',
        ),
      );
      expect(plan.hierarchies.map((h) => h.mountPoint)).to.deep.equal(['/sys/fs/cgroup/pids']);
    });

    it('fails plainly without any cgroup mount', () => {
      expect(() => planCgroups(parseMountinfo('22 1 0:21 / /proc rw - proc proc rw\n'))).to.throw(FailedPrecondition, /no cgroup/);
    });
  });

  describe('controllersToEnable', () => {
    it('keeps the wanted ones the kernel offers, in its order', () => {
      expect(controllersToEnable('cpuset cpu io memory hugetlb pids rdma misc\n')).to.deep.equal(['cpuset', 'cpu', 'io', 'memory', 'pids']);
      expect(controllersToEnable('\n')).to.deep.equal([]);
    });
  });

  describe('cpusetFiles', () => {
    it('names the files a v1 cpuset child must have filled', () => {
      const plan = planCgroups(parseMountinfo(HYBRID));
      const cpuset = plan.hierarchies.find((h) => h.controllers.includes('cpuset'))!;
      expect(cpusetFiles(cpuset)).to.deep.equal(['cpuset.cpus', 'cpuset.mems']);
      expect(cpusetFiles({ ...cpuset, noprefix: true })).to.deep.equal(['cpus', 'mems']);
      expect(plan.hierarchies.filter((h) => !h.controllers.includes('cpuset')).flatMap(cpusetFiles)).to.deep.equal([]);
    });
  });
});
