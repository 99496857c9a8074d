// A real registry on loopback for image tests: Debian's docker-registry
// (distribution 2.8) with filesystem storage in a temp dir, plain HTTP, and
// optionally Docker-Hub-style token auth served from this process. Images get
// in with skopeo, run as the test user with a private HOME and no proxies.

import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, createPrivateKey, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { runtimeDir, sleep, waitExit } from './harness.js';

export const REGISTRY_BIN = '/usr/bin/docker-registry';
export const SKOPEO_BIN = '/usr/bin/skopeo';
export const OPENSSL_BIN = '/usr/bin/openssl';
export const SETPRIV_BIN = '/usr/bin/setpriv';

/** PATH for children; nothing else of ours (proxies, REGISTRY_* overrides) leaks in. */
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface Credentials {
  username: string;
  password: string;
}

export interface RegistryOptions {
  /** Turn on token auth with these credentials. */
  auth?: Credentials;
  /** ms to wait for `GET /v2/` (default 20 s). */
  readyTimeoutMs?: number;
}

/** One request the token server answered. */
export interface TokenRequest {
  /** Basic-auth user name, when one was sent. */
  user?: string;
  granted: boolean;
  service?: string;
  scopes: string[];
}

export interface TokenAuth extends Credentials {
  /** `http://127.0.0.1:<port>/token` */
  realm: string;
  service: string;
  issuer: string;
  /** Every request the token server saw, in order. */
  requests: TokenRequest[];
}

export interface PushOptions {
  /** `--all`: copy every manifest of an index, then the index. */
  all?: boolean;
}

export interface Registry {
  /** `127.0.0.1:<port>` */
  host: string;
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** Temp dir holding everything (config, storage, certs, skopeo's HOME); removed by stop(). */
  dir: string;
  /** The registry's filesystem storage root. */
  storageDir: string;
  auth?: TokenAuth;
  /** What the registry wrote to stdout/stderr so far (last 256 KiB). */
  logs(): string;
  /** `skopeo copy oci:<layoutDir>:<ref> docker://<host>/<repoTag>` (empty ref: the layout's only image). */
  push(layoutDir: string, ref: string, repoTag: string, opts?: PushOptions): Promise<void>;
  /**
   * `fetch(url + path)` as the configured user would: on a Bearer challenge,
   * get a token for the challenged scope from the token server and retry once.
   */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** Upload a blob as given (POST then PUT ?digest=); returns its digest. */
  putBlob(repo: string, bytes: Buffer): Promise<string>;
  /** PUT a manifest as given, for shapes skopeo would not carry; returns the digest the registry reports. */
  putManifest(repo: string, ref: string, bytes: Buffer, mediaType: string): Promise<string>;
  /** Where the registry keeps a blob's bytes. */
  blobPath(digest: string): string;
  /** Flip bytes of the stored blob (same size), so what is served no longer matches `digest`. */
  corruptBlob(digest: string): Promise<void>;
  /** Kill the registry and token server, remove `dir`. Idempotent. */
  stop(): Promise<void>;
}

const live = new Set<{ proc: ChildProcess; dir: string; stop: () => Promise<void> }>();
let exitHookInstalled = false;

function removeAllNow(): void {
  for (const r of live) {
    if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill('SIGKILL');
    rmSync(r.dir, { recursive: true, force: true });
  }
}

/**
 * Last resort if a run ends without its after hooks (process.exit, SIGINT,
 * SIGTERM): no registry or temp dir outlives this process. A SIGKILLed run
 * still takes its registries along, by their parent-death signal.
 */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', removeAllNow);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      removeAllNow();
      // Listener gone: the re-raised signal does what it would have done without us.
      process.kill(process.pid, sig);
    });
  }
}

/** Stop every registry this process started (for `after`). */
export async function stopAllRegistries(): Promise<void> {
  const errors: string[] = [];
  for (const r of [...live]) await r.stop().catch((err: Error) => errors.push(err.message));
  if (errors.length > 0) throw new Error(`stopping registries: ${errors.join('; ')}`);
}

/** A loopback TCP port nobody listens on right now (bind 0, read, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('could not read a bound port'))));
    });
  });
}


// ---------------------------------------------------------------------------
// Token auth

interface SigningCert {
  certPem: string;
  keyPem: string;
  certDer: Buffer;
  key: KeyObject;
}

let signingCert: Promise<SigningCert> | undefined;

/** A self-signed RSA cert for signing tokens, made once per process with openssl. */
function tokenSigningCert(): Promise<SigningCert> {
  signingCert ??= (async () => {
    const tmp = await mkdtemp(join(runtimeDir(), 'registry-cert-'));
    try {
      const keyPath = join(tmp, 'key.pem');
      const certPath = join(tmp, 'cert.pem');
      await execa(
        OPENSSL_BIN,
        ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=trellis-test-token-issuer'],
        { env: { PATH, HOME: tmp }, extendEnv: false },
      );
      const certPem = await readFile(certPath, 'utf8');
      const keyPem = await readFile(keyPath, 'utf8');
      return { certPem, keyPem, certDer: Buffer.from(new X509Certificate(certPem).raw), key: createPrivateKey(keyPem) };
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  })();
  return signingCert;
}

interface ScopeGrant {
  type: string;
  name: string;
  actions: string[];
}

/** `repository:name:pull,push` (the name may hold ':' only in theory; the last field is the actions). */
function parseScope(scope: string): ScopeGrant | undefined {
  const parts = scope.split(':');
  if (parts.length < 3) return undefined;
  const type = parts[0]!;
  const actions = parts[parts.length - 1]!.split(',').filter((a) => a !== '');
  const name = parts.slice(1, -1).join(':');
  return { type, name, actions };
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

function signToken(cert: SigningCert, claims: Record<string, unknown>): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c: [cert.certDer.toString('base64')] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(sign('sha256', Buffer.from(input), cert.key))}`;
}

function basicUser(req: IncomingMessage): Credentials | undefined {
  const h = req.headers.authorization;
  if (h === undefined || !/^basic /i.test(h)) return undefined;
  const decoded = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function startTokenServer(
  cert: SigningCert,
  creds: Credentials,
  meta: { service: string; issuer: string },
  requests: TokenRequest[],
): Promise<{ server: HttpServer; port: number }> {
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://token');
    const send = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    if (url.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      send(404, { errors: [{ code: 'NOT_FOUND', message: `${req.method} ${url.pathname}` }] });
      return;
    }
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter((s) => s !== '');
    const service = url.searchParams.get('service') ?? undefined;
    const given = basicUser(req);
    const ok = given !== undefined && given.username === creds.username && given.password === creds.password;
    requests.push({ user: given?.username, granted: ok, service, scopes });
    if (!ok) {
      send(401, { errors: [{ code: 'UNAUTHORIZED', message: 'incorrect username or password' }] }, {
        'WWW-Authenticate': 'Basic realm="trellis-test-token"',
      });
      return;
    }
    const now = Math.floor(Date.now() / 1000);
    const access = scopes
      .map(parseScope)
      .filter((g): g is ScopeGrant => g !== undefined)
      .map((g) => ({ type: g.type, name: g.name, actions: g.actions.filter((a) => ['pull', 'push', 'delete', '*'].includes(a)) }));
    const token = signToken(cert, {
      iss: meta.issuer,
      sub: creds.username,
      aud: meta.service,
      exp: now + 600,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(16).toString('hex'),
      access,
    });
    send(200, { token, access_token: token, expires_in: 600, issued_at: new Date(now * 1000).toISOString() });
  };
  return new Promise((resolve, reject) => {
    const server = createServer(handle);
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (typeof addr !== 'object' || addr === null) return reject(new Error('token server has no address'));
      resolve({ server, port: addr.port });
    });
  });
}

function closeServer(server: HttpServer): Promise<void> {
  return new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
}

/** `Bearer realm="…",service="…",scope="…"` → its parameters. */
export function parseChallenge(header: string): Record<string, string> | undefined {
  const m = /^Bearer\s+(.*)$/i.exec(header.trim());
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[1]!.matchAll(/([A-Za-z]+)="([^"]*)"/g)) params[p[1]!.toLowerCase()] = p[2]!;
  return params;
}

async function fetchAs(url: string, path: string, init: RequestInit, creds: Credentials | undefined): Promise<Response> {
  const first = await fetch(url + path, { ...init, signal: AbortSignal.timeout(30_000) });
  const challenge = first.status === 401 ? parseChallenge(first.headers.get('www-authenticate') ?? '') : undefined;
  if (challenge === undefined || challenge.realm === undefined || creds === undefined) return first;
  await first.arrayBuffer();
  const q = new URLSearchParams();
  if (challenge.service !== undefined) q.set('service', challenge.service);
  if (challenge.scope !== undefined) q.set('scope', challenge.scope);
  const basic = Buffer.from(`${creds.username}:${creds.password}`).toString('base64');
  const t = await fetch(`${challenge.realm}?${q}`, { headers: { Authorization: `Basic ${basic}` }, signal: AbortSignal.timeout(10_000) });
  if (t.status !== 200) return first;
  const { token } = (await t.json()) as { token: string };
  const headers = new Headers(init.headers);
  headers.set('Authorization', `Bearer ${token}`);
  return fetch(url + path, { ...init, headers, signal: AbortSignal.timeout(30_000) });
}

async function expectStatus(res: Response, want: number, what: string): Promise<void> {
  if (res.status !== want) throw new Error(`${what}: registry answered ${res.status}, want ${want}: ${await res.text()}`);
}

// ---------------------------------------------------------------------------
// The registry

/** Run docker-registry on 127.0.0.1:<free port>; resolves once `GET /v2/` answers (200, or 401 with auth). */
export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  installExitHook();
  const dir = await mkdtemp(join(runtimeDir(), 'registry-'));
  const storageDir = join(dir, 'storage');
  const home = join(dir, 'home');
  const tmp = join(dir, 'tmp');
  await Promise.all([mkdir(storageDir), mkdir(home, { mode: 0o700 }), mkdir(tmp)]);

  let tokenServer: HttpServer | undefined;
  let auth: TokenAuth | undefined;
  let proc: ChildProcess | undefined;
  let output = '';
  let stopped = false;

  // Every step runs and failures are gathered; only a clean stop forgets the registry, so a retry can finish.
  const stop = async (): Promise<void> => {
    if (stopped) return;
    const failures: string[] = [];
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      if (!(await waitExit(proc, 5_000))) {
        proc.kill('SIGKILL');
        if (!(await waitExit(proc, 5_000))) failures.push(`registry pid ${proc.pid} did not die`);
      }
    }
    proc?.stdout?.destroy();
    proc?.stderr?.destroy();
    if (tokenServer?.listening) await closeServer(tokenServer);
    await rm(dir, { recursive: true, force: true }).catch((err: Error) => failures.push(`rm ${dir}: ${err.message}`));
    if (failures.length > 0) throw new Error(failures.join('; '));
    stopped = true;
    live.delete(record);
  };
  const record = { proc: undefined as unknown as ChildProcess, dir, stop };

  try {
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const config: Record<string, unknown> = {
      version: '0.1',
      log: { level: 'info', formatter: 'text', accesslog: { disabled: false } },
      storage: {
        filesystem: { rootdirectory: storageDir },
        delete: { enabled: true },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: host, secret: randomBytes(16).toString('hex'), headers: { 'X-Content-Type-Options': ['nosniff'] } },
    };

    if (opts.auth) {
      const cert = await tokenSigningCert();
      const bundle = join(dir, 'token-ca.pem');
      await writeFile(bundle, cert.certPem);
      const requests: TokenRequest[] = [];
      const meta = { service: 'trellis-test-registry', issuer: 'trellis-test-token-issuer' };
      const started = await startTokenServer(cert, opts.auth, meta, requests);
      tokenServer = started.server;
      auth = { ...opts.auth, ...meta, realm: `http://127.0.0.1:${started.port}/token`, requests };
      config.auth = { token: { realm: auth.realm, service: meta.service, issuer: meta.issuer, rootcertbundle: bundle } };
    }

    // YAML is a superset of JSON, and this way nothing needs quoting rules.
    const configPath = join(dir, 'config.yml');
    await writeFile(configPath, JSON.stringify(config, null, 2));

    // setpriv execs the registry (same pid) with a parent-death signal, so even `kill -9` of the test run takes it along.
    proc = spawn(SETPRIV_BIN, ['--pdeathsig', 'KILL', '--', REGISTRY_BIN, 'serve', configPath], {
      cwd: dir,
      env: { PATH, HOME: home, TMPDIR: tmp },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    record.proc = proc;
    live.add(record);
    const keep = (s: string): void => {
      output += s;
      if (output.length > 256 * 1024) output = output.slice(-256 * 1024);
    };
    proc.stdout!.setEncoding('utf8').on('data', keep);
    proc.stderr!.setEncoding('utf8').on('data', keep);
    proc.on('error', (err) => keep(`spawn error: ${err.message}\n`));

    const url = `http://${host}`;
    const want = opts.auth ? 401 : 200;
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
    let last = 'no attempt';
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`docker-registry exited (code ${proc.exitCode}, signal ${proc.signalCode}) before answering.\n--- registry output ---\n${output}`);
      }
      try {
        const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) });
        await res.arrayBuffer();
        if (res.status === want) break;
        last = `GET /v2/ answered ${res.status}, want ${want}`;
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > deadline) {
        throw new Error(`docker-registry did not answer on ${url} within ${opts.readyTimeoutMs ?? 20_000} ms (last: ${last}).\n--- registry output ---\n${output}`);
      }
      await sleep(100);
    }

    const blobPath = (digest: string): string => {
      const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
      if (!m) throw new Error(`not a sha256 digest: ${digest}`);
      const hex = m[1]!;
      return join(storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    };

    const registry: Registry = {
      host,
      url,
      dir,
      storageDir,
      auth,
      logs: () => output,
      blobPath,
      fetch: (path, init = {}) => fetchAs(url, path, init, auth),
      async putBlob(repo, bytes) {
        const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
        const start = await registry.fetch(`/v2/${repo}/blobs/uploads/`, { method: 'POST' });
        await expectStatus(start, 202, `start upload to ${repo}`);
        await start.arrayBuffer();
        const location = new URL(start.headers.get('location') ?? '', url);
        location.searchParams.set('digest', digest);
        const put = await registry.fetch(location.pathname + location.search, {
          method: 'PUT',
          headers: { 'Content-Type': 'application/octet-stream' },
          body: new Uint8Array(bytes),
        });
        await expectStatus(put, 201, `upload ${digest} to ${repo}`);
        await put.arrayBuffer();
        return digest;
      },
      async putManifest(repo, ref, bytes, mediaType) {
        const put = await registry.fetch(`/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers: { 'Content-Type': mediaType }, body: new Uint8Array(bytes) });
        await expectStatus(put, 201, `put manifest ${repo}:${ref}`);
        await put.arrayBuffer();
        return put.headers.get('docker-content-digest') ?? '';
      },
      async push(layoutDir, ref, repoTag, pushOpts = {}) {
        const args = ['--insecure-policy', '--tmpdir', tmp, 'copy', '--quiet', '--dest-tls-verify=false'];
        if (pushOpts.all) args.push('--all');
        // The manifest must arrive byte for byte, so tests can pull by the digest writeOciLayout returned.
        args.push('--preserve-digests');
        if (auth) args.push('--dest-creds', `${auth.username}:${auth.password}`);
        args.push(ref === '' ? `oci:${layoutDir}` : `oci:${layoutDir}:${ref}`, `docker://${host}/${repoTag}`);
        const r = await execa(SKOPEO_BIN, args, {
          env: { PATH, HOME: home, TMPDIR: tmp },
          extendEnv: false,
          reject: false,
          all: true,
          timeout: 120_000,
        });
        if (r.exitCode !== 0) {
          const shown = args.map((a) => (auth && a === `${auth.username}:${auth.password}` ? `${auth.username}:<redacted>` : a));
          throw new Error(`skopeo ${shown.join(' ')} failed (exit ${r.exitCode}):\n${r.all}\n--- registry output (tail) ---\n${output.slice(-4000)}`);
        }
      },
      async corruptBlob(digest) {
        const path = blobPath(digest);
        const f = await open(path, 'r+');
        try {
          const { size } = await f.stat();
          if (size === 0) throw new Error(`blob ${digest} is empty; nothing to corrupt`);
          // Flip a byte in the middle and the last one: same size, different digest, and a gzip
          // stream that also fails its trailer check.
          for (const at of new Set([Math.floor(size / 2), size - 1])) {
            const b = Buffer.alloc(1);
            await f.read(b, 0, 1, at);
            b[0] = b[0]! ^ 0xff;
            await f.write(b, 0, 1, at);
          }
        } finally {
          await f.close();
        }
      },
      stop,
    };
    return registry;
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }
}
