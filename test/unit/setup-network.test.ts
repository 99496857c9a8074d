// gdn setup's network planning (issue #13): port blocks another user's or the host's
// listener uses, ip_local_reserved_ports arithmetic, and the host OUTPUT rules.
import { expect } from 'chai';
import { busyIn, mergePortRanges, outputRules, parseProcNet, planNetwork } from '../../src/setup/network.js';

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1003        0 1 1 0 100 0 0 10 0
   1: 0100007F:4E21 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1003        0 2 1 0 20 4 30 10 -1
   2: 0100007F:4E22 0100007F:9C41 06 00000000:00000000 03:00000000 00000000     0        0 0 3
`;
const UDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100580A:5208 00000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 3 2 0 0
`;

describe('setup network (issue #13)', function () {
  it('reads listening TCP and bound UDP sockets with their owners', function () {
    expect(parseProcNet('tcp', TCP)).to.deep.equal([{ proto: 'tcp', port: 20000, uid: 1003 }]);
    expect(parseProcNet('udp', UDP)).to.deep.equal([{ proto: 'udp', port: 21000, uid: 1001 }]);
  });

  it("a block with another uid's listener is busy; the user's own is not", function () {
    const s = [...parseProcNet('tcp', TCP), ...parseProcNet('udp', UDP)];
    expect(busyIn(s, 1001, 20000, 20499)).to.equal('20000/tcp (a socket of uid 1003)');
    expect(busyIn(s, 1003, 20000, 20499)).to.equal(undefined);
    expect(busyIn(s, 1003, 20500, 20999)).to.equal(undefined);
  });

  it('planNetwork skips a busy default block and refuses a busy explicit one', function () {
    const busy = (a: number, b: number): string | undefined => (a <= 20010 && 20010 <= b ? '20010/tcp (a socket of uid 0)' : undefined);
    expect(planNetwork(1001, [], {}, busy)).to.include({ portStart: 20500, portEnd: 20999 });
    expect(() => planNetwork(1001, [], { hostPorts: '20000-20100' }, busy)).to.throw(/20010\/tcp \(a socket of uid 0\) already uses one/);
  });

  it('merges reserved port ranges the way the kernel prints them', function () {
    expect(mergePortRanges('', [[20000, 20499], [20500, 20999]])).to.equal('20000-20999');
    expect(mergePortRanges('8080,30000-30010', [[20000, 20499]])).to.equal('8080,20000-20499,30000-30010');
    expect(mergePortRanges('20000-20499', [[20000, 20499]])).to.equal('20000-20499');
  });

  it("the host's own traffic into a bridge: replies and net-in, then the owner and root, else dropped (both families)", function () {
    for (const family of [4, 6] as const) {
      const r = outputRules('tr1001', 1001, family).map((x) => x.join(' '));
      expect(r[0]).to.match(/^-o tr1001 -m conntrack --ctstate ESTABLISHED,RELATED/);
      expect(r).to.include('-o tr1001 -m owner --uid-owner 1001 -j ACCEPT');
      expect(r[r.length - 1]).to.equal('-o tr1001 -j DROP');
      expect(r.every((x) => x.startsWith('-o tr1001 '))).to.equal(true);
    }
  });
});
