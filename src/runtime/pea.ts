// A pea (Garden's word): a process with its own image, run as a second runc container
// that joins its sandbox's user, network, ipc, uts and pid namespaces by path and has
// a mount namespace of its own. Its init IS the process (conmon in create mode), so
// signals, exit codes, stdin and the terminal go through the same monitor as any
// process. The bundle is the sandbox's, built by the same builders, then narrowed.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Conmon, StartedMonitor } from './conmon.js';
import { buildBundle, buildProcess, type BundleInput, type OciConfig, type ProcessInput } from './bundle.js';
import { processFiles } from './process.js';
import type { Runc } from './runc.js';

/** The sandbox namespaces a pea joins; the mount namespace stays its own. */
export const JOINED_NAMESPACES: ReadonlyArray<[oci: string, proc: string]> = [
  ['user', 'user'], ['network', 'net'], ['ipc', 'ipc'], ['uts', 'uts'], ['pid', 'pid'],
];

export interface PeaBundleInput extends Omit<BundleInput, 'limits' | 'handle'> {
  /** The sandbox init's host pid, whose namespaces are joined. */
  sandboxInitPid: number;
  process: ProcessInput;
  /** Only when the process overrides the container's limits: memory and cpu, as Garden does. */
  limits?: { memoryBytes?: number; cpuShares?: number };
}

export function buildPeaBundle(input: PeaBundleInput): OciConfig {
  // The sandbox's id maps stay in: rootless runc 1.1 refuses a user namespace without them
  // ("no uid mappings found") even when it joins one by path, and then writes none.
  const config = buildBundle({ ...input, handle: '', limits: input.limits ?? {} });
  config.process = buildProcess(input.process);
  // The uts namespace is the sandbox's: its hostname is already set there.
  config.hostname = '';
  const joined = new Map(JOINED_NAMESPACES);
  config.linux.namespaces = config.linux.namespaces.map(({ type }) =>
    joined.has(type) ? { type, path: `/proc/${input.sandboxInitPid}/ns/${joined.get(type)}` } : { type },
  );
  return config;
}

/** Where a pea's runc state lives: beside its process files, so removing those takes it too. */
export function peaRuncRoot(processDir: string): string {
  return join(processDir, 'runc');
}

/**
 * Starts and removes pea containers. A pea's runc id is its sandbox's key (each pea has a
 * runc root of its own), so conmon's exit file has the name every process's has.
 */
export class PeaRuntime {
  constructor(
    readonly runc: Runc,
    readonly conmon: Conmon,
  ) {}

  /** `runc create` under conmon with stdin (and a terminal if asked), then `runc start`. */
  async start(opts: { dir: string; runcId: string; processId: string; config: OciConfig }): Promise<StartedMonitor> {
    const { dir, runcId, config } = opts;
    const root = peaRuncRoot(dir);
    await mkdir(root, { recursive: true, mode: 0o700 });
    await writeFile(join(dir, 'config.json'), JSON.stringify(config), { mode: 0o600 });
    const files = processFiles(dir, runcId);
    await mkdir(files.exitDir, { recursive: true, mode: 0o700 });
    const started = await this.conmon.create({
      containerId: runcId,
      monitorId: opts.processId,
      dir,
      runtimeRoot: root,
      pidFile: files.pidFile,
      conmonPidFile: files.conmonPidFile,
      exitDir: files.exitDir,
      logPath: files.logPath,
      stdin: true,
      terminal: config.process.terminal === true,
    });
    try {
      await this.runc.start(root, runcId);
    } catch (err) {
      await this.remove(dir, runcId).catch(() => {});
      throw err;
    }
    return started;
  }

  /** Kills the pea (its init, then everything left in its cgroup) and deletes it from runc. */
  async remove(dir: string, runcId: string): Promise<void> {
    const root = peaRuncRoot(dir);
    const st = await this.runc.state(root, runcId);
    if (st === undefined) return;
    if (st.status !== 'stopped') await this.runc.kill(root, runcId, 'KILL').catch(() => {});
    // delete of a stopped container that shares a pid namespace kills what its cgroup still holds
    try {
      await this.runc.delete(root, runcId, false);
    } catch {
      await this.runc.delete(root, runcId, true);
    }
  }

  async running(dir: string, runcId: string): Promise<boolean> {
    const st = await this.runc.state(peaRuncRoot(dir), runcId);
    return st !== undefined && st.status !== 'stopped';
  }
}
