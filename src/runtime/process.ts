// One process in a container, as the daemon sees it: output read from conmon's log
// from where the last reader stopped, the exit code from conmon (sync pipe while we
// started it, its exit file otherwise), stdin through conmon's attach socket.
import { constants, existsSync, openSync, closeSync, watch, writeFileSync, writeSync, type FSWatcher } from 'node:fs';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseK8sLog } from './k8slog.js';
import { sharedSpawner, type SpawnedChild, type Spawner } from './spawner/spawner.js';

// conmon's attach socket is SOCK_SEQPACKET, which node:net cannot open: a small C relay
// (built beside this file) connects to it and copies its stdin there; no native addon.
const CONMON_ATTACH = fileURLToPath(new URL('./attach/conmon-attach', import.meta.url));

export interface OutputSink {
  stdout(data: Buffer): void;
  stderr(data: Buffer): void;
  /** True while the sink's reader is behind: the log is not read further until onDrain. */
  congested?(): boolean;
  onDrain?(cb: () => void): void;
}

/** Files conmon writes for one monitored process. */
export interface ProcessFiles {
  dir: string;
  logPath: string;
  /** conmon names it after the container id, so it gets a directory of its own. */
  exitDir: string;
  exitFile: string;
  conmonPidFile: string;
  pidFile: string;
}

export function processFiles(dir: string, containerKey: string): ProcessFiles {
  return {
    dir,
    logPath: join(dir, 'output.log'),
    exitDir: join(dir, 'exit'),
    exitFile: join(dir, 'exit', containerKey),
    conmonPidFile: join(dir, 'conmon.pid'),
    pidFile: join(dir, 'pidfile'),
  };
}

const READ_CHUNK = 256 * 1024;
const STDIN_MESSAGE = 8192;
const STDIN_HIGH_WATER = 1024 * 1024;

export class ProcessHandle {
  private offset = 0;
  /** The log file the offset is into: conmon replaces the file when it hits its size limit. */
  private logInode = 0;
  private offsetLoaded = false;
  private readonly sinks = new Set<OutputSink>();
  private pumping: Promise<void> | undefined;
  private pumpAgain = false;
  private watcher: FSWatcher | undefined;
  private dirWatcher: FSWatcher | undefined;
  private exitCode: number | undefined;
  private exitError: string | undefined;
  private readonly exitWaiters: Array<() => void> = [];
  private offsetDirty = false;
  private offsetTimer: NodeJS.Timeout | undefined;
  private stdinHolders = 0;
  private stdinClosed = false;
  private stdinRelay: SpawnedChild | undefined;
  private stdinQueue: Buffer[] = [];
  /** Bytes handed to writeStdin that the kernel has not taken yet. */
  private stdinPending = 0;
  private stdinDrainWaiters: Array<() => void> = [];
  private finishedAt: number | undefined;
  private waitingForDrain = false;

  constructor(
    readonly id: string,
    readonly files: ProcessFiles,
    readonly pid: number | undefined,
    /** Starts the stdin relay without forking the large gdn process (issue 10). */
    private readonly spawner: Spawner = sharedSpawner(),
  ) {}

  get exited(): boolean {
    return this.exitCode !== undefined || this.exitError !== undefined;
  }
  get result(): { exitCode?: number; error?: string } {
    return { exitCode: this.exitCode, error: this.exitError };
  }

  /** Called with what conmon's sync pipe said; undefined means the pipe closed without a code. */
  reportExit(code: number | undefined): void {
    if (code !== undefined) this.finish(code);
    else void this.checkExitFile();
  }

  /** After a restart: learn the exit from the exit file, now or when conmon writes it. */
  watchForExit(): void {
    if (this.exited) return;
    try {
      this.dirWatcher = watch(this.files.exitDir, () => void this.checkExitFile());
      this.dirWatcher.on('error', () => {});
    } catch {
      // the directory is gone: the container was destroyed under us
    }
    void this.checkExitFile();
  }

  private async checkExitFile(): Promise<void> {
    if (this.exited) return;
    try {
      const text = (await readFile(this.files.exitFile, 'utf8')).trim();
      if (text !== '') return this.finish(Number(text));
    } catch {
      // not written yet
    }
    if (!(await this.monitorAlive())) {
      // conmon writes the exit file before it exits; look once more, then give up.
      try {
        const text = (await readFile(this.files.exitFile, 'utf8')).trim();
        if (text !== '') return this.finish(Number(text));
      } catch {
        // fall through
      }
      this.finishWithError('the process monitor exited without recording an exit status');
    }
  }

  private async monitorAlive(): Promise<boolean> {
    try {
      const pid = Number((await readFile(this.files.conmonPidFile, 'utf8')).trim());
      if (!(pid > 0)) return false;
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      return state !== 'Z' && state !== 'X' && stat.includes('(conmon)');
    } catch {
      return false;
    }
  }

  private finish(code: number): void {
    if (this.exited) return;
    this.exitCode = code;
    this.afterExit();
  }

  private finishWithError(message: string): void {
    if (this.exited) return;
    this.exitError = message;
    this.afterExit();
  }

  private afterExit(): void {
    this.finishedAt = Date.now();
    this.dirWatcher?.close();
    this.dirWatcher = undefined;
    this.stdinRelay?.stdin?.destroy();
    this.stdinRelay = undefined;
    this.stdinClosed = true;
    for (const w of this.stdinDrainWaiters.splice(0)) w();
    // conmon drains the pipes into the log before it reports the exit.
    void this.pump().then(() => {
      for (const w of this.exitWaiters.splice(0)) w();
    });
  }

  /** Resolves once the exit is known and every byte of output reached the current sinks. */
  /** Calls `cb` once finished (see waitFinished); the returned function cancels that. */
  onFinished(cb: () => void): () => void {
    let live = true;
    const fire = () => {
      if (live) cb();
    };
    if (this.exited) void this.pump().then(fire);
    else this.exitWaiters.push(fire);
    return () => {
      live = false;
      const i = this.exitWaiters.indexOf(fire);
      if (i >= 0) this.exitWaiters.splice(i, 1);
    };
  }

  waitFinished(): Promise<void> {
    // Once the exit is known, a pump (joining any in flight) is all that is left to wait for.
    if (this.exited) return this.pump();
    return new Promise((resolve) => this.exitWaiters.push(resolve));
  }

  // ---- output ----

  addSink(sink: OutputSink): void {
    this.sinks.add(sink);
    if (this.watcher === undefined && !this.exited) {
      try {
        this.watcher = watch(this.files.logPath, () => void this.pump());
        this.watcher.on('error', () => {});
      } catch {
        // conmon creates the log when the process starts; the directory watch covers the gap
        try {
          this.watcher = watch(this.files.dir, () => void this.pump());
          this.watcher.on('error', () => {});
        } catch {
          // gone
        }
      }
    }
    void this.pump();
  }

  removeSink(sink: OutputSink): void {
    this.sinks.delete(sink);
    if (this.sinks.size === 0) {
      this.watcher?.close();
      this.watcher = undefined;
    }
  }

  /** Reads what the log gained since the last read and hands it to every sink. */
  pump(): Promise<void> {
    if (this.pumping !== undefined) {
      this.pumpAgain = true;
      return this.pumping;
    }
    this.pumping = (async () => {
      do {
        this.pumpAgain = false;
        await this.pumpOnce();
      } while (this.pumpAgain);
    })().finally(() => {
      this.pumping = undefined;
    });
    return this.pumping;
  }

  private async pumpOnce(): Promise<void> {
    if (this.sinks.size === 0) return;
    if (!this.offsetLoaded) {
      this.offsetLoaded = true;
      try {
        const [offset, inode] = (await readFile(join(this.files.dir, 'read-offset'), 'utf8')).trim().split(':');
        this.offset = Number(offset) || 0;
        this.logInode = Number(inode) || 0;
      } catch {
        this.offset = 0;
      }
    }
    let fh;
    try {
      fh = await open(this.files.logPath, 'r');
    } catch {
      return;
    }
    try {
      const st = await fh.stat();
      if (this.logInode !== 0 && st.ino !== this.logInode) {
        // conmon started the log over at its size limit: what was not read is gone
        this.offset = 0;
        this.markOffset();
      } else if (st.size < this.offset) {
        this.offset = 0;
      }
      this.logInode = st.ino;
      let carry = Buffer.alloc(0);
      // Records are copied out of it, so one read buffer serves the whole pump.
      const chunk = Buffer.allocUnsafe(READ_CHUNK);
      for (;;) {
        // Back-pressure: the output waits on disk, not in memory, while a reader is slow.
        const slow = [...this.sinks].find((s) => s.congested?.() === true);
        if (slow !== undefined) {
          // one wait at a time, however many log events arrive meanwhile
          if (!this.waitingForDrain) {
            this.waitingForDrain = true;
            slow.onDrain?.(() => {
              this.waitingForDrain = false;
              void this.pump();
            });
          }
          break;
        }
        const { bytesRead } = await fh.read(chunk, 0, READ_CHUNK, this.offset + carry.length);
        if (bytesRead === 0) break;
        const buf = carry.length ? Buffer.concat([carry, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
        const { records, consumed } = parseK8sLog(buf);
        for (const r of records) for (const s of this.sinks) s[r.stream](r.data);
        this.offset += consumed;
        carry = Buffer.from(buf.subarray(consumed));
        if (consumed > 0) this.markOffset();
        if (bytesRead < READ_CHUNK) break;
      }
    } finally {
      await fh.close();
    }
  }

  /** Every record conmon has logged so far has been handed to the sinks. */
  async fullyRead(): Promise<boolean> {
    try {
      return this.offset >= (await stat(this.files.logPath)).size;
    } catch {
      return true;
    }
  }

  /** Pumps until the whole log has reached `sink`, waiting on it whenever it is behind. */
  async drainTo(sink: OutputSink, alive: () => boolean = () => true): Promise<void> {
    for (;;) {
      await this.pump();
      if (!alive() || (await this.fullyRead())) return;
      // the pump's own drain wait re-pumps; here only look again a little later
      await new Promise((r) => setTimeout(r, sink.congested?.() === true ? 20 : 10));
    }
  }

  private markOffset(): void {
    this.offsetDirty = true;
    if (this.offsetTimer !== undefined) return;
    this.offsetTimer = setTimeout(() => void this.flushOffset(), 100);
  }

  /** What has been handed to a reader is not handed out again, even after a restart. */
  async flushOffset(): Promise<void> {
    if (this.offsetTimer !== undefined) clearTimeout(this.offsetTimer);
    this.offsetTimer = undefined;
    if (!this.offsetDirty) return;
    this.offsetDirty = false;
    await writeFile(join(this.files.dir, 'read-offset'), `${this.offset}:${this.logInode}`).catch(() => {});
  }

  // ---- retention ----

  /**
   * A client received the exit status: recorded on disk so a restarted server knows too.
   * `declined`: that client asked for no output at all (a Go client with no stdout or stderr).
   */
  markDelivered(declined = false): void {
    try {
      writeFileSync(join(this.files.dir, 'delivered'), declined ? 'declined' : 'read');
    } catch {
      // the directory is gone with its container
    }
  }

  /** Exited at least `ageMs` ago, its exit status delivered and every byte of output read. */
  async reclaimable(ageMs: number, now = Date.now()): Promise<boolean> {
    if (!this.exited || this.sinks.size > 0) return false;
    if (this.finishedAt === undefined || now - this.finishedAt < ageMs) return false;
    let delivered: string;
    try {
      delivered = (await readFile(join(this.files.dir, 'delivered'), 'utf8')).trim();
    } catch {
      return false;
    }
    if (delivered === 'declined') return true;
    await this.flushOffset();
    let offset = 0;
    try {
      offset = Number((await readFile(join(this.files.dir, 'read-offset'), 'utf8')).trim().split(':')[0]) || 0;
    } catch {
      offset = 0;
    }
    let size = 0;
    try {
      size = (await stat(this.files.logPath)).size;
    } catch {
      size = 0;
    }
    return offset >= size;
  }

  // ---- stdin ----

  /** A client that may send stdin; when the last one lets go the process sees EOF. */
  holdStdin(): void {
    this.stdinHolders++;
  }

  releaseStdin(): void {
    if (this.stdinHolders > 0) this.stdinHolders--;
    if (this.stdinHolders === 0) this.closeStdin();
  }

  /** Queues stdin; false once 1 MiB waits, and onStdinDrain says when to go on. */
  writeStdin(data: Buffer): boolean {
    if (this.stdinClosed || this.exited) return true;
    for (let i = 0; i < data.length; i += STDIN_MESSAGE) this.stdinQueue.push(data.subarray(i, i + STDIN_MESSAGE));
    this.stdinPending += data.length;
    this.flushStdin();
    return this.stdinPending < STDIN_HIGH_WATER;
  }

  onStdinDrain(cb: () => void): void {
    if (this.stdinPending < STDIN_HIGH_WATER || this.stdinClosed || this.exited) return cb();
    this.stdinDrainWaiters.push(cb);
  }

  private stdinWritten(n: number): void {
    this.stdinPending = Math.max(0, this.stdinPending - n);
    if (this.stdinPending < STDIN_HIGH_WATER / 2) for (const w of this.stdinDrainWaiters.splice(0)) w();
  }

  private closeStdin(): void {
    if (this.stdinClosed || this.exited) return;
    this.stdinClosed = true;
    this.flushStdin();
  }

  private flushStdin(): void {
    if (this.stdinRelay === undefined) {
      if (!existsSync(join(this.files.dir, 'attach'))) return;
      // Relative to its working directory: a depot path can be longer than sun_path allows.
      const relay = this.spawner.spawn(CONMON_ATTACH, ['attach'], { cwd: this.files.dir, stdin: 'pipe', env: process.env });
      const lost = () => {
        if (this.stdinRelay === relay) this.stdinRelay = undefined;
      };
      relay.on('error', lost);
      relay.on('exit', lost);
      relay.stdin!.on('error', lost);
      this.stdinRelay = relay;
    }
    const sink = this.stdinRelay.stdin!;
    for (const b of this.stdinQueue.splice(0)) {
      const copy = Buffer.from(b);
      sink.write(copy, () => this.stdinWritten(copy.length));
    }
    if (this.stdinClosed) {
      sink.end();
      this.stdinRelay = undefined;
    }
  }

  /** Resizes the process's terminal: conmon reads "<event> <rows> <columns>" from its ctl FIFO (event 1 = resize). */
  resize(rows: number, columns: number): void {
    if (this.exited || rows <= 0 || columns <= 0) return;
    let fd: number | undefined;
    try {
      fd = openSync(join(this.files.dir, 'ctl'), constants.O_WRONLY | constants.O_NONBLOCK);
      writeSync(fd, `1 ${rows} ${columns}\n`);
    } catch {
      // no terminal, or its monitor is gone
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  signal(sig: NodeJS.Signals): void {
    if (this.exited || this.pid === undefined) return;
    try {
      process.kill(this.pid, sig);
    } catch {
      // already gone
    }
  }

  close(): void {
    this.watcher?.close();
    this.dirWatcher?.close();
    this.stdinRelay?.stdin?.destroy();
    if (this.offsetTimer !== undefined) clearTimeout(this.offsetTimer);
    void this.flushOffset();
  }
}
