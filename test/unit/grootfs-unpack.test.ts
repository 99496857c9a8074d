// review: the unpacker reads a layer only up to the tar end-of-archive marker (two
// zero blocks), as Go's archive/tar does, so entries hidden after it are never
// extracted; a header after a single zero block is a malformed archive.
import { expect } from 'chai';
import fc from 'fast-check';
import { Readable } from 'node:stream';
import { TarEnd } from '../../plugins/grootfs/unpack.js';
import { type Entry, layerTar } from '../integration/images.js';

/** The bytes TarEnd lets through when fed `input` cut at `cuts`. */
async function through(input: Buffer, cuts: number[] = []): Promise<Buffer> {
  const points = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let at = 0;
  for (const p of [...points, input.length]) {
    if (p > at) chunks.push(input.subarray(at, p));
    at = Math.max(at, p);
  }
  const out: Buffer[] = [];
  for await (const b of Readable.from(chunks).pipe(new TarEnd())) out.push(b as Buffer);
  return Buffer.concat(out);
}

const file = (name: string, content: Buffer | string): Entry => ({ name, type: 'file', content });

const entryArb: fc.Arbitrary<Entry> = fc.record({
  name: fc.stringMatching(/^[a-z][a-z0-9]{0,19}$/),
  // Zero-filled contents look like end blocks: only headers may count.
  content: fc.oneof(
    fc.uint8Array({ maxLength: 1500 }).map((a) => Buffer.from(a)),
    fc.integer({ min: 1, max: 4 }).map((n) => Buffer.alloc(n * 512)),
  ),
}).map(({ name, content }) => file(name, content));

describe('review: grootfs unpack stops at the tar end-of-archive (TarEnd)', () => {
  it('passes an archive through exactly, up to and including its two zero blocks, and nothing after, however it is chunked', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(entryArb, { maxLength: 6 }),
        fc.uint8Array({ maxLength: 3000 }),
        fc.array(fc.nat(), { maxLength: 8 }),
        async (entries, tail, cuts) => {
          const archive = layerTar(entries);
          expect((await through(Buffer.concat([archive, Buffer.from(tail)]), cuts)).equals(archive)).to.equal(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a second archive appended after the first never reaches the reader', async () => {
    const a = layerTar([file('a', 'in the archive\n')]);
    const b = layerTar([file('etc/passwd', 'evil::0:0::/:/bin/sh\n')]);
    expect((await through(Buffer.concat([a, b]))).equals(a)).to.equal(true);
  });

  it('a header after a single zero block is refused as a malformed layer', async () => {
    const a = layerTar([file('a', 'x\n')]);
    const input = Buffer.concat([a.subarray(0, a.length - 1024), Buffer.alloc(512), layerTar([file('b', 'hidden\n')])]);
    let err: unknown;
    try {
      await through(input);
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(Error);
    expect((err as Error).message).to.equal('invalid layer: a tar header follows a single zero block');
  });
});
