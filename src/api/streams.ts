// Garden's process protocol (spec/garden-api.md §3): a hijacked control connection
// per Run/Attach, and stdout/stderr connections keyed by stream id. Output a client
// has not read stays in conmon's log on disk, so nothing is lost while no one listens.
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { parseJson } from '../client/gojson.js';
import { errorMessage } from '../errors.js';
import type { OutputSink, ProcessHandle } from '../runtime/process.js';
import { decodeControl, encodeErrorMessage, encodeExitMessage, encodeIdMessage } from './codec.js';

const STREAM_LINGER_MS = 60_000;
/** A control message is a 32 KiB stdin chunk in JSON: a line past this is not one. */
const MAX_CONTROL_LINE = 1024 * 1024;
/** Per stream and pipe: what may wait in memory for a pipe whose connection has not come yet. */
const MAX_BUFFERED = 8 * 1024 * 1024;

export function streamHead(): string {
  return `HTTP/1.1 200 OK\r\nDate: ${new Date().toUTCString()}\r\nTransfer-Encoding: chunked\r\n\r\n`;
}

export function controlHead(status: 200 | 201): string {
  const text = status === 201 ? 'Created' : 'OK';
  return `HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nDate: ${new Date().toUTCString()}\r\nTransfer-Encoding: chunked\r\n\r\n`;
}

class Pipe {
  sock: Socket | undefined;
  buf: Buffer[] = [];
  size = 0;
  write(data: Buffer): void {
    if (this.sock !== undefined && !this.sock.destroyed) {
      this.sock.write(data);
      return;
    }
    if (this.size + data.length > MAX_BUFFERED) return;
    this.buf.push(data);
    this.size += data.length;
  }
  attach(sock: Socket): void {
    this.sock = sock;
    for (const b of this.buf.splice(0)) sock.write(b);
    this.size = 0;
  }
  close(): void {
    this.sock?.end();
  }
  congested(): boolean {
    return this.sock !== undefined && !this.sock.destroyed && this.sock.writableNeedDrain;
  }
}

export class Stream implements OutputSink {
  private readonly out = new Pipe();
  private readonly err = new Pipe();
  private sinkAdded = false;
  private stopped = false;
  private stopping: Promise<void> | undefined;

  constructor(
    readonly id: string,
    readonly proc: ProcessHandle,
    private readonly onGone: () => void,
  ) {}

  stdout(data: Buffer): void {
    this.out.write(data);
  }
  stderr(data: Buffer): void {
    this.err.write(data);
  }
  congested(): boolean {
    return this.out.congested() || this.err.congested();
  }
  onDrain(cb: () => void): void {
    const sock = (this.out.congested() ? this.out : this.err).sock;
    if (sock === undefined) return cb();
    const once = () => {
      sock.off('drain', once);
      sock.off('close', once);
      cb();
    };
    sock.on('drain', once);
    sock.on('close', once);
  }

  /** Whether a client ever connected this stream's stdout or stderr. */
  get wanted(): boolean {
    return this.sinkAdded;
  }

  /** A stdout or stderr connection arrived (its head is already written). */
  connect(kind: 'stdout' | 'stderr', sock: Socket): void {
    (kind === 'stdout' ? this.out : this.err).attach(sock);
    if (this.stopped && !this.proc.exited) {
      // a detached stream of a running process: what is unread stays for the next attacher
      sock.end();
      return;
    }
    if (!this.sinkAdded) {
      this.sinkAdded = true;
      this.proc.addSink(this);
    }
    if (this.stopped) void this.drainAndClose();
  }

  /** The control connection is done (exit reported, or the client detached). */
  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopped = true;
    this.stopping = this.drainAndClose();
    const t = setTimeout(() => this.onGone(), STREAM_LINGER_MS);
    t.unref();
    return this.stopping;
  }

  private async drainAndClose(): Promise<void> {
    const open = () => [this.out.sock, this.err.sock].some((s) => s !== undefined && !s.destroyed);
    if (this.sinkAdded && this.proc.exited) await this.proc.drainTo(this, open);
    if (this.out.sock) this.out.close();
    if (this.err.sock) this.err.close();
    if (!this.sinkAdded) return;
    if (!this.proc.exited || (this.out.sock && this.err.sock)) {
      // Detached (or done): stop taking output, so the next attacher gets what is unread.
      this.proc.removeSink(this);
    } else {
      // The process is done and one pipe has not connected yet: keep its output for it a while.
      const t = setTimeout(() => this.proc.removeSink(this), STREAM_LINGER_MS);
      t.unref();
    }
  }
}

export class StreamHub {
  private next = 1;
  private readonly streams = new Map<string, Stream>();

  create(proc: ProcessHandle): Stream {
    const id = String(this.next++);
    const s = new Stream(id, proc, () => this.streams.delete(id));
    this.streams.set(id, s);
    return s;
  }

  get(id: string): Stream | undefined {
    return this.streams.get(id);
  }
}

/**
 * Serves one control connection after its head was written: sends the id message,
 * applies client messages (stdin, signals), then the exit status, then closes.
 */
export function serveControl(opts: {
  sock: Socket;
  leftover: Buffer;
  proc: ProcessHandle;
  stream: Stream;
  log: Logger;
  onDone: () => void;
}): void {
  const { sock, proc, stream, log } = opts;
  let held = true;
  proc.holdStdin();
  const letGo = () => {
    if (held) {
      held = false;
      proc.releaseStdin();
    }
  };
  let finished = false;
  let unsubscribe = () => {};
  const done = () => {
    if (finished) return;
    finished = true;
    unsubscribe();
    letGo();
    void stream.stop();
    opts.onDone();
  };

  sock.write(encodeIdMessage(proc.id, stream.id));

  let pending: Buffer = opts.leftover.length > 0 ? Buffer.from(opts.leftover) : Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    if (pending.length > MAX_CONTROL_LINE && pending.indexOf(0x0a) < 0) {
      // not Garden's protocol: a message never ends
      log.info({ bytes: pending.length }, 'process.control-line-too-long');
      sock.destroy();
      return;
    }
    let nl: number;
    while ((nl = pending.indexOf(0x0a)) >= 0) {
      const text = pending.subarray(0, nl).toString('utf8').trim();
      pending = pending.subarray(nl + 1);
      if (text === '') continue;
      let msg;
      try {
        msg = decodeControl(parseJson(text));
      } catch (err) {
        log.info({ err: errorMessage(err) }, 'process.bad-control-message');
        letGo();
        continue;
      }
      if (msg.tty !== null) {
        const ws = msg.tty.window_size;
        if (ws !== null) proc.resize(ws.rows, ws.columns);
        continue;
      }
      if (msg.source !== null) {
        if (msg.data !== null) proc.writeStdin(Buffer.from(msg.data, 'utf8'));
        else letGo();
        continue;
      }
      if (msg.signal !== null) {
        if (msg.signal === 0) proc.signal('SIGTERM');
        else if (msg.signal === 1) proc.signal('SIGKILL');
        else letGo();
        continue;
      }
      letGo();
    }
  };
  sock.on('data', onData);
  if (pending.length > 0) {
    const first = pending;
    pending = Buffer.alloc(0);
    onData(first);
  }
  sock.on('error', () => {});
  sock.resume();
  // The client closing the connection before the exit is a detach: the process runs on.
  sock.on('close', done);
  // The front allows half-open sockets, so a client that closes shows up as 'end' first.
  sock.on('end', () => {
    sock.end();
    done();
  });

  unsubscribe = proc.onFinished(() => {
    if (finished || sock.destroyed) return done();
    const { exitCode, error } = proc.result;
    sock.end(exitCode !== undefined ? encodeExitMessage(proc.id, exitCode) : encodeErrorMessage(proc.id, error ?? 'unknown'));
    // Streams connect after the exit message as often as before: give them a moment.
    setTimeout(() => proc.markDelivered(!stream.wanted), 1000).unref();
    done();
  });
}
