// max_containers from the flag and the address pool, and the debug vars' shape (issue 8).
import { expect } from 'chai';
import fc from 'fast-check';
import { containerAddresses } from '../../plugins/networker/config.js';
import { debugVars } from '../../src/api/debug.js';
import { maxContainers } from '../../src/gardener/gardener.js';

describe('maxContainers', () => {
  it('is the smaller of the flag and the pool, whichever is set', () => {
    expect(maxContainers(0, undefined)).to.equal(0);
    expect(maxContainers(0, 253)).to.equal(253);
    expect(maxContainers(10, 253)).to.equal(10);
    expect(maxContainers(1000, 253)).to.equal(253);
    expect(maxContainers(7, undefined)).to.equal(7);
    fc.assert(fc.property(fc.nat(5000), fc.integer({ min: 1, max: 5000 }), (flag, pool) => {
      const m = maxContainers(flag, pool);
      expect(m).to.be.greaterThan(0);
      expect(m).to.be.at.most(pool);
      if (flag > 0) expect(m).to.be.at.most(flag);
    }));
  });
});

describe('containerAddresses', () => {
  it('leaves out the network, gateway and broadcast addresses', () => {
    expect(containerAddresses('10.88.0.0/24')).to.equal(253);
    expect(containerAddresses('10.88.0.0/16')).to.equal(65533);
    expect(containerAddresses('10.88.0.0/30')).to.equal(1);
  });
});

describe('debugVars', () => {
  it('has expvar\'s cmdline and memstats.Alloc', () => {
    const v = debugVars(['gdn', 'server'], 3);
    expect(v.cmdline).to.deep.equal(['gdn', 'server']);
    expect(v.memstats.Alloc).to.be.greaterThan(0);
    expect(v.containers).to.equal(3);
  });
});
