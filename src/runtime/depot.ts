// The depot on disk is the truth about which containers and processes exist;
// memory is a cache rebuilt from it at start.
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

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

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await writeFile(tmp, JSON.stringify(value), { mode: 0o600 });
  await rename(tmp, path);
}

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

  async saveContainer(record: ContainerRecord): Promise<void> {
    await writeJsonAtomic(join(this.dir(record.key), 'container.json'), record);
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

  async remove(key: string): Promise<void> {
    await rm(this.dir(key), { recursive: true, force: true, maxRetries: 3 });
  }
}

/** Process ids are client-chosen strings; keep them off the path syntax. */
export function processDirName(id: string): string {
  return isSafe(id) ? id : `p-${createHash('sha256').update(id).digest('hex').slice(0, 40)}`;
}
