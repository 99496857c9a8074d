// Removing image and store trees. Upper dirs hold files owned by the user's
// subordinate ids (container users other than root, dirs they made), which the
// plain user cannot unlink; inside a user namespace with the store's mappings the
// user is root over all of them.
import { rm } from 'node:fs/promises';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { ExternalFailure, FailedPrecondition } from '../../src/errors.js';
import type { IdMapping } from '../../src/idmap/subid.js';

export interface StoreMappings {
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
}

/**
 * How the store starts its tools (btrfs, unshare, cp, the gate). The grootfs program forks
 * them itself; gdn, which holds the store in-process, passes its spawner so that no tool
 * start forks the large daemon (issue 10). Tools get PATH and LANG=C only.
 */
export type CommandRunner = (file: string, args: string[], opts?: { timeoutMs?: number }) => Promise<{ exitCode: number; stdout: string; stderr: string }>;

export const TOOL_ENV = { PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };

export const runCommand: CommandRunner = async (file, args, opts = {}) => {
  const r = await execa(file, args, { reject: false, stdin: 'ignore', extendEnv: false, env: TOOL_ENV, timeout: opts.timeoutMs });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
};

const PERMISSION = new Set(['EACCES', 'EPERM', 'ENOTEMPTY']);

/**
 * `unshare` argv (util-linux >= 2.38: --map-users=OUTER,INNER,COUNT) that runs
 * `rm -rf` as namespace root. The caller becomes root via --map-root-user, so the
 * store's 0:<owner>:1 entry is implied; 2.38 keeps only the last --map-users, so
 * at most one other range per kind can be mapped.
 */
export function unshareRemoveArgv(maps: StoreMappings, paths: string[]): string[] {
  const flag = (name: string, list: IdMapping[]): string[] => {
    const ranges = list.filter((m) => m.containerID !== 0);
    if (ranges.length > 1) {
      throw new FailedPrecondition(
        'ERR_TRELLIS_STORE_MAPPINGS',
        `cannot remove as namespace root: the store maps ${ranges.length} ${name} ranges besides root, and unshare takes one`,
      );
    }
    return ranges.map((m) => `--map-${name}=${m.hostID},${m.containerID},${m.size}`);
  };
  return ['--user', '--map-root-user', ...flag('users', maps.uidMappings), ...flag('groups', maps.gidMappings), 'rm', '-rf', '--', ...paths];
}

/**
 * Removes each path (missing ones are fine). Tries plain `rm` first; on a
 * permission error, and when not root, retries inside a user namespace.
 */
export async function removeTrees(
  paths: string[],
  maps: StoreMappings | undefined,
  opts: { run?: CommandRunner; uid?: number; log?: Logger } = {},
): Promise<void> {
  const denied: string[] = [];
  let firstErr: unknown;
  for (const p of paths) {
    try {
      await rm(p, { recursive: true, force: true, maxRetries: 2 });
    } catch (err) {
      // Anything a plain rm cannot do (permissions, trees deeper than PATH_MAX) gets the namespace rm -rf.
      if (!PERMISSION.has((err as NodeJS.ErrnoException).code ?? '') && (err as NodeJS.ErrnoException).code !== 'ENAMETOOLONG') throw err;
      denied.push(p);
      firstErr ??= err;
    }
  }
  if (denied.length === 0) return;
  const uid = opts.uid ?? process.getuid?.() ?? 0;
  if (uid === 0 || maps === undefined || maps.uidMappings.length === 0) throw firstErr;
  const args = unshareRemoveArgv(maps, denied);
  opts.log?.debug({ paths: denied, error: (firstErr as Error).message }, 'remove.in-user-namespace');
  const r = await (opts.run ?? runCommand)('unshare', args);
  if (r.exitCode !== 0) {
    const last = r.stderr.trim().split('\n').pop() ?? '';
    throw new ExternalFailure('unshare', `removing ${denied.join(' ')} in a user namespace failed: ${last || `exit status ${r.exitCode}`}`);
  }
}
