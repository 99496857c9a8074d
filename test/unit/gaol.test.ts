// gaol in-process against a scripted server: the bytes each command puts on
// the wire (spec §1.2, §5, §7 captures), its output and its exit status.

import { expect } from 'chai';
import net from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { runGaol } from '../../cmd/gaol.js';
import { type Conn, jsonResponse, type Request, ScriptedServer } from './client.test.js';

interface Outcome {
  status: number;
  stdout: string;
  stderr: string;
  reqs: Request[];
}

type Reply = (req: Request, conn: Conn) => Promise<void> | string;

const PID = 'e3b0c442-98fc-4c14-9afb-000000000001';

/** A fake Garden knowing containers `handles`; `reply` may override any route. */
async function gaol(argv: string[], opts: { handles?: string[]; reply?: Reply; env?: NodeJS.ProcessEnv; stdin?: Readable } = {}): Promise<Outcome> {
  const reqs: Request[] = [];
  const handles = opts.handles ?? ['c1'];
  const server = new ScriptedServer(async (conn) => {
    const req = await conn.request();
    reqs.push(req);
    const custom = opts.reply?.(req, conn);
    if (custom instanceof Promise) {
      await custom;
      return;
    }
    let out = custom;
    if (out === undefined) {
      if (req.method === 'GET' && req.path.startsWith('/containers') && !req.path.startsWith('/containers/')) {
        out = jsonResponse('200 OK', JSON.stringify({ Handles: handles }), 'Connection: close\r\n');
      } else {
        out = jsonResponse('200 OK', '{}');
      }
    }
    await conn.write(out);
    conn.end();
  });
  const target = await server.listen();
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (c: Buffer) => out.push(c));
  stderr.on('data', (c: Buffer) => err.push(c));
  try {
    const env = opts.env ?? {};
    const args = env.GAOL_TARGET !== undefined ? argv : ['-t', target, ...argv];
    const status = await runGaol(args, {
      stdin: opts.stdin ?? Readable.from([]),
      stdout,
      stderr,
      env: env.GAOL_TARGET === 'SELF' ? { ...env, GAOL_TARGET: target } : env,
    });
    return { status, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), reqs };
  } finally {
    await server.close();
  }
}

const routes = (o: Outcome): string[] => o.reqs.map((r) => `${r.method} ${r.path}`);

describe('gaol', () => {
  it('create sends exactly the captured body and prints the handle', async () => {
    const o = await gaol(
      ['create', '-n', 'c1', '-r', 'docker:///busybox', '-e', 'FOO=bar', '-g', '10m', '-m', '/tmp:/mnt:ro', '-m', '/var:/v', '--network', '10.0.0.0/30'],
      { reply: () => jsonResponse('200 OK', '{"Handle":"c1"}') },
    );
    expect(o.stderr).to.equal('');
    expect(o.status).to.equal(0);
    expect(o.stdout).to.equal('c1\n');
    expect(routes(o)).to.deep.equal(['POST /containers']);
    expect(o.reqs[0]!.body.toString()).to.equal(
      '{"handle":"c1","grace_time":600000000000,"image":{"uri":"docker:///busybox"},"bind_mounts":[{"src_path":"/tmp","dst_path":"/mnt"},{"src_path":"/var","dst_path":"/v","mode":1}],"network":"10.0.0.0/30","env":["FOO=bar"],"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}\n',
    );
  });

  it('plain create sends the captured minimal body; --username/--password/-p reach the spec', async () => {
    const reply = (): string => jsonResponse('200 OK', '{"Handle":"generated-1"}');
    const o = await gaol(['create'], { reply });
    expect(o.stdout).to.equal('generated-1\n');
    expect(o.reqs[0]!.body.toString()).to.equal(
      '{"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}\n',
    );
    const o2 = await gaol(['create', '-r', 'docker:///busybox', '--username', 'u', '--password', 'p', '-p', '-m', '/a:/b:rw', '-n', '007'], { reply });
    expect(o2.reqs[0]!.body.toString()).to.equal(
      '{"handle":"007","image":{"uri":"docker:///busybox","username":"u","password":"p"},"bind_mounts":[{"src_path":"/a","dst_path":"/b","mode":1}],"privileged":true,"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}\n',
    );
  });

  it('run without -a looks the handle up, sends the captured body, prints the process id', async () => {
    const o = await gaol(['run', '-c', "sh -c 'echo hi; exit 3'", 'c1'], {
      reply: (req, conn) =>
        req.method === 'POST'
          ? (async () => {
              await conn.write(`HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{"process_id":"${PID}","stream_id":"1"}\n`);
              await conn.until(() => (conn.ended ? true : undefined), 'detach').catch(() => {});
            })()
          : (undefined as unknown as string),
    });
    expect(o.stderr).to.equal('');
    expect(o.status).to.equal(0);
    expect(o.stdout).to.equal(`${PID}\n`);
    expect(routes(o)).to.deep.equal(['GET /containers', 'POST /containers/c1/processes']);
    expect(o.reqs[1]!.body.toString()).to.equal('{"path":"sh","args":["-c","echo hi; exit 3"],"user":"root","rlimits":{},"image":{}}\n');
  });

  it('run -a streams output and exits with the process exit status', async () => {
    const o = await gaol(['run', '-a', '-c', 'sh -c "echo hi; exit 3"', '-d', '/tmp', '-u', 'vcap', '-e', 'A=1', '-i', 'docker:///alpine', 'c1'], {
      reply: (req, conn) => {
        if (req.method === 'POST') {
          return (async () => {
            await conn.write(`HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n{"process_id":"${PID}","stream_id":"1"}\n{"process_id":"${PID}","exit_status":3}\n`);
            conn.end();
          })();
        }
        if (req.path.endsWith('/stdout')) return 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nhi\n';
        if (req.path.endsWith('/stderr')) return 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\noops\n';
        return undefined as unknown as string;
      },
    });
    expect(o.status).to.equal(3);
    expect(o.stdout).to.equal('hi\n');
    expect(o.stderr).to.equal('oops\n');
    expect(o.reqs[1]!.body.toString()).to.equal(
      '{"path":"sh","args":["-c","echo hi; exit 3"],"env":["A=1"],"dir":"/tmp","user":"vcap","rlimits":{},"image":{"uri":"docker:///alpine"}}\n',
    );
  });

  it('refuses an unknown handle after Lookup, with one error line and status 1', async () => {
    const o = await gaol(['run', '-c', 'ls', 'nosuch']);
    expect(o.status).to.equal(1);
    expect(o.stderr).to.equal('error: unknown handle: nosuch\n');
    expect(routes(o)).to.deep.equal(['GET /containers']);
    const o2 = await gaol(['properties']);
    expect(o2.stderr).to.equal('error: must provide container handle\n');
    expect(o2.status).to.equal(1);
  });

  it('set-gracetime sends a bare integer of nanoseconds', async () => {
    const o = await gaol(['set-gracetime', '-g', '1h30m', 'c1']);
    expect(o.status).to.equal(0);
    expect(routes(o)).to.deep.equal(['GET /containers', 'PUT /containers/c1/grace_time']);
    expect(o.reqs[1]!.body.toString()).to.equal('5400000000000\n');
    const bad = await gaol(['set-gracetime', '-g', '10x', 'c1']);
    expect(bad.status).to.equal(1);
    expect(bad.stderr).to.equal(
      "error: invalid argument for flag `-g, --grace' (expected time.Duration): time: unknown unit x in duration 10x\n",
    );
  });

  it('net-out sends the captured rule and prints applied; net-in prints host:port', async () => {
    const o = await gaol(['net-out', '-p', 'tcp', '--ip-start', '10.0.0.1', '--ip-end', '10.0.0.255', '--port-start', '80', '--port-end', '443', 'c1']);
    expect(o.stderr).to.equal('');
    expect(o.stdout).to.equal('applied\n');
    expect(o.reqs[1]!.body.toString()).to.equal(
      '{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.255"}],"ports":[{"start":80,"end":443}]}\n',
    );
    const udp = await gaol(['net-out', '-p', 'udp', '--ip-start', '0:0::1', '--ip-end', '::1', '--port-start', '53', '--port-end', '53', 'c1']);
    expect(udp.reqs[1]!.body.toString()).to.equal('{"protocol":2,"networks":[{"start":"::1","end":"::1"}],"ports":[{"start":53,"end":53}]}\n');

    const n = await gaol(['net-in', '-p', '8080', 'c1'], {
      reply: (req) => (req.path === '/containers/c1/net/in' ? jsonResponse('200 OK', '{"host_port":61001,"container_port":8080}') : (undefined as unknown as string)),
    });
    expect(n.reqs[1]!.body.toString()).to.equal('{"handle":"c1","container_port":8080}\n');
    expect(n.stdout).to.equal('127.0.0.1:61001\n');
  });

  it('properties prints key\\tvalue lines, or indented JSON without a trailing newline', async () => {
    const reply: Reply = (req) =>
      req.path === '/containers/c1/properties' ? jsonResponse('200 OK', '{"foo":"bar","a b":"c\\u0026d"}') : (undefined as unknown as string);
    const plain = await gaol(['properties', 'c1'], { reply });
    expect(plain.stdout).to.equal('a b\tc&d\nfoo\tbar\n');
    const json = await gaol(['properties', '-j', 'c1'], { reply });
    expect(json.stdout).to.equal('{\n  "a b": "c\\u0026d",\n  "foo": "bar"\n}');
  });

  it('list filters by properties and prints verbose details with the separator', async () => {
    const o = await gaol(['list', '-p', 'a b=c&d', '-p', 'x=1', '-v', '--separator', '==\n'], {
      handles: ['c1', 'c2'],
      reply: (req) =>
        req.path.endsWith('/properties') ? jsonResponse('200 OK', '{"z":"1","a b":"c&d"}') : (undefined as unknown as string),
    });
    expect(routes(o)).to.deep.equal([
      'GET /containers?a+b=c%26d&x=1',
      'GET /containers/c1/properties',
      'GET /containers/c2/properties',
    ]);
    expect(o.stdout).to.equal('c1\n  a b=c&d\n  z=1\n==\nc2\n  a b=c&d\n  z=1\n==\n');
    const bad = await gaol(['list', '-p', 'nope']);
    expect(bad.stderr).to.equal('error: malformed property pair (must be name=value)\n');
  });

  it('destroy deletes each handle without Lookup and stops at the first error', async () => {
    const o = await gaol(['destroy', 'a', 'b', 'c'], {
      reply: (req) =>
        req.path === '/containers/b'
          ? jsonResponse('404 Not Found', '{"Type":"ContainerNotFoundError","Message":"unknown handle: b","Handle":"b","ProcessID":"","Binary":""}')
          : (undefined as unknown as string),
    });
    expect(routes(o)).to.deep.equal(['DELETE /containers/a', 'DELETE /containers/b']);
    expect(o.stderr).to.equal('error: unknown handle: b\n');
    expect(o.status).to.equal(1);
  });

  it('takes its target from GAOL_TARGET, and reports connection failures as one line', async () => {
    const o = await gaol(['ping'], { env: { GAOL_TARGET: 'SELF' } });
    expect(o.status).to.equal(0);
    expect(routes(o)).to.deep.equal(['GET /ping']);

    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    await new Promise<void>((r) => server.close(() => r()));
    const err: Buffer[] = [];
    const stderr = new PassThrough().on('data', (c: Buffer) => err.push(c));
    const status = await runGaol(['-t', `127.0.0.1:${port}`, 'ping'], { stdin: Readable.from([]), stdout: new PassThrough(), stderr, env: {} });
    expect(status).to.equal(1);
    expect(Buffer.concat(err).toString()).to.equal(`error: Get http://api/ping: dial tcp 127.0.0.1:${port}: connect: connection refused\n`);
  });

  it('reports flag errors as one error line', async () => {
    for (const argv of [['attach', 'c1'], ['stream-in', 'c1'], ['net-out', '-p', 'icmp', '--ip-start', '1.1.1.1', '--ip-end', '1.1.1.1', '--port-start', '1', '--port-end', '1', 'c1'], ['bogus'], ['create', '--nope']]) {
      const o = await gaol(argv);
      expect(o.status, argv.join(' ')).to.equal(1);
      expect(o.stderr, argv.join(' ')).to.match(/^error: [^\n]+\n$/);
    }
  });

  it('stream-in uploads stdin chunked; stream-out writes the raw tar', async () => {
    const tar = Buffer.alloc(10240, 1);
    const o = await gaol(['stream-in', '-d', '/etc/foo', '-u', 'vcap', 'c1'], { stdin: Readable.from([tar]) });
    expect(o.status).to.equal(0);
    expect(routes(o)).to.deep.equal(['GET /containers', 'PUT /containers/c1/files?destination=%2Fetc%2Ffoo&user=vcap']);
    expect(o.reqs[1]!.headers.get('transfer-encoding')).to.equal('chunked');
    expect(o.reqs[1]!.body.equals(tar)).to.equal(true);

    const out = await gaol(['stream-out', '-s', '/etc/foo', 'c1'], {
      reply: (req) => (req.path.startsWith('/containers/c1/files') ? 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nTAR!!' : (undefined as unknown as string)),
    });
    expect(out.stdout).to.equal('TAR!!');
    expect(out.reqs[1]!.path).to.equal('/containers/c1/files?source=%2Fetc%2Ffoo&user=');
  });
});
