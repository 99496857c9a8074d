import { expect } from 'chai';
import { isLoopback, parseProcAddress, peerUidFrom } from '../../src/api/peer.js';

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E61 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 53549 1 0000000089131753 100 0 0 10 0
   1: 0100007F:A26E 0100007F:1E61 01 00000000:00000000 00:00000000 00000000  1000        0 60001 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1E61 0100007F:A26E 01 00000000:00000000 00:00000000 00000000  1001        0 60002 1 0000000000000000 20 4 30 10 -1
   3: 0200007F:A26E 0100007F:1E61 01 00000000:00000000 00:00000000 00000000  4242        0 60003 1 0000000000000000 20 4 30 10 -1
`;

describe('loopback peer identification', function () {
  it('decodes /proc/net/tcp addresses (IPv4 in host byte order)', function () {
    expect(parseProcAddress('0100007F:1E61')).to.deep.equal({ address: '127.0.0.1', port: 7777 });
    expect(parseProcAddress('00000000000000000000000001000000:1E61')).to.deep.equal({ address: '::1', port: 7777 });
    expect(parseProcAddress('0000000000000000FFFF00000100007F:A26E')).to.deep.equal({ address: '127.0.0.1', port: 41582 });
  });

  it("finds the uid owning the client's end of the connection", function () {
    expect(peerUidFrom(TCP, { address: '127.0.0.1', port: 41582 }, { address: '127.0.0.1', port: 7777 })).to.equal(1000);
    expect(peerUidFrom(TCP, { address: '127.0.0.2', port: 41582 }, { address: '127.0.0.1', port: 7777 })).to.equal(4242);
    expect(peerUidFrom(TCP, { address: '::ffff:127.0.0.1', port: 41582 }, { address: '::ffff:127.0.0.1', port: 7777 })).to.equal(1000);
    expect(peerUidFrom(TCP, { address: '127.0.0.1', port: 1 }, { address: '127.0.0.1', port: 7777 })).to.equal(undefined);
  });

  it('knows loopback addresses', function () {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) expect(isLoopback(a), a).to.equal(true);
    for (const a of ['10.0.0.1', '0.0.0.0', '::', '192.168.1.1']) expect(isLoopback(a), a).to.equal(false);
  });
});
