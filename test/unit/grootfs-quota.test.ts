// Issue #11: the pure parts of disk limits on the btrfs store.
import { expect } from 'chai';
import { fsidToUuid, nextProjectRange, parseProjectRange, parseQuotaConf, PROJECT_BASE, PROJECT_BLOCK, quotaConf } from '../../plugins/grootfs/quota.js';
import { mountOptionsAt } from '../../plugins/grootfs/xfs.js';

describe('grootfs quota (issue 11)', function () {
  it('the conf lists each store once, and reads back', function () {
    const text = quotaConf(['/var/lib/trellis/1001/store', '/var/lib/trellis/1001/quota-store', '/var/lib/trellis/1001/store']);
    expect(text.split('\n').filter((l) => l.startsWith('store='))).to.deep.equal(['store=/var/lib/trellis/1001/store', 'store=/var/lib/trellis/1001/quota-store']);
    expect(parseQuotaConf(text)).to.deep.equal(['/var/lib/trellis/1001/store', '/var/lib/trellis/1001/quota-store']);
    expect(parseQuotaConf('')).to.deep.equal([]);
  });

  it('the gate prints the fsid as 32 hex digits; /sys/fs/btrfs names it as a dashed uuid', function () {
    expect(fsidToUuid('7792b08ad5ba434c87be0d9a89bdc58e')).to.equal('7792b08a-d5ba-434c-87be-0d9a89bdc58e');
  });

  it('XFS: a user with an XFS store gets a projects= range in its conf, which reads back', function () {
    const text = quotaConf(['/var/lib/trellis/1001/store'], { first: PROJECT_BASE, last: PROJECT_BASE + PROJECT_BLOCK - 1 });
    expect(text).to.match(/^projects=1048576-1114111$/m);
    expect(parseProjectRange(text)).to.deep.equal({ first: 1048576, last: 1114111 });
    expect(parseQuotaConf(text)).to.deep.equal(['/var/lib/trellis/1001/store']);
    expect(parseProjectRange(quotaConf(['/s']))).to.equal(undefined);
  });

  it('XFS: each user\'s project block is disjoint from every other user\'s', function () {
    expect(nextProjectRange([])).to.deep.equal({ first: PROJECT_BASE, last: PROJECT_BASE + PROJECT_BLOCK - 1 });
    const a = nextProjectRange([]);
    const b = nextProjectRange([a]);
    expect(b.first).to.equal(a.last + 1);
    // an odd block someone wrote by hand, overlapping the second: skipped past
    const c = nextProjectRange([a, { first: b.first + 5, last: b.first + 10 }]);
    expect(c.first).to.equal(b.last + 1);
  });

  it('XFS: the options a store is mounted with, from mountinfo', function () {
    const mi = [
      '36 25 0:32 / /var/lib/trellis/1001/store rw,nosuid,nodev,noatime shared:1 - xfs /dev/loop3 rw,attr2,inode64,logbufs=8,logbsize=32k,prjquota',
      '37 25 0:33 / /other rw - ext4 /dev/vda rw',
    ].join('\n');
    const m = mountOptionsAt('/var/lib/trellis/1001/store', mi);
    expect(m?.fstype).to.equal('xfs');
    expect(m?.options).to.include.members(['nosuid', 'nodev', 'prjquota']);
    expect(mountOptionsAt('/nowhere', mi)).to.equal(undefined);
    // a dir below the mount point is on it
    expect(mountOptionsAt('/var/lib/trellis/1001/store/images', mi)?.options).to.include('prjquota');
  });
});
