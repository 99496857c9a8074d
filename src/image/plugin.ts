// The image plugin seam. gdn talks to an ImagePlugin; behind it either Trellis's own
// store called in-process (no Node spawn per create) or any executable that honours
// Garden's image plugin contract (spec/plugins.md §2).
import { execa } from 'execa';
import type { Logger } from 'pino';
import type { OciMount } from '../runtime/bundle.js';
import { ExternalFailure } from '../errors.js';
import type { Spawner } from '../runtime/spawner/spawner.js';
import type { ImageStore } from '../../plugins/grootfs/store.js';

export interface ImageRequest {
  handle: string;
  /** Depot key: what the in-process store names the image. */
  key: string;
  image: string;
  diskLimitBytes?: bigint;
  /** Garden's inode_hard (issue #11): the in-process store enforces it on XFS; an exec plugin is not told. */
  diskLimitInodes?: bigint;
  excludeImageFromQuota?: boolean;
  username?: string;
  password?: string;
}

export interface ImageResult {
  rootfsPath: string;
  env: string[];
  mounts: OciMount[];
  /** The image config's USER and WORKDIR, when the plugin reports them (`process.user.username`, `process.cwd`). */
  user?: string;
  workingDir?: string;
}

export interface ImagePlugin {
  readonly name: string;
  create(req: ImageRequest): Promise<ImageResult>;
  destroy(handle: string, key: string): Promise<void>;
  stats(handle: string, key: string): Promise<{ totalBytesUsed: number; exclusiveBytesUsed: number; exclusiveInodesUsed?: number }>;
}

export class InProcessImagePlugin implements ImagePlugin {
  readonly name = 'trellis-grootfs';
  constructor(private readonly store: ImageStore) {}

  async create(req: ImageRequest): Promise<ImageResult> {
    const res = await this.store.create({
      image: req.image,
      id: req.key,
      diskLimitBytes: req.diskLimitBytes === undefined ? undefined : Number(req.diskLimitBytes),
      diskLimitInodes: req.diskLimitInodes === undefined ? undefined : Number(req.diskLimitInodes),
      excludeImageFromQuota: req.excludeImageFromQuota,
      username: req.username,
      password: req.password,
    });
    return { rootfsPath: res.root.path, env: res.process.env, mounts: res.mounts, user: res.process.user?.username, workingDir: res.process.cwd };
  }

  async destroy(_handle: string, key: string): Promise<void> {
    await this.store.delete(key);
  }

  async stats(_handle: string, key: string) {
    const u = await this.store.usage(key);
    return { totalBytesUsed: u.total, exclusiveBytesUsed: u.exclusive, ...(u.exclusiveInodes === undefined ? {} : { exclusiveInodesUsed: u.exclusiveInodes }) };
  }
}

/** Reads what a plugin printed: the modern partial OCI spec, or the 2017 schema. */
export function parseCreateOutput(stdout: string): ImageResult {
  const raw = JSON.parse(stdout) as Record<string, unknown>;
  const lower = (o: unknown): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    if (o && typeof o === 'object') for (const [k, v] of Object.entries(o)) out[k.toLowerCase()] = v;
    return out;
  };
  const top = lower(raw);
  const root = lower(top.root);
  const proc = lower(top.process);
  let rootfsPath = typeof root.path === 'string' ? root.path : '';
  let env = Array.isArray(proc.env) ? (proc.env as string[]) : [];
  if (rootfsPath === '' && typeof top.rootfs === 'string') rootfsPath = top.rootfs;
  if (env.length === 0) {
    const cfg = lower(lower(top.image).config);
    if (Array.isArray(cfg.env)) env = cfg.env as string[];
  }
  const mounts = Array.isArray(top.mounts)
    ? (top.mounts as unknown[]).map((m) => {
        const l = lower(m);
        return {
          destination: String(l.destination ?? ''),
          type: String(l.type ?? ''),
          source: String(l.source ?? ''),
          options: Array.isArray(l.options) ? (l.options as string[]) : [],
        };
      })
    : [];
  const user = lower(proc.user).username;
  const cwd = proc.cwd;
  return {
    rootfsPath,
    env,
    mounts,
    ...(typeof user === 'string' && user !== '' ? { user } : {}),
    ...(typeof cwd === 'string' && cwd !== '' ? { workingDir: cwd } : {}),
  };
}

export class ExecImagePlugin implements ImagePlugin {
  readonly name: string;
  constructor(
    private readonly binary: string,
    private readonly extraArgs: string[],
    private readonly log: Logger,
    /** gdn's spawner (issue 10: no fork of the large daemon per create). */
    private readonly spawner?: Spawner,
  ) {
    this.name = binary;
  }

  private async exec(args: string[]) {
    const argv = [...this.extraArgs, ...args];
    const res = this.spawner
      ? await this.spawner.run(this.binary, argv, { env: process.env })
      : await execa(this.binary, argv, { reject: false, stdin: 'ignore' });
    for (const line of res.stderr.split('\n')) {
      if (line.trim() === '') continue;
      try {
        this.log.info({ plugin: this.binary, original: JSON.parse(line) as unknown }, 'image-plugin.log');
      } catch {
        this.log.error({ plugin: this.binary, output: line }, 'image-plugin.output');
      }
    }
    return res;
  }

  async create(req: ImageRequest): Promise<ImageResult> {
    const args = ['create'];
    if (req.diskLimitBytes !== undefined && req.diskLimitBytes > 0n) {
      args.push('--disk-limit-size-bytes', req.diskLimitBytes.toString());
      if (req.excludeImageFromQuota) args.push('--exclude-image-from-quota');
    }
    if (req.username) args.push('--username', req.username);
    if (req.password) args.push('--password', req.password);
    args.push(req.image.replace('#', ':'), req.handle);
    const res = await this.exec(args);
    if (res.exitCode !== 0) {
      throw new ExternalFailure('image-plugin', `running image plugin create: ${res.stdout.trim()}: exit status ${res.exitCode}`);
    }
    try {
      return parseCreateOutput(res.stdout);
    } catch (err) {
      throw new ExternalFailure('image-plugin', `parsing image plugin create: ${res.stdout.trim()}: ${(err as Error).message}`);
    }
  }

  async destroy(handle: string): Promise<void> {
    const res = await this.exec(['delete', handle]);
    if (res.exitCode !== 0) {
      throw new ExternalFailure('image-plugin', `running image plugin destroy: ${res.stdout.trim()}: exit status ${res.exitCode}`);
    }
  }

  async stats(handle: string) {
    const res = await this.exec(['stats', handle]);
    if (res.exitCode !== 0) throw new ExternalFailure('image-plugin', `running image plugin metrics: ${res.stdout.trim()}`);
    const parsed = JSON.parse(res.stdout) as { disk_usage?: { total_bytes_used?: number; exclusive_bytes_used?: number } };
    return {
      totalBytesUsed: parsed.disk_usage?.total_bytes_used ?? 0,
      exclusiveBytesUsed: parsed.disk_usage?.exclusive_bytes_used ?? 0,
    };
  }
}
