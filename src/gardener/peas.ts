// Processes with their own image (Garden's "peas"). Each gets a rootfs of its own from
// the image plugin (the container's seam), runs as a runc container in its sandbox's
// namespaces (src/runtime/pea.ts), and is otherwise an ordinary process: same process
// directory, depot record, output log, stdin and exit file. Its state (pea.json, runc
// root) lives in that directory under the sandbox's depot entry, so destroy and
// restore find every pea from disk. A pea is taken down (runc, rootfs, cgroup) as soon
// as it exits; its output and exit status stay as long as any process's do.
import { createHash } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Logger } from 'pino';
import {
  AlreadyExists, ExecutableNotFound, ExternalFailure, FailedPrecondition, InvalidArgument, TrellisError, errorMessage,
} from '../errors.js';
import type { IdMapping } from '../idmap/subid.js';
import type { ImagePlugin, ImageResult } from '../image/plugin.js';
import type { OciMount } from '../runtime/bundle.js';
import type { RunSpec } from './gardener.js';
import type { ContainerRecord, Depot } from '../runtime/depot.js';
import { writeJsonAtomic } from '../runtime/depot.js';
import { lockedFlags } from '../runtime/mountinfo.js';
import { buildPeaBundle, type PeaRuntime } from '../runtime/pea.js';
import type { OciSeccomp } from '../runtime/seccomp.js';
import { ProcessHandle, processFiles } from '../runtime/process.js';
import { readContainerFile } from './containerfs.js';
import { resolveUser } from './users.js';
import { confirmLaunch } from '../runtime/launch.js';

export interface PeaRecord {
  /** The process id the client knows it by. */
  id: string;
  sandboxKey: string;
  /** runc id inside the pea's own runc root: the sandbox's key. */
  runcId: string;
  /** The pea's image id and handle for the image plugin (never a container's key). */
  imageKey: string;
  imagePlugin: string;
  cgroupsPath?: string;
  createdAt: string;
  /** Set once runc, the rootfs and the cgroup are gone. */
  removed?: boolean;
}

export interface PeaSandbox {
  record: ContainerRecord;
  processes: Map<string, ProcessHandle>;
}

/** A Run request with an image (gardener.ts's RunSpec; the gardener has already taken its id). */
export type PeaRunSpec = Omit<RunSpec, 'id'>;

export interface PeasConfig {
  depot: Depot;
  runtime: PeaRuntime;
  image: ImagePlugin;
  log: Logger;
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
  initBinary: string;
  toolsBinary?: string;
  seccomp?: OciSeccomp;
  cgroupParent?: string;
  limitsUnavailable?: string;
  /** The sandbox init's pid as runc knows it now (runc checks the process's start time), or undefined when it is gone. */
  liveInitPid: (key: string) => Promise<number | undefined>;
}

const RECORD = 'pea.json';

/** `p-<40 hex>`: the shape no handle's key can take (depot.ts), so no container's image or cgroup is ever named so. */
export function peaImageKey(sandboxKey: string, processId: string): string {
  return `p-${createHash('sha256').update(`pea\0${sandboxKey}\0${processId}`).digest('hex').slice(0, 40)}`;
}

/** Garden's placement: inside the sandbox's cgroup (sharing its limits), or beside it with limits of its own. */
export function peaCgroupPath(parent: string | undefined, sandboxKey: string, imageKey: string, override: boolean): string | undefined {
  if (parent === undefined) return undefined;
  return override ? `${parent}/${imageKey}` : `${parent}/${sandboxKey}/${imageKey}`;
}

/** The directories an image's root is made of, top first: an overlay's upper and lower dirs, or the rootfs itself. */
export function imageLayers(image: Pick<ImageResult, 'rootfsPath' | 'mounts'>): string[] {
  const overlay = image.mounts.find((m: OciMount) => m.destination === '/' && m.type === 'overlay');
  if (overlay === undefined) return [image.rootfsPath];
  const opts = (overlay.options ?? []).flatMap((o) => o.split(','));
  const get = (k: string) => opts.find((o) => o.startsWith(`${k}=`))?.slice(k.length + 1);
  const upper = get('upperdir');
  const lower = get('lowerdir');
  return [...(upper ? [upper] : []), ...(lower ? lower.split(':').filter((d) => d !== '') : [])];
}

/** Reads a small file of an image before anything is mounted: the topmost layer that has it wins, a whiteout hides it. */
export async function readImageFile(layers: string[], path: string): Promise<string | undefined> {
  for (const layer of layers) {
    const text = await readContainerFile(layer, path);
    if (text !== undefined) return text;
    try {
      const st = await lstat(join(layer, path));
      // overlay's whiteout (a 0:0 char device), or something that is not a file: nothing below counts
      if (st.isCharacterDevice() || !st.isFile()) return undefined;
    } catch {
      // not in this layer
    }
  }
  return undefined;
}

export class Peas {
  /** By process directory. */
  private readonly records = new Map<string, PeaRecord>();
  private readonly cleaning = new Map<string, Promise<void>>();

  constructor(private readonly cfg: PeasConfig) {}

  private get log() {
    return this.cfg.log;
  }

  isPea(p: ProcessHandle): boolean {
    return this.records.has(p.files.dir);
  }

  /** A running pea by its process id (bulk metrics take a pea's id as a handle). */
  find(processId: string): PeaRecord | undefined {
    for (const r of this.records.values()) if (r.id === processId && !r.removed) return r;
    return undefined;
  }

  async run(c: PeaSandbox, id: string, spec: PeaRunSpec): Promise<ProcessHandle> {
    const { key } = c.record;
    const initPid = c.record.initPid;
    if (initPid === undefined) throw new TrellisError('ERR_TRELLIS_NO_INIT', `container ${c.record.handle} has no init process`);
    if (spec.bindMounts > 0) throw new InvalidArgument('bind mounts on processes with their own image are not supported');
    const override = spec.overrideLimits !== undefined;
    const memory = spec.overrideLimits?.memoryBytes ?? 0n;
    const cpu = spec.overrideLimits?.cpuShares ?? 0n;
    if ((memory > 0n || cpu > 0n) && this.cfg.cgroupParent === undefined) {
      throw new InvalidArgument(`cannot apply memory or cpu limits: ${this.cfg.limitsUnavailable ?? 'cgroups are not delegated to this user'}`);
    }
    const log = this.log.child({ session: 'pea', handle: c.record.handle, process: id });
    const dir = this.cfg.depot.processDir(key, id);
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExists(`process ID '${id}' already in use`);
      throw err;
    }
    const imageKey = peaImageKey(key, id);
    const rec: PeaRecord = {
      id,
      sandboxKey: key,
      runcId: key,
      imageKey,
      imagePlugin: this.cfg.image.name,
      createdAt: new Date().toISOString(),
    };
    const cgroupsPath = peaCgroupPath(this.cfg.cgroupParent, key, imageKey, override);
    if (cgroupsPath !== undefined) rec.cgroupsPath = cgroupsPath;
    let imageMade = false;
    try {
      // Recorded before anything exists, so a destroy or a restart finds whatever got made.
      await writeJsonAtomic(join(dir, RECORD), rec);
      let image: ImageResult;
      try {
        image = await this.cfg.image.create({ handle: imageKey, key: imageKey, image: spec.image });
      } catch (err) {
        if (err instanceof TrellisError && !(err instanceof ExternalFailure)) throw err;
        throw new ExternalFailure('image', `image: ${errorMessage(err)}`, err);
      }
      imageMade = true;
      const layers = imageLayers(image);
      // Garden: a pea runs as root unless told otherwise, whatever the image's USER says.
      const user = resolveUser(spec.user, await readImageFile(layers, '/etc/passwd'), await readImageFile(layers, '/etc/group'));
      const username = spec.user === '' ? 'root' : user.name.split(':')[0]!;
      const cwd = spec.dir === '' ? '/' : posix.isAbsolute(spec.dir) ? spec.dir : posix.join('/', spec.dir);
      const sandboxDir = this.cfg.depot.dir(key);
      // The pea joins /proc/<pid>/ns/*: a recorded pid whose init has died may belong to
      // anyone's process by now (another container's), so only runc's live answer counts.
      if ((await this.cfg.liveInitPid(key)) !== initPid) {
        throw new FailedPrecondition('ERR_TRELLIS_SANDBOX_GONE', `container ${c.record.handle} is not running: its init process is gone`);
      }
      const config = buildPeaBundle({
        sandboxInitPid: initPid,
        rootfsPath: image.rootfsPath,
        imageMounts: image.mounts,
        env: image.env,
        uidMappings: this.cfg.uidMappings,
        gidMappings: this.cfg.gidMappings,
        initBinary: this.cfg.initBinary,
        initLockedFlags: lockedFlags(this.cfg.initBinary),
        toolsBinary: this.cfg.toolsBinary,
        toolsLockedFlags: this.cfg.toolsBinary === undefined ? undefined : lockedFlags(this.cfg.toolsBinary),
        // the sandbox's own files, so an edit in one is seen in the other
        bindMounts: ['hosts', 'resolv.conf'].map((name) => ({
          source: join(sandboxDir, name),
          destination: `/etc/${name}`,
          readOnly: false,
          lockedFlags: lockedFlags(join(sandboxDir, name)),
        })),
        cgroupsPath,
        seccomp: this.cfg.seccomp,
        limits: override ? { memoryBytes: Number(memory), cpuShares: Number(cpu) } : undefined,
        process: {
          args: [spec.path, ...spec.args],
          containerEnv: image.env,
          env: spec.env,
          uid: user.uid,
          gid: user.gid,
          additionalGids: user.groups,
          home: user.home,
          username: username === '' ? 'root' : username,
          cwd,
          rlimits: spec.rlimits,
          terminal: spec.tty,
          windowSize: spec.windowSize,
        },
      });
      let started;
      try {
        started = await this.cfg.runtime.start({ dir, runcId: rec.runcId, processId: id, config });
      } catch (err) {
        const msg = errorMessage(err);
        if (/executable file not found|no such file or directory/i.test(msg) && !/chdir|cwd/i.test(msg)) throw new ExecutableNotFound(msg);
        throw err;
      }
      const p = new ProcessHandle(id, processFiles(dir, rec.runcId), started.pid);
      this.records.set(dir, rec);
      // conmon reports a created container's exit in its exit file, not on the sync pipe
      p.watchForExit();
      if (user.uid !== 0) {
        // a user's pea starts as garden-init's launcher: a missing executable shows only now
        const exited = new Promise<number | undefined>((r) => p.onFinished(() => r(p.result.exitCode)));
        try {
          await confirmLaunch(started.pid, exited, processFiles(dir, rec.runcId).logPath, this.cfg.initBinary);
        } catch (err) {
          p.close();
          throw err;
        }
      }
      p.onFinished(() => void this.cleanup(dir));
      await this.cfg.depot.saveProcess(key, { id, createdAt: rec.createdAt, pid: started.pid, tty: spec.tty });
      log.info({ pid: started.pid, image: spec.image }, 'pea.started');
      return p;
    } catch (err) {
      log.error({ err: errorMessage(err) }, 'pea.failed');
      await this.cfg.runtime.remove(dir, rec.runcId).catch(() => {});
      if (imageMade) await this.cfg.image.destroy(imageKey, imageKey).catch((e: unknown) => log.error({ err: errorMessage(e) }, 'pea.image-cleanup-failed'));
      this.records.delete(dir);
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      throw err;
    }
  }

  /** Takes an exited (or killed) pea's container, rootfs and cgroup away; its output and exit status stay. */
  cleanup(dir: string): Promise<void> {
    const inFlight = this.cleaning.get(dir);
    if (inFlight !== undefined) return inFlight;
    const run = (async () => {
      const rec = this.records.get(dir) ?? (await loadRecord(dir));
      if (rec === undefined || rec.removed) return;
      await this.cfg.runtime.remove(dir, rec.runcId);
      await this.cfg.image.destroy(rec.imageKey, rec.imageKey);
      rec.removed = true;
      this.records.set(dir, rec);
      await writeJsonAtomic(join(dir, RECORD), rec).catch(() => {});
      this.log.info({ sandbox: rec.sandboxKey, process: rec.id }, 'pea.removed');
    })().finally(() => this.cleaning.delete(dir));
    this.cleaning.set(dir, run);
    run.catch((err: unknown) => this.log.error({ dir, err: errorMessage(err) }, 'pea.cleanup-failed'));
    return run;
  }

  /** Before the sweep deletes a finished process's directory: false while its pea could not be taken down. */
  async release(p: ProcessHandle): Promise<boolean> {
    const rec = this.records.get(p.files.dir);
    if (rec === undefined) return true;
    try {
      await this.cleanup(p.files.dir);
      this.records.delete(p.files.dir);
      return true;
    } catch {
      return false;
    }
  }

  /** After a restart: running peas stay attached, finished ones (and half-started ones) are taken down. */
  async restore(c: PeaSandbox): Promise<void> {
    for (const dir of await this.peaDirs(c.record.key)) {
      const rec = await loadRecord(dir);
      if (rec === undefined) continue;
      this.records.set(dir, rec);
      const p = [...c.processes.values()].find((x) => x.files.dir === dir);
      if (p === undefined) {
        // it never got as far as its process record: nothing can attach to it
        try {
          await this.cleanup(dir);
          this.records.delete(dir);
          await rm(dir, { recursive: true, force: true });
        } catch (err) {
          this.log.error({ dir, err: errorMessage(err) }, 'pea.restore-cleanup-failed');
        }
        continue;
      }
      if (!rec.removed) p.onFinished(() => void this.cleanup(dir));
    }
  }

  /** Destroy of the sandbox: every pea killed (attached clients get the exit status) and removed. */
  async destroyAll(c: PeaSandbox): Promise<void> {
    const failures: string[] = [];
    for (const dir of await this.peaDirs(c.record.key)) {
      const rec = this.records.get(dir) ?? (await loadRecord(dir));
      if (rec === undefined) continue;
      this.records.set(dir, rec);
      try {
        if (!rec.removed) await this.cfg.runtime.remove(dir, rec.runcId);
        const p = [...c.processes.values()].find((x) => x.files.dir === dir);
        if (p !== undefined) {
          // conmon records the exit once the pea is gone; give a waiting client the chance to get it
          await Promise.race([p.waitFinished(), new Promise((r) => setTimeout(r, 5000).unref())]);
        }
        await this.cleanup(dir);
        this.records.delete(dir);
      } catch (err) {
        failures.push(`pea ${rec.id}: ${errorMessage(err)}`);
      }
    }
    if (failures.length > 0) throw new Error(failures.join('; '));
  }

  private async peaDirs(key: string): Promise<string[]> {
    const root = this.cfg.depot.processesDir(key);
    let names: string[];
    try {
      names = await readdir(root);
    } catch {
      return [];
    }
    const out: string[] = [];
    for (const n of names) {
      try {
        await lstat(join(root, n, RECORD));
        out.push(join(root, n));
      } catch {
        // an ordinary process
      }
    }
    return out;
  }
}

async function loadRecord(dir: string): Promise<PeaRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, RECORD), 'utf8')) as PeaRecord;
  } catch {
    return undefined;
  }
}
