// grootfs's YAML config (cli.md §6.2) and how it combines with flags:
// an explicitly set flag > the config file > the default. Unknown keys are ignored.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InvalidArgument } from '../../src/errors.js';

const num = z.number().int();
const configSchema = z
  .object({
    store: z.string().optional(),
    driver: z.string().optional(),
    log_level: z.string().optional(),
    log_file: z.string().optional(),
    create: z
      .object({
        exclude_image_from_quota: z.boolean().optional(),
        skip_layer_validation: z.boolean().optional(),
        with_clean: z.boolean().optional(),
        without_mount: z.boolean().optional(),
        disk_limit_size_bytes: num.optional(),
        insecure_registries: z.array(z.string()).nullable().optional(),
        // Trellis: the registry `docker:///repo` URLs use (grootfs always used Docker Hub).
        default_registry: z.string().optional(),
      })
      .nullable()
      .optional(),
    clean: z.object({ threshold_bytes: num.optional() }).nullable().optional(),
    init: z.object({ store_size_bytes: num.optional() }).nullable().optional(),
  })
  .nullable();

export interface GrootConfig {
  store?: string;
  driver?: string;
  logLevel?: string;
  logFile?: string;
  create: {
    excludeImageFromQuota?: boolean;
    withClean?: boolean;
    withoutMount?: boolean;
    diskLimitSizeBytes?: number;
    insecureRegistries?: string[];
    defaultRegistry?: string;
  };
  clean: { thresholdBytes?: number };
  init: { storeSizeBytes?: number };
}

export function parseConfig(text: string): GrootConfig {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new InvalidArgument(`invalid config file: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = configSchema.safeParse(raw ?? null);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidArgument(`invalid config file: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'bad value'}`);
  }
  const c = parsed.data ?? {};
  return {
    store: c.store,
    driver: c.driver,
    logLevel: c.log_level,
    logFile: c.log_file,
    create: {
      excludeImageFromQuota: c.create?.exclude_image_from_quota,
      withClean: c.create?.with_clean,
      withoutMount: c.create?.without_mount,
      diskLimitSizeBytes: c.create?.disk_limit_size_bytes,
      insecureRegistries: c.create?.insecure_registries ?? undefined,
      defaultRegistry: c.create?.default_registry,
    },
    clean: { thresholdBytes: c.clean?.threshold_bytes },
    init: { storeSizeBytes: c.init?.store_size_bytes },
  };
}

export const EMPTY_CONFIG: GrootConfig = parseConfig('');

export function loadConfig(path: string | undefined): GrootConfig {
  if (path === undefined || path === '') return EMPTY_CONFIG;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InvalidArgument(`invalid config path: ${(err as Error).message}`);
  }
  return parseConfig(text);
}

export type LogLevel = 'debug' | 'info' | 'error' | 'fatal';

export interface GlobalSettings {
  store: string;
  /** undefined: whatever init-store recorded in the store. */
  driver?: 'overlay' | 'btrfs';
  logLevel: LogLevel;
  logFile?: string;
}

/** `overlay-xfs` is grootfs's name for the overlay driver. */
export function normaliseDriver(name: string): 'overlay' | 'btrfs' {
  if (name === 'overlay' || name === 'overlay-xfs') return 'overlay';
  if (name === 'btrfs') return 'btrfs';
  throw new InvalidArgument(`invalid driver \`${name}\`: want overlay (or overlay-xfs) or btrfs`);
}

/** grootfs: anything but debug/info/error is fatal; a log file with level fatal logs at info. */
export function normaliseLogLevel(level: string | undefined, logFile: string | undefined): LogLevel {
  const l: LogLevel = level === 'debug' || level === 'info' || level === 'error' ? level : 'fatal';
  return l === 'fatal' && logFile !== undefined && logFile !== '' ? 'info' : l;
}

export interface GlobalFlags {
  store?: string;
  driver?: string;
  logLevel?: string;
  logFile?: string;
}

export function resolveGlobals(flags: GlobalFlags, cfg: GrootConfig, defaults: { store: string }): GlobalSettings {
  const logFile = flags.logFile ?? cfg.logFile;
  return {
    store: flags.store ?? cfg.store ?? defaults.store,
    driver: flags.driver ?? cfg.driver ? normaliseDriver((flags.driver ?? cfg.driver) as string) : undefined,
    logLevel: normaliseLogLevel(flags.logLevel ?? cfg.logLevel, logFile),
    logFile: logFile === '' ? undefined : logFile,
  };
}

export interface CreateFlags {
  diskLimitSizeBytes?: number;
  excludeImageFromQuota?: boolean;
  withClean?: boolean;
  withoutClean?: boolean;
  withMount?: boolean;
  withoutMount?: boolean;
  insecureRegistry?: string[];
  thresholdBytes?: number;
}

export interface CreateSettings {
  diskLimitBytes: number;
  excludeImageFromQuota: boolean;
  withClean: boolean;
  withoutMount: boolean;
  insecureRegistries: string[];
  thresholdBytes: number;
}

function nonNegative(value: number | undefined, what: string): number {
  if (value === undefined) return 0;
  if (!Number.isInteger(value)) throw new InvalidArgument(`invalid argument: ${what} must be a whole number of bytes`);
  if (value < 0) throw new InvalidArgument(`invalid argument: ${what} cannot be negative`);
  return value;
}

export function resolveCreate(flags: CreateFlags, cfg: GrootConfig): CreateSettings {
  if (flags.withClean && flags.withoutClean) throw new InvalidArgument('with-clean and without-clean cannot be used together');
  if (flags.withMount && flags.withoutMount) throw new InvalidArgument('with-mount and without-mount cannot be used together');
  const withClean = flags.withClean ? true : flags.withoutClean ? false : (cfg.create.withClean ?? false);
  const withoutMount = flags.withoutMount ? true : flags.withMount ? false : (cfg.create.withoutMount ?? false);
  return {
    diskLimitBytes: nonNegative(flags.diskLimitSizeBytes ?? cfg.create.diskLimitSizeBytes, 'disk limit'),
    excludeImageFromQuota: flags.excludeImageFromQuota ?? cfg.create.excludeImageFromQuota ?? false,
    withClean,
    withoutMount,
    insecureRegistries: flags.insecureRegistry && flags.insecureRegistry.length > 0 ? flags.insecureRegistry : (cfg.create.insecureRegistries ?? []),
    thresholdBytes: nonNegative(flags.thresholdBytes ?? cfg.clean.thresholdBytes, 'clean threshold'),
  };
}

export function resolveThreshold(flag: number | undefined, cfg: GrootConfig): number {
  return nonNegative(flag ?? cfg.clean.thresholdBytes, 'clean threshold');
}

export function resolveStoreSize(flag: number | undefined, cfg: GrootConfig): number {
  return nonNegative(flag ?? cfg.init.storeSizeBytes, 'store size');
}
