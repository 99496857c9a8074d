// Runs unpack jobs as the store's namespace root. An ordinary user gets a user
// namespace with the store's mappings (unshare drives newuidmap/newgidmap), so
// chown lands on the mapped host ids; root translates the ids itself.
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';
import { ExternalFailure } from '../../src/errors.js';
import type { IdMapping } from '../../src/idmap/subid.js';
import { runCommand, type CommandRunner, type StoreMappings } from './remove.js';
import { unpackLayer, type IdTranslation, type UnpackJob, type UnpackResult } from './unpack.js';

const MAIN = fileURLToPath(new URL('./unpack-main.js', import.meta.url));

/** `unshare` flags mapping the caller to root and the store's other range (util-linux 2.38 takes one per kind). */
export function unshareMapFlags(maps: StoreMappings): string[] {
  const flag = (name: string, list: IdMapping[]): string[] => {
    const ranges = list.filter((m) => m.containerID !== 0);
    if (ranges.length > 1) {
      throw new ExternalFailure('unshare', `the store maps ${ranges.length} ${name} ranges besides root; unshare takes one`);
    }
    return ranges.map((m) => `--map-${name}=${m.hostID},${m.containerID},${m.size}`);
  };
  return ['--user', '--map-root-user', ...flag('users', maps.uidMappings), ...flag('groups', maps.gidMappings)];
}

function translate(list: IdMapping[]): (id: number) => number {
  return (id) => {
    for (const m of list) if (id >= m.containerID && id < m.containerID + m.size) return m.hostID + (id - m.containerID);
    throw new ExternalFailure('grootfs', `id ${id} is outside the store's mappings`);
  };
}

export function rootTranslation(maps: StoreMappings): IdTranslation | undefined {
  if (maps.uidMappings.length === 0) return undefined;
  return { uid: translate(maps.uidMappings), gid: translate(maps.gidMappings.length > 0 ? maps.gidMappings : maps.uidMappings) };
}

export async function runUnpack(jobs: UnpackJob[], maps: StoreMappings | undefined, uid = process.getuid?.() ?? 0): Promise<UnpackResult[]> {
  if (jobs.length === 0) return [];
  if (uid === 0 || maps === undefined || maps.uidMappings.length === 0) {
    const ids = uid === 0 && maps ? rootTranslation(maps) : undefined;
    const out: UnpackResult[] = [];
    for (const j of jobs) out.push(await unpackLayer(j, ids));
    return out;
  }
  const r = await execa('unshare', [...unshareMapFlags(maps), '--', process.execPath, MAIN, JSON.stringify(jobs)], {
    reject: false,
    stdin: 'ignore',
    extendEnv: false,
    env: { PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' },
  });
  if (r.exitCode !== 0) {
    const last = r.stderr.trim().split('\n').pop() ?? '';
    throw new ExternalFailure('grootfs-unpack', last || `unpacking failed: exit status ${r.exitCode ?? r.signal ?? '?'}`);
  }
  return JSON.parse(r.stdout) as UnpackResult[];
}

/** Runs a command as the store's namespace root (for cp, btrfs, du over files the user cannot read). */
export async function runAsNamespaceRoot(
  maps: StoreMappings | undefined,
  file: string,
  args: string[],
  run: CommandRunner = runCommand,
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const uid = process.getuid?.() ?? 0;
  const inNs = uid !== 0 && maps !== undefined && maps.uidMappings.length > 0;
  return inNs ? run('unshare', [...unshareMapFlags(maps), '--', file, ...args]) : run(file, args);
}
