// Issue #11: the pure parts of disk limits on the btrfs store.
import { expect } from 'chai';
import { fsidToUuid, parseQuotaConf, quotaConf } from '../../plugins/grootfs/quota.js';

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
});
