// Turns a bundle into a running container and back: conmon + `runc create`, then
// `runc start`; `runc exec` (or trellis-exec and garden-init's spawn server) under conmon for
// processes; `runc delete` on destroy.
import { mkdir, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExternalFailure } from '../errors.js';
import { Conmon, type StartedMonitor } from './conmon.js';
import type { OciConfig, OciProcess } from './bundle.js';
import type { Depot } from './depot.js';
import { processFiles } from './process.js';
import type { Runc } from './runc.js';
import { cgroupDirs, killCgroups } from './runcdelete.js';

/** Waits until `pid` has exited (gone, or a zombie its monitor has yet to reap). */
async function waitGone(pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 1; Date.now() < deadline; delay = Math.min(delay * 2, 20)) {
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state === 'Z' || state === 'X') return;
    } catch {
      return;
    }
    await sleep(delay);
  }
}

async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export class Containerizer {
  constructor(
    readonly depot: Depot,
    readonly runc: Runc,
    readonly conmon: Conmon,
  ) {}

  initDir(key: string): string {
    return join(this.depot.dir(key), 'init');
  }

  /** Writes config.json, creates the container under a monitor and starts its init. Returns its host pid. */
  async create(key: string, config: OciConfig): Promise<number> {
    const pid = await this.createStopped(key, config);
    await this.start(key);
    return pid;
  }

  /**
   * The first half of create: the container exists under its monitor, its namespaces too (so
   * the network can be set up in them), and its init waits for `start`. Returns the init's host pid.
   */
  async createStopped(key: string, config: OciConfig): Promise<number> {
    const dir = this.depot.dir(key);
    await writeFile(join(dir, 'config.json'), JSON.stringify(config), { mode: 0o600 });
    const initDir = this.initDir(key);
    await mkdir(initDir, { mode: 0o700 });
    const files = processFiles(initDir, key);
    await mkdir(files.exitDir, { mode: 0o700 });
    // conmon wants the bundle (-b) to hold config.json; the init's own files go beside it.
    const started = await this.conmon.create({
      containerId: key,
      monitorId: `${key}-init`.slice(0, 200),
      dir,
      runtimeRoot: this.depot.runcRoot(key),
      pidFile: join(dir, 'pidfile'),
      conmonPidFile: files.conmonPidFile,
      exitDir: files.exitDir,
      logPath: files.logPath,
      stdin: false,
    });
    return started.pid;
  }

  /** The second half of create: the init runs. On failure the container is gone again. */
  async start(key: string): Promise<void> {
    try {
      await this.runc.start(this.depot.runcRoot(key), key);
    } catch (err) {
      await this.destroy(key).catch(() => {});
      throw err;
    }
  }

  /**
   * Starts a process under its monitor: by `runc exec`, or, with `spawn`, by trellis-exec asking
   * the container's garden-init (no runc, and the program has been exec'd when this resolves).
   * The pid is the process's own host pid either way.
   */
  async exec(
    key: string,
    processId: string,
    dir: string,
    spec: OciProcess,
    opts: { unlimitedLog?: boolean; spawn?: { binary: string; request: Buffer } } = {},
  ): Promise<StartedMonitor> {
    const files = processFiles(dir, key);
    await mkdir(files.exitDir, { mode: 0o700 });
    const specPath = join(dir, 'spec.json');
    await writeFile(specPath, JSON.stringify(spec), { mode: 0o600 });
    if (opts.spawn !== undefined) await writeFile(join(dir, 'exec-request'), opts.spawn.request, { mode: 0o600 });
    const started = await this.conmon.exec({
      containerId: key,
      monitorId: processId,
      dir,
      runtimeRoot: this.depot.runcRoot(key),
      pidFile: files.pidFile,
      conmonPidFile: files.conmonPidFile,
      exitDir: files.exitDir,
      logPath: files.logPath,
      stdin: true,
      terminal: spec.terminal === true,
      unlimitedLog: opts.unlimitedLog,
      processSpecPath: specPath,
      runtime: opts.spawn?.binary,
    });
    if (opts.spawn === undefined) return started;
    // conmon watches trellis-exec's proxy; signals, stop and the depot want the process itself
    const real = Number((await readFile(join(dir, 'real-pid'), 'utf8')).trim());
    if (!(real > 1)) throw new ExternalFailure('trellis-exec', `no process id in ${join(dir, 'real-pid')}`);
    return { pid: real, exited: started.exited };
  }

  /** The nsfs identities of a process's user and network namespaces (trellis-exec checks them). */
  async namespaceIds(pid: number): Promise<{ userNs: { dev: string; ino: string }; netNs: { dev: string; ino: string } }> {
    const [user, net] = await Promise.all([stat(`/proc/${pid}/ns/user`, { bigint: true }), stat(`/proc/${pid}/ns/net`, { bigint: true })]);
    return { userNs: { dev: String(user.dev), ino: String(user.ino) }, netNs: { dev: String(net.dev), ino: String(net.ino) } };
  }

  async initPid(key: string): Promise<number | undefined> {
    const st = await this.runc.state(this.depot.runcRoot(key), key);
    return st && st.pid > 0 && st.status !== 'stopped' ? st.pid : undefined;
  }

  /** Every process in the container's pid namespace but its init. */
  async containerPids(initPid: number): Promise<number[]> {
    let ns: string;
    try {
      ns = await readlink(`/proc/${initPid}/ns/pid`);
    } catch {
      return [];
    }
    const out: number[] = [];
    for (const name of await readdir('/proc')) {
      const pid = Number(name);
      if (!(pid > 0) || pid === initPid) continue;
      try {
        if ((await readlink(`/proc/${pid}/ns/pid`)) === ns) out.push(pid);
      } catch {
        // not ours to see, or gone
      }
    }
    return out;
  }

  /** Garden's stop: TERM (unless kill), up to 10 s, then KILL; init stays. */
  async stopProcesses(initPid: number, kill: boolean, graceMs = 10000): Promise<void> {
    const signalAll = async (sig: NodeJS.Signals) => {
      for (const pid of await this.containerPids(initPid)) {
        try {
          process.kill(pid, sig);
        } catch {
          // gone
        }
      }
    };
    if (!kill) {
      await signalAll('SIGTERM');
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && (await this.containerPids(initPid)).length > 0) await sleep(100);
    }
    for (let i = 0; i < 50 && (await this.containerPids(initPid)).length > 0; i++) {
      await signalAll('SIGKILL');
      await sleep(50);
    }
  }

  /** Kills and deletes the runc container (if any) and waits for its monitors to go. */
  async destroy(key: string, initPid?: number): Promise<void> {
    const root = this.depot.runcRoot(key);
    if (initPid !== undefined && (await isAlive(initPid))) {
      // The common case, without asking runc for a state it would only confirm, and without
      // a runc process to send the signal when the pid is provably still this container's init.
      try {
        if (await this.isOurInit(key, initPid)) process.kill(initPid, 'SIGKILL');
        else await this.runc.kill(root, key, 'KILL');
        await waitGone(initPid, 5000);
        await this.runc.deleteStopped(root, key);
        await this.waitMonitorsGone(key);
        return;
      } catch {
        // fall through to the careful path
      }
    }
    const st = await this.runc.state(root, key);
    if (st !== undefined) {
      // kill + wait + delete: `delete --force` on a running container polls in 100 ms steps.
      // Killing the pid namespace's init takes every process in the container with it.
      if (st.status === 'running' || st.status === 'created' || st.status === 'paused') {
        await this.runc.kill(root, key, 'KILL').catch(() => {});
        await waitGone(st.pid, 5000);
      }
      try {
        await this.runc.deleteStopped(root, key);
      } catch {
        await this.runc.delete(root, key, true);
      }
    } else {
      // No runc state (its directory vanished, or runc cannot read it): the init and its
      // monitor would run on. The init conmon started is killed (its pid namespace goes with it).
      const pid = await this.pidFromFile(join(this.depot.dir(key), 'pidfile'));
      if (pid !== undefined && (await this.isOurInit(key, pid))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
        await waitGone(pid, 5000);
      }
    }
    // Whatever runc did or could not do: nothing may be left in, or of, the container's cgroups.
    await killCgroups(await this.cgroupDirs(key));
    await this.waitMonitorsGone(key);
  }

  /** The container's cgroup directories in every hierarchy, from its bundle (none without a cgroups path). */
  private async cgroupDirs(key: string): Promise<string[]> {
    try {
      const config = JSON.parse(await readFile(join(this.depot.dir(key), 'config.json'), 'utf8')) as { linux?: { cgroupsPath?: unknown } };
      const path = config.linux?.cgroupsPath;
      return typeof path === 'string' ? cgroupDirs(path, await readFile('/proc/self/mountinfo', 'utf8')) : [];
    } catch {
      return [];
    }
  }

  private async pidFromFile(path: string): Promise<number | undefined> {
    try {
      const pid = Number((await readFile(path, 'utf8')).trim());
      return Number.isInteger(pid) && pid > 1 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** Whether `pid` is this container's init: its parent is the container's own monitor (a recycled pid's is not). */
  private async isOurInit(key: string, pid: number): Promise<boolean> {
    try {
      const [stat, monitor] = await Promise.all([
        readFile(`/proc/${pid}/stat`, 'utf8'),
        readFile(join(this.initDir(key), 'conmon.pid'), 'utf8'),
      ]);
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const conmonPid = Number(monitor.trim());
      if (!(conmonPid > 1) || ppid !== conmonPid) return false;
      return (await readFile(`/proc/${conmonPid}/comm`, 'utf8')).trim() === 'conmon';
    } catch {
      return false;
    }
  }

  private async monitorPids(key: string): Promise<number[]> {
    const files = [join(this.initDir(key), 'conmon.pid')];
    try {
      for (const p of await readdir(this.depot.processesDir(key))) files.push(join(this.depot.processesDir(key), p, 'conmon.pid'));
    } catch {
      // no processes
    }
    const pids: number[] = [];
    for (const f of files) {
      try {
        const pid = Number((await readFile(f, 'utf8')).trim());
        if (pid > 0) pids.push(pid);
      } catch {
        // never started
      }
    }
    return pids;
  }

  private async waitMonitorsGone(key: string): Promise<void> {
    const pids = await this.monitorPids(key);
    const alive = async (pid: number) => {
      try {
        const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
        const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
        return stat.includes('(conmon)') && state !== 'Z';
      } catch {
        return false;
      }
    };
    const deadline = Date.now() + 5000;
    for (;;) {
      const left = [];
      for (const p of pids) if (await alive(p)) left.push(p);
      if (left.length === 0) return;
      if (Date.now() > deadline) {
        // Their containers are gone; a monitor that lingers has nothing left to report.
        for (const p of left) {
          try {
            process.kill(p, 'SIGKILL');
          } catch {
            // gone
          }
        }
        return;
      }
      await sleep(10);
    }
  }
}
