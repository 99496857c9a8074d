// Root-side file operations for setup. Setup runs as root but works inside
// directories the rootless user owns, so it never follows a symlink there:
// owners and modes are changed through descriptors opened with O_NOFOLLOW, and
// entries inside user-owned directories are made with the user's own identity.
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  fstatSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FailedPrecondition } from '../errors.js';

export type DirOutcome = 'created' | 'already present' | 'fixed';

export interface Owner {
  uid: number;
  gid: number;
}

export function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** A file's text, or '' when it does not exist. */
export function readTextOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Sets owner and permission bits of a directory without following a symlink; reports whether anything changed. */
function settleDir(path: string, owner: Owner, mode: number): boolean {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR') {
      throw new FailedPrecondition('ERR_TRELLIS_SETUP_NOT_A_DIR', `${path} exists and is not a directory: remove it and run setup again`);
    }
    throw err;
  }
  try {
    const st = fstatSync(fd);
    const ownerWrong = st.uid !== owner.uid || st.gid !== owner.gid;
    const modeWrong = (st.mode & 0o7777) !== mode;
    if (ownerWrong) fchownSync(fd, owner.uid, owner.gid);
    // chown clears setuid/setgid bits, so the mode goes second.
    if (ownerWrong || modeWrong) fchmodSync(fd, mode);
    return ownerWrong || modeWrong;
  } finally {
    closeSync(fd);
  }
}

/** A directory whose parent only root can write: made and fixed up as root. */
export function ensureRootDir(path: string, owner: Owner, mode: number): DirOutcome {
  const st = lstatOrUndefined(path);
  if (st === undefined) {
    mkdirSync(path, { mode: 0o700 });
    settleDir(path, owner, mode);
    return 'created';
  }
  return settleDir(path, owner, mode) ? 'fixed' : 'already present';
}

/**
 * A directory inside one the user owns: made with the user's identity, so a
 * symlink the user planted on the way can only lead where the user could write anyway.
 */
export function ensureUserDir(path: string, owner: Owner, mode: number): DirOutcome {
  const st = lstatOrUndefined(path);
  if (st === undefined) {
    asUser(owner, () => {
      mkdirSync(path, { mode: 0o700 });
      settleDir(path, owner, mode);
    });
    return 'created';
  }
  return settleDir(path, owner, mode) ? 'fixed' : 'already present';
}

/** Runs `fn` (synchronous only) with the effective ids of `owner`, and no supplementary groups but its gid. */
export function asUser<T>(owner: Owner, fn: () => T): T {
  const groups = process.getgroups!();
  process.setgroups!([owner.gid]);
  process.setegid!(owner.gid);
  process.seteuid!(owner.uid);
  try {
    return fn();
  } finally {
    process.seteuid!(0);
    process.setegid!(0);
    process.setgroups!(groups);
  }
}

/**
 * Replaces `path` with `text` by writing a sibling and renaming it over; keeps the
 * old file's mode and owner (or `fallback` for a new file). O_EXCL|O_NOFOLLOW on
 * the sibling, so a planted symlink makes it fail instead of writing elsewhere.
 */
export function writeFileAtomic(path: string, text: string, fallback: { mode: number } & Owner): void {
  const old = lstatOrUndefined(path);
  const mode = old?.isFile() ? old.mode & 0o7777 : fallback.mode;
  const uid = old?.isFile() ? old.uid : fallback.uid;
  const gid = old?.isFile() ? old.gid : fallback.gid;
  const tmp = join(dirname(path), `.${basename(path)}.trellis-${process.pid}`);
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, text);
    fchownSync(fd, uid, gid);
    fchmodSync(fd, mode);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, path);
}
