// gdn's own socket on each mapped host port (issues #12 and #13). It proves the port is
// free of other users' and the host's sockets before the gate maps it, keeps it reserved
// while mapped (no one else can bind it on any address), and serves the loopback path:
// portmap's DNAT never sees 127.0.0.1 or ::1 (setup makes it skip loopback, and
// route_localnet stays off), so loopback clients land here and are spliced to the
// container. Every other client keeps the kernel's DNAT path and its source address.
import dgram from 'node:dgram';
import net from 'node:net';
import type { Logger } from 'pino';
import { TrellisError } from '../../src/errors.js';

export interface Target {
  ip: string;
  port: number;
}

interface Held {
  close(): Promise<void>;
}

const isLoopback = (a: string | undefined): boolean =>
  a !== undefined && (a === '::1' || a.startsWith('127.') || a.startsWith('::ffff:127.'));

export class PortInUse extends TrellisError {
  constructor(port: number, proto: string) {
    super('ERR_TRELLIS_PORT_IN_USE', `host port ${port}/${proto} is in use on this host (another user's or the host's service holds it): not mapped`);
  }
}

async function listenTcp(port: number, target: Target, log: Logger): Promise<Held> {
  const conns = new Set<net.Socket>();
  // Half-open both ways: a client that shuts down writing still gets the container's answer.
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    // Only loopback peers arrive here by design; anything else is not ours to proxy.
    if (!isLoopback(client.localAddress)) {
      client.destroy();
      return;
    }
    const upstream = net.connect({ host: target.ip, port: target.port, allowHalfOpen: true });
    conns.add(client);
    conns.add(upstream);
    // An error on either side ends both; a clean close waits for both directions (each side's
    // end is passed on by pipe), so nothing queued for the client is cut off.
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', kill).on('close', () => {
      conns.delete(client);
      upstream.destroy();
    });
    upstream.on('error', kill).on('close', () => conns.delete(upstream));
    upstream.once('connect', () => {
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  });
  const listen = (host: string, ipv6Only?: boolean): Promise<void> =>
    new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen({ host, port, ipv6Only, exclusive: true }, () => {
        server.off('error', onError);
        resolve();
      });
    });
  try {
    // Dual stack: 127.0.0.1 and ::1 both; a host without IPv6 gets IPv4 only.
    await listen('::', false).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') throw err;
      await listen('0.0.0.0');
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE' || (err as NodeJS.ErrnoException).code === 'EACCES') throw new PortInUse(port, 'tcp');
    throw err;
  }
  server.on('error', (err) => log.error({ port, err: err.message }, 'loopback.error'));
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of conns) c.destroy();
        server.close(() => resolve());
      }),
  };
}

async function bindUdp(port: number): Promise<Held> {
  const bindOn = (type: 'udp4' | 'udp6'): Promise<dgram.Socket> =>
    new Promise((resolve, reject) => {
      const s = dgram.createSocket({ type, ipv6Only: false });
      s.once('error', (err) => {
        s.close();
        reject(err);
      });
      s.bind({ port, address: type === 'udp6' ? '::' : '0.0.0.0', exclusive: true }, () => resolve(s));
    });
  let sock: dgram.Socket;
  try {
    sock = await bindOn('udp6').catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') throw err;
      return bindOn('udp4');
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE' || (err as NodeJS.ErrnoException).code === 'EACCES') throw new PortInUse(port, 'udp');
    throw err;
  }
  // A reservation only: UDP on loopback is not spliced; datagrams are dropped.
  sock.on('message', () => undefined);
  sock.on('error', () => undefined);
  return { close: () => new Promise<void>((resolve) => sock.close(() => resolve())) };
}

/** The sockets gdn holds, by `port/proto`. */
export class PortHolder {
  private readonly held = new Map<string, Held>();
  constructor(private readonly log: Logger) {}

  has(port: number, proto: 'tcp' | 'udp'): boolean {
    return this.held.has(`${port}/${proto}`);
  }

  /** True when this call bound the port; false when gdn already held it (for another mapping, which the gate then refuses). */
  async hold(port: number, proto: 'tcp' | 'udp', target: Target): Promise<boolean> {
    const key = `${port}/${proto}`;
    if (this.held.has(key)) return false;
    this.held.set(key, proto === 'tcp' ? await listenTcp(port, target, this.log) : await bindUdp(port));
    return true;
  }

  async release(port: number, proto: 'tcp' | 'udp'): Promise<void> {
    const key = `${port}/${proto}`;
    const h = this.held.get(key);
    this.held.delete(key);
    await h?.close();
  }

  async releaseAll(): Promise<void> {
    await Promise.all([...this.held.keys()].map((k) => {
      const [port, proto] = k.split('/');
      return this.release(Number(port), proto as 'tcp' | 'udp');
    }));
  }
}
