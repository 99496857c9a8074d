// The HTTP/1.1 the Go Garden client speaks, written by hand over a raw socket:
// Node's http client adds and reorders headers, and cannot hand over a socket
// after a response head the way Go's httputil.ClientConn does.

import { existsSync } from 'node:fs';
import net from 'node:net';
import { Readable } from 'node:stream';
import { BadResponse, ConnectionFailed } from './errors.js';

export interface Target {
  network: 'tcp' | 'unix';
  address: string;
}

/** As gaol decides: a string naming an existing file is a unix socket, anything else host:port. */
export function parseTarget(target: string): Target {
  return existsSync(target) ? { network: 'unix', address: target } : { network: 'tcp', address: target };
}

/** Go's net.SplitHostPort, enough for host:port and [v6]:port. */
export function splitHostPort(address: string): { host: string; port: string } {
  if (address.startsWith('[')) {
    const close = address.indexOf(']');
    if (close < 0 || address[close + 1] !== ':') throw new Error(`address ${address}: missing port in address`);
    return { host: address.slice(1, close), port: address.slice(close + 2) };
  }
  const i = address.lastIndexOf(':');
  if (i < 0) throw new Error(`address ${address}: missing port in address`);
  const host = address.slice(0, i);
  if (host.includes(':')) throw new Error(`address ${address}: too many colons in address`);
  return { host, port: address.slice(i + 1) };
}

const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: 'connect: connection refused',
  ENOENT: 'connect: no such file or directory',
  EACCES: 'connect: permission denied',
  ECONNRESET: 'connection reset by peer',
  EHOSTUNREACH: 'connect: no route to host',
  ENETUNREACH: 'connect: network is unreachable',
  ENOTSOCK: 'connect: socket operation on non-socket',
};

function dialError(target: Target, err: NodeJS.ErrnoException): ConnectionFailed {
  const what = (err.code && ERRNO_TEXT[err.code]) ?? err.message;
  return new ConnectionFailed(`dial ${target.network} ${target.address}: ${what}`, err);
}

/** A new connection, failing like Go's net.DialTimeout (2 s by default). */
export function dial(target: Target, timeoutMs = 2000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    let socket: net.Socket;
    try {
      if (target.network === 'unix') {
        socket = net.connect({ path: target.address });
      } else {
        const { host, port } = splitHostPort(target.address);
        const portNum = Number(port);
        if (!/^\d+$/.test(port) || portNum > 65535) throw new Error(`dial tcp: address ${target.address}: invalid port`);
        socket = net.connect({ host: host === '' ? undefined : host, port: portNum });
      }
    } catch (err) {
      reject(new ConnectionFailed(err instanceof Error ? err.message : String(err), err));
      return;
    }
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ConnectionFailed(`dial ${target.network} ${target.address}: i/o timeout`));
    }, timeoutMs);
    const onDialError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      reject(dialError(target, err));
    };
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onDialError);
      // Failures after connect surface through whoever reads or writes; an
      // unheard 'error' event must not kill the process.
      socket.on('error', () => {});
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', onDialError);
  });
}

// ---------------------------------------------------------------------------
// Requests

/**
 * A request head in Go's order: Host, User-Agent, then the given headers
 * (framing first, then the request's own headers sorted, then the
 * transport's extra ones: that is the caller's job).
 */
export function requestHead(method: string, pathAndQuery: string, headers: ReadonlyArray<readonly [string, string]>): Buffer {
  let s = `${method} ${pathAndQuery} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n`;
  for (const [k, v] of headers) s += `${k}: ${v}\r\n`;
  return Buffer.from(s + '\r\n', 'latin1');
}

/** Go's url.PathEscape, which gaol's router library applies to path parameters. */
export function pathEscape(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~$&+:=@]/.test(c)) out += c;
    else out += '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Go's url.QueryEscape: space → '+', everything but unreserved characters escaped. */
export function queryEscape(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~]/.test(c)) out += c;
    else if (c === ' ') out += '+';
    else out += '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Go's url.Values.Encode: keys sorted (bytewise), one value each here. */
export function encodeQuery(values: Record<string, string>): string {
  return Object.keys(values)
    .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
    .map((k) => `${queryEscape(k)}=${queryEscape(values[k]!)}`)
    .join('&');
}

// ---------------------------------------------------------------------------
// Responses

export interface ResponseHead {
  major: number;
  minor: number;
  status: number;
  headers: Map<string, string[]>;
}

export function header(head: ResponseHead, name: string): string | undefined {
  return head.headers.get(name.toLowerCase())?.[0];
}

const MAX_HEAD_BYTES = 1 << 20;
const HEAD_END = Buffer.from('\r\n\r\n');

function parseHead(text: string): ResponseHead {
  const lines = text.split('\r\n');
  const m = /^HTTP\/(\d)\.(\d) (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
  if (!m) throw new BadResponse(`malformed HTTP response ${JSON.stringify(lines[0] ?? '')}`);
  const headers = new Map<string, string[]>();
  for (const line of lines.slice(1)) {
    if (line === '') continue;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new BadResponse(`malformed MIME header line: ${line}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const list = headers.get(name) ?? [];
    list.push(line.slice(colon + 1).trim());
    headers.set(name, list);
  }
  return { major: Number(m[1]), minor: Number(m[2]), status: Number(m[3]), headers };
}

/**
 * Read exactly one response head from the socket. The bytes after it that
 * arrived in the same reads are returned, and the socket is left paused with
 * nothing else consumed, so the caller owns everything that follows.
 */
export function readResponseHead(socket: net.Socket): Promise<{ head: ResponseHead; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const end = buf.indexOf(HEAD_END);
      if (end < 0) {
        if (buf.length > MAX_HEAD_BYTES) {
          cleanup();
          reject(new BadResponse('response head too large'));
        }
        return;
      }
      socket.pause();
      cleanup();
      try {
        resolve({ head: parseHead(buf.subarray(0, end).toString('latin1')), rest: buf.subarray(end + 4) });
      } catch (err) {
        reject(err);
      }
    };
    const onEnd = (): void => {
      cleanup();
      reject(new BadResponse(buf.length === 0 ? 'EOF' : 'unexpected EOF'));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new ConnectionFailed(err.message, err));
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.resume();
  });
}

const bodyless = (status: number): boolean => (status >= 100 && status < 200) || status === 204 || status === 304;

/**
 * Go's rule for "this connection will close after the response": Connection:
 * close, HTTP/1.0 without keep-alive, or a body framed by neither
 * Content-Length nor chunked encoding. Go's single-connection client refuses to
 * hand over such a connection ("persistent connection closed").
 */
export function responseWantsClose(head: ResponseHead): boolean {
  const connection = (head.headers.get('connection') ?? []).join(',').toLowerCase().split(',').map((t) => t.trim());
  if (head.major < 1) return true;
  if (head.major === 1 && head.minor === 0) {
    if (!connection.includes('keep-alive')) return true;
  }
  if (connection.includes('close')) return true;
  if (bodyless(head.status)) return false;
  return !isChunked(head) && header(head, 'content-length') === undefined;
}

function isChunked(head: ResponseHead): boolean {
  const te = head.headers.get('transfer-encoding');
  return te !== undefined && te.join(',').toLowerCase().includes('chunked');
}

/** A response body as a stream: Content-Length, chunked, or read until close. */
export function responseBody(head: ResponseHead, rest: Buffer, socket: net.Socket): Readable {
  let decode: (chunk: Buffer) => { out: Buffer[]; done: boolean };
  let untilClose = false;
  if (bodyless(head.status)) {
    decode = () => ({ out: [], done: true });
  } else if (isChunked(head)) {
    decode = chunkedDecoder();
  } else if (header(head, 'content-length') !== undefined) {
    const lengthText = header(head, 'content-length')!;
    if (!/^\d+$/.test(lengthText)) throw new BadResponse(`bad Content-Length ${JSON.stringify(lengthText)}`);
    let remaining = Number(lengthText);
    decode = (chunk) => {
      const take = chunk.subarray(0, remaining);
      remaining -= take.length;
      return { out: take.length > 0 ? [take] : [], done: remaining === 0 };
    };
  } else {
    untilClose = true;
    decode = (chunk) => ({ out: [chunk], done: false });
  }

  let finished = false;
  const finish = (err?: Error): void => {
    if (finished) return;
    finished = true;
    socket.off('data', onData);
    socket.off('end', onEnd);
    socket.off('error', onError);
    socket.destroy();
    if (err) body.destroy(err);
    else body.push(null);
  };
  const feed = (chunk: Buffer): void => {
    let r: { out: Buffer[]; done: boolean };
    try {
      r = decode(chunk);
    } catch (err) {
      finish(err as Error);
      return;
    }
    let more = true;
    for (const piece of r.out) more = body.push(piece) && more;
    if (r.done) finish();
    else if (!more) socket.pause();
  };
  const onData = (chunk: Buffer): void => feed(chunk);
  const onEnd = (): void => finish(untilClose ? undefined : new BadResponse('unexpected EOF'));
  const onError = (err: Error): void => finish(new ConnectionFailed(err.message, err));

  const body = new Readable({
    read() {
      if (!finished) socket.resume();
    },
    destroy(err, cb) {
      if (!finished) {
        finished = true;
        socket.destroy();
      }
      cb(err);
    },
  });
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('error', onError);
  // The head reader left the socket paused; the first read() resumes it.
  feed(rest);
  return body;
}

function chunkedDecoder(): (chunk: Buffer) => { out: Buffer[]; done: boolean } {
  type State = 'size' | 'data' | 'data-crlf' | 'trailer' | 'done';
  let state: State = 'size';
  let line = '';
  let remaining = 0;
  return (chunk) => {
    const out: Buffer[] = [];
    let i = 0;
    while (i < chunk.length && state !== 'done') {
      if (state === 'data') {
        const take = chunk.subarray(i, i + remaining);
        out.push(take);
        remaining -= take.length;
        i += take.length;
        if (remaining === 0) state = 'data-crlf';
        continue;
      }
      const nl = chunk.indexOf(0x0a, i);
      if (nl < 0) {
        line += chunk.subarray(i).toString('latin1');
        if (line.length > 4096) throw new BadResponse('malformed chunked encoding');
        break;
      }
      line += chunk.subarray(i, nl).toString('latin1');
      i = nl + 1;
      const text = line.replace(/\r$/, '');
      line = '';
      if (state === 'size') {
        const size = /^([0-9a-fA-F]+)\s*(?:;.*)?$/.exec(text);
        if (!size) throw new BadResponse('malformed chunked encoding');
        remaining = parseInt(size[1]!, 16);
        state = remaining === 0 ? 'trailer' : 'data';
      } else if (state === 'data-crlf') {
        if (text !== '') throw new BadResponse('malformed chunked encoding');
        state = 'size';
      } else if (state === 'trailer') {
        if (text === '') state = 'done';
      }
    }
    return { out, done: state === 'done' };
  };
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}
