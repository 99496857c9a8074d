// The docker:// source: a Docker Registry HTTP API v2 client (bearer and basic auth,
// insecure registries, redirected blobs) that downloads each layer to a temp file,
// verifying its size and digest on the way.
import { createHash, randomBytes } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Agent, EnvHttpProxyAgent, fetch, type Dispatcher, type Response } from 'undici';
import { FailedPrecondition, InvalidArgument, TrellisError, errorMessage } from '../../src/errors.js';
import type { Descriptor, LocalBlob, Platform, ResolvedImage } from './image.js';
import {
  MANIFEST_ACCEPT,
  MAX_MANIFEST_BYTES,
  foreignLayerError,
  hostPlatform,
  imageLayers,
  invalidImage,
  parseDigest,
  parseManifestDocument,
  readImageConfig,
  resolveManifest,
  verifyBlob,
  verifyDigest,
  type ManifestDocument,
  type ReadVerified,
} from './oci.js';

const DOCKER_HUB = 'registry-1.docker.io';
const DOCKER_HUB_NAMES: ReadonlySet<string> = new Set(['docker.io', 'index.docker.io', DOCKER_HUB]);

const CONNECT_TIMEOUT_MS = 30_000;
const HEADERS_TIMEOUT_MS = 30_000;
/** Longest silence allowed in the middle of a body. */
const BODY_TIMEOUT_MS = 60_000;
const MAX_REDIRECTS = 10;
const BLOB_ATTEMPTS = 3;
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

export const INSECURE_MESSAGE =
  'This registry is insecure. To pull images from this registry, please use the --insecure-registry option.';
export const BAD_CREDENTIALS_MESSAGE = 'authorization failed: username and password are invalid';

export function notFoundMessage(url: string): string {
  return `${url} does not exist or you do not have permissions to see it.`;
}

// ---------------------------------------------------------------------------
// docker:// URLs

export interface DockerReference {
  /** `host[:port]` as named by the URL (or the default registry): what insecure_registries match. */
  registry: string;
  /** Where the API is served: Docker Hub's names become registry-1.docker.io. */
  apiHost: string;
  /** Repository path, with `library/` added for single-component Docker Hub names. */
  repository: string;
  /** The tag; `latest` when neither a tag nor a digest was given. */
  tag?: string;
  /** `sha256:<hex>` when the URL pins a digest (which then wins over any tag). */
  digest?: string;
  /** What goes into /v2/<repository>/manifests/<reference>. */
  reference: string;
}

const DOCKER_USAGE = 'expected docker://[host[:port]]/repository[:tag|#tag|@sha256:<digest>]';
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const HOST_LABEL = '[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?';
const REGISTRY_HOST = new RegExp(`^(?:${HOST_LABEL}(?:\\.${HOST_LABEL})*|\\[[0-9a-fA-F:.]+\\])(?::([0-9]{1,5}))?$`);
const MAX_NAME_LENGTH = 255;

function isDockerHub(registry: string): boolean {
  return DOCKER_HUB_NAMES.has(registry.toLowerCase());
}

function checkRegistryHost(host: string, url: string): void {
  const m = REGISTRY_HOST.exec(host);
  const port = m?.[1] === undefined ? undefined : Number(m[1]);
  if (m === null || (port !== undefined && (port < 1 || port > 65535))) {
    throw new InvalidArgument(`invalid image URL \`${url}\`: \`${host}\` is not a registry host[:port]`);
  }
}

/**
 * Parses a docker:// image URL. As in grootfs (which hands `//host/path` to
 * containers/image), the part before the first `/` names a registry only when it looks
 * like a host — it has a `.` or a `:`, or is `localhost` — otherwise the whole path is a
 * repository on `defaultRegistry`.
 */
export function parseDockerUrl(url: string, defaultRegistry: string): DockerReference {
  const m = /^docker:\/\/(.*)$/is.exec(url);
  if (m === null) throw new InvalidArgument(`invalid image URL \`${redactUrl(url)}\`: ${DOCKER_USAGE}`);
  if (redactUrl(url) !== url) {
    throw new InvalidArgument(
      `invalid image URL \`${redactUrl(url)}\`: credentials cannot be given in the URL`,
      'pass them with --username and --password',
    );
  }
  let rest = m[1]!;
  if (rest.startsWith('/')) rest = rest.slice(1);
  if (rest === '') throw new InvalidArgument(`invalid image URL \`${url}\`: no repository; ${DOCKER_USAGE}`);

  // Garden's own form puts the tag in the fragment: docker:///busybox#1.36.1.
  let fragmentTag: string | undefined;
  const hash = rest.indexOf('#');
  if (hash !== -1) {
    fragmentTag = rest.slice(hash + 1);
    rest = rest.slice(0, hash);
    if (fragmentTag === '') throw new InvalidArgument(`invalid image URL \`${url}\`: \`#\` must be followed by a tag; ${DOCKER_USAGE}`);
    if (rest.includes('@') || rest.lastIndexOf(':') > rest.lastIndexOf('/')) {
      throw new InvalidArgument(`invalid image URL \`${url}\`: give the tag once, either as \`:tag\`, \`#tag\` or \`@digest\``);
    }
    if (rest === '') throw new InvalidArgument(`invalid image URL \`${url}\`: no repository; ${DOCKER_USAGE}`);
  }

  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    try {
      parseDigest(digest);
    } catch (err) {
      throw new InvalidArgument(`invalid image URL \`${url}\`: ${errorMessage(err)}`);
    }
  }

  let tag: string | undefined = fragmentTag;
  const colon = rest.lastIndexOf(':');
  if (fragmentTag !== undefined) {
    if (!TAG.test(fragmentTag)) {
      throw new InvalidArgument(
        `invalid image URL \`${url}\`: invalid tag \`${fragmentTag}\` (letters, digits, _, . and -, at most 128, not starting with . or -)`,
      );
    }
  } else if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) {
      throw new InvalidArgument(
        `invalid image URL \`${url}\`: invalid tag \`${tag}\` (letters, digits, _, . and -, at most 128, not starting with . or -)`,
      );
    }
  }

  const fallback = normaliseDefaultRegistry(defaultRegistry);
  let registry = fallback;
  let repository = rest;
  const slash = rest.indexOf('/');
  if (slash !== -1) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      registry = first;
      repository = rest.slice(slash + 1);
    }
  }
  checkRegistryHost(registry, url);
  if (isDockerHub(registry) && repository !== '' && !repository.includes('/')) repository = `library/${repository}`;

  const components = repository.split('/');
  const bad = components.find((c) => !PATH_COMPONENT.test(c));
  if (bad !== undefined) {
    const why = bad !== bad.toLowerCase() ? 'repository names must be lowercase' : 'each path component is lowercase letters and digits separated by ., _, __ or -';
    throw new InvalidArgument(`invalid image URL \`${url}\`: invalid repository name \`${repository}\`: ${why}`);
  }
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) {
    throw new InvalidArgument(`invalid image URL \`${url}\`: repository name longer than ${MAX_NAME_LENGTH} characters`);
  }

  const out: DockerReference = {
    registry,
    apiHost: isDockerHub(registry) ? DOCKER_HUB : registry,
    repository,
    reference: digest ?? tag ?? 'latest',
  };
  if (digest !== undefined) out.digest = digest;
  if (tag !== undefined || digest === undefined) out.tag = tag ?? 'latest';
  return out;
}

function normaliseDefaultRegistry(registry: string): string {
  const bare = registry.replace(/^https?:\/\//i, '').replace(/\/+$/, '');
  return bare === '' ? DOCKER_HUB : bare;
}

/**
 * The URL with any `user:password@` removed, for logs and errors. An `@` with a `/`
 * after it cannot be a digest's (those come last), so everything before it goes.
 */
export function redactUrl(url: string): string {
  // `user:pass@` before a path (the password may hold `/` or `@`), or before a bare host
  // (`docker://user:pass@host`); `name@sha256:...` is a digest, not credentials.
  return url
    .replace(/^([a-z][a-z0-9+.-]*:\/\/).*@(?=[^@]*\/)/is, '$1')
    .replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*:[^/]*@(?!sha256:)/is, '$1');
}

/** `host[:port]` matches an insecure_registries entry exactly, by the name given or the API host. */
export function isInsecureRegistry(ref: Pick<DockerReference, 'registry' | 'apiHost'>, insecureRegistries: readonly string[]): boolean {
  return insecureRegistries.includes(ref.registry) || insecureRegistries.includes(ref.apiHost);
}

// ---------------------------------------------------------------------------
// Authentication

export interface AuthChallenge {
  /** Lower case: `bearer`, `basic`, ... */
  scheme: string;
  /** Parameter names in lower case. */
  params: Record<string, string>;
}

const HTTP_TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;

/** Parses a WWW-Authenticate header (RFC 7235), which may hold several challenges. */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const out: AuthChallenge[] = [];
  const n = header.length;
  let i = 0;
  const skip = (chars: string) => {
    while (i < n && chars.includes(header[i]!)) i++;
  };
  const token = (): string | undefined => {
    HTTP_TOKEN.lastIndex = i;
    const m = HTTP_TOKEN.exec(header);
    if (m === null) return undefined;
    i = HTTP_TOKEN.lastIndex;
    return m[0];
  };
  while (i < n) {
    skip(' \t,');
    if (i >= n) break;
    const scheme = token();
    if (scheme === undefined) {
      i++;
      continue;
    }
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: Object.create(null) as Record<string, string> };
    out.push(challenge);
    for (;;) {
      skip(' \t,');
      const start = i;
      const key = token();
      if (key === undefined) break;
      skip(' \t');
      if (header[i] !== '=') {
        // Not a parameter: the next challenge's scheme.
        i = start;
        break;
      }
      i++;
      skip(' \t');
      let value = '';
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === '\\' && i + 1 < n) i++;
          value += header[i];
          i++;
        }
        i++;
      } else {
        while (i < n && !' \t,'.includes(header[i]!)) value += header[i++];
      }
      challenge.params[key.toLowerCase()] = value;
    }
  }
  return out;
}

/** Bearer when offered (it is what registries mean), else Basic. */
export function pickChallenge(challenges: AuthChallenge[]): AuthChallenge | undefined {
  return challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
}

/** The token endpoint to ask for `scope` (`repository:<repo>:pull`). */
export function tokenUrl(challenge: AuthChallenge, scope: string): URL {
  const realm = challenge.params.realm;
  if (realm === undefined || realm === '') throw new Error('the bearer challenge names no realm');
  let url: URL;
  try {
    url = new URL(realm);
  } catch {
    throw new Error(`the bearer realm \`${realm}\` is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`the bearer realm \`${realm}\` is not http(s)`);
  const service = challenge.params.service;
  if (service !== undefined && service !== '') url.searchParams.set('service', service);
  url.searchParams.set('scope', scope);
  return url;
}

/** Headers for the next hop of a redirect: Authorization never goes to another origin. */
export function redirectHeaders(headers: Record<string, string>, from: URL, to: URL): Record<string, string> {
  if (from.origin === to.origin) return headers;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() !== 'authorization') out[k] = v;
  return out;
}

export interface ContentCache {
  get(digest: string): Promise<Uint8Array | undefined>;
  put(digest: string, data: Uint8Array): Promise<void>;
}

export interface RegistryOptions {
  /** Where `docker:///repo` goes: `registry-1.docker.io` (or `docker.io`) for Docker Hub. */
  defaultRegistry: string;
  /** `host[:port]` entries: TLS not verified, and plain HTTP when TLS fails. */
  insecureRegistries: string[];
  username?: string;
  password?: string;
  /** Default: this host's platform. */
  platform?: Platform;
  log: Logger;
  /** Where layer downloads go when fetch() is handed no directory. */
  tmpDir?: string;
  /**
   * Manifests and configs named by digest never change: a cache spares their round
   * trips on later creates. The tag (or digest) the URL names is always asked of the
   * registry, so its access rules still apply.
   */
  contentCache?: ContentCache;
}

/** What may be logged about a pull: never the password or a token. */
export function logContext(ref: DockerReference, opts: Pick<RegistryOptions, 'username' | 'password'>): Record<string, string | boolean> {
  return {
    registry: ref.registry,
    repository: ref.repository,
    reference: ref.reference,
    credentials: opts.username !== undefined && opts.username !== '',
  };
}

// ---------------------------------------------------------------------------
// Transport errors

const TLS_VERIFY_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_CHAIN_TOO_LONG',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

const PLAIN_HTTP_CODES: ReadonlySet<string> = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_HTTP_REQUEST']);

export interface Cause {
  code: string;
  message: string;
}

/** The innermost useful code and message of a fetch failure (undici wraps them in `cause`). */
export function causeOf(err: unknown): Cause {
  let e: unknown = err;
  for (let depth = 0; depth < 6; depth++) {
    if (e instanceof AggregateError && e.errors.length > 0) {
      e = e.errors[0];
      continue;
    }
    const code = (e as { code?: unknown } | null)?.code;
    const next = (e as { cause?: unknown } | null)?.cause;
    if (typeof code === 'string' || next === undefined || next === null) break;
    e = next;
  }
  const code = typeof (e as { code?: unknown } | null)?.code === 'string' ? ((e as { code: string }).code) : '';
  const raw = e instanceof Error ? e.message : String(e);
  return { code, message: friendlyCause(code, raw.split('\n')[0]!.trim()) };
}

function friendlyCause(code: string, message: string): string {
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return `connection timed out after ${CONNECT_TIMEOUT_MS / 1000} s`;
    case 'UND_ERR_HEADERS_TIMEOUT':
      return `no response within ${HEADERS_TIMEOUT_MS / 1000} s`;
    case 'UND_ERR_BODY_TIMEOUT':
      return `the transfer stalled for ${BODY_TIMEOUT_MS / 1000} s`;
    default:
      if (PLAIN_HTTP_CODES.has(code)) return 'TLS handshake failed: the server does not speak HTTPS';
      // fetch() refuses the WHATWG "bad ports" (5060, 5061, 6000, 6665-6669, 10080...) outright.
      if (message === 'bad port') return 'fetch() refuses to connect to this port (a WHATWG "bad port"); serve the registry on another port';
      return message === '' ? code : message;
  }
}

/** A failed connection to `registry`, in grootfs's words where it has some. */
export function networkFailure(registry: string, err: unknown, insecure: boolean, httpsErr?: unknown): TrellisError {
  const cause = causeOf(err);
  if (!insecure && (TLS_VERIFY_CODES.has(cause.code) || PLAIN_HTTP_CODES.has(cause.code))) {
    return new FailedPrecondition('ERR_TRELLIS_REGISTRY_INSECURE', INSECURE_MESSAGE, `registry ${registry}: ${cause.message}`);
  }
  const detail = httpsErr === undefined ? cause.message : `https: ${causeOf(httpsErr).message}; http: ${cause.message}`;
  return new TrellisError('ERR_TRELLIS_REGISTRY_UNREACHABLE', `cannot reach registry ${registry}: ${detail}`);
}

function isAbort(err: unknown): boolean {
  return (err as { name?: unknown } | null)?.name === 'AbortError';
}

/** Failures worth another try: the connection, not the content. */
const transientErrors = new WeakSet<object>();
function transient<E extends Error>(err: E): E {
  transientErrors.add(err);
  return err;
}

function proxyConfigured(env: NodeJS.ProcessEnv): boolean {
  return ['http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY'].some((k) => (env[k] ?? '') !== '');
}

/**
 * One connection pool per trust setting for the life of the process (gdn calls the
 * store in-process), so a create from a cached image costs one round trip on a
 * warm connection, not a TCP (and TLS) handshake.
 */
const dispatchers = new Map<boolean, Dispatcher>();
function sharedDispatcher(insecure: boolean): Dispatcher {
  let d = dispatchers.get(insecure);
  if (d === undefined) {
    d = makeDispatcher(insecure);
    dispatchers.set(insecure, d);
  }
  return d;
}

/** For insecure registries: which scheme answered last time, so plain HTTP is not rediscovered on every create. */
const answeredOver = new Map<string, 'https:' | 'http:'>();

function makeDispatcher(insecure: boolean): Dispatcher {
  const tls = { rejectUnauthorized: !insecure };
  const options = { connect: { timeout: CONNECT_TIMEOUT_MS, ...tls }, headersTimeout: HEADERS_TIMEOUT_MS, bodyTimeout: BODY_TIMEOUT_MS };
  // cli.md §6.6: HTTP_PROXY/HTTPS_PROXY/NO_PROXY are honoured; requestTls reaches the registry through the tunnel.
  if (proxyConfigured(process.env)) return new EnvHttpProxyAgent({ ...options, requestTls: tls } as ConstructorParameters<typeof EnvHttpProxyAgent>[0]);
  return new Agent(options);
}

const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);

async function discard(res: Response): Promise<void> {
  try {
    await res.body?.cancel();
  } catch {
    // Nothing to keep from a body we do not want.
  }
}

async function readLimited(res: Response, limit: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length') ?? Number.NaN);
  if (Number.isFinite(declared) && declared > limit) {
    await discard(res);
    throw invalidImage(`${what} is ${declared} bytes, more than the ${limit} expected`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (res.body !== null) {
    for await (const chunk of res.body) {
      total += chunk.byteLength;
      if (total > limit) throw invalidImage(`${what} is more than the ${limit} bytes expected`);
      chunks.push(chunk);
    }
  }
  return Buffer.concat(chunks, total);
}

/** The registry's own words for a failed request (`{"errors":[{code,message}]}`), one line. */
async function registryDetail(res: Response): Promise<string> {
  let text: string;
  try {
    text = (await readLimited(res, 16 * 1024, 'error body')).toString('utf8');
  } catch {
    return '';
  }
  try {
    const first = (JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] }).errors?.[0];
    if (first !== undefined) return [first.code, first.message].filter((x) => typeof x === 'string' && x !== '').join(': ');
  } catch {
    // Not JSON: the text itself.
  }
  return text.split('\n')[0]!.trim().slice(0, 200);
}

// ---------------------------------------------------------------------------
// The client

interface ClientOptions {
  ref: DockerReference;
  /** The image URL, for errors. */
  name: string;
  insecure: boolean;
  credentials?: { username: string; password: string };
  log: Logger;
}

/** One repository on one registry; lives as long as the resolved image's layers may be fetched. */
class RegistryClient {
  private scheme: 'https:' | 'http:' | undefined;
  /** Bearer tokens by registry and scope, for the life of the client. */
  private readonly tokens = new Map<string, string>();
  /** The registry asked for Basic auth and we have credentials. */
  private basic = false;
  private readonly dispatcher: Dispatcher;
  private readonly scope: string;
  private readonly host: string;

  constructor(private readonly o: ClientOptions) {
    this.dispatcher = sharedDispatcher(o.insecure);
    this.scope = `repository:${o.ref.repository}:pull`;
    this.host = o.ref.apiHost;
  }

  private get tokenKey(): string {
    return `${this.host} ${this.scope}`;
  }

  /** The manifest or index the URL names; verified when the URL pins a digest. */
  async topManifest(): Promise<ManifestDocument> {
    const { ref } = this.o;
    const res = await this.get(`/v2/${ref.repository}/manifests/${ref.reference}`, { accept: MANIFEST_ACCEPT });
    if (!res.ok) throw await this.manifestFailure(res);
    const data = await readLimited(res, MAX_MANIFEST_BYTES, `manifest of ${this.o.name}`);
    this.o.log.info({ digest: res.headers.get('docker-content-digest') ?? undefined, bytes: data.length }, 'manifest.fetched');
    if (ref.digest !== undefined) verifyDigest(data, ref.digest, 'manifest');
    return parseManifestDocument(data, res.headers.get('content-type'));
  }

  /** A manifest or config blob named by a descriptor, verified. */
  readonly read: ReadVerified = async (desc, what) => {
    const { repository } = this.o.ref;
    const path = what === 'manifest' ? `/v2/${repository}/manifests/${desc.digest}` : `/v2/${repository}/blobs/${desc.digest}`;
    const res = await this.get(path, what === 'manifest' ? { accept: MANIFEST_ACCEPT } : {});
    if (!res.ok) throw what === 'manifest' ? await this.manifestFailure(res) : await this.blobFailure(res, desc, 'config');
    const data = await readLimited(res, desc.size, `${what} ${desc.digest}`);
    verifyBlob(data, desc, what);
    return data;
  };

  /** Downloads a layer to `<dir>/blob-<hex>-<random>`, verified; retried on connection trouble. */
  async downloadLayer(desc: Descriptor, dir: string): Promise<LocalBlob> {
    const log = this.o.log.child({ digest: desc.digest, size: desc.size });
    log.info('blob.start');
    for (let attempt = 1; ; attempt++) {
      try {
        const blob = await this.downloadOnce(desc, dir);
        log.info({ path: blob.path }, 'blob.finished');
        return blob;
      } catch (err) {
        if (attempt >= BLOB_ATTEMPTS || !transientErrors.has(err as object)) {
          log.error({ err, attempt }, 'blob.failed');
          throw err;
        }
        log.warn({ err, attempt }, 'blob.retry');
      }
    }
  }

  private async downloadOnce(desc: Descriptor, dir: string): Promise<LocalBlob> {
    const hex = parseDigest(desc.digest);
    const abort = new AbortController();
    const res = await this.get(`/v2/${this.o.ref.repository}/blobs/${desc.digest}`, { signal: abort.signal });
    if (!res.ok) {
      if (res.status === 404 && desc.urls !== undefined && desc.urls.length > 0) {
        await discard(res);
        throw foreignLayerError(desc);
      }
      throw await this.blobFailure(res, desc, 'layer');
    }
    const declared = Number(res.headers.get('content-length') ?? Number.NaN);
    if (Number.isFinite(declared) && declared > desc.size) {
      abort.abort();
      throw new TrellisError(
        'ERR_TRELLIS_IMAGE_VERIFY',
        `layer ${desc.digest} failed verification: the registry is sending ${declared} bytes, expected ${desc.size}`,
      );
    }
    const path = join(dir, `blob-${hex}-${randomBytes(8).toString('hex')}`);
    const file = await open(path, 'wx', 0o600);
    let done = false;
    try {
      const hash = createHash('sha256');
      let bytes = 0;
      try {
        if (res.body !== null) {
          for await (const chunk of res.body) {
            bytes += chunk.byteLength;
            if (bytes > desc.size) {
              abort.abort();
              throw new TrellisError(
                'ERR_TRELLIS_IMAGE_VERIFY',
                `layer ${desc.digest} failed verification: got more than the ${desc.size} bytes expected`,
              );
            }
            hash.update(chunk);
            await file.write(chunk);
          }
        }
      } catch (err) {
        if (err instanceof TrellisError) throw err;
        throw transient(
          new TrellisError('ERR_TRELLIS_REGISTRY_UNREACHABLE', `downloading layer ${desc.digest} from registry ${this.host}: ${causeOf(err).message}`),
        );
      }
      const got = hash.digest('hex');
      if (got !== hex || bytes !== desc.size) {
        const sizeNote = bytes !== desc.size ? ` (${bytes} bytes, expected ${desc.size})` : '';
        throw new TrellisError('ERR_TRELLIS_IMAGE_VERIFY', `layer ${desc.digest} failed verification: got sha256:${got}${sizeNote}`);
      }
      done = true;
    } finally {
      await file.close();
      if (!done) await rm(path, { force: true });
    }
    return { path, release: () => rm(path, { force: true }) };
  }

  private async manifestFailure(res: Response): Promise<TrellisError> {
    if (res.status === 401 || res.status === 403 || res.status === 404) {
      await discard(res);
      return new TrellisError('ERR_TRELLIS_IMAGE_NOT_FOUND', notFoundMessage(this.o.name));
    }
    return this.statusFailure(res, `the manifest of ${this.o.name}`);
  }

  private async blobFailure(res: Response, desc: Descriptor, what: string): Promise<TrellisError> {
    if (res.status === 401 || res.status === 403) {
      await discard(res);
      return new TrellisError('ERR_TRELLIS_IMAGE_NOT_FOUND', notFoundMessage(this.o.name));
    }
    if (res.status === 404) {
      await discard(res);
      return invalidImage(`${what} ${desc.digest} of ${this.o.name} is missing from registry ${this.o.ref.registry}`);
    }
    return this.statusFailure(res, `${what} ${desc.digest}`);
  }

  private async statusFailure(res: Response, what: string): Promise<TrellisError> {
    const detail = await registryDetail(res);
    const err = new TrellisError(
      'ERR_TRELLIS_REGISTRY',
      `registry ${this.o.ref.registry} answered HTTP ${res.status} for ${what}${detail === '' ? '' : `: ${detail}`}`,
    );
    return res.status >= 500 || res.status === 429 ? transient(err) : err;
  }

  /** GET with authentication: one retry after a 401, with a token or Basic credentials. */
  private async get(path: string, init: { accept?: string; signal?: AbortSignal }): Promise<Response> {
    const res = await this.send(path, init);
    if (res.status !== 401) return res;
    const challenge = pickChallenge(parseWwwAuthenticate(res.headers.get('www-authenticate') ?? ''));
    await discard(res);
    if (challenge === undefined) return res;
    if (challenge.scheme === 'bearer') {
      this.tokens.set(this.tokenKey, await this.fetchToken(challenge));
    } else {
      if (this.o.credentials === undefined || this.basic) return res;
      this.basic = true;
    }
    this.o.log.debug({ scheme: challenge.scheme }, 'auth.retry');
    return this.send(path, init);
  }

  private authorization(): string | undefined {
    const token = this.tokens.get(this.tokenKey);
    if (token !== undefined) return `Bearer ${token}`;
    if (this.basic && this.o.credentials !== undefined) return basicAuthorization(this.o.credentials);
    return undefined;
  }

  /** One request to the registry; the first one settles HTTPS, or plain HTTP for an insecure registry. */
  private async send(path: string, init: { accept?: string; signal?: AbortSignal }): Promise<Response> {
    const headers: Record<string, string> = {};
    if (init.accept !== undefined) headers.accept = init.accept;
    const authorization = this.authorization();
    if (authorization !== undefined) headers.authorization = authorization;
    const hint = this.scheme === undefined && this.o.insecure ? answeredOver.get(this.host) : undefined;
    if (hint !== undefined) {
      try {
        const res = await this.follow(new URL(`${hint}//${this.host}${path}`), headers, init.signal);
        this.scheme = hint;
        return res;
      } catch (err) {
        if (err instanceof TrellisError || isAbort(err)) throw err;
        answeredOver.delete(this.host); // the registry changed: find out again below
      }
    }
    const scheme = this.scheme;
    try {
      const res = await this.follow(new URL(`${scheme ?? 'https:'}//${this.host}${path}`), headers, init.signal);
      this.scheme = scheme ?? 'https:';
      if (this.o.insecure) answeredOver.set(this.host, this.scheme);
      return res;
    } catch (err) {
      if (scheme !== undefined || !this.o.insecure || err instanceof TrellisError || isAbort(err)) throw this.unreachable(err);
      this.o.log.info({ reason: causeOf(err).message }, 'registry.plain-http');
      try {
        const res = await this.follow(new URL(`http://${this.host}${path}`), headers, init.signal);
        this.scheme = 'http:';
        answeredOver.set(this.host, 'http:');
        return res;
      } catch (err2) {
        throw this.unreachable(err2, err);
      }
    }
  }

  private unreachable(err: unknown, httpsErr?: unknown): Error {
    if (err instanceof TrellisError || isAbort(err)) return err as Error;
    return transient(networkFailure(this.o.ref.registry, err, this.o.insecure, httpsErr));
  }

  /** fetch() following redirects itself, so that credentials stay with their origin. */
  private async follow(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    for (let hop = 0; ; hop++) {
      const res = await fetch(url, { headers, redirect: 'manual', dispatcher: this.dispatcher, signal });
      if (!REDIRECT_STATUSES.has(res.status)) return res;
      const location = res.headers.get('location');
      await discard(res);
      if (location === null) throw new TrellisError('ERR_TRELLIS_REGISTRY', `${url.host} answered HTTP ${res.status} without a Location`);
      if (hop >= MAX_REDIRECTS) throw new TrellisError('ERR_TRELLIS_REGISTRY', `more than ${MAX_REDIRECTS} redirects fetching from ${this.o.ref.registry}`);
      const next = new URL(location, url);
      if (next.protocol !== 'https:' && next.protocol !== 'http:') {
        throw new TrellisError('ERR_TRELLIS_REGISTRY', `${url.host} redirected to a ${next.protocol} URL`);
      }
      this.o.log.debug({ from: url.host, to: next.host }, 'registry.redirect');
      headers = redirectHeaders(headers, url, next);
      url = next;
    }
  }

  private async fetchToken(challenge: AuthChallenge): Promise<string> {
    const registry = this.o.ref.registry;
    let url: URL;
    try {
      url = tokenUrl(challenge, this.scope);
    } catch (err) {
      throw new TrellisError('ERR_TRELLIS_REGISTRY_AUTH', `registry ${registry}: ${errorMessage(err)}`);
    }
    if (url.protocol === 'http:' && !this.o.insecure) {
      // Credentials (and tokens) must not cross the network in the clear for a registry reached over TLS.
      throw new TrellisError('ERR_TRELLIS_REGISTRY_AUTH', `registry ${registry}: its token service ${url.host} is plain HTTP; mark the registry insecure to allow that`);
    }
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.o.credentials !== undefined) headers.authorization = basicAuthorization(this.o.credentials);
    let res: Response;
    try {
      res = await this.follow(url, headers);
    } catch (err) {
      if (err instanceof TrellisError) throw err;
      const failure = networkFailure(url.host, err, this.o.insecure);
      throw transient(
        failure.code === 'ERR_TRELLIS_REGISTRY_UNREACHABLE'
          ? new TrellisError(failure.code, `cannot reach the token service ${url.host} of registry ${registry}: ${causeOf(err).message}`)
          : failure,
      );
    }
    if (res.status === 401 || res.status === 403) {
      await discard(res);
      if (this.o.credentials !== undefined) throw new TrellisError('ERR_TRELLIS_REGISTRY_AUTH', BAD_CREDENTIALS_MESSAGE);
      throw new TrellisError('ERR_TRELLIS_IMAGE_NOT_FOUND', notFoundMessage(this.o.name));
    }
    if (!res.ok) {
      const detail = await registryDetail(res);
      throw new TrellisError(
        'ERR_TRELLIS_REGISTRY_AUTH',
        `the token service ${url.host} of registry ${registry} answered HTTP ${res.status}${detail === '' ? '' : `: ${detail}`}`,
      );
    }
    let body: { token?: unknown; access_token?: unknown };
    try {
      body = JSON.parse((await readLimited(res, MAX_TOKEN_RESPONSE_BYTES, 'token response')).toString('utf8')) as typeof body;
    } catch {
      throw new TrellisError('ERR_TRELLIS_REGISTRY_AUTH', `the token service ${url.host} of registry ${registry} sent no JSON`);
    }
    const token = typeof body?.token === 'string' && body.token !== '' ? body.token : body?.access_token;
    if (typeof token !== 'string' || token === '') {
      throw new TrellisError('ERR_TRELLIS_REGISTRY_AUTH', `the token service ${url.host} of registry ${registry} sent no token`);
    }
    this.o.log.debug({ tokenService: url.host }, 'auth.token');
    return token;
  }
}

function basicAuthorization(c: { username: string; password: string }): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64')}`;
}

// ---------------------------------------------------------------------------
// The docker:// source

/** Resolves a docker:// URL to its layers (downloaded on fetch) and config. */
export async function resolveRegistryImage(url: string, opts: RegistryOptions): Promise<ResolvedImage> {
  const ref = parseDockerUrl(url, opts.defaultRegistry);
  const name = redactUrl(url);
  const insecure = isInsecureRegistry(ref, opts.insecureRegistries);
  const log = opts.log.child({ session: 'registry', ...logContext(ref, opts), insecure });
  const credentials =
    opts.username !== undefined && opts.username !== '' ? { username: opts.username, password: opts.password ?? '' } : undefined;
  const client = new RegistryClient({ ref, name, insecure, credentials, log });
  log.info('resolve.start');
  try {
    const top = await client.topManifest();
    const cache = opts.contentCache;
    const read: ReadVerified = cache
      ? async (desc, what) => {
          const hit = await cache.get(desc.digest).catch(() => undefined);
          if (hit !== undefined) {
            try {
              verifyBlob(hit, desc, what);
              return hit;
            } catch {
              // a damaged entry is fetched again
            }
          }
          const data = await client.read(desc, what);
          await cache.put(desc.digest, data).catch(() => undefined);
          return data;
        }
      : client.read;
    const { manifest, descriptor } = await resolveManifest(top, read, opts.platform ?? hostPlatform());
    const config = await readImageConfig(manifest, read);
    const layers = imageLayers(manifest, config, (desc) => (tmpDir) => client.downloadLayer(desc, tmpDir || opts.tmpDir || tmpdir()));
    log.info({ layers: layers.length, manifest: descriptor?.digest }, 'resolve.finished');
    return { name, layers, config };
  } catch (err) {
    log.error({ err }, 'resolve.failed');
    throw err;
  }
}
