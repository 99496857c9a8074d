// conmon's k8s-file log parser (src/runtime/k8slog.ts): the bytes back, per stream.

import { expect } from 'chai';
import fc from 'fast-check';
import { parseK8sLog } from '../../src/runtime/k8slog.js';

const TS = '2026-11-25T16:07:29.123456789+00:00';
const rec = (stream: string, tag: string, content: string | Buffer) =>
  Buffer.concat([Buffer.from(`${TS} ${stream} ${tag} `), Buffer.from(content), Buffer.from('\n')]);

type Stream = 'stdout' | 'stderr';

/** Encodes one write as conmon does: each '\n'-ended line an F record, a remainder a P record. */
function conmonEncode(stream: Stream, data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  for (;;) {
    const nl = data.indexOf(0x0a, pos);
    if (nl < 0) break;
    out.push(rec(stream, 'F', data.subarray(pos, nl)));
    pos = nl + 1;
  }
  if (pos < data.length) out.push(rec(stream, 'P', data.subarray(pos)));
  return out;
}

function collect(records: { stream: Stream; data: Buffer }[]): Record<Stream, Buffer> {
  return {
    stdout: Buffer.concat(records.filter((r) => r.stream === 'stdout').map((r) => r.data)),
    stderr: Buffer.concat(records.filter((r) => r.stream === 'stderr').map((r) => r.data)),
  };
}

describe('parseK8sLog', () => {
  it('gives an F record its newline back and a P record none', () => {
    const buf = Buffer.concat([rec('stdout', 'P', 'hel'), rec('stdout', 'F', 'lo')]);
    const { records, consumed } = parseK8sLog(buf);
    expect(records.map((r) => [r.stream, r.data.toString()])).to.deep.equal([['stdout', 'hel'], ['stdout', 'lo\n']]);
    expect(consumed).to.equal(buf.length);
  });

  it('tells stdout from stderr', () => {
    const buf = Buffer.concat([rec('stderr', 'F', 'oops'), rec('stdout', 'F', 'ok')]);
    const { records } = parseK8sLog(buf);
    expect(records.map((r) => [r.stream, r.data.toString()])).to.deep.equal([['stderr', 'oops\n'], ['stdout', 'ok\n']]);
  });

  it('keeps spaces and odd bytes in the content', () => {
    const content = Buffer.from([0x20, 0x41, 0x20, 0x20, 0xff, 0x00, 0x0d, 0x20]);
    const { records } = parseK8sLog(rec('stdout', 'P', content));
    expect(records).to.have.length(1);
    expect(records[0]!.data.equals(content)).to.equal(true);
  });

  it('does not consume an incomplete trailing record', () => {
    const full = rec('stdout', 'F', 'one');
    const partial = Buffer.from(`${TS} stdout F tw`);
    const { records, consumed } = parseK8sLog(Buffer.concat([full, partial]));
    expect(records.map((r) => r.data.toString())).to.deep.equal(['one\n']);
    expect(consumed).to.equal(full.length);
  });

  it('reads nothing from a buffer without a newline', () => {
    expect(parseK8sLog(Buffer.from(`${TS} stdout P abc`))).to.deep.equal({ records: [], consumed: 0 });
    expect(parseK8sLog(Buffer.alloc(0))).to.deep.equal({ records: [], consumed: 0 });
  });

  it('an empty F record is an empty line; an empty P record is nothing', () => {
    const withSpace = parseK8sLog(Buffer.from(`${TS} stdout F \n${TS} stdout P \n`));
    expect(withSpace.records.map((r) => r.data.toString())).to.deep.equal(['\n']);
    const noSpace = parseK8sLog(Buffer.from(`${TS} stderr F\n${TS} stdout P\n`));
    expect(noSpace.records.map((r) => [r.stream, r.data.toString()])).to.deep.equal([['stderr', '\n']]);
    expect(noSpace.consumed).to.equal(Buffer.byteLength(`${TS} stderr F\n${TS} stdout P\n`));
  });

  it('skips a malformed line but consumes it', () => {
    const bad = Buffer.from('garbage\n');
    const good = rec('stdout', 'F', 'x');
    const { records, consumed } = parseK8sLog(Buffer.concat([bad, good]));
    expect(records.map((r) => r.data.toString())).to.deep.equal(['x\n']);
    expect(consumed).to.equal(bad.length + good.length);
  });

  it('round-trips any sequence of writes byte-exactly per stream', () => {
    const chunk = fc.record({
      stream: fc.constantFrom<Stream>('stdout', 'stderr'),
      data: fc.uint8Array({ minLength: 1, maxLength: 64 }).map((a) => Buffer.from(a)),
    });
    // bias toward newlines so F records are common
    const nlChunk = fc.record({
      stream: fc.constantFrom<Stream>('stdout', 'stderr'),
      data: fc.array(fc.constantFrom('a', ' ', '\n', 'F', 'P', '\r'), { minLength: 1, maxLength: 20 }).map((a) => Buffer.from(a.join(''))),
    });
    fc.assert(
      fc.property(fc.array(fc.oneof(chunk, nlChunk), { maxLength: 20 }), (chunks) => {
        const log = Buffer.concat(chunks.flatMap((c) => conmonEncode(c.stream, c.data)));
        const { records, consumed } = parseK8sLog(log);
        expect(consumed).to.equal(log.length);
        const got = collect(records);
        const want = {
          stdout: Buffer.concat(chunks.filter((c) => c.stream === 'stdout').map((c) => c.data)),
          stderr: Buffer.concat(chunks.filter((c) => c.stream === 'stderr').map((c) => c.data)),
        };
        expect(got.stdout.equals(want.stdout), 'stdout').to.equal(true);
        expect(got.stderr.equals(want.stderr), 'stderr').to.equal(true);
      }),
    );
  });

  it('gives the same bytes however the log is split between reads', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ stream: fc.constantFrom<Stream>('stdout', 'stderr'), data: fc.uint8Array({ minLength: 1, maxLength: 40 }) }), { maxLength: 10 }),
        fc.array(fc.nat(), { maxLength: 5 }),
        (chunks, cuts) => {
          const log = Buffer.concat(chunks.flatMap((c) => conmonEncode(c.stream, Buffer.from(c.data))));
          const whole = collect(parseK8sLog(log).records);
          // feed the log in pieces, keeping what was not consumed, as a tailing reader does
          const points = [...new Set(cuts.map((c) => (log.length === 0 ? 0 : c % (log.length + 1))))].sort((a, b) => a - b);
          let pending = Buffer.alloc(0);
          let prev = 0;
          const all: { stream: Stream; data: Buffer }[] = [];
          for (const p of [...points, log.length]) {
            pending = Buffer.concat([pending, log.subarray(prev, p)]);
            prev = p;
            const { records, consumed } = parseK8sLog(pending);
            all.push(...records);
            pending = pending.subarray(consumed);
          }
          expect(pending.length).to.equal(0);
          const pieced = collect(all);
          expect(pieced.stdout.equals(whole.stdout)).to.equal(true);
          expect(pieced.stderr.equals(whole.stderr)).to.equal(true);
        },
      ),
    );
  });
});
