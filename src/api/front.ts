// The raw front: Node's HTTP parser cannot serve Garden's hijacked routes (the client
// writes control messages on the same socket right after the request), so every
// connection's first request head is read here. The four process routes are served
// on the raw socket; everything else is handed to the express app untouched.
import net from 'node:net';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { toHttpError, STATUS_TEXT } from './errors.js';
import { InvalidArgument, PermissionDenied } from '../errors.js';
import { isLoopback, loopbackPeerUid } from './peer.js';

const MAX_HEAD = 64 * 1024;
export const MAX_JSON_BODY = 1024 * 1024;

export interface RequestHead {
  method: string;
  path: string;
  query: string;
  headers: Record<string, string>;
}

export type HijackRoute =
  | { kind: 'run'; handle: string }
  | { kind: 'attach'; handle: string; pid: string }
  | { kind: 'stream'; handle: string; pid: string; streamId: string; pipe: 'stdout' | 'stderr' };

export interface HijackHandler {
  (route: HijackRoute, head: RequestHead, sock: net.Socket, body: Buffer, leftover: Buffer): void;
}

/** Garden's path parameter decoding: `+` is a space, then percent-decoding (§0.3). */
export function decodeSegment(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    throw new InvalidArgument(`invalid URL escape in '${s}'`);
  }
}

export function matchHijack(method: string, path: string): HijackRoute | undefined {
  const seg = path.split('/');
  if (seg[0] !== '' || seg[1] !== 'containers' || seg[3] !== 'processes') return undefined;
  if (seg.slice(1).some((s) => s === '')) return undefined;
  if (method === 'POST' && seg.length === 4) return { kind: 'run', handle: decodeSegment(seg[2]!) };
  if (method === 'GET' && seg.length === 5) return { kind: 'attach', handle: decodeSegment(seg[2]!), pid: decodeSegment(seg[4]!) };
  if (method === 'GET' && seg.length === 8 && seg[5] === 'attaches' && (seg[7] === 'stdout' || seg[7] === 'stderr')) {
    return { kind: 'stream', handle: decodeSegment(seg[2]!), pid: decodeSegment(seg[4]!), streamId: decodeSegment(seg[6]!), pipe: seg[7] };
  }
  return undefined;
}

export function parseHead(text: string): RequestHead | undefined {
  const lines = text.split('\r\n');
  const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(lines[0] ?? '');
  if (!m) return undefined;
  const target = m[2]!;
  const q = target.indexOf('?');
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const c = l.indexOf(':');
    if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
  }
  return { method: m[1]!, path: q < 0 ? target : target.slice(0, q), query: q < 0 ? '' : target.slice(q + 1), headers };
}

export function writeFramedError(sock: net.Socket, err: unknown): void {
  const { status, body } = toHttpError(err);
  sock.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\nContent-Type: application/json\r\nDate: ${new Date().toUTCString()}\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/** Says who may talk to the server: undefined to serve the connection, else why not. */
export type PeerCheck = (sock: net.Socket) => Promise<string | undefined>;

/** Loopback TCP peers must be the server's own user (or root); remote peers are the operator's choice. */
export function sameUserPeerCheck(ownUid: number): PeerCheck {
  return async (sock) => {
    const { remoteAddress, remotePort, localAddress, localPort } = sock;
    if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) return undefined;
    if (!isLoopback(remoteAddress)) {
      // A non-loopback peer on a loopback address is a forged or martian packet (a container
      // sending to 127.0.0.1 through a bridge, CVE-2020-8558): never the operator's remote client.
      if (isLoopback(localAddress)) return `permission denied: a connection to ${localAddress} from ${remoteAddress}`;
      return undefined;
    }
    const uid = await loopbackPeerUid({ address: remoteAddress, port: remotePort }, { address: localAddress, port: localPort });
    if (uid === ownUid || uid === 0) return undefined;
    return uid === undefined
      ? `permission denied: cannot tell which user connected; this gdn server serves only uid ${ownUid}`
      : `permission denied: this gdn server serves only uid ${ownUid}, not uid ${uid}`;
  };
}

/**
 * A side server's handler (metrics, debug vars) behind the same peer check as the API:
 * what it shows (handles, figures, the command line) is this user's business only.
 */
export function guardedHandler(
  check: PeerCheck,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  log: Logger,
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    check(req.socket).then(
      (denied) => {
        if (denied === undefined) return handler(req, res);
        log.info({ peer: `${req.socket.remoteAddress}:${req.socket.remotePort}`, why: denied }, 'side-server.peer-refused');
        res.writeHead(403, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' }).end(`${denied}\n`);
      },
      (err: unknown) => {
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' }).end(`${err instanceof Error ? err.message : String(err)}\n`);
      },
    );
  };
}

export function createFront(http: HttpServer, hijack: HijackHandler, log: Logger, peerCheck?: PeerCheck): net.Server {
  return net.createServer({ allowHalfOpen: true, pauseOnConnect: peerCheck !== undefined }, (sock) => {
    if (peerCheck === undefined) return serve(sock);
    peerCheck(sock).then(
      (denied) => {
        if (denied === undefined) {
          serve(sock);
          sock.resume();
          return;
        }
        log.info({ peer: `${sock.remoteAddress}:${sock.remotePort}`, why: denied }, 'front.peer-refused');
        writeFramedError(sock, new PermissionDenied(denied));
      },
      () => sock.destroy(),
    );
  });

  function serve(sock: net.Socket): void {
    sock.setNoDelay(true);
    // A connection that never sends its request head is dropped (hijacked ones clear this).
    sock.setTimeout(60_000, () => sock.destroy());
    let buf: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > MAX_HEAD) {
          sock.removeListener('data', onData);
          sock.end('HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n');
        }
        return;
      }
      sock.removeListener('data', onData);
      sock.removeListener('end', onEnd);
      const head = parseHead(buf.subarray(0, end).toString('latin1'));
      let route: HijackRoute | undefined;
      try {
        route = head === undefined ? undefined : matchHijack(head.method, head.path);
      } catch (err) {
        writeFramedError(sock, err);
        return;
      }
      if (head === undefined || route === undefined) {
        // Not ours: give the bytes back and let Node's HTTP server have the socket.
        sock.pause();
        sock.unshift(buf);
        sock.setTimeout(0); // Node's HTTP server applies its own header and keep-alive timeouts
        http.emit('connection', sock);
        sock.resume();
        return;
      }
      sock.setTimeout(0);
      sock.setKeepAlive(true, 30_000);
      const rest = buf.subarray(end + 4);
      if (route.kind !== 'run') {
        sock.pause();
        hijack(route, head, sock, Buffer.alloc(0), rest);
        return;
      }
      readBody(sock, head, rest, (err, body, leftover) => {
        if (err) return writeFramedError(sock, err);
        hijack(route!, head, sock, body!, leftover!);
      });
    };
    const onEnd = () => sock.end();
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('error', (err) => log.debug({ err: err.message }, 'front.socket-error'));
  }
}

/** Reads exactly Content-Length bytes of body; what follows is the control stream. */
function readBody(sock: net.Socket, head: RequestHead, initial: Buffer, cb: (err: Error | null, body?: Buffer, leftover?: Buffer) => void): void {
  const length = Number(head.headers['content-length'] ?? '0');
  if (!Number.isInteger(length) || length < 0) return cb(new InvalidArgument('invalid Content-Length'));
  if (length > MAX_JSON_BODY) return cb(new InvalidArgument(`request body too large: ${length} bytes (limit ${MAX_JSON_BODY})`));
  let buf: Buffer = initial;
  const check = () => {
    if (buf.length < length) return false;
    sock.removeListener('data', onData);
    sock.removeListener('end', onEnd);
    // Control messages may follow at once: hold them in the socket until serveControl reads.
    sock.pause();
    cb(null, buf.subarray(0, length), buf.subarray(length));
    return true;
  };
  const onData = (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    check();
  };
  const onEnd = () => cb(new InvalidArgument('EOF'));
  if (check()) return;
  sock.on('data', onData);
  sock.on('end', onEnd);
}
