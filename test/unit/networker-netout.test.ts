// Garden's net-out rules as iptables lines for the container's own netns.
import { expect } from 'chai';
import fc from 'fast-check';
import { ipv4Table, parseCidr, parseRule, ruleLines } from '../../plugins/networker/netout.js';

describe('networker net-out rules', () => {
  it('reads the seed rule: tcp to everywhere on every port', () => {
    const r = parseRule({ protocol: 1, networks: [{ start: '0.0.0.0', end: '255.255.255.255' }], ports: [{ end: 65535 }] });
    expect(ruleLines(r)).to.deep.equal(['-A trellis-netout -p tcp -m iprange --dst-range 0.0.0.0-255.255.255.255 -m tcp --dport 0:65535 -j ACCEPT']);
  });

  it('expands networks × ports, single addresses as /32, and logs NEW connections first', () => {
    const r = parseRule({
      protocol: 2,
      networks: [{ start: '10.0.0.1', end: '10.0.0.1' }, { start: '10.1.0.0', end: '10.1.0.255' }],
      ports: [{ start: 53, end: 53 }, { start: 5000, end: 5010 }],
      log: true,
    });
    const lines = ruleLines(r);
    expect(lines).to.have.length(8);
    expect(lines[0]).to.equal('-A trellis-netout -p udp -d 10.0.0.1/32 -m udp --dport 53 -m conntrack --ctstate NEW -j LOG --log-prefix "trellis-netout "');
    expect(lines[1]).to.equal('-A trellis-netout -p udp -d 10.0.0.1/32 -m udp --dport 53 -j ACCEPT');
    expect(lines[7]).to.equal('-A trellis-netout -p udp -m iprange --dst-range 10.1.0.0-10.1.0.255 -m udp --dport 5000:5010 -j ACCEPT');
  });

  it('takes a rule with no networks as any destination, and ICMP type/code', () => {
    expect(ruleLines(parseRule({ protocol: 0 }))).to.deep.equal(['-A trellis-netout -p all -j ACCEPT']);
    expect(ruleLines(parseRule({ protocol: 3, icmps: { type: 8, code: 0 } }))).to.deep.equal([
      '-A trellis-netout -p icmp -m icmp --icmp-type 8/0 -j ACCEPT',
    ]);
  });

  it('refuses bad rules with a clear message', () => {
    const bad: [unknown, RegExp][] = [
      [{ protocol: 9 }, /invalid protocol/],
      [{ protocol: 4 }, /icmpv6 is not supported/],
      [{ protocol: 0, ports: [{ start: 80, end: 80 }] }, /Ports cannot be specified for Protocol ALL/],
      [{ protocol: 1, ports: [{ start: 90, end: 80 }] }, /ends before it starts/],
      [{ protocol: 1, ports: [{ start: 70000 }] }, /invalid port/],
      [{ protocol: 1, networks: [{ start: '10.0.0.300' }] }, /not an IPv4 address/],
      [{ protocol: 1, networks: [{ start: '10.0.0.9', end: '10.0.0.1' }] }, /is after its end/],
      [{ protocol: 1, networks: [{ start: '1.2.3.4; rm -rf /' }] }, /not an IPv4 address/],
      [{ protocol: 1, icmps: { type: 8 } }, /ICMP type cannot be specified for Protocol TCP/],
      [{ protocol: 1, log: 'yes' }, /log must be a boolean/],
      ['tcp', /not an object/],
    ];
    for (const [raw, msg] of bad) expect(() => parseRule(raw), JSON.stringify(raw)).to.throw(msg);
  });

  it('never emits anything but addresses, numbers and fixed words (property)', () => {
    const ip = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((a) => a.join('.'));
    fc.assert(
      fc.property(fc.nat(3), fc.array(fc.record({ start: ip, end: ip }), { maxLength: 3 }), fc.array(fc.record({ start: fc.nat(65535), end: fc.nat(65535) }), { maxLength: 3 }), (protocol, networks, ports) => {
        let rule;
        try {
          rule = parseRule({ protocol, networks, ports });
        } catch {
          return true;
        }
        return ruleLines(rule).every((l) => /^-A trellis-netout -p (all|tcp|udp|icmp)( [-a-z0-9.:/]+)* -j ACCEPT$/.test(l));
      }),
    );
  });

  it('builds a deny-by-default table: neighbours and DNS open, the host only through rules, deny lists first', () => {
    const t = ipv4Table({
      subnet: '10.88.7.0/24',
      gateway: '10.88.7.1',
      dnsServers: ['10.0.0.53'],
      allowNetworks: ['192.168.50.0/24'],
      denyNetworks: ['10.88.7.128/25'],
      rules: [parseRule({ protocol: 1, networks: [{ start: '10.88.7.1' }], ports: [{ start: 8080 }] })],
    });
    const lines = t.split('\n');
    const at = (s: string) => lines.indexOf(s);
    expect(at('-A OUTPUT -d 10.88.7.128/25 -j REJECT --reject-with icmp-net-prohibited')).to.be.lessThan(at('-A OUTPUT -d 10.88.7.0/24 -j ACCEPT'));
    expect(at('-A OUTPUT -d 10.88.7.1/32 -j trellis-netout')).to.be.lessThan(at('-A OUTPUT -d 10.88.7.0/24 -j ACCEPT'));
    expect(at('-A OUTPUT -d 10.88.7.1/32 -j REJECT')).to.be.lessThan(at('-A OUTPUT -d 10.88.7.0/24 -j ACCEPT'));
    expect(lines).to.include('-A trellis-netout -p tcp -d 10.88.7.1/32 -m tcp --dport 8080 -j ACCEPT');
    expect(t.endsWith('COMMIT\n')).to.equal(true);
  });

  it('parses CIDRs strictly', () => {
    expect(parseCidr('10.88.0.0/16')).to.deep.equal({ network: '10.88.0.0', prefix: 16 });
    expect(() => parseCidr('10.88.0.1/16')).to.throw(/not the network address/);
    expect(() => parseCidr('10.88.0.0/33')).to.throw(/invalid CIDR/);
    expect(() => parseCidr('10.88.0.0')).to.throw(/invalid CIDR/);
  });
});
