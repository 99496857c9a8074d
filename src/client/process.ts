// Run/Attach as the Go client does them (spec §3): a hijacked control
// connection carrying JSON messages both ways, plus one raw connection per
// output stream the caller asked for. wait() settles only after the terminal
// message AND end of every opened output stream.

import type net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { BadResponse, ConnectionFailed, errorFromWire } from './errors.js';
import { decodeJson, parseJson, scanJsonValue } from './gojson.js';
import {
  dial, readAll, readResponseHead, requestHead, responseBody, responseWantsClose, type Target,
} from './http.js';
import type { Signal, TTYSpec } from './types.js';
import { decodeErrorObject, decodeProcessPayload, encodeProcessPayload } from './wire.js';

export interface ProcessIO {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
}

/** Go's io.Copy buffer: stdin goes out in messages of at most this many bytes. */
export const STDIN_CHUNK = 32 * 1024;

export interface HijackRequest {
  method: 'GET' | 'POST';
  path: string;
  body?: Buffer;
  contentType?: string;
}

/**
 * One request on a fresh connection, no Connection header, one response head
 * read; on 2xx the socket is handed over with the bytes already read past
 * the head. Mirrors httputil.ClientConn: a response that means "closing"
 * fails with `persistent connection closed`, whatever its status.
 */
export async function hijack(target: Target, req: HijackRequest, dialTimeoutMs?: number): Promise<{ socket: net.Socket; rest: Buffer }> {
  const socket = await dial(target, dialTimeoutMs);
  const headers: Array<[string, string]> = [];
  if (req.body !== undefined && (req.body.length > 0 || req.method === 'POST')) {
    headers.push(['Content-Length', String(req.body.length)]);
  }
  if (req.contentType) headers.push(['Content-Type', req.contentType]);
  const head = requestHead(req.method, req.path, headers);
  socket.write(req.body && req.body.length > 0 ? Buffer.concat([head, req.body]) : head);
  let response: Awaited<ReturnType<typeof readResponseHead>>;
  try {
    response = await readResponseHead(socket);
  } catch (err) {
    socket.destroy();
    throw err;
  }
  if (responseWantsClose(response.head)) {
    socket.destroy();
    throw new ConnectionFailed('persistent connection closed');
  }
  const status = response.head.status;
  if (status < 200 || status > 299) {
    let wireError: Error;
    let text = '';
    try {
      const body = await readAll(responseBody(response.head, response.rest, socket));
      text = body.toString('utf8');
      wireError = errorFromWire(decodeJson(body, decodeErrorObject));
    } catch (err) {
      throw new BadResponse(
        `Backend error: Exit status: ${status}, Body: ${text}, error reading response body: ${(err as Error).message}`,
      );
    } finally {
      socket.destroy();
    }
    throw wireError;
  }
  return { socket, rest: response.rest };
}

/** Newline-separated (really: concatenated) JSON values from the control connection. */
class MessageReader {
  private buf: Buffer;
  private ended = false;
  private failure: Error | undefined;
  private waiter: (() => void) | undefined;

  constructor(private readonly socket: net.Socket, rest: Buffer) {
    this.buf = rest;
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', (err) => {
      this.failure ??= err;
      this.wake();
    });
    socket.resume();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** The next value; throws `EOF`, `unexpected EOF`, a read error or a syntax error as Go's decoder would. */
  async next(): Promise<unknown> {
    for (;;) {
      const end = scanJsonValue(this.buf, 0);
      if (end >= 0) {
        const text = this.buf.subarray(0, end).toString('utf8');
        this.buf = this.buf.subarray(end);
        return parseJson(text);
      }
      if (this.failure) throw this.failure;
      if (this.ended) {
        const left = this.buf.toString('latin1').trim();
        if (left === '') throw new Error('EOF');
        if (/^[-0-9tfn]/.test(left)) {
          // A bare scalar is only complete at EOF; Go still rejects it for a struct.
          this.buf = Buffer.alloc(0);
          return parseJson(left);
        }
        throw new Error('unexpected EOF');
      }
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}

export class Process {
  private readonly settled: Promise<number>;
  private resolveExit!: (code: number) => void;
  private rejectExit!: (err: Error) => void;
  private readonly sockets: net.Socket[];
  private stopStdin: () => void = () => {};

  constructor(readonly id: string, private readonly control: net.Socket) {
    this.sockets = [control];
    this.settled = new Promise<number>((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    // A caller that detaches without waiting must not see an unhandled rejection.
    this.settled.catch(() => {});
  }

  /** The exit status; rejects with `connection: ...` errors as Go's Wait() does. */
  wait(): Promise<number> {
    return this.settled;
  }

  signal(signal: Signal): Promise<void> {
    return this.send(encodeProcessPayload({ process_id: this.id, signal }));
  }

  setTTY(tty: TTYSpec): Promise<void> {
    return this.send(encodeProcessPayload({ process_id: this.id, tty }));
  }

  /** Drop every connection without waiting for the process: it keeps running on the server. */
  detach(): void {
    this.stopStdin();
    for (const s of this.sockets) s.destroy();
  }

  /** @internal */
  addSocket(s: net.Socket): void {
    this.sockets.push(s);
  }

  /** @internal */
  exited(code: number, err?: Error): void {
    this.stopStdin();
    for (const s of this.sockets) s.destroy();
    if (err) this.rejectExit(err);
    else this.resolveExit(code);
  }

  /** @internal */
  send(line: string): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.control.destroyed || this.control.writableEnded) {
        reject(new ConnectionFailed('use of closed network connection'));
        return;
      }
      this.control.write(line + '\n', (err) => (err ? reject(err) : resolve()));
    });
  }

  /** @internal Forward stdin as `source:0` messages, then the EOF message. */
  pumpStdin(stdin: Readable): void {
    let stopped = false;
    const onData = (chunk: Buffer | string): void => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      let ok = true;
      for (let i = 0; i < bytes.length; i += STDIN_CHUNK) {
        const line = encodeProcessPayload({ process_id: this.id, source: 0 }, bytes.subarray(i, i + STDIN_CHUNK)) + '\n';
        if (this.control.destroyed || this.control.writableEnded) return;
        ok = this.control.write(line) && ok;
      }
      if (!ok) {
        stdin.pause();
        this.control.once('drain', () => {
          if (!stopped) stdin.resume();
        });
      }
    };
    const onEnd = (): void => {
      if (stopped) return;
      void this.send(encodeProcessPayload({ process_id: this.id, source: 0 })).catch(() => {});
    };
    // Go logs a read error and sends no EOF message.
    const onError = (): void => {};
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.on('error', onError);
    stdin.resume();
    this.stopStdin = () => {
      if (stopped) return;
      stopped = true;
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.off('error', onError);
      stdin.pause();
    };
  }
}

/** Copy a raw output stream into its sink; resolves at EOF (or on error, as io.Copy returns). */
function copyStream(socket: net.Socket, rest: Buffer, sink: Writable): Promise<void> {
  return new Promise((resolve) => {
    let done = false;
    const onSinkError = (): void => {
      socket.destroy();
      finish();
    };
    const finish = (): void => {
      if (done) return;
      done = true;
      socket.unpipe(sink);
      // The sink outlives this process (a caller's stdout): leave no listener behind on it.
      sink.off('error', onSinkError);
      if (sink.writableNeedDrain && !sink.destroyed) sink.once('drain', () => resolve());
      else resolve();
    };
    if (rest.length > 0) sink.write(rest);
    socket.once('end', finish);
    socket.once('close', finish);
    sink.once('error', onSinkError);
    socket.pipe(sink, { end: false });
  });
}

export interface StreamProcessArgs {
  target: Target;
  dialTimeoutMs?: number;
  handlePath: string; // already escaped
  control: net.Socket;
  rest: Buffer;
  io: ProcessIO;
  escape: (s: string) => string;
}

/** After a successful Run/Attach head: identification message, streams, and the wait loop. */
export async function streamProcess(a: StreamProcessArgs): Promise<Process> {
  const messages = new MessageReader(a.control, a.rest);
  let first: ReturnType<typeof decodeProcessPayload>;
  try {
    first = decodeProcessPayload(await messages.next(), '');
  } catch (err) {
    a.control.destroy();
    throw new BadResponse((err as Error).message);
  }

  const process = new Process(first.process_id, a.control);
  if (a.io.stdin) process.pumpStdin(a.io.stdin);

  const copies: Array<Promise<void>> = [];
  const openStream = async (name: 'stdout' | 'stderr', sink: Writable): Promise<boolean> => {
    const path = `${a.handlePath}/processes/${a.escape(first.process_id)}/attaches/${a.escape(first.stream_id)}/${name}`;
    try {
      const { socket, rest } = await hijack(a.target, { method: 'GET', path, contentType: 'application/json' }, a.dialTimeoutMs);
      process.addSocket(socket);
      copies.push(copyStream(socket, rest, sink));
      return true;
    } catch (err) {
      const routeName = name === 'stdout' ? 'Stdout' : 'Stderr';
      process.exited(0, new ConnectionFailed(`connection: failed to hijack stream ${routeName}: ${(err as Error).message}`, err));
      return false;
    }
  };
  if (a.io.stdout && !(await openStream('stdout', a.io.stdout))) return process;
  if (a.io.stderr && !(await openStream('stderr', a.io.stderr))) return process;

  void (async () => {
    let outcome: { code: number; err?: Error };
    for (;;) {
      let payload: ReturnType<typeof decodeProcessPayload>;
      try {
        payload = decodeProcessPayload(await messages.next(), '');
      } catch (err) {
        outcome = { code: 0, err: new ConnectionFailed(`connection: decode failed: ${(err as Error).message}`, err) };
        break;
      }
      if (payload.error !== null) {
        outcome = { code: 0, err: new ConnectionFailed(`connection: process error: ${payload.error}`) };
        break;
      }
      if (payload.exit_status !== null) {
        outcome = { code: payload.exit_status };
        break;
      }
      // anything else is ignored, as in Go
    }
    await Promise.all(copies);
    process.exited(outcome.code, outcome.err);
  })();

  return process;
}
