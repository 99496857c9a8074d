// The depot on disk is the truth about which containers and processes exist;
// memory is a cache rebuilt from it at start.
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export type ContainerPhase = 'creating' | 'created' | 'destroying';

export interface ContainerRecord {
  handle: string;
  /** Filesystem- and runc-safe id: the depot entry, runc id, image id, cgroup leaf. */
  key: string;
  createdAt: string;
  phase: ContainerPhase;
  stopped: boolean;
  /** Effective grace time in ns as a decimal string ("0" = never reap). */
  graceTimeNs: string;
  env: string[];
  /** The create request's limits as they arrived (uint64 values as decimal strings). */
  limits: Record<string, Record<string, string>>;
  initPid?: number;
  /** Which image plugin made the rootfs, so destroy asks the same one. */
  imagePlugin: string;
  /** The image's USER and WORKDIR: defaults for processes that name none. */
  imageUser?: string;
  imageWorkdir?: string;
  network?: Record<string, string>;
  /** garden-init is bound at /tmp/garden-init and launches non-root processes (containers made before it was have neither). */
  launcher?: boolean;
  /**
   * garden-init runs its spawn server: `run` goes by trellis-exec, not `runc exec`. The init's
   * user and network namespaces (nsfs dev and inode, decimal) let trellis-exec tell the init
   * from a process that got its pid later. Containers made before it have none.
   */
  spawnServer?: { userNs: { dev: string; ino: string }; netNs: { dev: string; ino: string } };
}

export interface ProcessRecord {
  id: string;
  createdAt: string;
  pid?: number;
  tty: boolean;
}

// runc ids are [\w+-.]; a leading '-' would read as a flag, and a handle shaped like a
// digest key must not claim another handle's entry.
const SAFE = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$/;
const DIGEST_SHAPED = /^[hp]-[0-9a-f]{40}$/;
const isSafe = (s: string) => SAFE.test(s) && !DIGEST_SHAPED.test(s);

/** The depot/runc/cgroup name for a handle: itself when safe, else a stable digest. */
export function containerKey(handle: string): string {
  if (isSafe(handle)) return handle;
  return `h-${createHash('sha256').update(handle).digest('hex').slice(0, 40)}`;
}

/** `durable`: the file and its directory entry are on disk (fsync) before this resolves. */
export async function writeJsonAtomic(path: string, value: unknown, durable = false): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  if (!durable) {
    await writeFile(tmp, JSON.stringify(value), { mode: 0o600 });
    await rename(tmp, path);
    return;
  }
  const f = await open(tmp, 'w', 0o600);
  try {
    await f.writeFile(JSON.stringify(value));
    await f.sync();
  } finally {
    await f.close();
  }
  await rename(tmp, path);
  const d = await open(dirname(path), 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * A depot entry being removed is first renamed to this prefix (never a key: keys start with
 * [A-Za-z0-9_]), so a removal cut short leaves a name the next start knows to finish removing.
 */
const GONE = '.gone-';

export class Depot {
  constructor(readonly root: string) {}

  dir(key: string): string {
    return join(this.root, key);
  }
  runcRoot(key: string): string {
    return join(this.root, key, 'runc');
  }
  processesDir(key: string): string {
    return join(this.root, key, 'processes');
  }
  processDir(key: string, id: string): string {
    return join(this.root, key, 'processes', processDirName(id));
  }

  /** Creates the entry; fails with EEXIST if it is there already (the handle reservation). */
  async reserve(record: ContainerRecord): Promise<void> {
    await mkdir(this.dir(record.key), { mode: 0o700 });
    await mkdir(this.runcRoot(record.key), { mode: 0o700 });
    await mkdir(this.processesDir(record.key), { mode: 0o700 });
    await this.saveContainer(record);
  }

  /** `durable` for the records a crash must not lose (the destroy journal: phase 'destroying'). */
  async saveContainer(record: ContainerRecord, durable = false): Promise<void> {
    await writeJsonAtomic(join(this.dir(record.key), 'container.json'), record, durable);
  }

  async saveProperties(key: string, props: Record<string, string>): Promise<void> {
    await writeJsonAtomic(join(this.dir(key), 'properties.json'), props);
  }

  async loadProperties(key: string): Promise<Record<string, string>> {
    try {
      return JSON.parse(await readFile(join(this.dir(key), 'properties.json'), 'utf8')) as Record<string, string>;
    } catch {
      return {};
    }
  }

  async loadContainers(): Promise<ContainerRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return [];
    }
    const out: ContainerRecord[] = [];
    for (const name of names) {
      if (name.startsWith(GONE)) {
        await rm(join(this.root, name), { recursive: true, force: true, maxRetries: 3 }).catch(() => {});
        continue;
      }
      try {
        out.push(JSON.parse(await readFile(join(this.root, name, 'container.json'), 'utf8')) as ContainerRecord);
      } catch {
        // An entry without a record is a reservation that never got further (nothing runs
        // there), but only remove it if it is one of ours: the depot flag may be mistyped.
        const entries = await readdir(join(this.root, name)).catch(() => undefined);
        if (entries !== undefined && entries.every((e) => e === 'runc' || e === 'processes' || e.startsWith('container.json.tmp-'))) {
          await rm(join(this.root, name), { recursive: true, force: true }).catch(() => {});
        }
      }
    }
    return out;
  }

  async saveProcess(key: string, record: ProcessRecord): Promise<void> {
    await writeJsonAtomic(join(this.processDir(key, record.id), 'process.json'), record);
  }

  async loadProcesses(key: string): Promise<ProcessRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.processesDir(key));
    } catch {
      return [];
    }
    const out: ProcessRecord[] = [];
    for (const name of names) {
      try {
        out.push(JSON.parse(await readFile(join(this.processesDir(key), name, 'process.json'), 'utf8')) as ProcessRecord);
      } catch {
        // a process whose start never completed
      }
    }
    return out;
  }

  /** Removes the entry: one rename takes it out of the depot at once, then its files go. */
  async remove(key: string): Promise<void> {
    const gone = join(this.root, `${GONE}${key}-${process.pid}-${Math.random().toString(36).slice(2)}`);
    try {
      await rename(this.dir(key), gone);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    await rm(gone, { recursive: true, force: true, maxRetries: 3 });
  }
}

/** Process ids are client-chosen strings; keep them off the path syntax. */
export function processDirName(id: string): string {
  return isSafe(id) ? id : `p-${createHash('sha256').update(id).digest('hex').slice(0, 40)}`;
}
