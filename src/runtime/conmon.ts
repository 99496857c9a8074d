// conmon supervises every container init and every process, so both outlive gdn.
// We start it with a sync pipe on fd 3 (API version 1): it reports the pid (or a
// negative number and the runtime's error), and in exec mode later the exit code.
// It double-forks, so its monitor lives on without us; the exit file and the
// k8s-file log stay on disk for whoever reads them next.
import { readFileSync } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExternalFailure } from '../errors.js';
import { sharedSpawner, type Spawner } from './spawner/spawner.js';

export interface SyncMessage {
  data: number;
  message?: string;
}

/** Parses newline-separated `{"data": N, "message": "..."}` records. */
export class SyncReader {
  private buf = '';
  constructor(private readonly onMessage: (m: SyncMessage) => void) {}
  push(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line === '') continue;
      try {
        this.onMessage(JSON.parse(line) as SyncMessage);
      } catch {
        // conmon writes runtime output unescaped in rare cases; keep what is readable.
        const m = /"data":\s*(-?\d+)/.exec(line);
        if (m) this.onMessage({ data: Number(m[1]), message: line });
      }
    }
  }
}

export interface ConmonCommon {
  /** Container id (runc's) and a unique id for this monitor. */
  containerId: string;
  monitorId: string;
  /** Directory conmon owns: bundle path (-b), attach socket, ctl/winsz fifos. */
  dir: string;
  runtimeRoot: string;
  pidFile: string;
  conmonPidFile: string;
  exitDir: string;
  logPath: string;
  stdin: boolean;
  terminal?: boolean;
  /** No size limit on this log (gdn's own helpers, whose output must arrive whole). */
  unlimitedLog?: boolean;
  /** The runtime binary for this monitor when not runc (trellis-exec for a spawn-server exec). */
  runtime?: string;
}

export interface ExecOptions extends ConmonCommon {
  processSpecPath: string;
}

export interface StartedMonitor {
  pid: number;
  /** Resolves with the exit code reported on the sync pipe (exec mode), or undefined if the pipe closed first. */
  exited: Promise<number | undefined>;
}

/**
 * Failures of runc's own start-up that say nothing about the container and pass by
 * themselves (issue 10): runc 1.1 copying itself into a sealed memfd under load
 * ("nsexec: could not ensure we are a cloned binary: Device or resource busy"), and its Go
 * runtime or helper not getting a thread (pthread_create: EAGAIN) while the container's
 * cgroup is briefly at its pid limit.
 */
export function isTransientRuntimeFailure(message: string): boolean {
  return /could not ensure we are a cloned binary|pthread_create failed: Resource temporarily unavailable/.test(message);
}

/** Delays before the second and later tries of a start that failed transiently. */
export const TRANSIENT_RETRY_DELAYS_MS = [25, 100, 250, 500, 1000];

export class Conmon {
  constructor(
    readonly binary: string,
    /** The runtime's path, or how to find it at each start (a sealed copy's path may change: issue 10). */
    private readonly runtime: string | (() => string),
    private readonly env: NodeJS.ProcessEnv = {},
    /** How long runc may take to start a process before its monitor is killed. */
    private readonly startTimeoutMs = 30_000,
    /** Beyond this a process's log starts over (0: no limit); the depot is often a tmpfs. */
    private readonly logSizeMax = 0,
    /** Starts conmon and runc without forking the large gdn process (issue 10). */
    private readonly spawner: Spawner = sharedSpawner(),
  ) {}

  get runtimeBinary(): string {
    return typeof this.runtime === 'string' ? this.runtime : this.runtime();
  }

  argv(o: ConmonCommon): string[] {
    return [
      '--api-version', '1',
      '-c', o.containerId,
      '-u', o.monitorId,
      '-n', o.monitorId,
      '-r', o.runtime ?? this.runtimeBinary,
      '-b', o.dir,
      '--full-attach',
      '--socket-dir-path', o.dir,
      '-p', o.pidFile,
      '-P', o.conmonPidFile,
      '--exit-dir', o.exitDir,
      '-l', `k8s-file:${o.logPath}`,
      '--runtime-arg', '--root',
      '--runtime-arg', o.runtimeRoot,
      '--no-sync-log',
      ...(this.logSizeMax > 0 && !o.unlimitedLog ? ['--log-size-max', String(this.logSizeMax)] : []),
      ...(o.stdin ? ['-i'] : []),
      ...(o.terminal ? ['-t'] : []),
    ];
  }

  /** `runc create` under a monitor; resolves once the init process exists (not yet started). */
  async create(o: ConmonCommon): Promise<StartedMonitor> {
    return this.retrying(o, () => this.launch(this.argv(o), false, o.conmonPidFile), async () => {
      // A failed create normally removes its state; make sure the id is free for the next try.
      await this.spawner.run(this.runtimeBinary, ['--root', o.runtimeRoot, 'delete', '--force', o.containerId], {
        env: { PATH: process.env.PATH, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR },
      });
    });
  }

  /** `runc exec` under a monitor; resolves once the process is running. */
  async exec(o: ExecOptions): Promise<StartedMonitor> {
    return this.retrying(o, () => this.launch([...this.argv(o), '--exec', '--exec-process-spec', o.processSpecPath], true, o.conmonPidFile));
  }

  /** A start that failed transiently is tried again, so that no client sees runc's hiccup. */
  private async retrying(o: ConmonCommon, launch: () => Promise<StartedMonitor>, beforeRetry?: () => Promise<void>): Promise<StartedMonitor> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await launch();
      } catch (err) {
        const delay = TRANSIENT_RETRY_DELAYS_MS[attempt];
        const text = err instanceof ExternalFailure ? `${err.message}\n${typeof err.cause === 'string' ? err.cause : ''}` : '';
        if (delay === undefined || !isTransientRuntimeFailure(text)) throw err;
        // Nothing ran: what the failed monitor left (an exit file, a pid file) must not be read as this try's.
        for (const f of await readdir(o.exitDir).catch(() => [] as string[])) await rm(join(o.exitDir, f), { force: true });
        await rm(o.pidFile, { force: true });
        await beforeRetry?.();
        await sleep(delay);
      }
    }
  }

  private launch(argv: string[], exec: boolean, conmonPidFile: string): Promise<StartedMonitor> {
    return new Promise((resolve, reject) => {
      const child = this.spawner.spawn(this.binary, argv, {
        stderr: 'pipe',
        fd3: 'pipe',
        env: { PATH: process.env.PATH, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR, ...this.env, _OCI_SYNCPIPE: '3' },
        detached: true,
      });
      let stderr = '';
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (d: string) => {
        if (stderr.length < 4096) stderr += d;
      });
      let settled = false;
      // The container can make runc hang (its /etc/passwd a FIFO, say): give up, and take
      // the monitor's whole process group (conmon and the runc it started) with us.
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        try {
          const pid = Number(readFileSync(conmonPidFile, 'utf8').trim());
          if (pid > 0) process.kill(-pid, 'SIGKILL');
        } catch {
          // no monitor to kill
        }
        sync.destroy();
        reject(new ExternalFailure('runc', `the runtime did not start the process within ${this.startTimeoutMs / 1000}s (something in the container blocks it, e.g. a FIFO as /etc/passwd)`));
      }, this.startTimeoutMs);
      timer.unref();
      let resolveExit: (code: number | undefined) => void = () => {};
      const exited = new Promise<number | undefined>((r) => (resolveExit = r));
      const sync = child.fd3!;
      sync.setEncoding('utf8');
      const reader = new SyncReader((m) => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          if (m.data > 0) resolve({ pid: m.data, exited });
          // (the runtime's whole text as the cause: retrying() looks for transient failures in it)
          else reject(new ExternalFailure('runc', cleanRuntimeMessage(m.message ?? `conmon reported ${m.data}`), m.message));
          if (!exec) sync.destroy();
          return;
        }
        resolveExit(m.data);
        sync.destroy();
      });
      sync.on('data', (d: string) => reader.push(d));
      sync.on('error', () => {});
      sync.on('close', () => {
        resolveExit(undefined);
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(new ExternalFailure('conmon', `conmon exited before reporting a pid${stderr ? `: ${stderr.trim()}` : ''}`));
        }
      });
      child.on('error', (err: Error) => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(new ExternalFailure('conmon', `cannot start conmon (${this.binary}): ${err.message}`, err));
        }
      });
    });
  }
}

/** runc's error text arrives as raw log lines; keep the human part. */
export function cleanRuntimeMessage(message: string): string {
  const lines = message.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const msgs: string[] = [];
  for (const line of lines) {
    const m = /msg="((?:[^"\\]|\\.)*)"/.exec(line);
    if (m) msgs.push(m[1]!.replace(/\\"/g, '"'));
    else {
      try {
        const rec = JSON.parse(line) as { msg?: string };
        if (rec.msg) msgs.push(rec.msg);
      } catch {
        msgs.push(line);
      }
    }
  }
  const joined = msgs.join('; ') || message;
  if (joined.length <= 1000) return joined;
  // A Go runtime dump: what matters is runc's own last words, not the goroutines.
  const last = [...msgs].reverse().find((m) => /failed|error|unable/i.test(m)) ?? msgs[msgs.length - 1] ?? '';
  const tail = last.length > 1000 ? last.slice(last.length - 1000) : last;
  return `${msgs[0]?.slice(0, 200) ?? ''} … ${tail}`.trim();
}
