// `runc start` without a runc process (issue 10). For a created container, runc's start
// only opens <root>/<id>/exec.fifo for reading, reads it to its end (the init, blocked in
// its open for writing, writes one byte and execs; close-on-exec ends the stream) and
// removes the fifo, which is what makes runc report the container "running" from then
// on (runc 1.1.5: libcontainer/container_linux.go exec, handleFifoResult, runType).
import { closeSync, constants, fstat, open, openSync, unlink } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const openFd = promisify(open);
const fstatFd = promisify(fstat);
const unlinkPath = promisify(unlink);

export const EXEC_FIFO = 'exec.fifo';

/** Why a fifo start did not happen (the caller falls back to `runc start`), or how it failed. */
export class ExecFifoAbsent extends Error {}

export class ExecFifoFailure extends Error {}

/** Whether `pid` is gone or a zombie (dead, its parent has yet to reap it). */
export async function isDead(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

/** The init's host pid as runc recorded it in its state (undefined: not runc 1.1's layout). */
export async function runcInitPid(stateDir: string): Promise<number | undefined> {
  try {
    const st = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { init_process_pid?: unknown };
    return typeof st.init_process_pid === 'number' && st.init_process_pid > 1 ? st.init_process_pid : undefined;
  } catch {
    return undefined;
  }
}

/** Delays between checks that the init still lives while its fifo stays silent. */
const CHECK_DELAYS_MS = [5, 10, 20, 40, 80, 100];

/**
 * Starts the created container whose runc state lives in `stateDir` (init pid `pid`).
 * Throws ExecFifoAbsent when there is no fifo to read (another runtime, or already
 * started): nothing was done. Throws ExecFifoFailure when the init died before it
 * could start (runc's "container process is already dead") or did not start within
 * `timeoutMs`.
 */
export async function startThroughFifo(stateDir: string, pid: number, timeoutMs: number): Promise<void> {
  const path = join(stateDir, EXEC_FIFO);
  let fd: number;
  try {
    // Non-blocking: an open for reading returns at once and waits for no writer, and no
    // thread of libuv's small pool is held while the init gets there.
    fd = await openFd(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ExecFifoAbsent(`no ${path}`);
    throw err;
  }
  try {
    if (!(await fstatFd(fd)).isFIFO()) throw new ExecFifoAbsent(`${path} is not a fifo`);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  // A reader with no writer yet sees no end of file (the kernel reports a hang-up only
  // once a writer has come and gone), so the socket waits for the init.
  const stream = new Socket({ fd, readable: true, writable: false });
  let bytes = 0;
  let checks: NodeJS.Timeout | undefined;
  let deadline: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      let dead = false;
      let settled = false;
      stream.on('data', (d: Buffer) => (bytes += d.length));
      stream.on('error', (err) => {
        settled = true;
        reject(err);
      });
      stream.on('end', () => {
        settled = true;
        if (bytes > 0) resolve();
        else reject(new ExecFifoFailure(dead ? 'container process is already dead' : 'cannot start an already running container'));
      });
      // Releases our own reader: the stream ends with whatever the init wrote, if anything.
      const release = () => {
        try {
          closeSync(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
        } catch {
          stream.destroy(new ExecFifoFailure('container process is already dead'));
        }
      };
      let i = 0;
      const check = () => {
        void isDead(pid).then((gone) => {
          if (settled) return;
          if (gone) {
            dead = true;
            release();
          } else {
            checks = setTimeout(check, CHECK_DELAYS_MS[Math.min(++i, CHECK_DELAYS_MS.length - 1)]);
          }
        });
      };
      checks = setTimeout(check, CHECK_DELAYS_MS[0]);
      deadline = setTimeout(() => {
        clearTimeout(checks);
        stream.destroy(new ExecFifoFailure(`the container's init did not start within ${timeoutMs / 1000}s`));
      }, timeoutMs);
    });
  } finally {
    clearTimeout(checks);
    clearTimeout(deadline);
    stream.destroy();
  }
  // What makes runc's state say "running" (runc removes it the same way, after the read).
  await unlinkPath(path);
}
