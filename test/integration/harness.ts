// The real daemon as a child process, run by the ordinary user the suite runs
// as (scripts/test): start/stop/kill -9 it, talk to it with the Garden client
// or with raw bytes, and check what a container leaves behind on the host.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { GardenClient } from '../../src/client/client.js';
import { readAll, readResponseHead, responseBody, type ResponseHead } from '../../src/client/http.js';
import type { ContainerSpec, ProcessSpec } from '../../src/client/types.js';
import { userPaths } from '../../src/paths.js';

/** Repo root, from dist/test/integration/harness.js. */
export const REPO = fileURLToPath(new URL('../../../', import.meta.url));
// issue #12: scripts/test points these at the installed Debian package's /usr/bin/gdn and /usr/bin/gaol.
export const GDN = process.env.TRELLIS_GDN || join(REPO, 'dist/cmd/gdn.js');
export const GAOL = process.env.TRELLIS_GAOL || join(REPO, 'dist/cmd/gaol.js');

const uid = process.getuid?.() ?? 0;
export const PATHS = userPaths(uid);
/** Where the in-process image store keeps per-container images (no image-plugin flags). */
export const STORE = PATHS.store;

/** XDG_RUNTIME_DIR as scripts/test sets it; the suite's temp dirs live there. */
export function runtimeDir(): string {
  const d = process.env.XDG_RUNTIME_DIR;
  const dir = d && d !== '' ? d : `/run/user/${uid}`;
  return existsSync(dir) ? dir : tmpdir();
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Go duration nanoseconds as the client takes them. */
export const SECOND = 1_000_000_000;

export interface ServerOptions {
  /** Reuse a directory from an earlier server (restart): same depot, socket and properties file. */
  dir?: string;
  logLevel?: 'debug' | 'info' | 'error';
  /** Go duration, e.g. '1s'. */
  defaultGraceTime?: string;
  maxContainers?: number;
  defaultRootfs?: string;
  /** Pass --properties-path <dir>/props.json (default true). */
  properties?: boolean;
  extraArgs?: string[];
  /** ms to wait for the first ping (default 20 s). */
  readyTimeoutMs?: number;
}

export interface Server {
  client: GardenClient;
  dir: string;
  socketPath: string;
  depot: string;
  store: string;
  propertiesPath: string | undefined;
  proc: ChildProcess;
  options: ServerOptions;
  /** Everything the server wrote to stdout and stderr so far. */
  logs(): string;
  /** SIGTERM, then SIGKILL after 10 s. */
  stop(): Promise<void>;
  kill9(): Promise<void>;
  running(): boolean;
}

const started = new Set<Server>();

function serverArgs(s: { socketPath: string; depot: string; propertiesPath?: string }, o: ServerOptions): string[] {
  const args = ['server', '--bind-socket', s.socketPath, '--depot', s.depot, '--log-level', o.logLevel ?? 'debug'];
  if (s.propertiesPath) args.push('--properties-path', s.propertiesPath);
  if (o.defaultGraceTime !== undefined) args.push('--default-grace-time', o.defaultGraceTime);
  if (o.maxContainers !== undefined) args.push('--max-containers', String(o.maxContainers));
  if (o.defaultRootfs !== undefined) args.push('--default-rootfs', o.defaultRootfs);
  // A gate built from this tree, installed setuid elsewhere, when one is named (as the gate suite takes it).
  if (process.env.TRELLIS_GATE_UNDER_TEST && !(o.extraArgs ?? []).includes('--network-gate')) args.push('--network-gate', process.env.TRELLIS_GATE_UNDER_TEST);
  args.push(...(o.extraArgs ?? []));
  return args;
}

/** Whether a child exits within `ms` (true at once if it already has). */
export function waitExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    proc.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** Start `gdn server` on a unix socket in a fresh (or given) temp dir; resolves once it answers ping. */
export async function startServer(opts: ServerOptions = {}): Promise<Server> {
  const dir = opts.dir ?? (await mkdtemp(join(runtimeDir(), 'gdn-test-')));
  const socketPath = join(dir, 'gdn.sock');
  const depot = join(dir, 'depot');
  const propertiesPath = opts.properties === false ? undefined : join(dir, 'props.json');
  const args = serverArgs({ socketPath, depot, propertiesPath }, opts);

  let output = '';
  // As a program, as users run it: its #! line carries gdn's memory settings (issue 10).
  const proc = spawn(GDN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (output += s));

  const server: Server = {
    client: undefined as unknown as GardenClient,
    dir,
    socketPath,
    depot,
    store: STORE,
    propertiesPath,
    proc,
    options: opts,
    logs: () => output,
    running: () => proc.exitCode === null && proc.signalCode === null,
    async stop() {
      if (server.running()) {
        proc.kill('SIGTERM');
        if (!(await waitExit(proc, 10_000))) {
          proc.kill('SIGKILL');
          await waitExit(proc, 5_000);
        }
      }
      proc.stdout?.destroy();
      proc.stderr?.destroy();
      started.delete(server);
    },
    async kill9() {
      if (server.running()) {
        proc.kill('SIGKILL');
        await waitExit(proc, 5_000);
      }
      proc.stdout?.destroy();
      proc.stderr?.destroy();
      started.delete(server);
    },
  };
  started.add(server);

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  let lastError = 'no attempt';
  for (;;) {
    if (!server.running()) {
      started.delete(server);
      if (opts.dir === undefined) await rm(dir, { recursive: true, force: true });
      throw new Error(
        `gdn server exited (code ${proc.exitCode}, signal ${proc.signalCode}) before answering ping.\n` +
          `argv: ${GDN} ${args.join(' ')}\n--- server output ---\n${output}`,
      );
    }
    // The client decides unix-vs-tcp by whether the path exists, so build it only once the socket does.
    if (existsSync(socketPath)) {
      const client = new GardenClient(socketPath);
      try {
        await client.ping();
        server.client = client;
        return server;
      } catch (err) {
        lastError = (err as Error).message;
      }
    } else {
      lastError = `${socketPath} does not exist yet`;
    }
    if (Date.now() > deadline) {
      await server.kill9();
      if (opts.dir === undefined) await rm(dir, { recursive: true, force: true });
      throw new Error(
        `gdn server did not answer ping within ${opts.readyTimeoutMs ?? 20_000} ms (last: ${lastError}).\n` +
          `argv: ${GDN} ${args.join(' ')}\n--- server output ---\n${output}`,
      );
    }
    await sleep(100);
  }
}

/** Start a new server on the same dir (depot, socket, properties) as `old`. */
export function restartServer(old: Server, opts: ServerOptions = {}): Promise<Server> {
  return startServer({ ...old.options, ...opts, dir: old.dir });
}

/**
 * After-hook cleanup: destroy every container the server still lists, stop it,
 * remove its dir. Containers a dead server left behind are taken down with a
 * fresh server on the same depot first, so nothing outlives the suite.
 */
export async function cleanupServer(server: Server | undefined): Promise<void> {
  if (!server) return;
  let s = server;
  if (!s.running()) {
    const hasContainers = existsSync(s.depot) && (await readdir(s.depot)).length > 0;
    if (!hasContainers) {
      await rm(s.dir, { recursive: true, force: true });
      return;
    }
    try {
      s = await restartServer(server);
    } catch (err) {
      console.error(`cleanup: could not restart a server to destroy leftovers in ${s.depot}: ${(err as Error).message}`);
      return;
    }
  }
  try {
    const handles = await s.client.list({ 'garden.state': 'all' }).catch(() => s.client.list());
    const all = new Set([...handles, ...(await s.client.list().catch(() => []))]);
    await Promise.all(
      [...all].map((h) => s.client.destroy(h).catch((err) => console.error(`cleanup: destroy ${h}: ${(err as Error).message}`))),
    );
  } catch (err) {
    console.error(`cleanup: list failed: ${(err as Error).message}`);
  }
  // A destroy the reaper started is not in the list: let it finish before the server goes,
  // or its image would outlive the depot that records it.
  const containersLeft = async () =>
    existsSync(s.depot) && (await readdir(s.depot)).some((e) => existsSync(join(s.depot, e, 'container.json')));
  await eventually(async () => !(await containersLeft()), 15_000);
  await s.stop();
  await rm(s.dir, { recursive: true, force: true }).catch(() => {});
}

/** Stop anything a test file forgot (register with `after(stopAllServers)` if wanted). */
export async function stopAllServers(): Promise<void> {
  for (const s of [...started]) await s.stop();
}

/** For afterEach: print the tail of the server log when the test failed. */
export function dumpLogsIfFailed(ctx: Mocha.Context, server: Server | undefined, lines = 60): void {
  if (!server || ctx.currentTest?.state !== 'failed') return;
  const tail = server.logs().trimEnd().split('\n').slice(-lines).join('\n');
  console.log(`    --- last ${lines} lines of gdn server output (${server.dir}) ---\n${tail}\n    ---`);
}

// ---------------------------------------------------------------------------
// Processes

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  stderrBytes: Buffer;
}

export class Collector extends Writable {
  private readonly parts: Buffer[] = [];
  private waiters: Array<{ text: string; resolve: () => void }> = [];

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.parts.push(chunk);
    const text = this.text();
    this.waiters = this.waiters.filter((w) => {
      if (!text.includes(w.text)) return true;
      w.resolve();
      return false;
    });
    cb();
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }

  text(): string {
    return this.bytes().toString('utf8');
  }

  /** Resolves once the collected output contains `text` (rejects after ms). */
  waitFor(text: string, ms = 15_000): Promise<void> {
    if (this.text().includes(text)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting for ${JSON.stringify(text)}; got ${JSON.stringify(this.text())}`)), ms);
      this.waiters.push({ text, resolve: () => { clearTimeout(t); resolve(); } });
    });
  }
}

/** Run attached, stdin given (or an immediate EOF, as gaol with </dev/null), and wait for the exit. */
export async function runAndWait(client: GardenClient, handle: string, spec: ProcessSpec, stdin?: string | Buffer): Promise<Ran> {
  const stdout = new Collector();
  const stderr = new Collector();
  const input = stdin === undefined ? Readable.from([]) : Readable.from([typeof stdin === 'string' ? Buffer.from(stdin) : stdin]);
  const proc = await client.run(handle, spec, { stdin: input, stdout, stderr });
  const code = await proc.wait();
  return { code, stdout: stdout.text(), stderr: stderr.text(), stdoutBytes: stdout.bytes(), stderrBytes: stderr.bytes() };
}

export const sh = (script: string, extra: Partial<ProcessSpec> = {}): ProcessSpec => ({ path: 'sh', args: ['-c', script], ...extra });

/** A ContainerSpec as Go clients send it (image and limits always present). */
export const spec = (s: ContainerSpec = {}): ContainerSpec => ({ image: {}, limits: {}, ...s });

// ---------------------------------------------------------------------------
// Raw HTTP over the unix socket

export interface RawResponse {
  status: number;
  head: ResponseHead;
  headers: Map<string, string[]>;
  body: Buffer;
  text: string;
}

/**
 * Send bytes as they are and read one whole response (Content-Length, chunked
 * or until close). Write errors after the server has answered (it may stop
 * reading an oversized body) are ignored; `null` means the server closed
 * without answering.
 */
export function rawExchange(socketPath: string, bytes: Buffer | string, timeoutMs = 15_000): Promise<RawResponse | null> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: socketPath });
    socket.on('error', () => {});
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete response within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      socket.write(bytes, () => {});
      readResponseHead(socket)
        .then(async ({ head, rest }) => {
          const body = await readAll(responseBody(head, rest, socket)).catch(() => Buffer.alloc(0));
          clearTimeout(timer);
          socket.destroy();
          resolve({ status: head.status, head, headers: head.headers, body, text: body.toString('utf8') });
        })
        .catch(() => {
          clearTimeout(timer);
          socket.destroy();
          resolve(null);
        });
    });
  });
}

/** A request the way the Go client frames it, body optional. */
export function rawRequest(
  socketPath: string,
  method: string,
  path: string,
  body?: string | Buffer,
  extraHeaders: string[] = [],
): Promise<RawResponse | null> {
  const b = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body) : body;
  let head = `${method} ${path} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n`;
  if (b !== undefined) head += `Content-Length: ${b.length}\r\nContent-Type: application/json\r\n`;
  for (const h of extraHeaders) head += `${h}\r\n`;
  head += 'Connection: close\r\n\r\n';
  return rawExchange(socketPath, b === undefined ? head : Buffer.concat([Buffer.from(head, 'latin1'), b]));
}

export const ERROR_KEYS = ['Type', 'Message', 'Handle', 'ProcessID', 'Binary'];

/** The parsed error object, after checking the wire shape: JSON + \n, exactly the five keys in order, strings. */
export function gardenError(r: RawResponse | null): Record<string, string> {
  if (r === null) throw new Error('the server closed the connection without a response');
  if (!r.text.endsWith('\n')) throw new Error(`error body does not end with \\n: ${JSON.stringify(r.text)}`);
  let o: unknown;
  try {
    o = JSON.parse(r.text);
  } catch {
    throw new Error(`error body (status ${r.status}) is not JSON: ${JSON.stringify(r.text.slice(0, 500))}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error(`error body is not an object: ${r.text}`);
  const keys = Object.keys(o);
  if (keys.join(',') !== ERROR_KEYS.join(',')) throw new Error(`error keys ${JSON.stringify(keys)} != ${JSON.stringify(ERROR_KEYS)} in ${r.text}`);
  for (const k of keys) {
    if (typeof (o as Record<string, unknown>)[k] !== 'string') throw new Error(`error key ${k} is not a string in ${r.text}`);
  }
  return o as Record<string, string>;
}

// ---------------------------------------------------------------------------
// What a container leaves behind

export interface ProcInfo {
  pid: number;
  comm: string;
  state: string;
  cmdline: string[];
}

/** Every process whose /proc entries the current user can read. */
export async function processes(): Promise<ProcInfo[]> {
  const out: ProcInfo[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      const open = stat.indexOf('(');
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(open + 1, close);
      const state = stat.slice(close + 2).split(' ')[0] ?? '?';
      const cmdline = (await readFile(`/proc/${name}/cmdline`, 'utf8')).split('\0').filter((s) => s !== '');
      out.push({ pid: Number(name), comm, state, cmdline });
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** `path` as a whole path component sequence: not as a prefix of a longer name. */
const mentions = (text: string, path: string): boolean => new RegExp(`${escapeRe(path)}(?=$|[/\\s,:=])`).test(text);

/**
 * What is left of a container: its depot dir, its image dir, mounts naming
 * either (in any mount namespace we can read), live conmon/runc processes
 * whose argv names the handle, and any live process whose argv names its dirs.
 * Empty means clean.
 */
export async function leftoversNow(handle: string, where: { depot: string; store?: string }): Promise<string[]> {
  const found: string[] = [];
  const store = where.store ?? STORE;
  const depotDir = join(where.depot, handle);
  const imageDir = join(store, 'images', handle);
  if (existsSync(depotDir)) found.push(`depot dir ${depotDir} exists`);
  for (const e of await entries(where.depot)) if (e.startsWith(`.gone-${handle}-`)) found.push(`depot dir ${join(where.depot, e)} (being removed) exists`);
  if (existsSync(imageDir)) found.push(`image dir ${imageDir} exists`);

  const seenMounts = new Set<string>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let text: string;
    try {
      text = await readFile(`/proc/${name}/mountinfo`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      if (!(mentions(line, depotDir) || mentions(line, imageDir))) continue;
      if (seenMounts.has(line)) continue;
      seenMounts.add(line);
      found.push(`mount (seen in /proc/${name}/mountinfo): ${line}`);
    }
  }

  // The handle as a whole word: `c-1` must not match `c-10`.
  const namesHandle = new RegExp(`(^|[^A-Za-z0-9._~-])${escapeRe(handle)}($|[^A-Za-z0-9._~-])`);
  for (const p of await processes()) {
    if (p.state === 'Z' || p.pid === process.pid) continue;
    const argv = p.cmdline.join(' ');
    const monitor = p.comm === 'conmon' || p.comm === 'runc' || /(^|\/)(conmon|runc)$/.test(p.cmdline[0] ?? '');
    if ((monitor && namesHandle.test(argv)) || mentions(argv, depotDir) || mentions(argv, imageDir)) {
      found.push(`process ${p.pid} (${p.comm}, state ${p.state}): ${argv}`);
    }
  }
  return found;
}

/**
 * Issue #10: destroy replies once the teardown is journaled, and the teardown runs on. It has
 * finished when the depot entry is gone (removed last, only after every other step succeeded)
 * and so is the renamed `.gone-` copy the removal deletes. Whether it did within `ms`.
 */
export async function teardownFinished(handle: string, depot: string, ms = 30_000): Promise<boolean> {
  return eventually(async () => !existsSync(join(depot, handle)) && !(await entries(depot)).some((e) => e.startsWith(`.gone-${handle}-`)), ms, 50);
}

/** Whether, within `ms`, no teardown is left in the depot (none journaled, none being removed). */
export async function teardownsFinished(depot: string, ms = 30_000): Promise<boolean> {
  return eventually(async () => {
    for (const e of await entries(depot)) {
      if (e.startsWith('.gone-')) return false;
      try {
        if ((JSON.parse(await readFile(join(depot, e, 'container.json'), 'utf8')) as { phase?: string }).phase === 'destroying') return false;
      } catch {
        // no record (yet, or any more)
      }
    }
    return true;
  }, ms, 50);
}

/**
 * leftoversNow once the container's teardown has finished (up to `teardownMs`: a teardown that
 * never finishes shows as its depot entry), allowing ~3 s more for monitors to finish exiting.
 */
export async function leftovers(handle: string, where: { depot: string; store?: string }, graceMs = 3000, teardownMs = 30_000): Promise<string[]> {
  await teardownFinished(handle, where.depot, teardownMs);
  const deadline = Date.now() + graceMs;
  for (;;) {
    const found = await leftoversNow(handle, where);
    if (found.length === 0 || Date.now() > deadline) return found;
    await sleep(200);
  }
}

/** Entries of a directory, [] when it does not exist. */
export async function entries(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Live (non-zombie) conmon and runc processes whose argv mentions `text`. */
export async function monitorsMentioning(text: string): Promise<ProcInfo[]> {
  return (await processes()).filter(
    (p) => p.state !== 'Z' && (p.comm === 'conmon' || p.comm === 'runc') && p.cmdline.join(' ').includes(text),
  );
}

/** Poll `check` every `everyMs` until it returns true or `ms` elapse; returns whether it did. */
export async function eventually(check: () => Promise<boolean> | boolean, ms: number, everyMs = 100): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(everyMs);
  }
}

export interface GaolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The real gaol binary against a server's socket; stdin is closed unless given. */
export function runGaol(socket: string, args: string[], opts: { stdin?: string; timeoutMs?: number } = {}): Promise<GaolResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [GAOL, '-t', socket, ...args], { stdio: [opts.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`gaol ${args.join(' ')} did not finish in ${timeoutMs} ms; stdout ${JSON.stringify(stdout)} stderr ${JSON.stringify(stderr)}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    if (child.stdin) {
      child.stdin.on('error', () => {});
      child.stdin.end(opts.stdin);
    }
  });
}
