// Setup's part of /etc/subuid and /etc/subgid: make sure the user owns a range
// big enough for a container's ids, adding one that overlaps nobody's when not.
import { readTextOrEmpty } from './host-files.js';
import { parsePasswd, type PasswdEntry } from '../idmap/passwd.js';
import { nextFreeStart, parseSubIds, primaryRange, type SubIdRange } from '../idmap/subid.js';

/** A container needs ids 0..65535; 0 is the user itself, so 65536 subordinate ids cover 1..65536. */
export const RANGE_SIZE = 65536;

export { parsePasswd, type PasswdEntry };

/** The user's login name from /etc/passwd, or undefined for a uid without an entry. */
export function userName(uid: number, passwdPath = '/etc/passwd'): string | undefined {
  return parsePasswd(readTextOrEmpty(passwdPath)).find((e) => e.uid === uid)?.name;
}

export interface SubIdPlan {
  /** The range the user's containers will use. */
  range: SubIdRange;
  /** True when the file already held it; `text` is then the input unchanged. */
  present: boolean;
  /** The file's new content: every old line kept, one line appended when needed. */
  text: string;
}

/**
 * What the file must contain for `user`. An existing range of at least `count`
 * is kept; otherwise a new one is appended at `preferredStart` when that overlaps
 * no range in the file, else at the first free place.
 */
export function planSubIds(
  text: string,
  user: { name?: string; id: number },
  count = RANGE_SIZE,
  preferredStart?: number,
): SubIdPlan {
  const ranges = parseSubIds(text);
  const existing = primaryRange(ranges, user);
  if (existing !== undefined && existing.count >= count) return { range: existing, present: true, text };
  const start =
    preferredStart !== undefined && isFree(ranges, preferredStart, count) ? preferredStart : nextFreeStart(ranges, count);
  const range: SubIdRange = { owner: user.name ?? String(user.id), start, count };
  return { range, present: false, text: appendLine(text, `${range.owner}:${range.start}:${range.count}`) };
}

export function isFree(ranges: SubIdRange[], start: number, count: number): boolean {
  return ranges.every((r) => r.start + r.count <= start || start + count <= r.start);
}

export function appendLine(text: string, line: string): string {
  if (text === '') return `${line}\n`;
  return `${text.endsWith('\n') ? text : `${text}\n`}${line}\n`;
}
