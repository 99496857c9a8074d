// Prometheus metrics (issue #12): per container under cAdvisor's names, labelled by
// handle, read from the container's cgroup at scrape time; and gdn's own (containers,
// creates/destroys/runs by outcome, latency histograms, the process's RSS and the rest of
// prom-client's default process metrics). Served by MetricsServer on its own listener.
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CgroupStats } from '../runtime/cgroupstats.js';

/** What metrics needs from the gardener. */
export interface MeteredGardener {
  list(filter: Record<string, string>): string[];
  cgroupStats(handle: string): Promise<CgroupStats | undefined>;
  limits(handle: string): Record<string, Record<string, string>>;
  stats(handle: string): Promise<{ totalBytesUsed: number; exclusiveBytesUsed: number }>;
  createdAt(handle: string): Date;
}

/** The gardener operations whose outcomes are counted. */
export interface InstrumentableGardener {
  create(...args: never[]): Promise<unknown>;
  destroy(...args: never[]): Promise<unknown>;
  run(...args: never[]): Promise<unknown>;
}

interface ContainerSample {
  handle: string;
  cgroup: CgroupStats | undefined;
  memoryLimit: number;
  fsUsage: number | undefined;
  startTime: number;
}

/** A scrape reuses a snapshot this young: many scrapers, or one scraping often, cost one read. */
const SNAPSHOT_MS = 1000;
/** Filesystem usage walks the container's upper directory: refreshed this often, in the background. */
const FS_TTL_MS = 60_000;
/** Containers read at once during a scrape. */
const CONCURRENCY = 32;

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class Metrics {
  readonly registry = new Registry();
  private gardener: MeteredGardener | undefined;
  private snapshot: { at: number; samples: Promise<ContainerSample[]> } | undefined;
  private readonly fs = new Map<string, { bytes: number; at: number; refreshing: boolean }>();

  readonly creates = new Counter({ name: 'gdn_container_creates_total', help: 'Container creates, by outcome', labelNames: ['outcome'], registers: [this.registry] });
  readonly destroys = new Counter({ name: 'gdn_container_destroys_total', help: 'Container destroys, by outcome', labelNames: ['outcome'], registers: [this.registry] });
  readonly runs = new Counter({ name: 'gdn_process_runs_total', help: 'Process runs, by outcome', labelNames: ['outcome'], registers: [this.registry] });
  readonly operations = new Histogram({
    name: 'gdn_operation_duration_seconds',
    help: 'Time gdn took for a create, destroy or run (until the process started), by outcome',
    labelNames: ['operation', 'outcome'],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly requests = new Histogram({
    name: 'gdn_http_request_duration_seconds',
    help: 'Garden API request latency (non-streaming routes), by route, method and status code',
    labelNames: ['route', 'method', 'code'],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    const self = this;
    new Gauge({
      name: 'gdn_containers',
      help: 'Containers this gdn holds',
      registers: [this.registry],
      collect() {
        this.set(self.gardener?.list({}).length ?? 0);
      },
    });
    // cAdvisor's names and units, one series per container, labelled by handle.
    const perContainer = (
      name: string,
      help: string,
      kind: 'gauge' | 'counter',
      value: (s: ContainerSample) => number | undefined,
    ) => {
      const collect = async function (this: Gauge<'handle'> | Counter<'handle'>) {
        const samples = await self.samples();
        this.reset();
        for (const s of samples) {
          const v = value(s);
          if (v === undefined) continue;
          if (this instanceof Gauge) this.set({ handle: s.handle }, v);
          else this.inc({ handle: s.handle }, v);
        }
      };
      if (kind === 'gauge') new Gauge({ name, help, labelNames: ['handle'], registers: [this.registry], collect });
      else new Counter({ name, help, labelNames: ['handle'], registers: [this.registry], collect });
    };
    const cg = (f: (c: CgroupStats) => bigint | undefined) => (s: ContainerSample) => {
      if (s.cgroup === undefined) return undefined;
      const v = f(s.cgroup);
      return v === undefined ? undefined : Number(v);
    };
    const ns = (v: bigint) => Number(v) / 1e9;
    perContainer('container_cpu_usage_seconds_total', 'Cumulative CPU time consumed', 'counter', (s) => (s.cgroup ? ns(s.cgroup.cpu.Usage) : undefined));
    perContainer('container_cpu_user_seconds_total', 'Cumulative user CPU time consumed', 'counter', (s) => (s.cgroup ? ns(s.cgroup.cpu.User) : undefined));
    perContainer('container_cpu_system_seconds_total', 'Cumulative system CPU time consumed', 'counter', (s) => (s.cgroup ? ns(s.cgroup.cpu.System) : undefined));
    perContainer('container_memory_working_set_bytes', 'Current working set in bytes (usage less inactive file pages)', 'gauge', cg((c) => c.memory.TotalUsageTowardLimit ?? 0n));
    perContainer('container_memory_usage_bytes', 'Current memory usage in bytes, all memory regardless of when it was accessed', 'gauge', cg((c) => usageBytes(c)));
    perContainer('container_memory_rss', 'Size of RSS (anonymous memory) in bytes', 'gauge', cg((c) => c.memory.total_rss ?? c.memory.rss ?? 0n));
    perContainer('container_memory_cache', 'Page cache memory in bytes', 'gauge', cg((c) => c.memory.total_cache ?? c.memory.cache ?? 0n));
    perContainer('container_spec_memory_limit_bytes', 'Memory limit for the container (0: none)', 'gauge', (s) => s.memoryLimit);
    perContainer('container_processes', 'Number of processes (tasks) running in the container', 'gauge', cg((c) => c.pids.Current));
    perContainer('container_fs_usage_bytes', "Bytes the container's root filesystem uses (image layers and its own writes)", 'gauge', (s) => s.fsUsage);
    perContainer('container_start_time_seconds', 'Start time of the container since the Unix epoch in seconds', 'gauge', (s) => s.startTime);
  }

  /** Per-container figures start being collected once a gardener is attached. */
  attach(gardener: MeteredGardener): void {
    this.gardener = gardener;
  }

  /** Counts each call's outcome and times it; the gardener itself is not changed otherwise. */
  instrument(g: InstrumentableGardener): void {
    const wrap = (method: 'create' | 'destroy' | 'run', counter: Counter<'outcome'>) => {
      const original = (g[method] as (...a: unknown[]) => Promise<unknown>).bind(g);
      (g as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
        const end = this.operations.startTimer({ operation: method });
        try {
          const r = await original(...args);
          counter.inc({ outcome: 'success' });
          end({ outcome: 'success' });
          return r;
        } catch (err) {
          counter.inc({ outcome: 'failure' });
          end({ outcome: 'failure' });
          throw err;
        } finally {
          // the next scrape shows the containers as they are now, not the last second's
          if (method !== 'run') this.snapshot = undefined;
        }
      };
    };
    wrap('create', this.creates);
    wrap('destroy', this.destroys);
    wrap('run', this.runs);
    for (const c of [this.creates, this.destroys, this.runs]) for (const outcome of ['success', 'failure']) c.inc({ outcome }, 0);
  }

  /** Times every request the Garden API's HTTP server answers (hijacked streams are not HTTP here). */
  observe(http: HttpServer): void {
    http.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
      const end = this.requests.startTimer();
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        end({ route: routeOf(req.url ?? '/'), method: req.method ?? '', code: String(res.statusCode) });
      };
      res.once('finish', finish);
      res.once('close', finish);
    });
  }

  private samples(): Promise<ContainerSample[]> {
    const now = Date.now();
    if (this.snapshot !== undefined && now - this.snapshot.at < SNAPSHOT_MS) return this.snapshot.samples;
    const samples = this.read();
    this.snapshot = { at: now, samples };
    return samples;
  }

  private async read(): Promise<ContainerSample[]> {
    const g = this.gardener;
    if (g === undefined) return [];
    const handles = g.list({});
    for (const h of this.fs.keys()) if (!handles.includes(h)) this.fs.delete(h);
    const out: ContainerSample[] = [];
    let next = 0;
    const worker = async () => {
      while (next < handles.length) {
        const handle = handles[next++]!;
        try {
          const [cgroup, fsUsage] = await Promise.all([g.cgroupStats(handle), this.fsUsage(g, handle)]);
          const limit = Number(g.limits(handle).memory_limits?.limit_in_bytes ?? '0');
          out.push({ handle, cgroup, memoryLimit: Number.isFinite(limit) ? limit : 0, fsUsage, startTime: g.createdAt(handle).getTime() / 1000 });
        } catch {
          // destroyed while we read it
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, handles.length) }, worker));
    return out.sort((a, b) => (a.handle < b.handle ? -1 : a.handle > b.handle ? 1 : 0));
  }

  /** The last known usage; a stale one is refreshed in the background, a missing one is read now. */
  private async fsUsage(g: MeteredGardener, handle: string): Promise<number | undefined> {
    const known = this.fs.get(handle);
    const refresh = async () => {
      const entry = this.fs.get(handle) ?? { bytes: 0, at: 0, refreshing: false };
      entry.refreshing = true;
      this.fs.set(handle, entry);
      try {
        entry.bytes = (await g.stats(handle)).totalBytesUsed;
        entry.at = Date.now();
      } finally {
        entry.refreshing = false;
      }
    };
    if (known === undefined || known.at === 0) {
      if (known?.refreshing) return undefined;
      try {
        await refresh();
      } catch {
        this.fs.delete(handle);
        return undefined;
      }
      return this.fs.get(handle)?.bytes;
    }
    if (Date.now() - known.at > FS_TTL_MS && !known.refreshing) void refresh().catch(() => undefined);
    return known.bytes;
  }
}

/** memory.usage_in_bytes (v1) or memory.current (v2), from what CgroupReader keeps. */
function usageBytes(c: CgroupStats): bigint {
  const inactive = c.memory.total_inactive_file ?? c.memory.inactive_file ?? 0n;
  return (c.memory.TotalUsageTowardLimit ?? 0n) + inactive;
}

const ROUTE_WORDS = new Set([
  'info', 'metrics', 'stop', 'grace_time', 'properties', 'limits', 'bandwidth', 'cpu', 'disk', 'memory', 'pid',
  'net', 'in', 'out', 'bulk', 'processes', 'files', 'attach', 'stdin', 'stdout', 'stderr',
]);

/** A route label without handles, keys, ids or made-up paths in it, so that series stay few. */
export function routeOf(url: string): string {
  const path = url.split('?')[0] ?? '/';
  const seg = path.split('/').filter((s) => s !== '');
  if (seg[0] !== 'containers') return path === '/ping' || path === '/capacity' ? path : '/other';
  if (seg.length === 1) return '/containers';
  if (seg.length === 2 && (seg[1] === 'bulk_info' || seg[1] === 'bulk_metrics')) return `/containers/${seg[1]}`;
  const rest = seg.slice(2);
  const shape: string[] = ['', 'containers', ':handle'];
  if (rest[0] === 'properties' && rest.length > 1) shape.push('properties', ':key');
  else if (rest[0] === 'processes' && rest.length > 1) shape.push('processes', ':pid', ...rest.slice(2).map((s) => (ROUTE_WORDS.has(s) ? s : ':x')));
  else shape.push(...rest.map((s) => (ROUTE_WORDS.has(s) ? s : ':x')));
  return shape.join('/');
}

/** Serves GET /metrics in Prometheus's text format on its own listener. */
export function metricsHandler(metrics: Metrics) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('404 page not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
      return;
    }
    metrics.registry.metrics().then(
      (body) => {
        res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`${err instanceof Error ? err.message : String(err)}\n`);
      },
    );
  };
}
