// gdn's children (conmon, runc, the CNI gate) are started by trellis-spawner, a small C
// process gdn starts once: a fork of the large Node process blocks its event loop for
// milliseconds per spawn, and under parallel load those spawns queue on the one loop (issue 10).
// SpawnedChild has the shape callers knew from child_process (pid, stdio streams, 'spawn',
// 'error', 'exit', 'close', kill), so moving a call here changes little.
import { spawn as nodeSpawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { encodeClose, encodeKill, encodeSpawn, encodeWrite, EventDecoder, SpawnFlag, type SpawnerEvent } from './protocol.js';

export const SPAWNER_BINARY = fileURLToPath(new URL('./trellis-spawner', import.meta.url));

/** Stdin writes go out in frames of at most this many bytes. */
const WRITE_FRAME = 1 << 20;

export interface SpawnOptions {
  /** Exactly the child's environment (undefined values are left out). */
  env: Record<string, string | undefined>;
  cwd?: string;
  /** In a session (and process group) of its own, as node's `detached`. */
  detached?: boolean;
  stdin?: 'ignore' | 'pipe';
  stdout?: 'ignore' | 'pipe';
  stderr?: 'ignore' | 'pipe';
  /** A pipe on the child's fd 3 that gdn reads (conmon's sync pipe). */
  fd3?: 'ignore' | 'pipe';
}

/** A failure of the spawner itself, not of the child: the call did not (or may not have) run. */
export class SpawnerGone extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SpawnerGone';
  }
}

/** The spawner could not start the child (a missing binary, say); `code` is the errno's name. */
export class SpawnFailed extends Error {
  constructor(
    readonly file: string,
    readonly code: string,
    detail: string,
  ) {
    super(`cannot start ${file}: ${detail} (${code})`);
    this.name = 'SpawnFailed';
  }
}

/** A byte channel to one spawner process. */
export interface Transport {
  write(b: Buffer): void;
  readonly pid?: number;
  ref(): void;
  unref(): void;
  /** Ends the spawner (tests, shutdown). */
  close(): void;
}

/** Starts a spawner; onData gets every chunk it sends, onClose is called once when it is gone. */
export type TransportFactory = (onData: (b: Buffer) => void, onClose: (why: string) => void) => Transport;

/** Where the spawner holds its sealed copy of the runtime (trellis-spawner.c SEALED_FD). */
export const SEALED_FD = 1000;

/**
 * The real transport: trellis-spawner as a child of this process, framed over its stdin/stdout.
 * `sealRuntime()`: the runtime binary the spawner keeps a sealed copy of (issue 10), if any.
 */
export const processTransport =
  (binary = SPAWNER_BINARY, sealRuntime: () => string | undefined = () => undefined): TransportFactory =>
  (onData, onClose) => {
    const seal = sealRuntime();
    const child: ChildProcess = nodeSpawn(binary, [String(process.pid), ...(seal === undefined ? [] : [seal])], { stdio: ['pipe', 'pipe', 'inherit'], env: {} });
    let closed = false;
    const gone = (why: string) => {
      if (closed) return;
      closed = true;
      onClose(why);
    };
    child.on('error', (err) => gone(`cannot start ${binary}: ${err.message}`));
    child.stdout!.on('data', (b: Buffer) => onData(b));
    child.stdout!.on('error', () => {});
    child.stdout!.on('close', () => gone('the spawner closed its channel'));
    child.stdin!.on('error', () => gone('the spawner stopped reading'));
    return {
      pid: child.pid,
      write: (b) => {
        if (!closed) child.stdin!.write(b);
      },
      ref: () => {
        child.ref();
        (child.stdout as unknown as { ref(): void }).ref();
        (child.stdin as unknown as { ref(): void }).ref();
      },
      unref: () => {
        child.unref();
        (child.stdout as unknown as { unref(): void }).unref();
        (child.stdin as unknown as { unref(): void }).unref();
      },
      close: () => {
        child.stdin!.end();
      },
    };
  };

function signalNumber(sig: NodeJS.Signals | number): number {
  if (typeof sig === 'number') return sig;
  const n = (constants.signals as Record<string, number>)[sig];
  if (n === undefined) throw new TypeError(`unknown signal ${sig}`);
  return n;
}

function signalName(n: number): NodeJS.Signals | null {
  for (const [name, v] of Object.entries(constants.signals)) if (v === n) return name as NodeJS.Signals;
  return null;
}

function errnoName(n: number): string {
  for (const [name, v] of Object.entries(constants.errno)) if (v === n) return name;
  return `errno ${n}`;
}

export class SpawnedChild extends EventEmitter {
  pid: number | undefined;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  /** The child's fd 3, when asked for. */
  readonly fd3: Readable | null;
  /** One callback per stdin frame, in order: the spawner answers each with one WROTE. */
  private readonly wroteWaiters: (() => void)[] = [];
  private exited = false;
  private ended = false;
  /** Pipes the spawner still reads for us (fd numbers). */
  private readonly open = new Set<number>();

  constructor(
    readonly id: number,
    readonly file: string,
    opts: SpawnOptions,
    private readonly send: (b: Buffer) => void,
    private readonly ended_: () => void,
  ) {
    super();
    const output = (fd: 1 | 2 | 3, want: string | undefined) =>
      want === 'pipe'
        ? new Readable({
            read() {},
            destroy: (err, cb) => {
              if (this.open.delete(fd)) {
                this.send(encodeClose(this.id, fd));
                this.maybeClose();
              }
              cb(err);
            },
          })
        : null;
    for (const [fd, want] of [[1, opts.stdout], [2, opts.stderr], [3, opts.fd3]] as const) if (want === 'pipe') this.open.add(fd);
    this.stdout = output(1, opts.stdout);
    this.stderr = output(2, opts.stderr);
    this.fd3 = output(3, opts.fd3);
    this.stdin =
      opts.stdin === 'pipe'
        ? new Writable({
            write: (chunk: Buffer, _enc, cb) => {
              const frames: Buffer[] = [];
              for (let i = 0; i < chunk.length; i += WRITE_FRAME) frames.push(chunk.subarray(i, i + WRITE_FRAME));
              if (frames.length === 0) return cb();
              let left = frames.length;
              for (const f of frames) {
                this.wroteWaiters.push(() => {
                  if (--left === 0) cb();
                });
                this.send(encodeWrite(this.id, f));
              }
            },
            final: (cb) => {
              this.send(encodeClose(this.id, 0));
              cb();
            },
            destroy: (err, cb) => {
              this.send(encodeClose(this.id, 0));
              cb(err);
            },
          })
        : null;
  }

  /** Signals the child (its process group if `group`); false once it has exited. */
  kill(signal: NodeJS.Signals | number = 'SIGTERM', group = false): boolean {
    if (this.exited || this.ended || this.pid === undefined) return false;
    this.send(encodeKill(this.id, signalNumber(signal), group));
    return true;
  }

  /** @internal */
  handle(ev: SpawnerEvent): void {
    switch (ev.type) {
      case 'started':
        this.pid = ev.pid;
        this.emit('spawn');
        break;
      case 'failed':
        this.finish(new SpawnFailed(this.file, errnoName(ev.errno), ev.message || `errno ${ev.errno}`));
        break;
      case 'data':
        this.stream(ev.fd)?.push(ev.data);
        break;
      case 'eof': {
        this.open.delete(ev.fd);
        const s = this.stream(ev.fd);
        if (s && !s.destroyed) s.push(null);
        this.maybeClose();
        break;
      }
      case 'exit':
        this.exited = true;
        this.exitCode = ev.code;
        this.signalCode = ev.signal === null ? null : signalName(ev.signal);
        this.emit('exit', this.exitCode, this.signalCode);
        this.maybeClose();
        break;
      case 'wrote':
        this.wroteWaiters.shift()?.();
        break;
    }
  }

  /** @internal the spawner is gone (err) or refused the child. */
  finish(err: Error): void {
    if (this.ended) return;
    this.ended = true;
    for (const s of [this.stdout, this.stderr, this.fd3]) if (s && !s.readableEnded && !s.destroyed) s.push(null);
    for (const w of this.wroteWaiters.splice(0)) w();
    this.ended_();
    this.emit('error', err);
    this.emit('close', null, null);
  }

  private stream(fd: number): Readable | null {
    return fd === 1 ? this.stdout : fd === 2 ? this.stderr : fd === 3 ? this.fd3 : null;
  }

  private maybeClose(): void {
    if (this.ended || !this.exited || this.open.size > 0) return;
    this.ended = true;
    this.ended_();
    // After the streams' own 'data' and 'end', as with child_process.
    setImmediate(() => this.emit('close', this.exitCode, this.signalCode));
  }
}

export interface RunResult {
  /** undefined when the child was signalled or never started. */
  exitCode: number | undefined;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Set when the child could not be started at all. */
  failure?: Error;
}

export class Spawner {
  private transport: Transport | undefined;
  private decoder = new EventDecoder();
  private readonly live = new Map<number, SpawnedChild>();
  private nextId = 1;

  constructor(private readonly factory: TransportFactory = processTransport()) {}

  spawn(file: string, args: string[], opts: SpawnOptions): SpawnedChild {
    const env: string[] = [];
    for (const [k, v] of Object.entries(opts.env)) if (v !== undefined) env.push(`${k}=${v}`);
    let flags = 0;
    if (opts.detached) flags |= SpawnFlag.setsid;
    if (opts.stdin === 'pipe') flags |= SpawnFlag.stdin;
    if (opts.stdout === 'pipe') flags |= SpawnFlag.stdout;
    if (opts.stderr === 'pipe') flags |= SpawnFlag.stderr;
    if (opts.fd3 === 'pipe') flags |= SpawnFlag.fd3;
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffff_fff0 ? 1 : this.nextId + 1;
    const request = encodeSpawn(id, { file, args, env, cwd: opts.cwd, flags });
    const t = this.channel();
    const child = new SpawnedChild(id, file, opts, (b) => {
      if (this.transport === t) t.write(b);
    }, () => {
      this.live.delete(id);
      if (this.live.size === 0) this.transport?.unref();
    });
    this.live.set(id, child);
    t.ref();
    t.write(request);
    return child;
  }

  /** Runs a child to its end and collects its output, like execa with `reject: false`. */
  run(file: string, args: string[], opts: Omit<SpawnOptions, 'stdin' | 'stdout' | 'stderr' | 'fd3'> & { input?: string | Buffer; timeoutMs?: number }): Promise<RunResult> {
    return new Promise((resolve) => {
      const child = this.spawn(file, args, { ...opts, stdin: opts.input === undefined ? 'ignore' : 'pipe', stdout: 'pipe', stderr: 'pipe' });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout!.on('data', (b: Buffer) => out.push(b));
      child.stderr!.on('data', (b: Buffer) => err.push(b));
      let failure: Error | undefined;
      child.on('error', (e: Error) => (failure = e));
      let timer: NodeJS.Timeout | undefined;
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(() => child.kill('SIGKILL', opts.detached === true), opts.timeoutMs);
        timer.unref();
      }
      child.on('close', () => {
        if (timer) clearTimeout(timer);
        resolve({
          exitCode: failure === undefined && child.exitCode !== null ? child.exitCode : undefined,
          signal: child.signalCode,
          stdout: Buffer.concat(out).toString('utf8').replace(/\n$/, ''),
          stderr: Buffer.concat(err).toString('utf8').replace(/\n$/, ''),
          failure,
        });
      });
      if (opts.input !== undefined) child.stdin!.end(opts.input);
    });
  }

  /** The spawner's pid (tests), starting it if need be. */
  pid(): number | undefined {
    return this.channel().pid;
  }

  /**
   * The sealed copy of the runtime the running spawner holds, as a path to execute (issue 10:
   * runc then need not copy itself in every container's init); undefined when it holds none.
   * A spawner started again after a loss has another pid: ask again for each use.
   */
  sealedRuntime(): string | undefined {
    const pid = this.channel().pid;
    if (pid === undefined) return undefined;
    const path = `/proc/${pid}/fd/${SEALED_FD}`;
    try {
      return readlinkSync(path).startsWith('/memfd:trellis-runtime') ? path : undefined;
    } catch {
      return undefined;
    }
  }

  /** Ends the spawner; children already started live on. */
  close(): void {
    const t = this.transport;
    this.transport = undefined;
    t?.close();
  }

  private channel(): Transport {
    if (this.transport) return this.transport;
    this.decoder = new EventDecoder();
    const t: Transport = this.factory(
      (b) => {
        if (this.transport !== t) return;
        let events: SpawnerEvent[];
        try {
          events = this.decoder.push(b);
        } catch (e) {
          this.lost(t, `unreadable message from the spawner: ${(e as Error).message}`);
          t.close();
          return;
        }
        for (const ev of events) this.live.get(ev.id)?.handle(ev);
      },
      (why) => this.lost(t, why),
    );
    this.transport = t;
    t.unref();
    return t;
  }

  /** The spawner is gone: every call in flight fails clearly, and the next call starts a new one. */
  private lost(t: Transport, why: string): void {
    if (this.transport !== t) return;
    this.transport = undefined;
    const children = [...this.live.values()];
    this.live.clear();
    for (const c of children) {
      const what = c.pid === undefined ? 'before it said whether the child started' : `while it watched pid ${c.pid}`;
      c.finish(new SpawnerGone(`trellis-spawner went away ${what} (${c.file}): ${why}`));
    }
  }
}

let shared: Spawner | undefined;
let sharedSeal: string | undefined;

/** The daemon's one spawner, started on first use. */
export function sharedSpawner(): Spawner {
  shared ??= new Spawner(processTransport(SPAWNER_BINARY, () => sharedSeal));
  return shared;
}

/** The runtime binary the shared spawner keeps a sealed copy of, from its next start (gdn's wiring). */
export function sealRuntimeInSharedSpawner(runtime: string): void {
  sharedSeal = runtime;
}
