import { expect } from 'chai';
import fc from 'fast-check';
import { constants } from 'node:os';
import {
  encodeClose, encodeKill, encodeSpawn, encodeWrite, EventDecoder, Ev, ProtocolError, Req, SpawnFlag, type SpawnerEvent,
} from '../../src/runtime/spawner/protocol.js';
import { SpawnerGone, SpawnFailed, Spawner, type Transport, type TransportFactory } from '../../src/runtime/spawner/spawner.js';

// What trellis-spawner writes, built the way its C does (u32 LE length, u8 type, u32 id, payload).
function ev(type: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(9 + payload.length);
  b.writeUInt32LE(5 + payload.length, 0);
  b.writeUInt8(type, 4);
  b.writeUInt32LE(id, 5);
  payload.copy(b, 9);
  return b;
}
const i32 = (...v: number[]) => {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => b.writeInt32LE(x, 4 * i));
  return b;
};
const started = (id: number, pid: number) => ev(Ev.started, id, i32(pid));
const data = (id: number, fd: number, s: string) => ev(Ev.data, id, Buffer.concat([Buffer.from([fd]), Buffer.from(s)]));
const eof = (id: number, fd: number) => ev(Ev.eof, id, Buffer.from([fd]));
const exit = (id: number, code: number, signal = 0) => ev(Ev.exit, id, i32(code, signal));
const wrote = (id: number, n: number) => ev(Ev.wrote, id, i32(n));

interface Frame {
  type: number;
  id: number;
  payload: Buffer;
}

function frames(bufs: Buffer[]): Frame[] {
  const all = Buffer.concat(bufs);
  const out: Frame[] = [];
  for (let off = 0; off < all.length; ) {
    const len = all.readUInt32LE(off);
    out.push({ type: all.readUInt8(off + 4), id: all.readUInt32LE(off + 5), payload: all.subarray(off + 9, off + 4 + len) });
    off += 4 + len;
  }
  return out;
}

/** A spawner stand-in: records what gdn sends; the test answers through `reply`. */
class FakeTransports {
  made: { sent: Buffer[]; reply: (b: Buffer) => void; die: (why: string) => void; closed: boolean }[] = [];
  factory: TransportFactory = (onData, onClose) => {
    const t = { sent: [] as Buffer[], reply: onData, die: onClose, closed: false };
    this.made.push(t);
    const transport: Transport = {
      pid: 1000 + this.made.length,
      write: (b) => t.sent.push(b),
      ref: () => {},
      unref: () => {},
      close: () => (t.closed = true),
    };
    return transport;
  };
  get last() {
    return this.made[this.made.length - 1]!;
  }
}

describe('trellis-spawner protocol (issue 10)', function () {
  it('encodes a spawn request as flags, counts, then NUL-terminated file, cwd, argv (argv[0] = file) and env', function () {
    const b = encodeSpawn(7, { file: 'runc', args: ['state', 'x'], env: ['PATH=/bin', 'A=b=c'], cwd: '/tmp', flags: SpawnFlag.setsid | SpawnFlag.fd3 });
    const [f] = frames([b]);
    expect(f!.type).to.equal(Req.spawn);
    expect(f!.id).to.equal(7);
    expect(f!.payload.readUInt32LE(0)).to.equal(17);
    expect(f!.payload.readUInt32LE(4)).to.equal(3);
    expect(f!.payload.readUInt32LE(8)).to.equal(2);
    expect(f!.payload.subarray(12).toString()).to.equal('runc\0/tmp\0runc\0state\0x\0PATH=/bin\0A=b=c\0');
  });

  it('refuses NUL bytes and environment entries without "=" before anything is sent', function () {
    expect(() => encodeSpawn(1, { file: 'a', args: ['x\0y'], env: [], flags: 0 })).to.throw(TypeError, /NUL/);
    expect(() => encodeSpawn(1, { file: 'a', args: [], env: ['NOEQUALS'], flags: 0 })).to.throw(TypeError, /without '='/);
  });

  it('encodes kill, write and close', function () {
    const [k, w, c] = frames([encodeKill(3, 9, true), encodeWrite(3, Buffer.from('hi')), encodeClose(3, 0)]);
    expect([k!.type, k!.payload.readInt32LE(0), k!.payload[4]]).to.deep.equal([Req.kill, 9, 1]);
    expect([w!.type, w!.payload.toString()]).to.deep.equal([Req.write, 'hi']);
    expect([c!.type, c!.payload[0]]).to.deep.equal([Req.close, 0]);
  });

  it('decodes every event kind', function () {
    const d = new EventDecoder();
    const got = d.push(Buffer.concat([
      started(1, 4242), ev(Ev.failed, 2, Buffer.concat([i32(2), Buffer.from('No such file or directory')])),
      data(1, 3, '{"data": 1}\n'), eof(1, 2), exit(1, -1, 9), exit(1, 3), wrote(1, 8192),
    ]));
    expect(got).to.deep.equal([
      { type: 'started', id: 1, pid: 4242 },
      { type: 'failed', id: 2, errno: 2, message: 'No such file or directory' },
      { type: 'data', id: 1, fd: 3, data: Buffer.from('{"data": 1}\n') },
      { type: 'eof', id: 1, fd: 2 },
      { type: 'exit', id: 1, code: null, signal: 9 },
      { type: 'exit', id: 1, code: 3, signal: null },
      { type: 'wrote', id: 1, count: 8192 },
    ]);
  });

  it('decodes the same events however the stream is cut', function () {
    const event = fc.oneof(
      fc.record({ type: fc.constant('started' as const), id: fc.nat(), pid: fc.integer({ min: 1, max: 2 ** 22 }) }),
      fc.record({ type: fc.constant('data' as const), id: fc.nat(), fd: fc.integer({ min: 1, max: 3 }), data: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)) }),
      fc.record({ type: fc.constant('eof' as const), id: fc.nat(), fd: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ type: fc.constant('wrote' as const), id: fc.nat(), count: fc.nat() }),
    );
    const encode = (e: SpawnerEvent): Buffer => {
      switch (e.type) {
        case 'started': return started(e.id, e.pid);
        case 'data': return ev(Ev.data, e.id, Buffer.concat([Buffer.from([e.fd]), e.data]));
        case 'eof': return eof(e.id, e.fd);
        case 'wrote': return wrote(e.id, e.count);
        default: throw new Error('not generated');
      }
    };
    fc.assert(fc.property(fc.array(event, { maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1 }), (events, cuts) => {
      const all = Buffer.concat(events.map(encode));
      const d = new EventDecoder();
      const got: SpawnerEvent[] = [];
      for (let off = 0, i = 0; off < all.length; i++) {
        const n = cuts[i % cuts.length]!;
        got.push(...d.push(all.subarray(off, off + n)));
        off += n;
      }
      expect(got).to.deep.equal(events);
      expect(d.pending()).to.equal(0);
    }));
  });

  it('rejects a malformed stream: a bad length, an unknown type, a short payload', function () {
    const bad = Buffer.alloc(9);
    bad.writeUInt32LE(2, 0);
    expect(() => new EventDecoder().push(bad)).to.throw(ProtocolError, /length/);
    expect(() => new EventDecoder().push(ev(99, 1))).to.throw(ProtocolError, /unknown event type 99/);
    expect(() => new EventDecoder().push(ev(Ev.exit, 1, Buffer.alloc(3)))).to.throw(ProtocolError, /short exit/);
  });
});

describe('Spawner client (issue 10)', function () {
  it('runs a child: sends its argv and exact env, collects stdout and stderr, resolves with the exit code', async function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const p = s.run('runc', ['state', 'c1'], { env: { PATH: '/bin', GONE: undefined } });
    const [req] = frames(f.last.sent);
    expect(req!.type).to.equal(Req.spawn);
    expect(req!.payload.readUInt32LE(0)).to.equal(SpawnFlag.stdout | SpawnFlag.stderr);
    expect(req!.payload.subarray(12).toString()).to.equal('runc\0\0runc\0state\0c1\0PATH=/bin\0');
    const id = req!.id;
    f.last.reply(Buffer.concat([started(id, 55), data(id, 1, '{"id":"c1"}\n'), data(id, 2, 'warn\n'), exit(id, 1), eof(id, 1)]));
    f.last.reply(eof(id, 2));
    const r = await p;
    expect(r).to.deep.include({ exitCode: 1, signal: null, stdout: '{"id":"c1"}', stderr: 'warn', failure: undefined });
  });

  it('reports a child that could not start as SpawnFailed with the errno name', async function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const p = s.run('no-such-binary', [], { env: {} });
    const id = frames(f.last.sent)[0]!.id;
    f.last.reply(ev(Ev.failed, id, Buffer.concat([i32(constants.errno.ENOENT), Buffer.from('No such file or directory')])));
    const r = await p;
    expect(r.exitCode).to.equal(undefined);
    expect(r.failure).to.be.instanceOf(SpawnFailed);
    expect((r.failure as SpawnFailed).code).to.equal('ENOENT');
    expect(r.failure!.message).to.equal('cannot start no-such-binary: No such file or directory (ENOENT)');
  });

  it('fails every call in flight clearly when the spawner dies, and starts a new one for the next call', async function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const before = s.run('runc', ['start', 'a'], { env: {} });
    const watched = s.spawn('conmon', [], { env: {}, fd3: 'pipe', detached: true });
    const errors: Error[] = [];
    watched.on('error', (e: Error) => errors.push(e));
    const id = frames(f.last.sent)[1]!.id;
    f.last.reply(started(id, 77));
    f.last.die('the spawner closed its channel');
    const r = await before;
    expect(r.failure).to.be.instanceOf(SpawnerGone);
    expect(r.failure!.message).to.match(/went away before it said whether the child started \(runc\): the spawner closed its channel/);
    expect(errors.map((e) => e.message)).to.deep.equal(['trellis-spawner went away while it watched pid 77 (conmon): the spawner closed its channel']);
    expect(watched.fd3!.readableEnded || watched.fd3!.destroyed || watched.fd3!.readableLength === 0).to.equal(true);

    const after = s.run('runc', ['state', 'a'], { env: {} });
    expect(f.made).to.have.length(2);
    const id2 = frames(f.last.sent)[0]!.id;
    f.last.reply(Buffer.concat([started(id2, 78), exit(id2, 0), eof(id2, 1), eof(id2, 2)]));
    expect((await after).exitCode).to.equal(0);
  });

  it('treats an unreadable message as the spawner being gone, and closes it', async function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const p = s.run('runc', [], { env: {} });
    f.last.reply(ev(42, 1));
    const r = await p;
    expect(r.failure).to.be.instanceOf(SpawnerGone);
    expect(r.failure!.message).to.match(/unreadable message from the spawner: unknown event type 42/);
    expect(f.made[0]!.closed).to.equal(true);
  });

  it('sends kills by id (to the process group when asked) and none once the child has exited', function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const c = s.spawn('conmon', [], { env: {}, detached: true });
    c.on('error', () => {});
    const id = frames(f.last.sent)[0]!.id;
    f.last.reply(started(id, 90));
    expect(c.kill('SIGKILL', true)).to.equal(true);
    const k = frames(f.last.sent)[1]!;
    expect([k.type, k.id, k.payload.readInt32LE(0), k.payload[4]]).to.deep.equal([Req.kill, id, constants.signals.SIGKILL, 1]);
    f.last.reply(exit(id, -1, constants.signals.SIGKILL));
    expect(c.signalCode).to.equal('SIGKILL');
    expect(c.kill('SIGTERM')).to.equal(false);
    expect(frames(f.last.sent)).to.have.length(2);
  });

  it('calls back on stdin writes only when the spawner says they are written, and closes stdin at end', async function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const c = s.spawn('conmon-attach', ['attach'], { env: {}, stdin: 'pipe' });
    const id = frames(f.last.sent)[0]!.id;
    f.last.reply(started(id, 91));
    let written = false;
    c.stdin!.write(Buffer.from('hello'), () => (written = true));
    await new Promise((r) => setImmediate(r));
    expect(written).to.equal(false);
    f.last.reply(wrote(id, 5));
    await new Promise((r) => setImmediate(r));
    expect(written).to.equal(true);
    c.stdin!.end();
    await new Promise((r) => setImmediate(r));
    const sent = frames(f.last.sent);
    expect(sent.map((x) => x.type)).to.include.members([Req.write, Req.close]);
    expect(sent.find((x) => x.type === Req.close)!.payload[0]).to.equal(0);
  });

  it('stops reading a pipe when its stream is destroyed (conmon\'s sync pipe after the pid)', function () {
    const f = new FakeTransports();
    const s = new Spawner(f.factory);
    const c = s.spawn('conmon', [], { env: {}, fd3: 'pipe' });
    const id = frames(f.last.sent)[0]!.id;
    f.last.reply(Buffer.concat([started(id, 92), data(id, 3, '{"data": 92}\n')]));
    c.fd3!.destroy();
    const close = frames(f.last.sent).find((x) => x.type === Req.close)!;
    expect([close.id, close.payload[0]]).to.deep.equal([id, 3]);
  });
});
