// One typed class for the runc binary: a method per subcommand, --root and a JSON
// log always passed, and the last log line carried into any error.
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ExternalFailure } from '../errors.js';
import { ExecFifoAbsent, ExecFifoFailure, runcInitPid, startThroughFifo } from './execfifo.js';
import { deletableState, deleteStopped, initStopped } from './runcdelete.js';
import { sharedSpawner, type Spawner } from './spawner/spawner.js';

export interface RuncState {
  id: string;
  pid: number;
  status: 'created' | 'running' | 'stopped' | 'paused' | 'creating';
  bundle: string;
  created: string;
}

export class Runc {
  constructor(
    /** The runtime's path, or how to find it at each call (a sealed copy's path may change: issue 10). */
    private readonly runtime: string | (() => string),
    private readonly extraGlobalArgs: string[] = [],
    /** Starts runc without forking the large gdn process (issue 10). */
    private readonly spawner: Spawner = sharedSpawner(),
    /** How long a start may wait for the container's init to take its start signal. */
    private readonly startTimeoutMs = 30_000,
  ) {}

  get binary(): string {
    return typeof this.runtime === 'string' ? this.runtime : this.runtime();
  }

  /** Global flags for a container whose runc state lives at `root`. */
  globalArgs(root: string, logFile: string): string[] {
    return ['--root', root, '--log', logFile, '--log-format', 'json', ...this.extraGlobalArgs];
  }

  async state(root: string, id: string): Promise<RuncState | undefined> {
    const res = await this.run(root, ['state', id], { reject: false });
    if (res.exitCode !== 0) return undefined;
    return JSON.parse(res.stdout) as RuncState;
  }

  /**
   * What `runc start` does, without a runc process (issue 10): the exec fifo is read here.
   * Where there is none to read (another runtime's layout, or no longer created), `runc start`
   * itself runs and says why.
   */
  async start(root: string, id: string): Promise<void> {
    const stateDir = join(root, id);
    const pid = await runcInitPid(stateDir);
    if (pid !== undefined) {
      try {
        await startThroughFifo(stateDir, pid, this.startTimeoutMs);
        return;
      } catch (err) {
        if (err instanceof ExecFifoFailure) throw new ExternalFailure('runc', `runc start: ${err.message}`);
        if (!(err instanceof ExecFifoAbsent)) throw err;
      }
    }
    await this.run(root, ['start', id]);
  }

  async kill(root: string, id: string, signal: string): Promise<void> {
    await this.run(root, ['kill', id, signal]);
  }

  async delete(root: string, id: string, force: boolean): Promise<void> {
    await this.run(root, ['delete', ...(force ? ['--force'] : []), id]);
  }

  /**
   * `runc delete` of a container whose init has ended, done here where runc's state shows
   * it safe (issue 10: no Go process on the teardown); else `runc delete` itself. A cgroup
   * that cannot be removed is an error (runc would only log it).
   */
  async deleteStopped(root: string, id: string): Promise<void> {
    const stateDir = join(root, id);
    const text = await readFile(join(stateDir, 'state.json'), 'utf8').catch(() => undefined);
    const st = text === undefined ? undefined : deletableState(text);
    if (st !== undefined && (await initStopped(st.pid, st.startTime))) {
      await deleteStopped(stateDir, st);
      return;
    }
    await this.delete(root, id, false);
  }

  private async run(root: string, args: string[], opts: { reject?: boolean } = {}) {
    const log = join(root, `runc-${process.pid}-${Math.random().toString(36).slice(2)}.log`);
    try {
      const res = await this.spawner.run(this.binary, [...this.globalArgs(root, log), ...args], {
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '' },
      });
      if (res.exitCode !== 0 && opts.reject !== false) {
        const last = await lastLogMessage(log);
        const status = res.failure?.message ?? (res.signal ? `killed by ${res.signal}` : `exit status ${res.exitCode}`);
        throw new ExternalFailure('runc', `runc ${args[0]}: ${last ?? (res.stderr.trim() || status)}`);
      }
      return res;
    } finally {
      await rm(log, { force: true });
    }
  }
}

/** The `msg` of the last error-level line of a runc JSON log, else of the last line. */
export async function lastLogMessage(path: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  return lastLogMessageOf(text);
}

export function lastLogMessageOf(text: string): string | undefined {
  let last: string | undefined;
  let lastError: string | undefined;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const rec = JSON.parse(line) as { msg?: string; level?: string };
      if (typeof rec.msg === 'string') {
        last = rec.msg;
        if (rec.level === 'error' || rec.level === 'fatal') lastError = rec.msg;
      }
    } catch {
      last = line.trim();
    }
  }
  return lastError ?? last;
}
