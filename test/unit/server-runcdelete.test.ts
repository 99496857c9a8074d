// Issue #10: runc's delete of a stopped container done in gdn (src/runtime/runcdelete.ts):
// when runc's state allows it, and where a container's cgroups are.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroupDirs, deletableState, initStopped, removeCgroups } from '../../src/runtime/runcdelete.js';

const state = (over: Record<string, unknown> = {}, config: Record<string, unknown> = {}) =>
  JSON.stringify({
    id: 'c1',
    init_process_pid: 4242,
    init_process_start: 3300661,
    cgroup_paths: { '': '/sys/fs/cgroup/unified/garden/1001/c1', pids: '/sys/fs/cgroup/pids/garden/1001/c1' },
    config: {
      cgroups: { path: '/garden/1001/c1' },
      hooks: null,
      namespaces: [{ type: 'NEWPID', path: '' }, { type: 'NEWNET', path: '' }],
      ...config,
    },
    ...over,
  });

const MOUNTINFO = [
  '30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755',
  '31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate',
  '33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct',
  '34 30 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids',
  // the same pids hierarchy mounted again, and a part of one: neither is a place of its own
  '35 30 0:30 / /mnt/pids-again rw,relatime shared:15 - cgroup cgroup rw,pids',
  '36 30 0:31 /garden /mnt/memory-part rw,relatime shared:16 - cgroup cgroup rw,memory',
  '37 24 0:32 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw',
].join('\n');

describe('runc delete without runc (issue 10)', function () {
  describe('deletableState', function () {
    it('takes runc 1.1\'s state of a container with its own pid namespace and cgroups', function () {
      expect(deletableState(state())).to.deep.equal({
        pid: 4242,
        startTime: '3300661',
        cgroupPaths: ['/sys/fs/cgroup/unified/garden/1001/c1', '/sys/fs/cgroup/pids/garden/1001/c1'],
      });
    });

    it('leaves to runc what it alone can do: hooks, a shared pid namespace, cgroups not the container\'s own, odd layouts', function () {
      expect(deletableState(state({}, { hooks: { poststop: [{ path: '/bin/true' }] } }))).to.equal(undefined);
      expect(deletableState(state({}, { hooks: { poststop: [], prestart: null } }))).to.not.equal(undefined);
      expect(deletableState(state({}, { namespaces: [{ type: 'NEWNET', path: '' }] }))).to.equal(undefined);
      expect(deletableState(state({}, { namespaces: [{ type: 'NEWPID', path: '/proc/1/ns/pid' }] }))).to.equal(undefined);
      expect(deletableState(state({ cgroup_paths: { pids: '/sys/fs/cgroup/pids/user.slice' } }))).to.equal(undefined);
      expect(deletableState(state({ cgroup_paths: { pids: '/sys/fs/cgroup/pids/x/../garden/1001/c1' } }))).to.equal(undefined);
      expect(deletableState(state({}, { cgroups: { path: '' } }))).to.equal(undefined);
      expect(deletableState(state({}, { cgroups: { path: '/' } }))).to.equal(undefined);
      expect(deletableState(state({ init_process_pid: 1 }))).to.equal(undefined);
      expect(deletableState(state({ init_process_start: undefined }))).to.equal(undefined);
      expect(deletableState('{')).to.equal(undefined);
      expect(deletableState('null')).to.equal(undefined);
    });
  });

  describe('initStopped', function () {
    it('a live process whose start time matches is not stopped; another start time, or no process, is', async function () {
      const { readFileSync } = await import('node:fs');
      const stat = readFileSync('/proc/self/stat', 'utf8');
      const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
      expect(await initStopped(process.pid, start)).to.equal(false);
      expect(await initStopped(process.pid, `${start}1`)).to.equal(true);
      expect(await initStopped(2 ** 22 + 1, start)).to.equal(true);
    });
  });

  describe('cgroupDirs', function () {
    it('names the path in each hierarchy once, whole-tree mounts only, cgroup v1 and v2', function () {
      expect(cgroupDirs('/garden/1001/c1', MOUNTINFO)).to.deep.equal([
        '/sys/fs/cgroup/unified/garden/1001/c1',
        '/sys/fs/cgroup/cpu,cpuacct/garden/1001/c1',
        '/sys/fs/cgroup/pids/garden/1001/c1',
      ]);
      expect(cgroupDirs('garden/1001/c1', MOUNTINFO)).to.have.length(3);
    });

    it('names nothing for an empty, root or climbing path', function () {
      expect(cgroupDirs('', MOUNTINFO)).to.deep.equal([]);
      expect(cgroupDirs('/', MOUNTINFO)).to.deep.equal([]);
      expect(cgroupDirs('/garden/../..', MOUNTINFO)).to.deep.equal([]);
    });
  });

  describe('removeCgroups', function () {
    it('removes sub-directories first and counts what is already gone as removed', async function () {
      const dir = await mkdtemp(join(tmpdir(), 'cg-'));
      try {
        await mkdir(join(dir, 'a', 'b', 'c'), { recursive: true });
        await removeCgroups([join(dir, 'a'), join(dir, 'never')]);
        expect(existsSync(join(dir, 'a'))).to.equal(false);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});
