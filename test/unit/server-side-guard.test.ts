// Side servers (Prometheus metrics, debug vars) sit behind the API's peer check:
// another local user is refused before the handler runs (review of issue #12).
import { expect } from 'chai';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { guardedHandler } from '../../src/api/front.js';

const get = (port: number): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c)).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject).end();
  });

describe('guardedHandler (side servers behind the peer check)', () => {
  let server: Server | undefined;
  afterEach(() => server?.close());

  const serve = async (denied: string | undefined, calls: string[]): Promise<number> => {
    const handler = guardedHandler(async () => denied, (_req, res) => {
      calls.push('handler');
      res.end('metric 1\n');
    }, pino({ level: 'silent' }));
    server = createServer(handler);
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return (server.address() as AddressInfo).port;
  };

  it('serves the owner', async () => {
    const calls: string[] = [];
    const port = await serve(undefined, calls);
    expect(await get(port)).to.deep.equal({ status: 200, body: 'metric 1\n' });
    expect(calls).to.deep.equal(['handler']);
  });

  it('refuses another user with 403 and the reason, and never runs the handler', async () => {
    const calls: string[] = [];
    const port = await serve('permission denied: this gdn server serves only uid 1001, not uid 1003', calls);
    expect(await get(port)).to.deep.equal({ status: 403, body: 'permission denied: this gdn server serves only uid 1001, not uid 1003\n' });
    expect(calls).to.deep.equal([]);
  });
});
