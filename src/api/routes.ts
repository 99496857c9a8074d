// Garden's plain JSON routes on express, and the hijacked process routes on the
// raw socket. Request bodies are decoded as Go would; errors go through errors.ts.
import express, { type NextFunction, type Request, type Response } from 'express';
import { freemem, totalmem } from 'node:os';
import { statfs } from 'node:fs/promises';
import type net from 'node:net';
import type { Logger } from 'pino';
import { InvalidArgument, errorMessage } from '../errors.js';
import type { Gardener } from '../gardener/gardener.js';
import type { NetworkPlugin } from '../network/plugin.js';
import {
  EMPTY, decodeBulkNetOut, decodeCreate, decodeGraceTime, decodeNetIn, decodeNetOut, decodeProperty, decodeRun, decodeStop,
  encodeCapacity, encodeHandle, encodeHandles, encodeInfo, encodeLimitRecord, encodeMetrics, encodeNetInResponse,
  encodeProperties, encodeValue, goObject, goString, line,
} from './codec.js';
import { toHttpError } from './errors.js';
import { decodeSegment, MAX_JSON_BODY, writeFramedError, type HijackHandler } from './front.js';
import { StreamHub, controlHead, serveControl, streamHead } from './streams.js';

export interface ApiDeps {
  gardener: Gardener;
  network: NetworkPlugin;
  log: Logger;
  /** Directory whose filesystem the capacity's disk figures describe. */
  storePath: string;
  externalIp: string;
}

function send(res: Response, status: number, body: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

function fail(res: Response, err: unknown): void {
  const { status, body } = toHttpError(err);
  send(res, status, body);
}

/** Garden decodes path segments with `+` as space; express's params do not. */
const seg = (req: Request, i: number) => decodeSegment(req.path.split('/')[i] ?? '');

function rawBody(req: Request): Buffer {
  return Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
}

const ROUTES: Array<[string, RegExp]> = [
  ['GET', /^\/ping$/],
  ['GET', /^\/capacity$/],
  ['GET', /^\/containers$/],
  ['POST', /^\/containers$/],
  ['GET', /^\/containers\/bulk_info$/],
  ['GET', /^\/containers\/bulk_metrics$/],
  ['GET', /^\/containers\/[^/]+\/info$/],
  ['DELETE', /^\/containers\/[^/]+$/],
  ['PUT', /^\/containers\/[^/]+\/stop$/],
  ['PUT', /^\/containers\/[^/]+\/files$/],
  ['GET', /^\/containers\/[^/]+\/files$/],
  ['GET', /^\/containers\/[^/]+\/limits\/(bandwidth|cpu|disk|memory)$/],
  ['POST', /^\/containers\/[^/]+\/net\/in$/],
  ['POST', /^\/containers\/[^/]+\/net\/out$/],
  ['POST', /^\/containers\/[^/]+\/net\/out\/bulk$/],
  ['POST', /^\/containers\/[^/]+\/processes$/],
  ['GET', /^\/containers\/[^/]+\/processes\/[^/]+$/],
  ['GET', /^\/containers\/[^/]+\/processes\/[^/]+\/attaches\/[^/]+\/(stdout|stderr)$/],
  ['PUT', /^\/containers\/[^/]+\/grace_time$/],
  ['GET', /^\/containers\/[^/]+\/properties$/],
  ['GET', /^\/containers\/[^/]+\/properties\/[^/]+$/],
  ['PUT', /^\/containers\/[^/]+\/properties\/[^/]+$/],
  ['DELETE', /^\/containers\/[^/]+\/properties\/[^/]+$/],
  ['GET', /^\/containers\/[^/]+\/metrics$/],
];

export function buildApp(deps: ApiDeps): express.Express {
  const { gardener, log } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', (q: string) => q);
  // Every body is JSON read raw and decoded as Go would, except stream-in's tar, which is piped.
  app.use(express.raw({ type: (req) => !(req.method === 'PUT' && /\/files$/.test((req as Request).path ?? '')), limit: MAX_JSON_BODY }));

  /** A handler about one container: it pauses that container's grace timer while it runs. */
  const pausing = (fn: (req: Request, res: Response, handle: string) => Promise<void> | void) =>
    async (req: Request, res: Response) => {
      let handle = '';
      try {
        handle = seg(req, 2);
      } catch (err) {
        return fail(res, err);
      }
      const end = gardener.reaper.begin(handle);
      try {
        await fn(req, res, handle);
      } catch (err) {
        fail(res, err);
      } finally {
        end();
      }
    };
  const plain = (fn: (req: Request, res: Response) => Promise<void> | void) => async (req: Request, res: Response) => {
    try {
      await fn(req, res);
    } catch (err) {
      fail(res, err);
    }
  };
  const exists = (handle: string) => {
    if (!gardener.exists(handle)) gardener.info(handle); // throws ContainerNotFound
  };

  app.get('/ping', plain((_req, res) => send(res, 200, EMPTY)));

  app.get('/capacity', plain(async (_req, res) => {
    let disk = 0n;
    let free = 0n;
    try {
      const s = await statfs(deps.storePath);
      disk = BigInt(s.blocks) * BigInt(s.bsize);
      free = BigInt(s.bavail) * BigInt(s.bsize);
    } catch {
      // no store: report nothing rather than a guess
    }
    void freemem;
    send(res, 200, encodeCapacity({ memory: BigInt(totalmem()), disk, schedulableDisk: free, maxContainers: BigInt(gardener.capacity().maxContainers) }));
  }));

  app.get('/containers', plain((req, res) => {
    const filter = Object.create(null) as Record<string, string>;
    for (const [k, v] of new URLSearchParams(queryOf(req))) if (!Object.hasOwn(filter, k)) filter[k] = v;
    send(res, 200, encodeHandles(gardener.list(filter)));
  }));

  app.post('/containers', plain(async (req, res) => {
    const spec = decodeCreate(rawBody(req));
    const handle = await gardener.create(spec);
    send(res, 200, encodeHandle(handle));
  }));

  const bulkHandles = (req: Request): string[] => {
    const v = new URLSearchParams(queryOf(req)).get('handles') ?? '';
    return v === '' ? [] : v.split(',');
  };
  app.get('/containers/bulk_info', plain((req, res) => {
    const parts = bulkHandles(req).map((h) => {
      let entry: string;
      try {
        entry = goObject([['Info', encodeInfo(gardener.info(h))], ['Err', 'null']]);
      } catch (err) {
        entry = goObject([['Info', encodeInfo(undefined)], ['Err', toHttpError(err).body.trimEnd()]]);
      }
      return `${goString(h)}:${entry}`;
    });
    send(res, 200, line(`{${parts.join(',')}}`));
  }));

  app.get('/containers/bulk_metrics', plain(async (req, res) => {
    const parts: string[] = [];
    for (const h of bulkHandles(req)) {
      let entry: string;
      try {
        entry = goObject([['Metrics', await metricsOf(gardener, h)], ['Err', 'null']]);
      } catch (err) {
        entry = goObject([['Metrics', encodeMetrics(zeroMetrics())], ['Err', toHttpError(err).body.trimEnd()]]);
      }
      parts.push(`${goString(h)}:${entry}`);
    }
    send(res, 200, line(`{${parts.join(',')}}`));
  }));

  app.get('/containers/:handle/info', pausing((_req, res, h) => send(res, 200, line(encodeInfo(gardener.info(h))))));

  app.delete('/containers/:handle', plain(async (req, res) => {
    await gardener.destroy(seg(req, 2));
    send(res, 200, EMPTY);
  }));

  app.put('/containers/:handle/stop', pausing(async (req, res, h) => {
    const kill = decodeStop(rawBody(req));
    await gardener.stop(h, kill);
    send(res, 200, EMPTY);
  }));

  const limitKeys: Record<string, [string, string[]]> = {
    bandwidth: ['bandwidth_limits', ['rate', 'burst']],
    cpu: ['cpu_limits', ['weight', 'limit_in_shares']],
    disk: ['disk_limits', ['inode_soft', 'inode_hard', 'byte_soft', 'byte_hard', 'scope']],
    memory: ['memory_limits', ['limit_in_bytes']],
  };
  app.get('/containers/:handle/limits/:kind', pausing((req, res, h) => {
    const [field, keys] = limitKeys[req.params.kind ?? ''] ?? ['', []];
    if (field === '') throw new InvalidArgument(`unknown limit kind`);
    send(res, 200, encodeLimitRecord(gardener.limits(h)[field], keys));
  }));

  app.post('/containers/:handle/net/in', pausing(async (req, res, h) => {
    const body = decodeNetIn(rawBody(req));
    exists(h);
    // A host port asked for by number may still be held by a container being torn down.
    if (body.host_port !== 0) await gardener.teardownsSettled();
    const info = gardener.info(h);
    const out = await deps.network.netIn(h, {
      HostIP: deps.externalIp,
      HostPort: body.host_port,
      ContainerIP: info.ContainerIP,
      ContainerPort: body.container_port,
    });
    const mapped = [...info.MappedPorts, { HostPort: out.host_port, ContainerPort: out.container_port }];
    await gardener.setProperty(h, 'garden.network.mapped-ports', JSON.stringify(mapped));
    send(res, 200, encodeNetInResponse(out.host_port, out.container_port));
  }));

  app.post('/containers/:handle/net/out', pausing(async (req, res, h) => {
    const rule = decodeNetOut(rawBody(req));
    exists(h);
    await deps.network.netOut(h, { container_ip: gardener.info(h).ContainerIP, netout_rule: rule });
    send(res, 200, EMPTY);
  }));

  app.post('/containers/:handle/net/out/bulk', pausing(async (req, res, h) => {
    const rules = decodeBulkNetOut(rawBody(req));
    exists(h);
    await deps.network.bulkNetOut(h, { container_ip: gardener.info(h).ContainerIP, netout_rules: rules });
    send(res, 200, EMPTY);
  }));

  app.put('/containers/:handle/grace_time', plain(async (req, res) => {
    const ns = decodeGraceTime(rawBody(req));
    const h = seg(req, 2);
    exists(h);
    try {
      await gardener.setGraceTime(h, ns < 0n ? 0n : ns);
    } catch (err) {
      // Garden only logs a setter's failure
      log.error({ handle: h, err: errorMessage(err) }, 'grace-time.set-failed');
    }
    send(res, 200, EMPTY);
  }));

  app.get('/containers/:handle/properties', pausing((_req, res, h) => send(res, 200, encodeProperties(gardener.properties(h)))));
  app.get('/containers/:handle/properties/:key', pausing((req, res, h) => send(res, 200, encodeValue(gardener.property(h, seg(req, 4))))));
  app.put('/containers/:handle/properties/:key', pausing(async (req, res, h) => {
    const value = decodeProperty(rawBody(req));
    await gardener.setProperty(h, seg(req, 4), value);
    send(res, 200, EMPTY);
  }));
  app.delete('/containers/:handle/properties/:key', pausing(async (req, res, h) => {
    await gardener.removeProperty(h, seg(req, 4));
    send(res, 200, EMPTY);
  }));

  app.get('/containers/:handle/metrics', pausing(async (_req, res, h) => send(res, 200, line(await metricsOf(gardener, h)))));

  app.put('/containers/:handle/files', pausing(async (req, res, h) => {
    const q = new URLSearchParams(queryOf(req));
    // A client that goes away mid-upload must not leave tar waiting for the rest.
    const gone = new AbortController();
    req.once('close', () => {
      if (!req.complete) gone.abort();
    });
    res.once('close', () => {
      if (!res.writableFinished) gone.abort();
    });
    await gardener.streamIn(h, { destination: q.get('destination') ?? '', user: q.get('user') ?? '' }, req, gone.signal);
    send(res, 200, EMPTY);
  }));

  app.get('/containers/:handle/files', pausing(async (req, res, h) => {
    const q = new URLSearchParams(queryOf(req));
    const gone = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) gone.abort();
    });
    const tar = await gardener.streamOut(h, { source: q.get('source') ?? '', user: q.get('user') ?? '' }, gone.signal);
    if (gone.signal.aborted) return void (tar as unknown as { destroy(): void }).destroy();
    res.statusCode = 200;
    res.setHeader('Content-Type', 'application/octet-stream');
    await new Promise<void>((resolve) => {
      tar.on('end', resolve);
      tar.on('error', () => {
        // past the head nothing can be reported: cut the response short, as Garden does
        res.destroy();
        resolve();
      });
      res.on('close', resolve);
      tar.pipe(res);
    });
  }));

  // Garden's router: 405 with Allow for a known path, else a plain-text 404.
  app.use((req: Request, res: Response) => {
    const allowed = ROUTES.filter(([, re]) => re.test(req.path)).map(([m]) => m);
    if (allowed.length > 0) {
      res.statusCode = 405;
      res.setHeader('Allow', [...new Set(allowed)].join(', '));
      res.setHeader('Content-Type', 'text/plain; charset=utf-8');
      res.end('Method Not Allowed\n');
      return;
    }
    res.statusCode = 404;
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.end('404 page not found\n');
  });

  app.use((err: Error & { type?: string; status?: number }, _req: Request, res: Response, _next: NextFunction) => {
    if (err.type === 'entity.too.large') {
      return fail(res, new InvalidArgument(`request body too large (limit ${MAX_JSON_BODY} bytes)`));
    }
    fail(res, err);
  });
  return app;
}

function queryOf(req: Request): string {
  const url = req.originalUrl;
  const q = url.indexOf('?');
  return q < 0 ? '' : url.slice(q + 1);
}

function zeroMetrics() {
  return {
    memory: {},
    cpu: { Usage: 0n, User: 0n, System: 0n },
    disk: { TotalBytesUsed: 0n, TotalInodesUsed: 0n, ExclusiveBytesUsed: 0n, ExclusiveInodesUsed: 0n },
    pids: { Current: 0n, Max: 0n },
    ageNs: 0n,
    cpuEntitlement: 0n,
  };
}

async function metricsOf(gardener: Gardener, handle: string): Promise<string> {
  const m = zeroMetrics();
  const created = gardener.createdAt(handle);
  m.ageNs = BigInt(Date.now() - created.getTime()) * 1_000_000n;
  const cg = await gardener.cgroupStats(handle);
  if (cg !== undefined) {
    m.memory = cg.memory;
    m.cpu = cg.cpu;
    m.pids = cg.pids;
  }
  try {
    const s = await gardener.stats(handle);
    m.disk.TotalBytesUsed = BigInt(s.totalBytesUsed);
    m.disk.ExclusiveBytesUsed = BigInt(s.exclusiveBytesUsed);
    // XFS stores count the container's inodes (issue #11); the image's are not counted, so the total stays Garden's 0.
    if (s.exclusiveInodesUsed !== undefined) m.disk.ExclusiveInodesUsed = BigInt(s.exclusiveInodesUsed);
  } catch {
    // disk figures unavailable
  }
  return encodeMetrics(m);
}

/** The hijacked process routes: Run, Attach, Stdout, Stderr. */
export function buildHijack(deps: ApiDeps): HijackHandler {
  const hub = new StreamHub();
  const { gardener, log } = deps;
  return (route, _head, sock: net.Socket, body, leftover) => {
    if (route.kind === 'stream') {
      sock.resume();
      sock.write(streamHead());
      const s = hub.get(route.streamId);
      if (s === undefined) {
        sock.end();
        return;
      }
      s.connect(route.pipe, sock);
      sock.on('error', () => {});
      return;
    }
    const end = gardener.reaper.begin(route.handle);
    void (async () => {
      try {
        let proc;
        if (route.kind === 'run') {
          const spec = decodeRun(body);
          proc = await gardener.run(route.handle, spec);
          log.info({ handle: route.handle, process: proc.id }, 'run.started');
        } else {
          proc = gardener.process(route.handle, route.pid);
        }
        if (sock.destroyed) {
          // The client left while the process started: as a detach, it lets go of stdin.
          proc.holdStdin();
          proc.releaseStdin();
          end();
          return;
        }
        sock.write(controlHead(route.kind === 'run' ? 201 : 200));
        const stream = hub.create(proc);
        serveControl({ sock, leftover, proc, stream, log, onDone: end });
      } catch (err) {
        end();
        log.info({ handle: route.handle, err: errorMessage(err) }, `${route.kind}.failed`);
        writeFramedError(sock, err);
      }
    })();
  };
}
