// The grootfs command line (cli.md §6): a thin layer over ImageStore. Results and
// error messages go to stdout (one line; errors exit 1), logs to stderr or --log-file.
import { readFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { destination, pino, type Logger } from 'pino';
import yargs, { type Argv } from 'yargs';
import { errorMessage } from '../../src/errors.js';
import { parseMappingFlag } from '../../src/idmap/subid.js';
import { userPaths } from '../../src/paths.js';
import {
  loadConfig,
  resolveCreate,
  resolveGlobals,
  resolveStoreSize,
  resolveThreshold,
  type GlobalSettings,
  type GrootConfig,
} from './config.js';
import { ImageStore } from './store.js';

export interface CliIo {
  stdout: (text: string) => void;
  getuid: () => number;
  /** Where logs go when there is no --log-file; file descriptor. */
  logFd: number;
}

const defaultIo: CliIo = {
  stdout: (text) => process.stdout.write(text),
  getuid: () => process.getuid?.() ?? 0,
  logFd: 2,
};

interface GlobalArgs {
  config?: string;
  store?: string;
  driver?: string;
  'log-level'?: string;
  'log-file'?: string;
  args?: (string | number)[];
}

const withArgs = <T>(y: Argv<T>) => y.positional('args', { type: 'string', array: true });

interface Context {
  settings: GlobalSettings;
  config: GrootConfig;
  log: Logger;
  store: ImageStore;
}

class UsageError extends Error {}

function positionals(argv: GlobalArgs, want: number, usage: string): string[] {
  const args = (argv.args ?? []).map(String);
  if (args.length !== want) throw new UsageError(`invalid arguments - usage: grootfs ${usage}`);
  return args;
}

function version(): string {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      return (JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { version: string }).version;
    } catch {
      // try the next layout (compiled or not)
    }
  }
  return 'unknown';
}

function makeLogger(settings: GlobalSettings, io: CliIo): Logger {
  const dest = settings.logFile
    ? destination({ dest: settings.logFile, append: true, sync: true, mkdir: true })
    : destination({ fd: io.logFd, sync: true });
  return pino({ level: settings.logLevel, base: { source: 'grootfs' }, redact: ['password', '*.password'] }, dest);
}

/** Runs one grootfs invocation; resolves to the exit status. */
export async function runCli(argv: string[], io: CliIo = defaultIo): Promise<number> {
  let context: Context | undefined;
  const ctx = (a: GlobalArgs): Context => {
    if (context) return context;
    const config = loadConfig(a.config);
    const settings = resolveGlobals(
      { store: a.store, driver: a.driver, logLevel: a['log-level'], logFile: a['log-file'] },
      config,
      { store: userPaths(io.getuid()).store },
    );
    const log = makeLogger(settings, io);
    const store = new ImageStore({
      storePath: settings.store,
      driver: settings.driver,
      logger: log,
      defaultRegistry: config.create.defaultRegistry,
      insecureRegistries: config.create.insecureRegistries ?? [],
    });
    context = { settings, config, log, store };
    return context;
  };
  const print = (line: string): void => io.stdout(line.endsWith('\n') ? line : `${line}\n`);

  const cli = yargs(argv)
    .scriptName('grootfs')
    .parserConfiguration({ 'camel-case-expansion': false })
    .option('config', { type: 'string', describe: 'YAML config file' })
    .option('store', { type: 'string', describe: 'store directory (default /var/lib/trellis/UID/store)' })
    .option('driver', { type: 'string', describe: 'overlay (overlay-xfs is an alias) or btrfs; default: what init-store recorded' })
    .option('log-level', { type: 'string', describe: 'debug|info|error|fatal' })
    .option('log-file', { type: 'string', describe: 'append logs here instead of stderr' })
    // Accepted for compatibility with grootfs command lines; unused here.
    .option('tardis-bin', { type: 'string', hidden: true })
    .option('drax-bin', { type: 'string', hidden: true })
    .option('btrfs-progs-path', { type: 'string', hidden: true })
    .option('newuidmap-bin', { type: 'string', hidden: true })
    .option('newgidmap-bin', { type: 'string', hidden: true })
    .option('metron-endpoint', { type: 'string', hidden: true })
    .command(
      'init-store [args..]',
      'initialise a store (root)',
      (y) =>
        withArgs(y)
          .option('uid-mapping', { type: 'string', array: true, nargs: 1, describe: 'CONTAINER:HOST:SIZE (repeatable)' })
          .option('gid-mapping', { type: 'string', array: true, nargs: 1, describe: 'CONTAINER:HOST:SIZE (repeatable)' })
          .option('store-size-bytes', { type: 'number' })
          .option('with-direct-io', { type: 'boolean', hidden: true })
          .option('without-direct-io', { type: 'boolean', hidden: true }),
      async (a) => {
        positionals(a, 0, 'init-store [options]');
        const c = ctx(a);
        await c.store.initStore({
          uidMappings: (a['uid-mapping'] ?? []).map(parseMappingFlag),
          gidMappings: (a['gid-mapping'] ?? []).map(parseMappingFlag),
          storeSizeBytes: resolveStoreSize(a['store-size-bytes'], c.config),
        });
      },
    )
    .command('delete-store [args..]', 'delete the store and every image in it', withArgs, async (a) => {
      positionals(a, 0, 'delete-store');
      await ctx(a).store.deleteStore();
    })
    .command(
      'create [args..]',
      'create an image: prints the rootfs, env and mounts as JSON',
      (y) =>
        withArgs(y)
          .option('disk-limit-size-bytes', { type: 'number' })
          .option('exclude-image-from-quota', { type: 'boolean' })
          .option('username', { type: 'string' })
          .option('password', { type: 'string' })
          .option('insecure-registry', { type: 'string', array: true, nargs: 1 })
          .option('skip-layer-validation', { type: 'boolean' })
          .option('with-clean', { type: 'boolean' })
          .option('without-clean', { type: 'boolean' })
          .option('threshold-bytes', { type: 'number' })
          .option('cache-bytes', { type: 'number', hidden: true })
          .option('clean-log-file', { type: 'string', hidden: true })
          .option('with-mount', { type: 'boolean' })
          .option('without-mount', { type: 'boolean' }),
      async (a) => {
        const [image, id] = positionals(a, 2, 'create [options] <image> <id>') as [string, string];
        const c = ctx(a);
        const s = resolveCreate(
          {
            diskLimitSizeBytes: a['disk-limit-size-bytes'],
            excludeImageFromQuota: a['exclude-image-from-quota'],
            withClean: a['with-clean'],
            withoutClean: a['without-clean'],
            withMount: a['with-mount'],
            withoutMount: a['without-mount'],
            insecureRegistry: a['insecure-registry'],
            thresholdBytes: a['threshold-bytes'],
          },
          c.config,
        );
        const result = await c.store.create({
          image,
          id,
          diskLimitBytes: s.diskLimitBytes,
          excludeImageFromQuota: s.excludeImageFromQuota,
          username: a.username,
          password: a.password,
          insecureRegistries: s.insecureRegistries,
        });
        if (s.withClean) {
          const msg = await c.store.clean({ thresholdBytes: s.thresholdBytes }).catch((err: unknown) => errorMessage(err));
          c.log.info({ result: msg }, 'create.clean');
        }
        print(JSON.stringify(result));
      },
    )
    .command('delete [args..]', 'delete an image (an unknown id is not an error)', withArgs, async (a) => {
      const args = (a.args ?? []).map(String);
      if (args.length === 0) throw new UsageError('id was not specified');
      const [id] = positionals(a, 1, 'delete <id|image path>') as [string];
      const r = await ctx(a).store.delete(id);
      print(r === 'deleted' ? `Image ${id} deleted` : `Image \`${id}\` not found. Skipping delete.`);
    })
    .command('stats [args..]', 'disk usage of an image as JSON', withArgs, async (a) => {
      const [id] = positionals(a, 1, 'stats <id|image path>') as [string];
      print(JSON.stringify(await ctx(a).store.stats(id)));
    })
    .command('list [args..]', 'list image paths', withArgs, async (a) => {
      positionals(a, 0, 'list');
      const images = await ctx(a).store.list();
      print(images.length === 0 ? 'Store empty' : images.join('\n'));
    })
    .command(
      'clean [args..]',
      'remove layers no image uses',
      (y) => withArgs(y).option('threshold-bytes', { type: 'number' }).option('cache-bytes', { type: 'number', hidden: true }),
      async (a) => {
        positionals(a, 0, 'clean [options]');
        const c = ctx(a);
        print(await c.store.clean({ thresholdBytes: resolveThreshold(a['threshold-bytes'] ?? a['cache-bytes'], c.config) }));
      },
    )
    .command('capacity [args..]', 'disk capacity of the store as JSON', withArgs, async (a) => {
      positionals(a, 0, 'capacity');
      const c = ctx(a);
      let capacity = resolveStoreSize(undefined, c.config);
      if (capacity === 0) capacity = await filesystemBytes(c.settings.store);
      print(JSON.stringify({ capacity }));
    })
    .demandCommand(1, 'no command given: see grootfs --help')
    .strictCommands()
    .strictOptions()
    .version(version())
    .help()
    .fail(false)
    .exitProcess(false)
    .wrap(null);

  try {
    await cli.parseAsync();
    return 0;
  } catch (err) {
    print(errorMessage(err).replace(/\s*\n\s*/g, ' '));
    if (context && !(err instanceof UsageError)) context.log.error({ error: errorMessage(err), code: (err as { code?: string }).code }, 'grootfs.failed');
    return 1;
  }
}

/** Size of the filesystem holding the store (or its nearest existing parent). */
async function filesystemBytes(path: string): Promise<number> {
  for (let p = path; ; p = dirname(p)) {
    try {
      const s = await statfs(p);
      return s.blocks * s.bsize;
    } catch {
      if (p === '/') return 0;
    }
  }
}
