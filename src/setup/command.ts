// `gdn setup` as a command module: flags, help, handler. cmd/gdn.ts wires it in.
import type { Argv, CommandModule } from 'yargs';
import { errorMessage, InvalidArgument, TrellisError } from '../errors.js';
import { notRootError, replaySetup, runSetup, type LogLevel } from './setup.js';

export interface SetupArgs {
  'rootless-uid'?: number;
  'rootless-gid'?: number;
  'store-driver'?: 'overlay' | 'btrfs' | 'xfs';
  store?: string;
  'store-size-bytes'?: number;
  'network-subnet'?: string;
  'host-ports'?: string;
  'network-pool'?: string;
  'subid-count'?: number;
  'log-level': LogLevel;
  systemd: boolean;
  boot: boolean;
}

export interface ResolvedIds {
  uid: number;
  gid: number;
}

/**
 * The user to prepare: the flags, else the user who ran sudo. Not being root is
 * reported first, with the command to run (the caller's own ids when no flags).
 */
export function resolveIds(
  args: { uid?: number; gid?: number },
  env: NodeJS.ProcessEnv,
  euid: number,
  ownIds: ResolvedIds,
): ResolvedIds {
  if ((args.uid === undefined) !== (args.gid === undefined)) {
    throw new InvalidArgument('--rootless-uid and --rootless-gid must be given together');
  }
  const fromSudo = env.SUDO_UID !== undefined && env.SUDO_GID !== undefined && /^\d+$/.test(env.SUDO_UID) && /^\d+$/.test(env.SUDO_GID);
  if (euid !== 0) {
    throw notRootError(args.uid ?? ownIds.uid, args.gid ?? ownIds.gid);
  }
  if (args.uid !== undefined && args.gid !== undefined) return { uid: args.uid, gid: args.gid };
  if (fromSudo) return { uid: Number(env.SUDO_UID), gid: Number(env.SUDO_GID) };
  throw new InvalidArgument(
    'gdn setup needs the user who will run gdn server: gdn setup --rootless-uid <uid> --rootless-gid <gid> (or run it through sudo as that user)',
  );
}

export const setupCommand: CommandModule<object, SetupArgs> = {
  command: 'setup',
  describe: 'prepare the host for a rootless gdn server (as root, once per boot)',
  builder: (yargs: Argv<object>): Argv<SetupArgs> =>
    yargs
      .option('rootless-uid', { type: 'number', describe: 'uid of the user who will run gdn server (default: $SUDO_UID)' })
      .option('rootless-gid', { type: 'number', describe: 'gid of that user (default: $SUDO_GID)' })
      .option('store-driver', { choices: ['overlay', 'btrfs', 'xfs'] as const, describe: "image store driver: btrfs (default for a new store where the kernel has btrfs; enforces disk limits), xfs (overlay on an XFS loopback filesystem with project quotas: enforces byte and inode limits; the default without btrfs where the kernel has XFS quota) or overlay (limits recorded, not enforced); an existing store keeps its own" })
      .option('store', { type: 'string', describe: 'image store to initialise (default /var/lib/trellis/UID/store)' })
      .option('store-size-bytes', { type: 'number', describe: 'btrfs, xfs: size of the loopback filesystem (sparse; default 10 GiB; XFS at least 300 MiB)' })
      .option('network-subnet', { type: 'string', describe: "the user's container subnet (default: the next free /24 of 10.88.0.0/16)" })
      .option('network-pool', { type: 'string', describe: "an address pool (CIDR, /12 to /30) whose subnets the user's creates may ask for, each its own bridge (default: none; kept once granted)" })
      .option('subid-count', { type: 'number', describe: "subordinate uids and gids to grant the user (default 65536, the least; a larger range lets containers use ids up to that count, e.g. 1000000001 for uid 1000000000); a smaller range the user has grows in place when the ids after it are free, else setup refuses" })
      .option('host-ports', { type: 'string', describe: 'START-END host ports for net-in (default: the next free 500 from 20000)' })
      .option('systemd', { type: 'boolean', default: false, describe: "also install the systemd units (a boot unit that redoes this after a reboot, the user unit gdn.service) and let the user's systemd run without a login" })
      .option('boot', { type: 'boolean', default: false, describe: 'redo setup for every user set up before (what the boot unit runs); takes no other flag' })
      .option('log-level', { choices: ['debug', 'info', 'error', 'fatal'] as const, default: 'info' as const, describe: 'how much to print' }),
  handler: async (argv) => {
    try {
      if (argv.boot) {
        if (process.geteuid?.() !== 0) throw notRootError('<uid>', '<gid>');
        if (!(await replaySetup((line) => process.stdout.write(`${line}\n`), argv['log-level']))) process.exitCode = 1;
        return;
      }
      const ids = resolveIds(
        { uid: argv['rootless-uid'], gid: argv['rootless-gid'] },
        process.env,
        process.geteuid?.() ?? 0,
        { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
      );
      await runSetup({ ...ids, storeDriver: argv['store-driver'], store: argv.store, storeSizeBytes: argv['store-size-bytes'], networkSubnet: argv['network-subnet'], hostPorts: argv['host-ports'], networkPool: argv['network-pool'], subidCount: argv['subid-count'], logLevel: argv['log-level'], systemd: argv.systemd }, (line) => {
        process.stdout.write(`${line}\n`);
      });
    } catch (err) {
      const hint = err instanceof TrellisError && err.hint !== undefined && !errorMessage(err).includes(err.hint) ? `\nhint: ${err.hint}` : '';
      process.stderr.write(`error: ${errorMessage(err)}${hint}\n`);
      process.exitCode = 1;
    }
  },
};
