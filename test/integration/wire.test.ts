// The real server against the bytes Garden's Go client sends (spec/garden-api.md
// §3.11): heads, framing and messages checked byte for byte, no client library.
import { expect } from 'chai';
import net from 'node:net';
import { cleanupServer, dumpLogsIfFailed, type Server, spec, startServer } from './harness.js';

/** One raw connection: what it received so far, and a way to wait for more or for the close. */
function connect(path: string) {
  const sock = net.connect(path);
  let buf = Buffer.alloc(0);
  let closed = false;
  const waiters: Array<() => void> = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    wake();
  });
  sock.on('close', () => {
    closed = true;
    wake();
  });
  sock.on('error', () => {});
  const until = async (done: (b: string) => boolean, ms = 15_000) => {
    const deadline = Date.now() + ms;
    while (!done(buf.toString('latin1'))) {
      if (closed || Date.now() > deadline) throw new Error(`gave up waiting; got ${JSON.stringify(buf.toString('latin1'))}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 100);
      });
    }
    return buf.toString('latin1');
  };
  const closedP = async () => {
    await until(() => closed);
    return buf.toString('latin1');
  };
  return { sock, until, closed: closedP, text: () => buf.toString('latin1') };
}

const DATE = /Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n/;

describe('wire bytes, as the Go client sends them (integration)', function () {
  let server: Server;

  before(async function () {
    server = await startServer();
    await server.client.create(spec({ handle: 'c1' }));
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('Lookup: GET /containers with Connection: close', async function () {
    const c = connect(server.socketPath);
    c.sock.write('GET /containers HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n');
    const res = await c.closed();
    expect(res).to.match(/^HTTP\/1\.1 200 OK\r\n/);
    expect(res).to.match(/\r\nContent-Type: application\/json\r\n/);
    expect(res).to.match(/\r\nContent-Length: 19\r\n/);
    expect(res).to.not.match(/Content-Encoding/i);
    expect(res.endsWith('\r\n\r\n{"Handles":["c1"]}\n')).to.equal(true);
  });

  it('Run, stdin EOF, Stdout and Stderr: the captured sequence of §3.11', async function () {
    const body = '{"path":"sh","args":["-c","echo hi; echo oops >&2; exit 3"],"user":"root","rlimits":{},"image":{}}\n';
    const run = connect(server.socketPath);
    run.sock.write(
      `POST /containers/c1/processes HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\n\r\n${body}`,
    );
    const first = await run.until((b) => b.includes('}\n'));
    const head = first.slice(0, first.indexOf('\r\n\r\n') + 4);
    // the exit message may already follow in the same read: look at the first line only
    const firstLine = first.slice(head.length, first.indexOf('\n', head.length) + 1);
    expect(head).to.match(/^HTTP\/1\.1 201 Created\r\nContent-Type: application\/json\r\n/);
    expect(head).to.match(DATE);
    expect(head).to.match(/Transfer-Encoding: chunked\r\n\r\n$/);
    expect(head).to.not.match(/Connection: close/i);
    const id = /^\{"process_id":"([0-9a-f-]{36})","stream_id":"(\d+)"\}\n$/.exec(firstLine);
    expect(id, first).to.not.equal(null);
    const [, pid, sid] = id!;
    run.sock.write(`{"process_id":"${pid}","source":0}\n`);

    const stream = (pipe: string) => {
      const c = connect(server.socketPath);
      c.sock.write(`GET /containers/c1/processes/${pid}/attaches/${sid}/${pipe} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Type: application/json\r\n\r\n`);
      return c.closed();
    };
    const [out, err, control] = await Promise.all([stream('stdout'), stream('stderr'), run.closed()]);
    expect(out).to.match(/^HTTP\/1\.1 200 OK\r\nDate: [^\r]+\r\nTransfer-Encoding: chunked\r\n\r\nhi\n$/);
    expect(err).to.match(/^HTTP\/1\.1 200 OK\r\nDate: [^\r]+\r\nTransfer-Encoding: chunked\r\n\r\noops\n$/);
    expect(control.endsWith(`{"process_id":"${pid}","exit_status":3}\n`)).to.equal(true);
  });

  it('Attach to an exited process: the id message, then the exit status at once', async function () {
    const p = await server.client.run('c1', { path: 'sh', args: ['-c', 'exit 7'], user: 'root' }, {});
    await p.wait();
    const c = connect(server.socketPath);
    c.sock.write(`GET /containers/c1/processes/${p.id} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n\r\n`);
    const res = await c.closed();
    expect(res).to.match(/^HTTP\/1\.1 200 OK\r\nContent-Type: application\/json\r\n/);
    expect(res).to.match(new RegExp(`\\r\\n\\r\\n\\{"process_id":"${p.id}","stream_id":"\\d+"\\}\\n\\{"process_id":"${p.id}","exit_status":7\\}\\n$`));
  });

  it('errors on hijack routes are fully framed JSON with no Connection: close', async function () {
    const c = connect(server.socketPath);
    c.sock.write('GET /containers/c1/processes/nope HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n\r\n');
    const res = await c.closed();
    const json = '{"Type":"ProcessNotFoundError","Message":"unknown process: nope","Handle":"","ProcessID":"nope","Binary":""}\n';
    expect(res).to.match(/^HTTP\/1\.1 404 Not Found\r\n/);
    expect(res).to.match(new RegExp(`Content-Length: ${json.length}\\r\\n`));
    expect(res).to.not.match(/Connection: close/i);
    expect(res.endsWith(`\r\n\r\n${json}`)).to.equal(true);
  });

  it('an unknown stream id answers 200 and closes at once', async function () {
    const c = connect(server.socketPath);
    c.sock.write('GET /containers/c1/processes/x/attaches/999999/stdout HTTP/1.1\r\nHost: api\r\n\r\n');
    expect(await c.closed()).to.match(/^HTTP\/1\.1 200 OK\r\nDate: [^\r]+\r\nTransfer-Encoding: chunked\r\n\r\n$/);
  });

  it('gaol-escaped handles and + in paths decode as Garden does', async function () {
    const c = connect(server.socketPath);
    c.sock.write('GET /containers/x+y/properties HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n');
    const res = await c.closed();
    expect(res.endsWith('{"Type":"ContainerNotFoundError","Message":"unknown handle: x y","Handle":"x y","ProcessID":"","Binary":""}\n')).to.equal(true);
  });
});
