// issue #12: Prometheus metrics. A real gdn with --metrics-bind-port, real containers,
// /metrics scraped over TCP and read with Prometheus's own text-format parser (the
// official Python client's, Debian's python3-prometheus-client): cAdvisor's
// per-container names labelled by handle, gdn's own counters and histograms.

import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { request } from 'node:http';
import {
  cleanupServer, dumpLogsIfFailed, eventually, GDN, runAndWait, type Server, sh, spec, startServer,
} from './harness.js';

interface Sample { name: string; labels: Record<string, string>; value: number | null }
interface Family { name: string; type: string; samples: Sample[] }
/** Samples by sample name (e.g. x_bucket, x_count, y_total), each with its family's type. */
type Scrape = Map<string, { type: string; samples: Sample[] }>;

// prometheus_client.parser raises on anything that is not the text format.
const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
num = lambda v: v if v == v and abs(v) != float("inf") else None
out = [{"name": f.name, "type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": num(s.value)} for s in f.samples]}
       for f in text_string_to_metric_families(sys.stdin.read())]
json.dump(out, sys.stdout)
`;

function parseProm(text: string): Scrape {
  const families = JSON.parse(execFileSync('/usr/bin/python3', ['-c', PARSE], { input: text, encoding: 'utf8' })) as Family[];
  const out: Scrape = new Map();
  for (const f of families) {
    for (const s of f.samples) {
      const e = out.get(s.name) ?? { type: f.type, samples: [] };
      e.samples.push(s);
      out.set(s.name, e);
    }
  }
  return out;
}

const MIB = 1024 * 1024;

function get(port: number, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('issue #12: Prometheus metrics (integration)', function () {
  let server: Server;
  let port: number;

  async function scrape(): Promise<Scrape> {
    const r = await get(port, '/metrics');
    expect(r.status, r.body).to.equal(200);
    expect(r.type).to.match(/^text\/plain; version=0\.0\.4/);
    // Every line is a comment or a sample as the exposition format defines it.
    for (const line of r.body.split('\n')) {
      if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
      expect(line).to.match(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? [-+]?([0-9.e+-]+|Inf|NaN)$/);
    }
    return parseProm(r.body);
  }

  function value(m: Scrape, name: string, labels: Record<string, string> = {}): number | undefined {
    return m.get(name)?.samples.find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value ?? undefined;
  }

  const handlesOf = (m: Scrape, name: string) => (m.get(name)?.samples ?? []).map((s) => s.labels.handle).sort();

  before(async function () {
    server = await startServer({ extraArgs: ['--metrics-bind-port', '0'] });
    // The log line can reach us after the first ping's answer: stdout is another pipe.
    const started = () => server.logs().split('\n').find((l) => l.includes('"metrics.started"'));
    await eventually(() => started() !== undefined, 10_000);
    const line = started();
    expect(line, 'a metrics.started log line').to.not.equal(undefined);
    const addr = (JSON.parse(line!) as { addr: string }).addr;
    expect(addr, 'loopback by default').to.match(/^127\.0\.0\.1:\d+$/);
    port = Number(addr.split(':')[1]);
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('serves cAdvisor-named per-container series labelled by handle, and gdn counters by outcome', async function () {
    const before = await scrape();
    expect(value(before, 'gdn_containers')).to.equal(0);
    expect(value(before, 'gdn_container_creates_total', { outcome: 'success' })).to.equal(0);
    expect(before.get('process_resident_memory_bytes')?.type).to.equal('gauge');
    expect(value(before, 'process_resident_memory_bytes')).to.be.greaterThan(10 * MIB);

    const limited = await server.client.create(spec({ handle: 'metrics-limited', limits: { memory_limits: { limit_in_bytes: 64 * MIB } } }));
    const other = await server.client.create(spec({ handle: 'metrics-other' }));
    // A refused create counts as a failure.
    await server.client.create(spec({ handle: 'metrics bad' })).then(() => expect.fail('created'), () => undefined);
    // CPU, a resident process, and 2 MiB written to the root filesystem.
    const busy = await runAndWait(server.client, limited, sh('i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; dd if=/dev/zero of=/big bs=1M count=2 2>/dev/null; echo done'));
    expect(busy.stdout).to.equal('done\n');
    await server.client.run(limited, sh('exec sleep 600'), {});

    let m = await scrape();
    expect(await eventually(async () => {
      m = await scrape();
      return (value(m, 'container_processes', { handle: limited }) ?? 0) >= 2;
    }, 10_000), 'init and sleep counted').to.equal(true);

    expect(m.get('container_cpu_usage_seconds_total')?.type).to.equal('counter');
    expect(value(m, 'container_cpu_usage_seconds_total', { handle: limited })).to.be.greaterThan(0);
    expect(m.get('container_memory_working_set_bytes')?.type).to.equal('gauge');
    expect(value(m, 'container_memory_working_set_bytes', { handle: limited })).to.be.greaterThan(0);
    expect(value(m, 'container_memory_usage_bytes', { handle: limited })).to.be.at.least(value(m, 'container_memory_working_set_bytes', { handle: limited })!);
    expect(value(m, 'container_spec_memory_limit_bytes', { handle: limited })).to.equal(64 * MIB);
    expect(value(m, 'container_spec_memory_limit_bytes', { handle: other })).to.equal(0);
    expect(value(m, 'container_fs_usage_bytes', { handle: limited })).to.be.at.least(2 * MIB);
    expect(value(m, 'container_start_time_seconds', { handle: other })).to.be.closeTo(Date.now() / 1000, 300);
    for (const name of ['container_cpu_usage_seconds_total', 'container_memory_working_set_bytes', 'container_processes', 'container_spec_memory_limit_bytes']) {
      expect(handlesOf(m, name), name).to.deep.equal([limited, other]);
    }

    expect(value(m, 'gdn_containers')).to.equal(2);
    expect(value(m, 'gdn_container_creates_total', { outcome: 'success' })).to.equal(2);
    expect(value(m, 'gdn_container_creates_total', { outcome: 'failure' })).to.equal(1);
    expect(value(m, 'gdn_process_runs_total', { outcome: 'success' })).to.equal(2);
    expect(m.get('gdn_http_request_duration_seconds_count')?.type).to.equal('histogram');
    const post = { route: '/containers', method: 'POST', code: '200' };
    expect(value(m, 'gdn_http_request_duration_seconds_count', post), 'POST /containers observed').to.equal(2);
    expect(value(m, 'gdn_http_request_duration_seconds_bucket', { ...post, le: '+Inf' })).to.equal(2);
    expect(value(m, 'gdn_http_request_duration_seconds_count', { route: '/containers', method: 'POST', code: '500' }), 'the refused create').to.equal(1);
    expect(value(m, 'gdn_operation_duration_seconds_count', { operation: 'create', outcome: 'success' })).to.equal(2);

    await server.client.destroy(other);
    const after = await scrape();
    expect(value(after, 'gdn_containers')).to.equal(1);
    expect(value(after, 'gdn_container_destroys_total', { outcome: 'success' })).to.equal(1);
    expect(handlesOf(after, 'container_memory_working_set_bytes')).to.deep.equal([limited]);
    await server.client.destroy(limited);
  });

  it('answers only GET /metrics on its listener, and not the Garden API', async function () {
    expect((await get(port, '/ping')).status).to.equal(404);
    expect((await get(port, '/containers')).status).to.equal(404);
    expect((await get(port, '/metrics', 'POST')).status).to.equal(405);
  });

  it('is off without --metrics-bind-port', async function () {
    const plain = await startServer();
    try {
      // metrics.started would come before the server's own "started" line.
      expect(await eventually(() => plain.logs().includes('"msg":"started"'), 10_000), 'started logged').to.equal(true);
      expect(plain.logs()).to.not.include('metrics.started');
    } finally {
      await cleanupServer(plain);
    }
  });

  for (const [flag, bad] of [['--metrics-bind-ip', 'not-an-ip'], ['--metrics-bind-port', '70000']] as const) {
    it(`refuses ${flag} ${bad} with one line and a non-zero exit`, async function () {
      const child = spawn(process.execPath, [GDN, 'server', '--bind-socket', '/nonexistent/x.sock', '--metrics-bind-port', '0', flag, bad], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      expect(code).to.not.equal(0);
      expect(err, err).to.match(/metrics-bind-(ip|port)/);
    });
  }
});
