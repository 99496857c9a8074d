// /proc/self/mountinfo parsing and the flags a user namespace cannot drop (src/runtime/mountinfo.ts).

import { expect } from 'chai';
import { lockedFlags, mountOf, parseMountInfo } from '../../src/runtime/mountinfo.js';

const MOUNTINFO = [
  '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro',
  '23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
  '24 22 0:22 / /tmp rw,nosuid,nodev shared:13 - tmpfs tmpfs rw,size=1024k',
  '25 22 8:2 / /home rw,nosuid,nodev,noatime shared:14 master:2 - ext4 /dev/sda2 rw',
  '26 22 8:3 /sub /mnt/my\\040disk ro,nosuid,nodiratime - xfs /dev/my\\040dev rw',
  '27 22 0:23 / /usr/libexec rw,nodev,noexec,relatime - tmpfs tmpfs rw',
  '28 27 0:24 / /usr/libexec rw,nosuid,relatime - tmpfs tmpfs rw',
  '',
].join('\n');

describe('parseMountInfo', () => {
  it('reads mount point, per-mount options, type, source and super options', () => {
    const e = parseMountInfo(MOUNTINFO);
    expect(e).to.have.length(7);
    expect(e[0]).to.deep.equal({
      mountId: 22, parentId: 1, device: '8:1', root: '/',
      mountPoint: '/', options: ['rw', 'relatime'], fsType: 'ext4', source: '/dev/sda1', superOptions: ['rw', 'errors=remount-ro'],
    });
    expect(e[3]).to.deep.equal({
      mountId: 25, parentId: 22, device: '8:2', root: '/',
      mountPoint: '/home', options: ['rw', 'nosuid', 'nodev', 'noatime'], fsType: 'ext4', source: '/dev/sda2', superOptions: ['rw'],
    });
  });

  it('handles any number of optional fields before the separator', () => {
    const e = parseMountInfo('1 0 0:1 / /a rw - tmpfs t rw\n2 0 0:2 / /b rw shared:1 master:2 propagate_from:3 unbindable - tmpfs u rw');
    expect(e.map((x) => [x.mountPoint, x.source])).to.deep.equal([['/a', 't'], ['/b', 'u']]);
  });

  it('decodes octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)', () => {
    const e = parseMountInfo(MOUNTINFO);
    expect(e[4]!.mountPoint).to.equal('/mnt/my disk');
    expect(e[4]!.source).to.equal('/dev/my dev');
    const x = parseMountInfo('1 0 0:1 / /a\\011b\\012c\\134d rw - tmpfs s rw')[0]!;
    expect(x.mountPoint).to.equal('/a\tb\nc\\d');
  });

  it('decodes an escaped backslash once, not twice', () => {
    // the path "/x\040y" with a literal backslash is written "/x\134040y"
    expect(parseMountInfo('1 0 0:1 / /x\\134040y rw - tmpfs s rw')[0]!.mountPoint).to.equal('/x\\040y');
  });

  it('skips blank and malformed lines', () => {
    expect(parseMountInfo('\n   \nnonsense\n1 2 3\n1 0 0:1 / /a rw - tmpfs\n')).to.deep.equal([]);
  });
});

describe('mountOf', () => {
  const entries = parseMountInfo(MOUNTINFO);

  it('picks the deepest mount whose mount point is a path prefix', () => {
    expect(mountOf(entries, '/home/u/x')!.mountPoint).to.equal('/home');
    expect(mountOf(entries, '/home')!.mountPoint).to.equal('/home');
    expect(mountOf(entries, '/etc/passwd')!.mountPoint).to.equal('/');
    expect(mountOf(entries, '/mnt/my disk/f')!.mountPoint).to.equal('/mnt/my disk');
  });

  it('does not take /homework to be under /home', () => {
    expect(mountOf(entries, '/homework/a')!.mountPoint).to.equal('/');
    expect(mountOf(entries, '/tmpfoo')!.mountPoint).to.equal('/');
  });

  it('takes the later of two mounts on the same point (the one on top)', () => {
    expect(mountOf(entries, '/usr/libexec/catatonit')!.options).to.deep.equal(['rw', 'nosuid', 'relatime']);
  });

  it('finds nothing in an empty table', () => {
    expect(mountOf([], '/x')).to.equal(undefined);
  });
});

describe('lockedFlags', () => {
  it('returns the lockable flags of the mount the path lives on', () => {
    expect(lockedFlags('/proc/self', MOUNTINFO)).to.deep.equal(['nosuid', 'nodev', 'noexec', 'relatime']);
    expect(lockedFlags('/home/u/bin/x', MOUNTINFO)).to.deep.equal(['nosuid', 'nodev', 'noatime']);
    expect(lockedFlags('/mnt/my disk/f', MOUNTINFO)).to.deep.equal(['nosuid', 'nodiratime']);
    expect(lockedFlags('/tmp/x', MOUNTINFO)).to.deep.equal(['nosuid', 'nodev']);
    expect(lockedFlags('/usr/libexec/catatonit', MOUNTINFO)).to.deep.equal(['nosuid', 'relatime']);
  });

  it('never returns rw/ro or anything outside the lockable set', () => {
    expect(lockedFlags('/etc', MOUNTINFO)).to.deep.equal(['relatime']);
    expect(lockedFlags('/x', '1 0 0:1 / / ro,sync,dirsync,nosuid,mand - tmpfs s rw')).to.deep.equal(['nosuid']);
  });

  it('returns nothing when no mount covers the path', () => {
    expect(lockedFlags('/x', '1 0 0:1 / /a rw,nosuid - tmpfs s rw')).to.deep.equal([]);
  });
});
