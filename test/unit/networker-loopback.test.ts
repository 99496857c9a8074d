// gdn's socket on a mapped host port (issues #12 and #13): it reserves the port and splices
// loopback clients to the target; releasing it frees the port.
import { expect } from 'chai';
import net, { type AddressInfo } from 'node:net';
import { pino } from 'pino';
import { PortHolder, PortInUse } from '../../plugins/networker/loopback.js';

function fetch(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host, port });
    let text = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (text += d));
    c.on('end', () => resolve(text));
    c.on('error', reject);
  });
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

describe('networker: PortHolder (issues #12, #13)', function () {
  let target: net.Server;
  let targetPort: number;
  const holder = new PortHolder(pino({ level: 'silent' }));

  before(async function () {
    target = net.createServer((c) => c.end(`hello from ${c.remoteAddress}\n`));
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
    targetPort = (target.address() as AddressInfo).port;
  });

  after(async function () {
    await holder.releaseAll();
    await new Promise((r) => target.close(r));
  });

  it('splices a loopback client to the target; another bind of the port fails while it is held; release frees it', async function () {
    const port = await freePort();
    expect(await holder.hold(port, 'tcp', { ip: '127.0.0.1', port: targetPort })).to.equal(true);
    expect(await holder.hold(port, 'tcp', { ip: '127.0.0.1', port: targetPort }), 'held already').to.equal(false);
    expect(await fetch('127.0.0.1', port)).to.match(/^hello from /);
    const other = net.createServer();
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
      other.once('error', resolve);
      other.listen(port, '127.0.0.1');
    });
    expect(err.code).to.equal('EADDRINUSE');
    await holder.release(port, 'tcp');
    await new Promise<void>((resolve) => other.listen(port, '127.0.0.1', resolve));
    await new Promise((r) => other.close(r));
  });

  it('a client that shuts down writing still gets the answer (half-close passes through)', async function () {
    const counter = net.createServer({ allowHalfOpen: true }, (c) => {
      let n = 0;
      c.on('data', (d: Buffer) => (n += d.length));
      c.on('end', () => c.end(`${n}\n`));
    });
    await new Promise<void>((r) => counter.listen(0, '127.0.0.1', r));
    const port = await freePort();
    await holder.hold(port, 'tcp', { ip: '127.0.0.1', port: (counter.address() as AddressInfo).port });
    try {
      const got = await new Promise<string>((resolve, reject) => {
        const c = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
        let text = '';
        c.setEncoding('utf8');
        c.on('data', (d: string) => (text += d));
        c.on('end', () => resolve(text));
        c.on('error', reject);
        c.end(Buffer.alloc(1 << 20));
      });
      expect(got).to.equal(`${1 << 20}\n`);
    } finally {
      await holder.release(port, 'tcp');
      await new Promise((r) => counter.close(r));
    }
  });

  it('refuses a port someone else holds with a clear error', async function () {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const { port } = busy.address() as AddressInfo;
    try {
      await holder.hold(port, 'tcp', { ip: '127.0.0.1', port: targetPort }).then(
        () => expect.fail('hold succeeded'),
        (e: unknown) => {
          expect(e).to.be.instanceOf(PortInUse);
          expect((e as Error).message).to.equal(`host port ${port}/tcp is in use on this host (another user's or the host's service holds it): not mapped`);
        },
      );
      expect(holder.has(port, 'tcp')).to.equal(false);
    } finally {
      await new Promise((r) => busy.close(r));
    }
  });

  it('reserves UDP ports too', async function () {
    const port = await freePort();
    expect(await holder.hold(port, 'udp', { ip: '127.0.0.1', port: 9 })).to.equal(true);
    await holder.release(port, 'udp');
    expect(holder.has(port, 'udp')).to.equal(false);
  });
});
