// The frames gdn and trellis-spawner exchange (see trellis-spawner.c for the reference):
// u32 little-endian length of what follows, u8 type, u32 id, payload.

export const Req = { spawn: 1, kill: 2, write: 3, close: 4 } as const;
export const Ev = { started: 1, failed: 2, data: 3, eof: 4, exit: 5, wrote: 6 } as const;

export const SpawnFlag = { setsid: 1, stdin: 2, stdout: 4, stderr: 8, fd3: 16 } as const;

/** What the spawner allows in one frame; larger stdin writes are split by the caller. */
export const MAX_FRAME = 16 << 20;

export interface SpawnRequest {
  file: string;
  args: string[];
  /** Exactly the child's environment, as NAME=value. */
  env: string[];
  cwd?: string;
  flags: number;
}

function frame(type: number, id: number, payload: Buffer): Buffer {
  const b = Buffer.allocUnsafe(9 + payload.length);
  b.writeUInt32LE(5 + payload.length, 0);
  b.writeUInt8(type, 4);
  b.writeUInt32LE(id, 5);
  payload.copy(b, 9);
  return b;
}

function cstring(s: string, what: string): Buffer {
  if (s.includes('\0')) throw new TypeError(`${what} contains a NUL byte`);
  return Buffer.from(`${s}\0`, 'utf8');
}

export function encodeSpawn(id: number, r: SpawnRequest): Buffer {
  const head = Buffer.allocUnsafe(12);
  head.writeUInt32LE(r.flags, 0);
  // argv[0] is the file, as node's spawn makes it.
  head.writeUInt32LE(r.args.length + 1, 4);
  head.writeUInt32LE(r.env.length, 8);
  const parts = [head, cstring(r.file, 'file'), cstring(r.cwd ?? '', 'cwd'), cstring(r.file, 'argv'), ...r.args.map((a) => cstring(a, 'an argument'))];
  for (const e of r.env) {
    if (!e.includes('=')) throw new TypeError(`environment entry without '=': ${e}`);
    parts.push(cstring(e, 'the environment'));
  }
  const payload = Buffer.concat(parts);
  if (payload.length + 5 > MAX_FRAME) throw new RangeError('spawn request too large');
  return frame(Req.spawn, id, payload);
}

export function encodeKill(id: number, signal: number, group: boolean): Buffer {
  const p = Buffer.alloc(5);
  p.writeInt32LE(signal, 0);
  p.writeUInt8(group ? 1 : 0, 4);
  return frame(Req.kill, id, p);
}

export function encodeWrite(id: number, data: Buffer): Buffer {
  if (data.length + 5 > MAX_FRAME) throw new RangeError('write too large for one frame');
  return frame(Req.write, id, data);
}

/** fd 0: close the child's stdin once what is queued is written; 1, 2, 3: stop reading that pipe. */
export function encodeClose(id: number, fd: 0 | 1 | 2 | 3): Buffer {
  return frame(Req.close, id, Buffer.from([fd]));
}

export type SpawnerEvent =
  | { type: 'started'; id: number; pid: number }
  | { type: 'failed'; id: number; errno: number; message: string }
  | { type: 'data'; id: number; fd: number; data: Buffer }
  | { type: 'eof'; id: number; fd: number }
  | { type: 'exit'; id: number; code: number | null; signal: number | null }
  | { type: 'wrote'; id: number; count: number };

export class ProtocolError extends Error {}

/** Turns the spawner's byte stream into events; throws ProtocolError on anything malformed. */
export class EventDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): SpawnerEvent[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: SpawnerEvent[] = [];
    let off = 0;
    while (this.buf.length - off >= 4) {
      const len = this.buf.readUInt32LE(off);
      if (len < 5 || len > MAX_FRAME) throw new ProtocolError(`bad frame length ${len}`);
      if (this.buf.length - off - 4 < len) break;
      const type = this.buf.readUInt8(off + 4);
      const id = this.buf.readUInt32LE(off + 5);
      const p = this.buf.subarray(off + 9, off + 4 + len);
      out.push(decodeEvent(type, id, p));
      off += 4 + len;
    }
    this.buf = off === this.buf.length ? Buffer.alloc(0) : Buffer.from(this.buf.subarray(off));
    return out;
  }

  /** Bytes of an unfinished frame (a spawner that died mid-frame leaves some). */
  pending(): number {
    return this.buf.length;
  }
}

function need(p: Buffer, n: number, what: string): void {
  if (p.length < n) throw new ProtocolError(`short ${what} event (${p.length} bytes)`);
}

function decodeEvent(type: number, id: number, p: Buffer): SpawnerEvent {
  switch (type) {
    case Ev.started:
      need(p, 4, 'started');
      return { type: 'started', id, pid: p.readInt32LE(0) };
    case Ev.failed:
      need(p, 4, 'failed');
      return { type: 'failed', id, errno: p.readInt32LE(0), message: p.subarray(4).toString('utf8') };
    case Ev.data:
      need(p, 1, 'data');
      return { type: 'data', id, fd: p.readUInt8(0), data: Buffer.from(p.subarray(1)) };
    case Ev.eof:
      need(p, 1, 'eof');
      return { type: 'eof', id, fd: p.readUInt8(0) };
    case Ev.exit: {
      need(p, 8, 'exit');
      const code = p.readInt32LE(0);
      const signal = p.readInt32LE(4);
      return { type: 'exit', id, code: code >= 0 ? code : null, signal: signal > 0 ? signal : null };
    }
    case Ev.wrote:
      need(p, 4, 'wrote');
      return { type: 'wrote', id, count: p.readUInt32LE(0) };
    default:
      throw new ProtocolError(`unknown event type ${type}`);
  }
}
