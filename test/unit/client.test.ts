// The client against a scripted local server that replays captured Garden
// bytes (spec §1-§3): pure protocol logic, no daemon, no processes.

import { expect } from 'chai';
import fc from 'fast-check';
import net from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { ContainerNotFound, ExecutableNotFound, ProcessNotFound, ServiceUnavailable } from '../../src/errors.js';
import { GardenClient } from '../../src/client/client.js';
import { BadResponse, GardenError, Unrecoverable } from '../../src/client/errors.js';
import { goBytesString, goString, parseJson } from '../../src/client/gojson.js';
import { encodeContainerSpec, encodeNetOutRule, encodeProcessSpec } from '../../src/client/wire.js';

// ---------------------------------------------------------------------------
// A scripted server: each connection is handed to the script with helpers to
// read exactly what the client sent and to write exact bytes back.

export interface Request {
  method: string;
  path: string;
  head: string;
  headers: Map<string, string>;
  body: Buffer;
  /** Offset in conn.raw where the body ended: what follows are control messages. */
  end: number;
}

export class Conn {
  raw: Buffer = Buffer.alloc(0);
  ended = false;
  private waiters: Array<() => void> = [];

  constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.raw = Buffer.concat([this.raw, d]);
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  async until<T>(f: () => T | undefined, what: string): Promise<T> {
    for (;;) {
      const v = f();
      if (v !== undefined) return v;
      if (this.ended) throw new Error(`connection ended while waiting for ${what}`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  request(): Promise<Request> {
    return this.until(() => {
      const headEnd = this.raw.indexOf('\r\n\r\n');
      if (headEnd < 0) return undefined;
      const head = this.raw.subarray(0, headEnd + 4).toString('latin1');
      const [line, ...rest] = head.split('\r\n');
      const [method, path] = line!.split(' ');
      const headers = new Map<string, string>();
      for (const h of rest) if (h) headers.set(h.slice(0, h.indexOf(':')).toLowerCase(), h.slice(h.indexOf(':') + 1).trim());
      let i = headEnd + 4;
      if (headers.get('transfer-encoding') === 'chunked') {
        const parts: Buffer[] = [];
        for (;;) {
          const nl = this.raw.indexOf('\r\n', i);
          if (nl < 0) return undefined;
          const size = parseInt(this.raw.subarray(i, nl).toString(), 16);
          if (this.raw.length < nl + 2 + size + 2) return undefined;
          parts.push(this.raw.subarray(nl + 2, nl + 2 + size));
          i = nl + 2 + size + 2;
          if (size === 0) break;
        }
        return { method: method!, path: path!, head, headers, body: Buffer.concat(parts), end: i };
      }
      const len = Number(headers.get('content-length') ?? 0);
      if (this.raw.length < i + len) return undefined;
      return { method: method!, path: path!, head, headers, body: this.raw.subarray(i, i + len), end: i + len };
    }, 'a request');
  }

  /** Wait until the bytes after `from` contain `count` newline-terminated lines; return them. */
  lines(from: number, count: number): Promise<string[]> {
    return this.until(() => {
      const text = this.raw.subarray(from).toString('utf8');
      const lines = text.split('\n');
      return lines.length > count ? lines.slice(0, count) : undefined;
    }, `${count} lines`);
  }

  write(data: string | Buffer): Promise<void> {
    return new Promise((resolve) => this.socket.write(data, () => resolve()));
  }

  end(): void {
    this.socket.end();
  }
}

export class ScriptedServer {
  readonly conns: Conn[] = [];
  private server: net.Server;
  readonly errors: unknown[] = [];

  constructor(script: (conn: Conn, index: number) => Promise<void>) {
    this.server = net.createServer((socket) => {
      const conn = new Conn(socket);
      const index = this.conns.push(conn) - 1;
      script(conn, index).catch((err) => {
        this.errors.push(err);
        socket.destroy();
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    if (this.errors.length > 0) throw this.errors[0];
  }
}

/** A JSON response as Go's server frames it. */
export function jsonResponse(status: string, body: string, extra = ''): string {
  const b = Buffer.from(body + '\n');
  return `HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nDate: Wed, 25 Nov 2026 16:07:29 GMT\r\nContent-Length: ${b.length}\r\n${extra}\r\n${b.toString('latin1')}`;
}

/** Serve one plain request per connection with a canned reply; record what came in. */
export async function withServer<T>(
  reply: (req: Request, index: number) => string | Buffer,
  fn: (client: GardenClient, reqs: Request[], target: string) => Promise<T>,
): Promise<T> {
  const reqs: Request[] = [];
  const server = new ScriptedServer(async (conn, i) => {
    const req = await conn.request();
    reqs.push(req);
    await conn.write(reply(req, i));
    conn.end();
  });
  const target = await server.listen();
  try {
    return await fn(new GardenClient(target), reqs, target);
  } finally {
    await server.close();
  }
}

const raw = (r: Request): string => r.head + r.body.toString('utf8');

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

// ---------------------------------------------------------------------------

describe('client wire encoding', () => {
  it('encodes the captured full ContainerSpec of the current Go client byte for byte', () => {
    const body = encodeContainerSpec({
      handle: 'h2',
      grace_time: 30_000_000_000,
      rootfs: '/var/rootfs',
      image: { uri: 'docker:///busybox#1.36', username: 'u', password: 'p' },
      bind_mounts: [{ src_path: '/a', dst_path: '/b', mode: 1, origin: 1 }],
      properties: { foo: 'bar', 'a b': 'c&d' },
      env: ['A=1'],
      privileged: true,
      limits: {
        cpu_limits: { weight: 10 },
        disk_limits: { byte_hard: 1000, scope: 1 },
        memory_limits: { limit_in_bytes: 1048576 },
        pid_limits: { max: 100 },
      },
      netout_rules: [{ protocol: 3, icmps: { type: 8, code: 0 } }],
      netin: [{ host_port: 0, container_port: 8080 }],
    });
    expect(body).to.equal(
      '{"handle":"h2","grace_time":30000000000,"rootfs":"/var/rootfs","image":{"uri":"docker:///busybox#1.36","username":"u","password":"p"},"bind_mounts":[{"src_path":"/a","dst_path":"/b","mode":1,"origin":1}],"properties":{"a b":"c\\u0026d","foo":"bar"},"env":["A=1"],"privileged":true,"limits":{"bandwidth_limits":{},"cpu_limits":{"weight":10},"disk_limits":{"byte_hard":1000,"scope":1},"memory_limits":{"limit_in_bytes":1048576},"pid_limits":{"max":100}},"netout_rules":[{"protocol":3,"icmps":{"type":8,"code":0}}],"netin":[{"host_port":0,"container_port":8080}]}',
    );
  });

  it('always sends image and limits, even for an empty spec', () => {
    expect(encodeContainerSpec({})).to.equal(
      '{"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}',
    );
  });

  it('encodes the captured ProcessSpecs', () => {
    expect(encodeProcessSpec({ path: 'sh', args: ['-c', 'echo hi; exit 3'], user: 'root' })).to.equal(
      '{"path":"sh","args":["-c","echo hi; exit 3"],"user":"root","rlimits":{},"image":{}}',
    );
    expect(
      encodeProcessSpec({
        path: '/bin/sh', args: ['-l'], env: ['TERM=xterm'], user: 'vcap', tty: { window_size: { columns: 100, rows: 40 } },
      }),
    ).to.equal(
      '{"path":"/bin/sh","args":["-l"],"env":["TERM=xterm"],"user":"vcap","rlimits":{},"tty":{"window_size":{"columns":100,"rows":40}},"image":{}}',
    );
    expect(
      encodeProcessSpec({
        id: 'my-proc-id', path: 'sleep', args: ['30'], env: ['X=1'], dir: '/tmp', rlimits: { nofile: 1024 },
        limits: { memory_limits: { limit_in_bytes: 100 } },
      }),
    ).to.equal(
      '{"id":"my-proc-id","path":"sleep","args":["30"],"env":["X=1"],"dir":"/tmp","rlimits":{"nofile":1024},"limits":{"cpu_limits":{},"memory_limits":{"limit_in_bytes":100}},"image":{}}',
    );
  });

  it('encodes the captured NetOut rules', () => {
    expect(
      encodeNetOutRule({ protocol: 1, networks: [{ start: '10.0.0.1', end: '10.0.0.255' }], ports: [{ start: 80, end: 443 }] }),
    ).to.equal('{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.255"}],"ports":[{"start":80,"end":443}]}');
    expect(encodeNetOutRule({ log: true })).to.equal('{"log":true}');
  });

  it('sends uint64 limits beyond 2^53 exactly and refuses non-integers', () => {
    const body = encodeContainerSpec({ limits: { memory_limits: { limit_in_bytes: 18446744073709551615n } } });
    expect(body).to.contain('"limit_in_bytes":18446744073709551615');
    expect(() => encodeContainerSpec({ limits: { memory_limits: { limit_in_bytes: 1.5 } } })).to.throw(RangeError);
    expect(() => encodeContainerSpec({ limits: { memory_limits: { limit_in_bytes: 1n << 64n } } })).to.throw(RangeError);
  });

  it('escapes strings as Go does', () => {
    expect(goString('<a>&\u2028\u0000\u001f"\\\n\t')).to.equal('"\\u003ca\\u003e\\u0026\\u2028\\u0000\\u001f\\"\\\\\\n\\t"');
    expect(goBytesString(Buffer.from([0xff, 0x00, 0x68, 0xe2, 0x82]))).to.equal('"\\ufffd\\u0000h\\ufffd\\ufffd"');
    expect(goBytesString(Buffer.from('héllo €𝄞'))).to.equal('"héllo €𝄞"');
  });

  it('produces JSON that decodes back to the same text for any valid string', () => {
    fc.assert(
      fc.property(fc.fullUnicodeString(), (s) => {
        expect(JSON.parse(goString(s))).to.equal(s);
        expect(JSON.parse(goBytesString(Buffer.from(s)))).to.equal(s);
      }),
    );
  });

  it('parses integers beyond 2^53 as bigint', () => {
    expect(parseJson('{"a":18446744073709551615,"b":3}')).to.deep.equal({ a: 18446744073709551615n, b: 3 });
  });
});

describe('client plain routes', () => {
  it('sends exactly the captured Lookup request', async () => {
    await withServer(
      () => jsonResponse('200 OK', '{"Handles":["c1"]}', 'Connection: close\r\n'),
      async (client, reqs) => {
        await client.lookup('c1');
        expect(raw(reqs[0]!)).to.equal(
          'GET /containers HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n',
        );
        expect(Buffer.byteLength(raw(reqs[0]!))).to.equal(113);
        const err = await rejection(client.lookup('c2'));
        expect(err).to.be.instanceOf(ContainerNotFound);
        expect(err.message).to.equal('unknown handle: c2');
      },
    );
  });

  it('frames JSON bodies like Go: Content-Length counts the newline, headers in Go order', async () => {
    await withServer(
      (req) => jsonResponse('200 OK', req.path === '/containers' ? '{"Handle":"generated-1"}' : '{}'),
      async (client, reqs) => {
        expect(await client.create({})).to.equal('generated-1');
        await client.setGraceTime('c1', 5_400_000_000_000n);
        await client.stop('c1', false);
        await client.setProperty('c1', 'k', 'v');
        await client.destroy('c1');
        const body = '{"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}\n';
        expect(raw(reqs[0]!)).to.equal(
          `POST /containers HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: ${body.length}\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n${body}`,
        );
        expect(reqs[1]!.path).to.equal('/containers/c1/grace_time');
        expect(reqs[1]!.body.toString()).to.equal('5400000000000\n');
        expect(reqs[2]!.body.toString()).to.equal('{"kill":false}\n');
        expect(reqs[3]!.method).to.equal('PUT');
        expect(reqs[3]!.body.toString()).to.equal('{"value":"v"}\n');
        expect(raw(reqs[4]!)).to.equal(
          'DELETE /containers/c1 HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n',
        );
      },
    );
  });

  it('escapes path parameters as gaol does and encodes queries as url.Values', async () => {
    await withServer(
      (req) => jsonResponse('200 OK', req.path.startsWith('/containers?') ? '{"Handles":[]}' : '{}'),
      async (client, reqs) => {
        await client.properties('a b/c?d');
        await client.list({ 'a b': 'c&d' });
        await client.bulkInfo(['h2', 'missing']);
        await client.property('x+y', 'k/with slash').catch(() => {});
        await client.streamOut('c1', { path: '/etc/x' }).then((s) => s.resume());
        expect(reqs.map((r) => `${r.method} ${r.path}`)).to.deep.equal([
          'GET /containers/a%20b%2Fc%3Fd/properties',
          'GET /containers?a+b=c%26d',
          'GET /containers/bulk_info?handles=h2%2Cmissing',
          'GET /containers/x+y/properties/k%2Fwith%20slash',
          'GET /containers/c1/files?source=%2Fetc%2Fx&user=',
        ]);
      },
    );
  });

  it('decodes Garden error objects into typed errors', async () => {
    const replies: Record<string, string> = {
      '/containers/nosuch/info': jsonResponse('404 Not Found', '{"Type":"ContainerNotFoundError","Message":"unknown handle: nosuch","Handle":"nosuch","ProcessID":"","Binary":""}'),
      '/containers/lower/info': jsonResponse('404 Not Found', '{"type":"ContainerNotFoundError","handle":"lower"}'),
      '/containers/p/info': jsonResponse('404 Not Found', '{"Type":"ProcessNotFoundError","Message":"whatever","Handle":"","ProcessID":"nope","Binary":""}'),
      '/containers/e/info': jsonResponse('500 Internal Server Error', '{"Type":"ExecutableNotFoundError","Message":"fork/exec /no/such/binary: no such file or directory","Handle":"","ProcessID":"","Binary":""}'),
      '/containers/s/info': jsonResponse('500 Internal Server Error', '{"Type":"ServiceUnavailableError","Message":"busy","Handle":"","ProcessID":"","Binary":""}'),
      '/containers/u/info': jsonResponse('500 Internal Server Error', '{"Type":"UnrecoverableError","Message":"broken","Handle":"","ProcessID":"","Binary":""}'),
      '/containers/g/info': jsonResponse('500 Internal Server Error', '{"Type":"","Message":"Handle \'c1\' already in use","Handle":"","ProcessID":"","Binary":""}'),
      '/containers/t/info': 'HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\n404 page not found\n',
      '/containers/empty/info': 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n',
    };
    await withServer(
      (req) => replies[req.path]!,
      async (client) => {
        const e1 = await rejection(client.info('nosuch'));
        expect(e1).to.be.instanceOf(ContainerNotFound);
        expect((e1 as ContainerNotFound).handle).to.equal('nosuch');
        const e2 = await rejection(client.info('lower'));
        expect(e2).to.be.instanceOf(ContainerNotFound);
        expect(e2.message).to.equal('unknown handle: lower');
        const e3 = await rejection(client.info('p'));
        expect(e3).to.be.instanceOf(ProcessNotFound);
        expect(e3.message).to.equal('unknown process: nope');
        expect(await rejection(client.info('e'))).to.be.instanceOf(ExecutableNotFound);
        expect(await rejection(client.info('s'))).to.be.instanceOf(ServiceUnavailable);
        expect(await rejection(client.info('u'))).to.be.instanceOf(Unrecoverable);
        const e7 = await rejection(client.info('g'));
        expect(e7).to.be.instanceOf(GardenError);
        expect(e7.message).to.equal("Handle 'c1' already in use");
        const e8 = await rejection(client.info('t'));
        expect(e8).to.be.instanceOf(BadResponse);
        expect(e8.message).to.match(/^bad response: /);
        expect((await rejection(client.info('empty'))).message).to.equal('EOF');
      },
    );
  });

  it('reports an unreachable server the way Go does', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    await new Promise<void>((r) => server.close(() => r()));
    const err = await rejection(new GardenClient(`127.0.0.1:${port}`).ping());
    expect(err.message).to.equal(`Get http://api/ping: dial tcp 127.0.0.1:${port}: connect: connection refused`);
  });

  it('decodes uint64 metrics beyond 2^53, null NetworkStat, and bulk entries with errors', async () => {
    await withServer(
      (req) =>
        req.path.startsWith('/containers/bulk_info')
          ? jsonResponse('200 OK', '{"missing":{"Info":{"State":"","Events":null,"HostIP":"","ContainerIP":"","ContainerIPv6":"","ExternalIP":"","ContainerPath":"","ProcessIDs":null,"Properties":null,"MappedPorts":null},"Err":{"Type":"ContainerNotFoundError","Message":"unknown handle: missing","Handle":"missing","ProcessID":"","Binary":""}}}')
          : req.path === '/capacity'
            ? jsonResponse('200 OK', '{"memory_in_bytes":1024,"disk_in_bytes":2048,"max_containers":250}')
            : jsonResponse('200 OK', '{"MemoryStat":{"cache":18446744073709551615},"CPUStat":{"Usage":1},"NetworkStat":null,"Age":5000000000,"CPUEntitlement":100}'),
      async (client) => {
        const m = await client.metrics('c1');
        expect(m.MemoryStat.cache).to.equal(18446744073709551615n);
        expect(m.MemoryStat.rss).to.equal(0);
        expect(m.NetworkStat).to.equal(null);
        expect(m.Age).to.equal(5000000000);
        expect(m.PidStat).to.deep.equal({ Current: 0, Max: 0 });
        expect(await client.capacity()).to.deep.equal({
          memory_in_bytes: 1024, disk_in_bytes: 2048, schedulable_disk_in_bytes: 0, max_containers: 250,
        });
        const bulk = await client.bulkInfo(['missing']);
        expect(bulk.missing!.Err).to.be.instanceOf(ContainerNotFound);
        expect(bulk.missing!.Info.Events).to.equal(null);
      },
    );
  });

  it('streams a tar body chunked, or with Content-Length: 0 when empty, and decodes chunked replies', async () => {
    await withServer(
      (req) =>
        req.method === 'GET'
          ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n'
          : jsonResponse('200 OK', '{}'),
      async (client, reqs) => {
        const tar = Buffer.alloc(10240, 7);
        await client.streamIn('c1', { path: '/tmp/x', tarStream: Readable.from([tar]) });
        await client.streamIn('c1', { path: '/tmp/x', user: 'vcap', tarStream: Readable.from([]) });
        const out = await client.streamOut('c1', { path: '/a' });
        const chunks: Buffer[] = [];
        for await (const c of out) chunks.push(c as Buffer);
        expect(Buffer.concat(chunks).toString()).to.equal('abcde');
        expect(reqs[0]!.head).to.equal(
          'PUT /containers/c1/files?destination=%2Ftmp%2Fx&user= HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-tar\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n',
        );
        expect(reqs[0]!.body.equals(tar)).to.equal(true);
        expect(reqs[1]!.headers.get('content-length')).to.equal('0');
        expect(reqs[1]!.path).to.equal('/containers/c1/files?destination=%2Ftmp%2Fx&user=vcap');
      },
    );
  });
});

// ---------------------------------------------------------------------------

const PID = 'e3b0c442-98fc-4c14-9afb-000000000001';
const DATE = 'Date: Wed, 25 Nov 2026 16:07:29 GMT\r\n';
const RUN_HEAD = `HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n${DATE}Transfer-Encoding: chunked\r\n\r\n`;
const STREAM_HEAD = `HTTP/1.1 200 OK\r\n${DATE}Transfer-Encoding: chunked\r\n\r\n`;
const ID_MSG = `{"process_id":"${PID}","stream_id":"1"}\n`;
const EXIT_MSG = (code: number): string => `{"process_id":"${PID}","exit_status":${code}}\n`;

function sink(): PassThrough & { text: () => string } {
  const chunks: Buffer[] = [];
  const s = new PassThrough() as PassThrough & { text: () => string };
  s.on('data', (c: Buffer) => chunks.push(c));
  s.text = () => Buffer.concat(chunks).toString();
  return s;
}

describe('client process protocol (spec §3.11 replay)', () => {
  it('replays gaol run -a -c "sh -c \'echo hi; exit 3\'" c1 </dev/null byte for byte', async () => {
    const seen: Record<string, Buffer> = {};
    let stdoutClosed = false;
    let stdoutRequested!: () => void;
    const stdoutArrived = new Promise<void>((r) => (stdoutRequested = r));
    const server = new ScriptedServer(async (conn) => {
      const req = await conn.request();
      if (req.method === 'POST') {
        seen.run = conn.raw.subarray(0, req.end);
        // Head and identification message in one write: 191 bytes.
        const first = RUN_HEAD + ID_MSG;
        expect(Buffer.byteLength(first)).to.equal(191);
        await conn.write(first);
        const [eof] = await conn.lines(req.end, 1);
        seen.eof = Buffer.from(eof + '\n');
        await stdoutArrived;
        await conn.write(EXIT_MSG(3));
        conn.end();
      } else if (req.path.endsWith('/stdout')) {
        seen.stdout = Buffer.from(req.head);
        stdoutRequested();
        await conn.write(STREAM_HEAD);
        await conn.write('hi\n');
        // Exit status is already out; hold the stream open a little: wait() must not settle yet.
        await new Promise((r) => setTimeout(r, 150));
        stdoutClosed = true;
        conn.end();
      } else {
        seen.stderr = Buffer.from(req.head);
        await conn.write(STREAM_HEAD);
        conn.end();
      }
    });
    const target = await server.listen();
    try {
      const client = new GardenClient(target);
      const stdout = sink();
      const stderr = sink();
      const proc = await client.run(
        'c1',
        { path: 'sh', args: ['-c', 'echo hi; exit 3'], user: 'root' },
        { stdin: Readable.from([]), stdout, stderr },
      );
      expect(proc.id).to.equal(PID);
      const code = await proc.wait();
      expect(stdoutClosed, 'wait() settled before the stdout stream reached EOF').to.equal(true);
      expect(code).to.equal(3);
      expect(stdout.text()).to.equal('hi\n');
      expect(stderr.text()).to.equal('');

      const runReq =
        'POST /containers/c1/processes HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 84\r\nContent-Type: application/json\r\n\r\n' +
        '{"path":"sh","args":["-c","echo hi; exit 3"],"user":"root","rlimits":{},"image":{}}\n';
      expect(seen.run!.toString()).to.equal(runReq);
      expect(seen.run!.length).to.equal(221);
      expect(seen.eof!.toString()).to.equal(`{"process_id":"${PID}","source":0}\n`);
      expect(seen.eof!.length).to.equal(65);
      const streamReq = (name: string): string =>
        `GET /containers/c1/processes/${PID}/attaches/1/${name} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Type: application/json\r\n\r\n`;
      expect(seen.stdout!.toString()).to.equal(streamReq('stdout'));
      expect(seen.stdout!.length).to.equal(171);
      expect(seen.stderr!.toString()).to.equal(streamReq('stderr'));
    } finally {
      await server.close();
    }
  });

  it('handles head, id and exit status in one segment, and heads split byte by byte', async () => {
    const server = new ScriptedServer(async (conn) => {
      const req = await conn.request();
      if (req.method === 'POST') {
        await conn.write(RUN_HEAD + ID_MSG + EXIT_MSG(0));
        conn.end();
      } else {
        for (const ch of STREAM_HEAD + 'out\n') await conn.write(ch);
        conn.end();
      }
    });
    const target = await server.listen();
    try {
      const stdout = sink();
      const proc = await new GardenClient(target).run('c1', { path: 'true' }, { stdout });
      expect(await proc.wait()).to.equal(0);
      expect(stdout.text()).to.equal('out\n');
      // Only the sinks given get stream connections: run + stdout.
      expect(server.conns.length).to.equal(2);
    } finally {
      await server.close();
    }
  });

  it('opens no stream connections and sends no stdin EOF without sinks (gaol run without -a)', async () => {
    let afterBody = -1;
    const server = new ScriptedServer(async (conn) => {
      const req = await conn.request();
      afterBody = req.end;
      await conn.write(RUN_HEAD + ID_MSG);
      await conn.until(() => (conn.ended ? true : undefined), 'detach').catch(() => {});
    });
    const target = await server.listen();
    try {
      const proc = await new GardenClient(target).run('c1', { path: 'sleep', args: ['30'] });
      expect(proc.id).to.equal(PID);
      proc.detach();
      await rejection(proc.wait());
      await new Promise((r) => setTimeout(r, 20));
      expect(server.conns.length).to.equal(1);
      expect(server.conns[0]!.raw.length).to.equal(afterBody);
    } finally {
      await server.close();
    }
  });

  it('forwards stdin in ≤32 KiB messages, then EOF; sends signals and resizes', async () => {
    let lines: string[] = [];
    const server = new ScriptedServer(async (conn) => {
      const req = await conn.request();
      if (req.method !== 'GET' || !req.path.includes('/attaches/')) {
        expect(req.method).to.equal('GET');
        expect(req.head).to.equal(
          `GET /containers/c1/processes/${PID} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n\r\n`,
        );
        await conn.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n${DATE}Transfer-Encoding: chunked\r\n\r\n` + ID_MSG);
        lines = await conn.lines(req.end, 7);
        await conn.write(EXIT_MSG(143));
        conn.end();
      }
    });
    const target = await server.listen();
    try {
      const stdin = new PassThrough();
      const proc = await new GardenClient(target).attach('c1', PID, { stdin });
      stdin.write(Buffer.alloc(70000, 0x61));
      await new Promise((r) => setTimeout(r, 20));
      stdin.write(Buffer.from([0xff, 0x00, 0x0a]));
      await new Promise((r) => setTimeout(r, 20));
      await proc.signal(0);
      await proc.setTTY({ window_size: { columns: 100, rows: 40 } });
      await proc.signal(1);
      stdin.end();
      expect(await proc.wait()).to.equal(143);
      const data = lines.slice(0, 3).map((l) => JSON.parse(l) as { data: string; source: number; process_id: string });
      expect(data.map((d) => d.data.length)).to.deep.equal([32768, 32768, 70000 - 65536]);
      expect(data.every((d) => d.source === 0 && d.process_id === PID)).to.equal(true);
      expect(lines[0]!.startsWith(`{"process_id":"${PID}","source":0,"data":"aaa`)).to.equal(true);
      expect(lines.slice(3)).to.deep.equal([
        `{"process_id":"${PID}","source":0,"data":"\\ufffd\\u0000\\n"}`,
        `{"process_id":"${PID}","signal":0}`,
        `{"process_id":"${PID}","tty":{"window_size":{"columns":100,"rows":40}}}`,
        `{"process_id":"${PID}","signal":1}`,
      ]);
    } finally {
      await server.close();
    }
  });

  it('fails like Go on heads that mean "closing", error bodies, and a broken control stream', async () => {
    const server = new ScriptedServer(async (conn) => {
      const req = await conn.request();
      const handle = req.path.split('/')[2];
      if (handle === 'close') {
        await conn.write(`HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      } else if (handle === 'unframed') {
        await conn.write(`HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n${ID_MSG}`);
      } else if (handle === 'http10') {
        await conn.write(`HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n`);
      } else if (handle === 'nopid') {
        await conn.write(jsonResponse('404 Not Found', '{"Type":"ProcessNotFoundError","Message":"unknown process: nope","Handle":"","ProcessID":"nope","Binary":""}'));
      } else if (handle === 'garbage') {
        await conn.write('HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops');
      } else if (handle === 'procerr') {
        await conn.write(RUN_HEAD + ID_MSG + `{"process_id":"${PID}","error":"boom"}\n`);
      } else if (handle === 'eof') {
        await conn.write(RUN_HEAD + ID_MSG);
      } else if (handle === 'badstream') {
        if (req.path.endsWith('/stdout')) await conn.write(`HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n`);
        else {
          await conn.write(RUN_HEAD + ID_MSG);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      conn.end();
    });
    const target = await server.listen();
    try {
      const client = new GardenClient(target);
      for (const h of ['close', 'unframed', 'http10']) {
        expect((await rejection(client.run(h, { path: 'x' }))).message, h).to.equal('persistent connection closed');
      }
      const nopid = await rejection(client.attach('nopid', 'nope'));
      expect(nopid).to.be.instanceOf(ProcessNotFound);
      expect((nopid as ProcessNotFound).processId).to.equal('nope');
      expect((await rejection(client.run('garbage', { path: 'x' }))).message).to.match(
        /^Backend error: Exit status: 500, Body: oops, error reading response body: /,
      );
      const p1 = await client.run('procerr', { path: 'x' });
      expect((await rejection(p1.wait())).message).to.equal('connection: process error: boom');
      const p2 = await client.run('eof', { path: 'x' });
      expect((await rejection(p2.wait())).message).to.equal('connection: decode failed: EOF');
      const p3 = await client.run('badstream', { path: 'x' }, { stdout: sink() });
      expect((await rejection(p3.wait())).message).to.equal(
        'connection: failed to hijack stream Stdout: persistent connection closed',
      );
    } finally {
      await server.close();
    }
  });
});
