// What every OCI/Docker image source shares — manifest, index and config parsing,
// platform choice, digests, chain ids — and the `oci://` source: a local OCI image
// layout, whose small blobs are verified here and whose layers the unpacker verifies.
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { FailedPrecondition, InvalidArgument, TrellisError, errorMessage } from '../../src/errors.js';
import {
  BASE_DIRECTORY_ANNOTATION,
  MEDIA_TYPES,
  type Descriptor,
  type ImageConfig,
  type Layer,
  type Platform,
  type ResolvedImage,
} from './image.js';

/** Manifests and indexes are read whole; anything bigger is not one. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024;
/** Index → index → manifest chains deeper than this are refused. */
const MAX_INDEX_DEPTH = 4;

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

/** An image that cannot be used as it is (malformed, inconsistent, or of a kind Trellis does not take). */
export function invalidImage(message: string): TrellisError {
  return new TrellisError('ERR_TRELLIS_IMAGE_INVALID', message);
}

function unsupportedImage(message: string, hint?: string): TrellisError {
  return new TrellisError('ERR_TRELLIS_IMAGE_UNSUPPORTED', message, { hint });
}

// ---------------------------------------------------------------------------
// Digests and chain ids

const SHA256_DIGEST = /^sha256:([a-f0-9]{64})$/;

/** Returns the hex of a `sha256:<64 lowercase hex>` digest; anything else is an InvalidArgument. */
export function parseDigest(digest: string): string {
  const hex = SHA256_DIGEST.exec(digest)?.[1];
  if (hex !== undefined) return hex;
  const shown = digest.length > 100 ? `${digest.slice(0, 100)}…` : digest;
  const algorithm = /^([a-z0-9]+(?:[+._-][a-z0-9]+)*):[a-zA-Z0-9=_-]+$/.exec(digest)?.[1];
  if (algorithm !== undefined && algorithm !== 'sha256') {
    throw new InvalidArgument(`unsupported digest algorithm \`${algorithm}\` in \`${shown}\`: only sha256 is supported`);
  }
  throw new InvalidArgument(`invalid digest \`${shown}\`: expected sha256: and 64 lowercase hex digits`);
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Throws `<what> <digest> failed verification: got sha256:<actual>` unless `data` hashes to `digest`. */
export function verifyDigest(data: Uint8Array, digest: string, what = 'blob'): void {
  const want = parseDigest(digest);
  const got = sha256Hex(data);
  if (got !== want) {
    throw new TrellisError('ERR_TRELLIS_IMAGE_VERIFY', `${what} ${digest} failed verification: got sha256:${got}`);
  }
}

/** Checks a whole blob against its descriptor: the size first, then the digest. */
export function verifyBlob(data: Uint8Array, desc: Pick<Descriptor, 'digest' | 'size'>, what = 'blob'): void {
  if (data.length !== desc.size) {
    throw new TrellisError(
      'ERR_TRELLIS_IMAGE_VERIFY',
      `${what} ${desc.digest} failed verification: got ${data.length} bytes, expected ${desc.size}`,
    );
  }
  verifyDigest(data, desc.digest, what);
}

/** cli.md §6.5: layer 0 is its diff id's hex; layer n is sha256 hex of "<chain id n-1> <diff id n hex>". */
export function chainIDs(diffIDs: string[]): string[] {
  const out: string[] = [];
  for (const diffID of diffIDs) {
    const hex = parseDigest(diffID);
    const parent = out[out.length - 1];
    out.push(parent === undefined ? hex : sha256Hex(`${parent} ${hex}`));
  }
  return out;
}

/** The hex of a digest found inside an image, with the place named when it is unusable. */
function digestHexIn(digest: string, where: string): string {
  try {
    return parseDigest(digest);
  } catch (err) {
    throw invalidImage(`${where}: ${errorMessage(err)}`);
  }
}

// ---------------------------------------------------------------------------
// Manifests, indexes, configs

const platformSchema = z.object({
  architecture: z.string(),
  os: z.string(),
  variant: z.string().optional(),
});

const descriptorSchema = z.object({
  mediaType: z.string(),
  digest: z.string(),
  size: z.number().int().nonnegative().safe(),
  urls: z.array(z.string()).nullish(),
  annotations: z.record(z.string()).nullish(),
  platform: platformSchema.nullish(),
});

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
});

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
});

const configSchema = z.object({
  config: z
    .object({
      Env: z.array(z.string()).nullish(),
      User: z.string().nullish(),
      WorkingDir: z.string().nullish(),
    })
    .nullish(),
  rootfs: z.object({
    type: z.string(),
    diff_ids: z.array(z.string()).nullish(),
  }),
});

/** An OCI image index or a Docker manifest list. */
export interface ImageIndex {
  mediaType: string;
  manifests: Descriptor[];
}

/** An OCI image manifest or a Docker v2 schema 2 manifest. */
export interface ImageManifest {
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export type ManifestDocument = { kind: 'index'; index: ImageIndex } | { kind: 'manifest'; manifest: ImageManifest };

const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerManifestList]);
const MANIFEST_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest]);
const SCHEMA1_TYPES: ReadonlySet<string> = new Set([
  'application/vnd.docker.distribution.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
]);
/** Content types that say nothing about the document: sniff it instead. */
const GENERIC_TYPES: ReadonlySet<string> = new Set(['', 'application/json', 'application/octet-stream', 'text/plain']);

/** The manifest types a registry client should ask for, best first. */
export const MANIFEST_ACCEPT = [
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifestList,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerManifest,
].join(', ');

const CONFIG_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociConfig, MEDIA_TYPES.dockerConfig]);

const LAYER_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPES.ociLayer,
  MEDIA_TYPES.ociLayerGzip,
  MEDIA_TYPES.ociLayerNonDistributable,
  MEDIA_TYPES.ociLayerNonDistributableGzip,
  MEDIA_TYPES.dockerLayerGzip,
  MEDIA_TYPES.dockerForeignLayerGzip,
]);

function zodMessage(err: z.ZodError): string {
  const issue = err.issues[0];
  if (issue === undefined) return 'malformed';
  const at = issue.path.length === 0 ? '' : `${issue.path.join('.')}: `;
  return `${at}${issue.message}`;
}

function decodeJson(data: Uint8Array | string, what: string): unknown {
  const text = typeof data === 'string' ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw invalidImage(`${what} is not valid JSON: ${errorMessage(err)}`);
  }
}

function toDescriptor(d: z.infer<typeof descriptorSchema>): Descriptor {
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (d.urls != null && d.urls.length > 0) out.urls = d.urls;
  if (d.annotations != null) out.annotations = d.annotations;
  if (d.platform != null) {
    out.platform = { architecture: d.platform.architecture, os: d.platform.os };
    if (d.platform.variant !== undefined && d.platform.variant !== '') out.platform.variant = d.platform.variant;
  }
  return out;
}

/** A Content-Type header's media type, without parameters, lower case. */
function bareMediaType(contentType: string | undefined | null): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}

const SCHEMA1_MESSAGE =
  'the image uses Docker manifest schema 1, which is not supported: push it again with a current docker or skopeo to convert it to schema 2';

/**
 * Parses a manifest or an index. `mediaTypeHint` (the descriptor's media type or the
 * registry's Content-Type) is used when the document does not name its own type.
 */
export function parseManifestDocument(data: Uint8Array | string, mediaTypeHint?: string | null): ManifestDocument {
  const json = decodeJson(data, 'image manifest');
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw invalidImage('image manifest is not a JSON object');
  const doc = json as Record<string, unknown>;
  const own = typeof doc.mediaType === 'string' ? bareMediaType(doc.mediaType) : '';
  const mediaType = own !== '' ? own : bareMediaType(mediaTypeHint);
  if (doc.schemaVersion === 1 || SCHEMA1_TYPES.has(mediaType)) throw unsupportedImage(SCHEMA1_MESSAGE);

  let kind: 'index' | 'manifest';
  if (INDEX_TYPES.has(mediaType)) kind = 'index';
  else if (MANIFEST_TYPES.has(mediaType)) kind = 'manifest';
  else if (GENERIC_TYPES.has(mediaType) && Array.isArray(doc.manifests)) kind = 'index';
  else if (GENERIC_TYPES.has(mediaType) && ('layers' in doc || 'config' in doc)) kind = 'manifest';
  else if (GENERIC_TYPES.has(mediaType)) throw invalidImage('image manifest is neither an image manifest nor an index');
  else throw unsupportedImage(`unsupported manifest media type \`${mediaType}\`: not an image manifest or index`);

  if (kind === 'index') {
    const parsed = indexSchema.safeParse(doc);
    if (!parsed.success) throw invalidImage(`invalid image index: ${zodMessage(parsed.error)}`);
    return {
      kind,
      index: { mediaType: GENERIC_TYPES.has(mediaType) ? MEDIA_TYPES.ociIndex : mediaType, manifests: parsed.data.manifests.map(toDescriptor) },
    };
  }
  const parsed = manifestSchema.safeParse(doc);
  if (!parsed.success) throw invalidImage(`invalid image manifest: ${zodMessage(parsed.error)}`);
  return {
    kind,
    manifest: {
      mediaType: GENERIC_TYPES.has(mediaType) ? MEDIA_TYPES.ociManifest : mediaType,
      config: toDescriptor(parsed.data.config),
      layers: parsed.data.layers.map(toDescriptor),
    },
  };
}

export function parseIndex(data: Uint8Array | string, mediaTypeHint?: string): ImageIndex {
  const doc = parseManifestDocument(data, mediaTypeHint ?? MEDIA_TYPES.ociIndex);
  if (doc.kind !== 'index') throw invalidImage('expected an image index, found an image manifest');
  return doc.index;
}

export function parseManifest(data: Uint8Array | string, mediaTypeHint?: string): ImageManifest {
  const doc = parseManifestDocument(data, mediaTypeHint ?? MEDIA_TYPES.ociManifest);
  if (doc.kind !== 'manifest') throw invalidImage('expected an image manifest, found an image index');
  return doc.manifest;
}

/** The parts of an image config (OCI or Docker) that reach the container. */
export function parseImageConfig(data: Uint8Array | string): ImageConfig {
  const json = decodeJson(data, 'image config');
  const parsed = configSchema.safeParse(json);
  if (!parsed.success) throw invalidImage(`invalid image config: ${zodMessage(parsed.error)}`);
  const { config, rootfs } = parsed.data;
  if (rootfs.type !== 'layers') throw invalidImage(`invalid image config: rootfs.type is \`${rootfs.type}\`, not \`layers\``);
  const diffIDs = rootfs.diff_ids ?? [];
  diffIDs.forEach((d, i) => digestHexIn(d, `image config rootfs.diff_ids[${i}]`));
  return {
    env: config?.Env ?? [],
    user: config?.User ?? '',
    workingDir: config?.WorkingDir ?? '',
    diffIDs,
  };
}

export function checkConfigMediaType(mediaType: string): void {
  if (CONFIG_TYPES.has(mediaType)) return;
  throw unsupportedImage(`unsupported config media type \`${mediaType}\`: this manifest does not describe a container image`);
}

export function checkLayerMediaType(mediaType: string): void {
  if (LAYER_TYPES.has(mediaType)) return;
  if (mediaType.includes('zstd')) {
    throw unsupportedImage(
      `unsupported layer media type \`${mediaType}\`: zstd-compressed layers are not supported`,
      'rebuild or copy the image with gzip-compressed layers (e.g. skopeo copy --dest-compress-format gzip)',
    );
  }
  throw unsupportedImage(`unsupported layer media type \`${mediaType}\`: not a tar or tar+gzip image layer`);
}

/** grootfs's base-directory annotation: an absolute, clean path; '' for the root or when absent. */
export function layerBaseDirectory(desc: Pick<Descriptor, 'annotations' | 'digest'>): string {
  const dir = desc.annotations?.[BASE_DIRECTORY_ANNOTATION];
  if (dir === undefined || dir === '' || dir === '/') return '';
  const clean =
    dir.startsWith('/') &&
    !dir.endsWith('/') &&
    !dir.includes('\0') &&
    posix.normalize(dir) === dir &&
    !dir.split('/').includes('..');
  if (!clean) {
    throw invalidImage(`layer ${desc.digest}: annotation ${BASE_DIRECTORY_ANNOTATION} \`${dir}\` is not a clean absolute path`);
  }
  return dir;
}

// ---------------------------------------------------------------------------
// Platforms

/** Node's process.arch in OCI terms (GOARCH, plus the variant an arm host wants). */
export function hostPlatform(arch: string = process.arch, armVersion?: string): Platform {
  switch (arch) {
    case 'x64':
      return { os: 'linux', architecture: 'amd64' };
    case 'arm64':
      return { os: 'linux', architecture: 'arm64', variant: 'v8' };
    case 'arm': {
      const version = (armVersion ?? String((process.config.variables as Record<string, unknown>).arm_version ?? '')).replace(/^v/, '');
      return { os: 'linux', architecture: 'arm', variant: `v${/^\d+$/.test(version) ? version : '7'}` };
    }
    case 'ia32':
      return { os: 'linux', architecture: '386' };
    case 'ppc64':
      // Node's Linux ppc64 builds are little-endian.
      return { os: 'linux', architecture: 'ppc64le' };
    case 'mipsel':
      return { os: 'linux', architecture: 'mipsle' };
    default:
      return { os: 'linux', architecture: arch };
  }
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant !== undefined && p.variant !== '' ? `/${p.variant}` : ''}`;
}

const ARCH_ALIASES: Record<string, string> = { x86_64: 'amd64', 'x86-64': 'amd64', aarch64: 'arm64', armhf: 'arm', armel: 'arm', i386: '386' };

function normaliseArch(arch: string): string {
  const lower = arch.toLowerCase();
  return ARCH_ALIASES[lower] ?? lower;
}

/**
 * Picks the manifest for `want` (default: this host) from an index: the exact variant
 * first, then an entry without a variant, then (arm only) older arm variants, which a
 * newer core runs.
 */
export function selectPlatform(index: Pick<ImageIndex, 'manifests'>, want: Platform = hostPlatform()): Descriptor {
  const os = want.os.toLowerCase();
  const arch = normaliseArch(want.architecture);
  const variant = want.variant ?? '';
  const candidates = index.manifests.filter(
    (d) => d.platform !== undefined && d.platform.os.toLowerCase() === os && normaliseArch(d.platform.architecture) === arch,
  );
  const withVariant = (v: string) => candidates.find((d) => (d.platform?.variant ?? '') === v);
  const found = withVariant(variant) ?? (variant !== '' ? withVariant('') : undefined) ?? olderArmVariant(arch, variant, withVariant);
  if (found !== undefined) return found;
  const available = index.manifests.filter((d) => d.platform !== undefined).map((d) => formatPlatform(d.platform!));
  throw new TrellisError(
    'ERR_TRELLIS_IMAGE_PLATFORM',
    `no image for ${formatPlatform({ os, architecture: arch, variant: want.variant })} in the manifest list; it has ${
      available.length > 0 ? [...new Set(available)].join(', ') : 'no platform-specific images'
    }`,
  );
}

function olderArmVariant(arch: string, variant: string, withVariant: (v: string) => Descriptor | undefined): Descriptor | undefined {
  const n = /^v(\d+)$/.exec(variant)?.[1];
  if (arch !== 'arm' || n === undefined) return undefined;
  for (let v = Number(n) - 1; v >= 5; v--) {
    const d = withVariant(`v${v}`);
    if (d !== undefined) return d;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// From a manifest document to a resolved image (shared by the oci and docker sources)

/** Fetches a small blob (manifest, index, config) and verifies it against its descriptor. */
export type ReadVerified = (desc: Descriptor, what: 'manifest' | 'config') => Promise<Uint8Array>;

/** Follows indexes (choosing the platform) down to an image manifest. */
export async function resolveManifest(
  start: ManifestDocument,
  read: ReadVerified,
  platform: Platform = hostPlatform(),
): Promise<{ manifest: ImageManifest; descriptor?: Descriptor }> {
  let doc = start;
  let descriptor: Descriptor | undefined;
  for (let depth = 0; doc.kind === 'index'; depth++) {
    if (depth >= MAX_INDEX_DEPTH) throw invalidImage(`image indexes nest more than ${MAX_INDEX_DEPTH} deep`);
    descriptor = selectPlatform(doc.index, platform);
    digestHexIn(descriptor.digest, 'image index entry');
    if (descriptor.size > MAX_MANIFEST_BYTES) throw invalidImage(`manifest ${descriptor.digest} is ${descriptor.size} bytes, more than a manifest can be`);
    doc = parseManifestDocument(await read(descriptor, 'manifest'), descriptor.mediaType);
  }
  return { manifest: doc.manifest, descriptor };
}

/** Reads and checks the config a manifest names. */
export async function readImageConfig(manifest: ImageManifest, read: ReadVerified): Promise<ImageConfig> {
  checkConfigMediaType(manifest.config.mediaType);
  digestHexIn(manifest.config.digest, 'image manifest config');
  if (manifest.config.size > MAX_CONFIG_BYTES) {
    throw invalidImage(`image config ${manifest.config.digest} is ${manifest.config.size} bytes, more than ${MAX_CONFIG_BYTES}`);
  }
  return parseImageConfig(await read(manifest.config, 'config'));
}

/** Pairs the manifest's layers with the config's diff ids; `fetchFor` supplies each layer's fetch. */
export function imageLayers(manifest: ImageManifest, config: ImageConfig, fetchFor: (desc: Descriptor) => Layer['fetch']): Layer[] {
  if (config.diffIDs.length !== manifest.layers.length) {
    throw invalidImage(
      `image config lists ${config.diffIDs.length} diff ids (rootfs.diff_ids) but the manifest has ${manifest.layers.length} layers`,
    );
  }
  return manifest.layers.map((desc, i) => {
    checkLayerMediaType(desc.mediaType);
    digestHexIn(desc.digest, `image manifest layer ${i}`);
    const layer: Layer = {
      diffID: config.diffIDs[i],
      digest: desc.digest,
      mediaType: desc.mediaType,
      size: desc.size,
      baseDirectory: layerBaseDirectory(desc),
      fetch: fetchFor(desc),
    };
    return layer;
  });
}

export function foreignLayerError(desc: Descriptor): TrellisError {
  return unsupportedImage(`layer ${desc.digest} is only available from ${desc.urls?.[0] ?? 'a foreign URL'}, which is not supported`);
}

// ---------------------------------------------------------------------------
// The oci:// source

export interface OciUrl {
  /** Absolute, normalised path of the layout. */
  path: string;
  /** `org.opencontainers.image.ref.name` to look for; '' for "the only image". */
  ref: string;
}

const OCI_USAGE = 'expected oci:///<absolute path of an OCI image layout>[:<ref>]';

/** `oci:///abs/path[:ref]` (the path ends at the first `:`, as in containers/image). */
export function parseOciUrl(url: string): OciUrl {
  const m = /^oci:(.*)$/is.exec(url);
  if (m === null) throw new InvalidArgument(`invalid image URL \`${url}\`: ${OCI_USAGE}`);
  let rest = m[1]!;
  if (rest.startsWith('//')) rest = rest.slice(2);
  try {
    rest = decodeURIComponent(rest);
  } catch {
    throw new InvalidArgument(`invalid image URL \`${url}\`: bad percent-encoding`);
  }
  const colon = rest.indexOf(':');
  let path = colon === -1 ? rest : rest.slice(0, colon);
  const ref = colon === -1 ? '' : rest.slice(colon + 1);
  if (!path.startsWith('/')) throw new InvalidArgument(`invalid image URL \`${url}\`: ${OCI_USAGE}`);
  if (path.includes('\0') || ref.includes('\0')) throw new InvalidArgument(`invalid image URL \`${url}\`: NUL character`);
  path = posix.normalize(path);
  if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  return { path, ref };
}

export interface OciLayoutOptions {
  /** Default: this host's platform. */
  platform?: Platform;
  log?: Logger;
}

function sourceMissing(path: string): FailedPrecondition {
  return new FailedPrecondition('ERR_TRELLIS_IMAGE_SOURCE', "Image source doesn't exist", `no OCI image layout at ${path}`);
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

async function readSmallFile(path: string, limit: number, what: string): Promise<Buffer> {
  const st = await stat(path);
  if (!st.isFile()) throw invalidImage(`${what} ${path} is not a regular file`);
  if (st.size > limit) throw invalidImage(`${what} ${path} is ${st.size} bytes, more than ${limit}`);
  return readFile(path);
}

/** The blob's path inside the layout; the digest is checked as sha256 hex first, so it cannot climb out. */
export function ociBlobPath(layout: string, digest: string): string {
  return join(layout, 'blobs', 'sha256', parseDigest(digest));
}

/** Chooses the index entry a ref (or no ref) names. */
export function selectLayoutEntry(index: ImageIndex, ref: string, platform: Platform, layout: string): Descriptor {
  const named = (d: Descriptor) => d.annotations?.[REF_NAME_ANNOTATION];
  const refs = [...new Set(index.manifests.map(named).filter((r): r is string => r !== undefined))];
  const pool = ref === '' ? index.manifests : index.manifests.filter((d) => named(d) === ref);
  if (pool.length === 0) {
    if (ref === '') throw invalidImage(`OCI layout ${layout} holds no images`);
    throw invalidImage(
      `OCI layout ${layout} has no image named \`${ref}\`; it has ${refs.length > 0 ? refs.map((r) => `\`${r}\``).join(', ') : 'no named images'}`,
    );
  }
  if (pool.length === 1) return pool[0]!;
  // Several entries for one name are the platforms of one image when each says which.
  if (pool.every((d) => d.platform !== undefined)) return selectPlatform({ manifests: pool }, platform);
  if (ref !== '') return pool[0]!;
  throw invalidImage(
    `OCI layout ${layout} holds ${pool.length} images; name one with oci://${layout}:<ref>${
      refs.length > 0 ? ` (${refs.map((r) => `\`${r}\``).join(', ')})` : ''
    }`,
  );
}

/** Resolves `oci:///abs/path[:ref]` to its layers and config. Layer blobs are used in place. */
export async function resolveOciLayout(url: string, opts: OciLayoutOptions = {}): Promise<ResolvedImage> {
  const { path: layout, ref } = parseOciUrl(url);
  const platform = opts.platform ?? hostPlatform();
  const log = opts.log?.child({ session: 'oci-layout', layout, ref });
  log?.info('resolve.start');
  try {
    let layoutFile: Buffer;
    let indexFile: Buffer;
    try {
      layoutFile = await readSmallFile(join(layout, 'oci-layout'), 64 * 1024, 'oci-layout file');
      indexFile = await readSmallFile(join(layout, 'index.json'), MAX_MANIFEST_BYTES, 'index');
    } catch (err) {
      if (isMissing(err)) throw sourceMissing(layout);
      throw err;
    }
    const version = (decodeJson(layoutFile, `${layout}/oci-layout`) as { imageLayoutVersion?: unknown } | null)?.imageLayoutVersion;
    if (version !== '1.0.0') {
      throw unsupportedImage(`OCI layout ${layout} has imageLayoutVersion ${JSON.stringify(version)}; only 1.0.0 is supported`);
    }
    const index = parseIndex(indexFile, MEDIA_TYPES.ociIndex);
    const entry = selectLayoutEntry(index, ref, platform, layout);

    const read: ReadVerified = async (desc, what) => {
      const path = ociBlobPath(layout, desc.digest);
      let data: Buffer;
      try {
        data = await readSmallFile(path, what === 'config' ? MAX_CONFIG_BYTES : MAX_MANIFEST_BYTES, what);
      } catch (err) {
        if (isMissing(err)) throw invalidImage(`${what} ${desc.digest} is missing from OCI layout ${layout}`);
        throw err;
      }
      verifyBlob(data, desc, what);
      return data;
    };

    digestHexIn(entry.digest, `${layout}/index.json`);
    if (entry.size > MAX_MANIFEST_BYTES) throw invalidImage(`manifest ${entry.digest} is ${entry.size} bytes, more than a manifest can be`);
    const start = parseManifestDocument(await read(entry, 'manifest'), entry.mediaType);
    const { manifest } = await resolveManifest(start, read, platform);
    const config = await readImageConfig(manifest, read);

    const layers = imageLayers(manifest, config, (desc) => {
      const path = ociBlobPath(layout, desc.digest);
      return async () => ({ path, release: async () => {} });
    });
    // A missing layer is found now rather than halfway through building the volumes.
    await Promise.all(
      manifest.layers.map(async (desc) => {
        try {
          await stat(ociBlobPath(layout, desc.digest));
        } catch (err) {
          if (!isMissing(err)) throw err;
          if (desc.urls !== undefined && desc.urls.length > 0) throw foreignLayerError(desc);
          throw invalidImage(`layer ${desc.digest} is missing from OCI layout ${layout}`);
        }
      }),
    );
    log?.info({ layers: layers.length }, 'resolve.finished');
    return { name: url, layers, config };
  } catch (err) {
    log?.error({ err }, 'resolve.failed');
    throw err;
  }
}
