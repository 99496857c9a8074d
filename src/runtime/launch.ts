// A non-root process starts as garden-init's launcher (bundle.ts, buildProcess), so runc
// reports success before the user's program is found. Run must still fail when it cannot
// be executed: wait until the launcher has become the program (its /proc comm or exe
// changed) or has exited, and then take its one-line complaint from the log as the error.
import { readFile, stat } from 'node:fs/promises';
import { ExecutableNotFound, ExternalFailure } from '../errors.js';
import { parseK8sLog } from './k8slog.js';

const LAUNCHER_NAME = 'garden-init';
const PREFIX = 'garden-init: ';

/** 'launcher' while garden-init still runs as `pid`, 'program' once it exec'd, 'gone' once it exited. */
async function launchState(pid: number, init: { dev: number; ino: number }): Promise<'launcher' | 'program' | 'gone'> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return 'gone';
  }
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  const state = text.slice(close + 2, close + 3);
  if (state === 'Z' || state === 'X') return 'gone';
  // runc may report the pid before its init has exec'd the launcher.
  if (comm.startsWith('runc:')) return 'launcher';
  if (comm !== LAUNCHER_NAME) return 'program';
  // A program that is itself called garden-init: tell them apart by the file.
  try {
    const st = await stat(`/proc/${pid}/exe`);
    return st.dev === init.dev && st.ino === init.ino ? 'launcher' : 'program';
  } catch {
    return 'launcher';
  }
}

/** The launcher's complaint, if the process's first output is one (stderr, or the terminal). */
export function launcherError(log: Buffer): string | undefined {
  const first = parseK8sLog(log).records[0];
  if (first === undefined) return undefined;
  const line = first.data.toString('utf8').split('\n')[0]!.replace(/\r$/, '');
  return line.startsWith(PREFIX) ? line.slice(PREFIX.length) : undefined;
}

export async function confirmLaunch(
  pid: number,
  exited: Promise<number | undefined>,
  logPath: string,
  initBinary: string,
  timeoutMs = 30_000,
): Promise<void> {
  const st = await stat(initBinary);
  const init = { dev: st.dev, ino: st.ino };
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    const state = await launchState(pid, init);
    if (state === 'program') return;
    if (state === 'gone') break;
    if (Date.now() > deadline) throw new ExternalFailure('garden-init', `the launcher did not start the program within ${timeoutMs / 1000}s`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 20);
  }
  const code = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000))]);
  if (code !== 127) return;
  let log: Buffer;
  try {
    log = await readFile(logPath);
  } catch {
    return;
  }
  const message = launcherError(log);
  if (message === undefined) return;
  if (/executable file not found|no such file or directory|permission denied/i.test(message)) throw new ExecutableNotFound(message);
  throw new ExternalFailure('garden-init', message);
}
