// Setup's part of /etc/subuid and /etc/subgid: make sure the user owns a range
// big enough for a container's ids, adding one that overlaps nobody's when not.
import { FailedPrecondition, InvalidArgument } from '../errors.js';
import { readTextOrEmpty } from './host-files.js';
import { parsePasswd, type PasswdEntry } from '../idmap/passwd.js';
import { nextFreeStart, parseSubIds, primaryRange, type SubIdRange } from '../idmap/subid.js';

/** A container needs ids 0..65535; 0 is the user itself, so 65536 subordinate ids cover 1..65536. */
export const RANGE_SIZE = 65536;

/** The highest usable id: 4294967295 is (uid_t)-1, which no file or process may own. */
export const MAX_SUBID = 4294967294;

/**
 * `--subid-count`: at least RANGE_SIZE (a container's ids 0..65535), at most what fits
 * below MAX_SUBID above the lowest start setup uses (100000); where the range finally
 * lands is checked again by planSubIds.
 */
export function checkSubIdCount(n: unknown): number {
  const max = MAX_SUBID - 100000 + 1;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < RANGE_SIZE || n > max) {
    throw new InvalidArgument(`--subid-count must be a whole number of ids between ${RANGE_SIZE} and ${max}, got ${String(n)}`);
  }
  return n;
}

export { parsePasswd, type PasswdEntry };

/** The user's login name from /etc/passwd, or undefined for a uid without an entry. */
export function userName(uid: number, passwdPath = '/etc/passwd'): string | undefined {
  return parsePasswd(readTextOrEmpty(passwdPath)).find((e) => e.uid === uid)?.name;
}

/** shadow-utils' defaults: useradd hands out 65536-id ranges between SUB_UID_MIN and SUB_UID_MAX (and the gid pair). */
export const USERADD_SUBID_MAX = 600100000;

/**
 * Where a range of `count` ids may start at the lowest. A default-sized range starts at
 * 100000, as useradd's do. A larger one starts above the window useradd allocates from
 * (the larger of SUB_UID_MAX and SUB_GID_MAX in login.defs), so that it never leaves
 * useradd without room for the next user ("can't create subordinate user IDs").
 */
export function subIdFloor(count: number, loginDefs: string): number {
  if (count <= RANGE_SIZE) return 100000;
  let max = USERADD_SUBID_MAX;
  let seen = false;
  for (const line of loginDefs.split('\n')) {
    const m = /^\s*SUB_[UG]ID_MAX\s+(\d+)\s*$/.exec(line);
    if (m) {
      max = seen ? Math.max(max, Number(m[1])) : Number(m[1]);
      seen = true;
    }
  }
  return Math.min(max, MAX_SUBID) + 1;
}

export interface SubIdPlan {
  /** The range the user's containers will use. */
  range: SubIdRange;
  /** True when the file already held it; `text` is then the input unchanged. */
  present: boolean;
  /** The user's range was smaller and grew in place to this one (the ids after it were free). */
  grownFrom?: SubIdRange;
  /** The file's new content: every old line kept, one line appended when needed. */
  text: string;
}

/**
 * What the file must contain for `user`. An existing range of at least `count`
 * is kept. A smaller one grows in place (same start, so every id the user's store
 * and containers own keeps its meaning) when the ids after it are free in the file
 * and below MAX_SUBID; otherwise it is refused, never moved and never overlapping
 * anyone. A user without a range gets one at `preferredStart` when that overlaps no
 * range in the file, else at the first free place.
 */
export function planSubIds(
  text: string,
  user: { name?: string; id: number },
  count = RANGE_SIZE,
  preferredStart?: number,
  file = '/etc/subuid',
): SubIdPlan {
  const ranges = parseSubIds(text);
  const existing = primaryRange(ranges, user);
  if (existing !== undefined && existing.count >= count) return { range: existing, present: true, text };
  if (existing !== undefined) {
    const others = ranges.filter((r) => r !== existing);
    const end = existing.start + count - 1;
    if (end <= MAX_SUBID && isFree(others, existing.start, count)) {
      const range: SubIdRange = { ...existing, count };
      return { range, present: false, grownFrom: existing, text: replaceLine(text, existing, range) };
    }
    const blocker = others.find((r) => !isFree([r], existing.start, count));
    const why = blocker !== undefined ? `ids ${blocker.start}-${blocker.start + blocker.count - 1} after it are ${blocker.owner}'s` : `it would pass ${MAX_SUBID}`;
    const u = user.name ?? String(user.id);
    throw new FailedPrecondition(
      'ERR_TRELLIS_SUBID_RANGE',
      `${u}'s range ${existing.start}:${existing.count} in ${file} has fewer than the ${count} ids asked for and cannot grow in place (${why}): ` +
        `purge the user's setup (/usr/lib/trellis/scripts/purge-user ${user.id}), remove ${u}'s lines from /etc/subuid and /etc/subgid, and run gdn setup again, or keep --subid-count at most ${existing.count}`
    );
  }
  const start =
    preferredStart !== undefined && isFree(ranges, preferredStart, count) ? preferredStart : nextFreeStart(ranges, count);
  if (start + count - 1 > MAX_SUBID) {
    throw new FailedPrecondition('ERR_TRELLIS_SUBID_RANGE', `no free range of ${count} ids below ${MAX_SUBID + 1} in ${file}: pass a smaller --subid-count`);
  }
  const range: SubIdRange = { owner: user.name ?? String(user.id), start, count };
  return { range, present: false, text: appendLine(text, `${range.owner}:${range.start}:${range.count}`) };
}

/** The file with the one line that holds `old` rewritten to `range`; every other line kept byte for byte. */
function replaceLine(text: string, old: SubIdRange, range: SubIdRange): string {
  const lines = text.split('\n');
  const i = lines.findIndex((l) => {
    const p = l.trim().split(':');
    return p.length === 3 && p[0] === old.owner && Number(p[1]) === old.start && Number(p[2]) === old.count && /^\d+$/.test(p[1]!) && /^\d+$/.test(p[2]!);
  });
  lines[i] = `${range.owner}:${range.start}:${range.count}`;
  return lines.join('\n');
}

export function isFree(ranges: SubIdRange[], start: number, count: number): boolean {
  return ranges.every((r) => r.start + r.count <= start || start + count <= r.start);
}

export function appendLine(text: string, line: string): string {
  if (text === '') return `${line}\n`;
  return `${text.endsWith('\n') ? text : `${text}\n`}${line}\n`;
}
