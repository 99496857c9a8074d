// `runc delete` of a stopped container without a runc process (issue 10), and the way to a
// container's processes when runc's state is gone. For a stopped container with a pid
// namespace runc 1.1.5's delete only removes the container's cgroups (every hierarchy's
// directory, sub-cgroups first, retrying while the kernel still counts exiting tasks),
// runs poststop hooks and removes its state directory (delete.go, state_linux.go destroy,
// cgroups/utils.go RemovePaths).
import { readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseMountInfo } from './mountinfo.js';

export interface StoppedCandidate {
  pid: number;
  /** /proc/<pid>/stat field 22 when runc started it: a recycled pid never passes for it. */
  startTime: string;
  cgroupPaths: string[];
}

interface RuncStateFile {
  init_process_pid?: unknown;
  init_process_start?: unknown;
  cgroup_paths?: Record<string, unknown>;
  config?: {
    cgroups?: { path?: unknown };
    hooks?: Record<string, unknown[] | null> | null;
    namespaces?: { type?: string; path?: string }[] | null;
  };
}

/**
 * What runc recorded about a container, where gdn may do runc's delete itself: runc 1.1's
 * layout, no hooks, a pid namespace of its own (so its processes died with its init) and
 * every cgroup directory the container's own (named by its cgroups path). Otherwise undefined.
 */
export function deletableState(text: string): StoppedCandidate | undefined {
  let st: RuncStateFile;
  try {
    st = JSON.parse(text) as RuncStateFile;
  } catch {
    return undefined;
  }
  if (typeof st !== 'object' || st === null) return undefined;
  const pid = st.init_process_pid;
  const start = st.init_process_start;
  if (typeof pid !== 'number' || !(pid > 1) || (typeof start !== 'number' && typeof start !== 'string')) return undefined;
  const hooks = st.config?.hooks;
  if (hooks && Object.values(hooks).some((h) => Array.isArray(h) && h.length > 0)) return undefined;
  const pidns = st.config?.namespaces?.find((n) => n.type === 'NEWPID');
  if (pidns === undefined || (pidns.path ?? '') !== '') return undefined;
  const own = st.config?.cgroups?.path;
  if (typeof own !== 'string' || own === '' || own === '/') return undefined;
  const suffix = own.startsWith('/') ? own : `/${own}`;
  const paths: string[] = [];
  for (const p of Object.values(st.cgroup_paths ?? {})) {
    if (typeof p !== 'string' || !p.endsWith(suffix) || p.split('/').includes('..')) return undefined;
    paths.push(p);
  }
  return { pid, startTime: String(start), cgroupPaths: paths };
}

/** Whether the init runc started is no more (gone, a zombie, or its pid now someone else's): runc's "stopped". */
export async function initStopped(pid: number, startTime: string): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' || fields[0] === 'X' || fields[19] !== startTime;
  } catch {
    return true;
  }
}

/** rmdir of a cgroup and its sub-cgroups, deepest first; ENOENT counts as done. */
async function removeCgroup(path: string): Promise<void> {
  try {
    await rmdir(path);
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code !== 'EBUSY' && code !== 'ENOTEMPTY') throw err;
  }
  let subs: string[];
  try {
    subs = (await readdir(path, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const s of subs) await removeCgroup(join(path, s));
  try {
    await rmdir(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * Removes the cgroup directories, retrying while the kernel still counts the container's
 * exiting tasks (EBUSY) for up to `timeoutMs` (runc gives up after 150 ms and says nothing;
 * here a cgroup that stays is an error, so the teardown is retried and nothing is left).
 */
export async function removeCgroups(paths: string[], timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let left = [...paths];
  for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
    const failed: string[] = [];
    let last: unknown;
    for (const p of left) {
      try {
        await removeCgroup(p);
      } catch (err) {
        failed.push(p);
        last = err;
      }
    }
    if (failed.length === 0) return;
    const code = (last as NodeJS.ErrnoException).code;
    if ((code !== 'EBUSY' && code !== 'ENOTEMPTY') || Date.now() > deadline) {
      throw new Error(`cannot remove the container's cgroups ${failed.join(', ')}: ${(last as Error).message}`);
    }
    left = failed;
    await sleep(delay);
  }
}

/**
 * Where a cgroups path lives in every hierarchy this process sees (cgroup v1 controllers and
 * v2), from /proc/self/mountinfo: whole-tree mounts only, one per hierarchy.
 */
export function cgroupDirs(cgroupsPath: string, mountinfo: string): string[] {
  if (cgroupsPath === '' || cgroupsPath.split('/').includes('..')) return [];
  const rel = cgroupsPath.startsWith('/') ? cgroupsPath.slice(1) : cgroupsPath;
  if (rel === '') return [];
  const seen = new Set<string>();
  const out: string[] = [];
  for (const m of parseMountInfo(mountinfo)) {
    if ((m.fsType !== 'cgroup' && m.fsType !== 'cgroup2') || m.root !== '/' || seen.has(m.device)) continue;
    seen.add(m.device);
    out.push(join(m.mountPoint, rel));
  }
  return out;
}

/** Every pid in the cgroups (and their sub-cgroups) that still exist. */
export async function cgroupPids(dirs: string[]): Promise<number[]> {
  const pids = new Set<number>();
  const walk = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    try {
      for (const l of (await readFile(join(dir, 'cgroup.procs'), 'utf8')).split('\n')) if (Number(l) > 0) pids.add(Number(l));
    } catch {
      // gone meanwhile
    }
    for (const e of entries) if (e.isDirectory()) await walk(join(dir, e.name));
  };
  for (const d of dirs) await walk(d);
  return [...pids];
}

/** SIGKILLs what is left in the cgroups until they are empty (up to `timeoutMs`), then removes them. */
export async function killCgroups(dirs: string[], timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = await cgroupPids(dirs);
    if (pids.length === 0 || Date.now() > deadline) break;
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await sleep(20);
  }
  await removeCgroups(dirs, Math.max(0, deadline - Date.now()));
}

/** runc's delete of a stopped container: its cgroups, then its state directory. */
export async function deleteStopped(stateDir: string, state: StoppedCandidate): Promise<void> {
  await removeCgroups(state.cgroupPaths);
  await rm(stateDir, { recursive: true, force: true });
}
