// /etc/subuid and /etc/subgid: "name-or-id:start:count" lines.
import { readFileSync } from 'node:fs';
import { FailedPrecondition } from '../errors.js';

export interface SubIdRange {
  /** The user name or decimal id the line names. */
  owner: string;
  start: number;
  count: number;
}

/** One id-map entry as OCI and newuidmap take it. */
export interface IdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

const MAX_ID = 4294967295;

/** Parses the file's text; malformed lines and comments are skipped, as shadow-utils does. */
export function parseSubIds(text: string): SubIdRange[] {
  const out: SubIdRange[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const parts = line.split(':');
    if (parts.length !== 3) continue;
    const [owner, s, c] = parts as [string, string, string];
    if (owner === '' || !/^\d+$/.test(s) || !/^\d+$/.test(c)) continue;
    const start = Number(s);
    const count = Number(c);
    if (count <= 0 || start + count - 1 > MAX_ID) continue;
    out.push({ owner, start, count });
  }
  return out;
}

/** The ranges that belong to a user, matched by name or by decimal uid. */
export function rangesFor(ranges: SubIdRange[], user: { name?: string; id: number }): SubIdRange[] {
  return ranges.filter((r) => r.owner === String(user.id) || (user.name !== undefined && r.owner === user.name));
}

/** The first (largest, on a tie the earliest) range of a user, or undefined. */
export function primaryRange(ranges: SubIdRange[], user: { name?: string; id: number }): SubIdRange | undefined {
  let best: SubIdRange | undefined;
  for (const r of rangesFor(ranges, user)) if (best === undefined || r.count > best.count) best = r;
  return best;
}

/** Where a new range of `count` ids can start without overlapping any existing one. */
export function nextFreeStart(ranges: SubIdRange[], count: number, floor = 100000): number {
  let start = floor;
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  for (const r of sorted) {
    if (r.start + r.count <= start) continue;
    if (r.start >= start + count) break;
    start = r.start + r.count;
  }
  return start;
}

/** Container root is the user itself; container ids 1.. come from the subordinate range. */
export function buildMappings(ownId: number, range: { start: number; count: number }): IdMapping[] {
  return [
    { containerID: 0, hostID: ownId, size: 1 },
    { containerID: 1, hostID: range.start, size: range.count },
  ];
}

/** The host id a container id lands on under `maps`, or undefined when unmapped. */
export function toHost(maps: IdMapping[], containerId: number): number | undefined {
  for (const m of maps) {
    if (containerId >= m.containerID && containerId < m.containerID + m.size) return m.hostID + containerId - m.containerID;
  }
  return undefined;
}

/** "CONTAINER:HOST:SIZE", grootfs's --uid-mapping form. */
export function parseMappingFlag(text: string): IdMapping {
  const m = /^(\d+):(\d+):(\d+)$/.exec(text.trim());
  if (!m) throw new FailedPrecondition('ERR_TRELLIS_BAD_MAPPING', `invalid id mapping '${text}': want CONTAINER:HOST:SIZE`);
  const [containerID, hostID, size] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (size === 0) throw new FailedPrecondition('ERR_TRELLIS_BAD_MAPPING', `invalid id mapping '${text}': size must be positive`);
  return { containerID, hostID, size };
}

export function formatMapping(m: IdMapping): string {
  return `${m.containerID}:${m.hostID}:${m.size}`;
}

export function readSubIdFile(path: string): SubIdRange[] {
  try {
    return parseSubIds(readFileSync(path, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}
