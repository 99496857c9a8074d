// The container's init as soon as runc's bootstrap has made it (issue 10). runc 1.1's
// nsexec clones the init (named runc:[2:INIT]) with CLONE_PARENT, so it is a child of the
// `runc create` process that conmon's monitor started, and it is cloned only once the user
// namespace is mapped and the other namespaces (the network's too) exist. From then on the
// network can be set up in them while runc still mounts the rootfs; `runc create` returns,
// and conmon reports the same pid, tens of milliseconds later.
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

export const RUNC_INIT_COMM = 'runc:[2:INIT]';

/** The children of every thread of `pid` (/proc/<pid>/task/<tid>/children). */
export async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = await readdir(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      for (const c of (await readFile(`/proc/${pid}/task/${tid}/children`, 'utf8')).split(' ')) if (Number(c) > 0) out.push(Number(c));
    } catch {
      // the thread ended
    }
  }
  return out;
}

async function comm(pid: number): Promise<string | undefined> {
  try {
    return (await readFile(`/proc/${pid}/comm`, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/**
 * Polls for the init among the grandchildren of the monitor whose pid conmon writes to
 * `conmonPidFile`, until found or until `until` settles (the monitor reported: the caller
 * has the pid then). Undefined when not seen.
 */
export async function watchForInit(conmonPidFile: string, until: Promise<unknown>): Promise<number | undefined> {
  let done = false;
  void until.then(
    () => (done = true),
    () => (done = true),
  );
  let monitor: number | undefined;
  for (let delay = 1; !done; delay = Math.min(delay + 1, 4)) {
    if (monitor === undefined) {
      try {
        const pid = Number((await readFile(conmonPidFile, 'utf8')).trim());
        if (pid > 1) monitor = pid;
      } catch {
        // not written yet
      }
    }
    if (monitor !== undefined) {
      for (const runtime of await childrenOf(monitor)) {
        for (const c of await childrenOf(runtime)) {
          if ((await comm(c)) === RUNC_INIT_COMM) return done ? undefined : c;
        }
      }
    }
    await sleep(delay);
  }
  return undefined;
}
