// Issue #8: the address pool root grants with `gdn setup --network-pool`: what setup
// accepts (routes, other users, the user's own subnet), the pool file, and what a create's
// `network` asks the gate for.
import { expect } from 'chai';
import { formatPool, parsePool, type UserNetwork } from '../../plugins/networker/config.js';
import { parseRequest } from '../../plugins/networker/networker.js';
import { checkPool, type HostRoute } from '../../src/setup/network.js';

const NET: UserNetwork = { bridge: 'tr1001', subnet: '10.88.0.0/24', gateway: '10.88.0.1', portStart: 20000, portEnd: 20499, mtu: 9000 };
const POOLED: UserNetwork = { ...NET, pool: '192.168.0.0/16' };
const ROUTES: HostRoute[] = [
  { dst: 'default', dev: 'eth0' },
  { dst: '192.0.2.0/24', dev: 'eth0' },
  { dst: '192.0.2.2', dev: 'eth0', type: 'local' },
  { dst: '10.88.0.0/24', dev: 'tr1001' },
  { dst: '192.168.13.0/24', dev: 'tr1001p0' },
];

describe('network pool (issue #8)', function () {
  describe('checkPool (gdn setup --network-pool)', function () {
    it('accepts a pool clear of the host, the user and other users; its own bridges do not count', function () {
      expect(checkPool(1001, '192.168.0.0/16', NET.subnet, [], ROUTES)).to.equal('192.168.0.0/16');
    });

    it("refuses a pool over the host's routes or addresses, with the route named", function () {
      expect(() => checkPool(1001, '192.0.0.0/16', NET.subnet, [], ROUTES)).to.throw(/overlaps the host's route to 192\.0\.2\.0\/24 \(dev eth0\)/);
      expect(() => checkPool(1001, '192.0.2.0/30', NET.subnet, [], ROUTES.filter((r) => r.dst !== '192.0.2.0/24'))).to.throw(/route to 192\.0\.2\.2/);
      // another user's pool bridge is not this user's
      expect(() => checkPool(1003, '192.168.0.0/16', '10.88.1.0/24', [], ROUTES)).to.throw(/tr1001p0/);
    });

    it("refuses a pool over the user's subnet, another user's subnet or pool", function () {
      expect(() => checkPool(1001, '10.88.0.0/16', NET.subnet, [], ROUTES)).to.throw(/overlaps this user's subnet 10\.88\.0\.0\/24/);
      const other: UserNetwork = { ...NET, bridge: 'tr1003', subnet: '10.89.0.0/24', gateway: '10.89.0.1', pool: '172.20.0.0/16' };
      expect(() => checkPool(1001, '10.89.0.0/20', NET.subnet, [other], ROUTES)).to.throw(/overlaps 10\.89\.0\.0\/24, another user's subnet/);
      expect(() => checkPool(1001, '172.20.128.0/17', NET.subnet, [other], ROUTES)).to.throw(/overlaps 172\.20\.0\.0\/16, another user's pool/);
    });

    it('refuses a bad prefix, a host address, and reserved ranges', function () {
      expect(() => checkPool(1001, '172.0.0.0/8', NET.subnet, [], [])).to.throw(/a \/12 to a \/30/);
      expect(() => checkPool(1001, '172.16.0.0/31', NET.subnet, [], [])).to.throw(/a \/12 to a \/30/);
      expect(() => checkPool(1001, '172.16.0.1/16', NET.subnet, [], [])).to.throw(/not the network address/);
      expect(() => checkPool(1001, '127.1.0.0/16', NET.subnet, [], [])).to.throw(/127\.0\.0\.0\/8/);
      expect(() => checkPool(1001, '240.0.0.0/16', NET.subnet, [], [])).to.throw(/224\.0\.0\.0\/3/);
    });
  });

  it('the pool file round-trips and is strict', function () {
    expect(parsePool(formatPool('192.168.0.0/16'), NET.subnet)).to.equal('192.168.0.0/16');
    expect(() => parsePool('pool=192.168.0.0/16\npool=172.16.0.0/16\n', NET.subnet)).to.throw(/one line/);
    expect(() => parsePool('pool = 192.168.0.0/16\n', NET.subnet)).to.throw(/one line/);
    expect(() => parsePool('pool=10.88.0.0/16\n', NET.subnet)).to.throw(/overlaps the subnet/);
  });

  describe("parseRequest (a create's network)", function () {
    it('a subnet of the pool: any free address, its own gateway', function () {
      expect(parseRequest('192.168.13.0/24', POOLED)).to.deep.equal({ net: '192.168.13.0/24', subnet: '192.168.13.0/24', gateway: '192.168.13.1' });
    });

    it('an address in a subnet of the pool: exactly that address (Garden: host bits set)', function () {
      expect(parseRequest('10.2.0.6/30', { ...NET, pool: '10.2.0.0/16' })).to.deep.equal({ net: '10.2.0.6/30', subnet: '10.2.0.4/30', gateway: '10.2.0.5' });
    });

    it("the user's own subnet works as before", function () {
      expect(parseRequest('10.88.0.7', POOLED)).to.deep.equal({ ip: '10.88.0.7' });
      expect(parseRequest('10.88.0.64/26', POOLED)).to.deep.equal({ range: '10.88.0.64/26' });
    });

    it('refuses the gateway, the broadcast address, a bare address, a prefix the pool cannot hold', function () {
      expect(() => parseRequest('192.168.13.1/24', POOLED)).to.throw(/gateway or the broadcast/);
      expect(() => parseRequest('192.168.13.255/24', POOLED)).to.throw(/gateway or the broadcast/);
      expect(() => parseRequest('192.168.13.9', POOLED)).to.throw(/give its subnet too/);
      expect(() => parseRequest('192.168.0.0/15', POOLED)).to.throw(/must be a \/16 to a \/30/);
      expect(() => parseRequest('192.168.0.0/31', POOLED)).to.throw(/must be a \/16 to a \/30/);
    });

    it('outside the subnet and the pool (or with no pool): an error that says which', function () {
      expect(() => parseRequest('172.16.0.0/24', POOLED)).to.throw(/outside this user's subnet 10\.88\.0\.0\/24 and address pool 192\.168\.0\.0\/16/);
      expect(() => parseRequest('192.168.13.0/24', NET)).to.throw(/outside this user's subnet 10\.88\.0\.0\/24 \(.*--network-pool\)/);
    });
  });
});
