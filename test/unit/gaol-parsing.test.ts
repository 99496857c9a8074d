// gaol's argument parsing: Go durations, shell words, bind mounts, IPs.

import { expect } from 'chai';
import fc from 'fast-check';
import { goIP, parseBindMount } from '../../cmd/gaol.js';
import { parseGoDuration } from '../../src/client/duration.js';
import { shellWords } from '../../src/client/shellwords.js';

const NS: Record<string, bigint> = {
  ns: 1n, us: 1000n, 'µs': 1000n, 'μs': 1000n, ms: 1_000_000n, s: 1_000_000_000n, m: 60_000_000_000n, h: 3_600_000_000_000n,
};

describe('Go duration parsing', () => {
  it('parses the forms gaol users type', () => {
    expect(parseGoDuration('10m')).to.equal(600_000_000_000n);
    expect(parseGoDuration('1h30m')).to.equal(5_400_000_000_000n);
    expect(parseGoDuration('1.5h')).to.equal(5_400_000_000_000n);
    expect(parseGoDuration('500ms')).to.equal(500_000_000n);
    expect(parseGoDuration('0')).to.equal(0n);
    expect(parseGoDuration('0s')).to.equal(0n);
    expect(parseGoDuration('.5s')).to.equal(500_000_000n);
    expect(parseGoDuration('1.s')).to.equal(1_000_000_000n);
    expect(parseGoDuration('-1.5h')).to.equal(-5_400_000_000_000n);
    expect(parseGoDuration('+2s')).to.equal(2_000_000_000n);
    expect(parseGoDuration('1µs1μs1us')).to.equal(3000n);
    expect(parseGoDuration('9223372036854775807ns')).to.equal(9223372036854775807n);
    expect(parseGoDuration('1.0000000000000000000001s')).to.equal(1_000_000_000n);
  });

  it('rejects what Go rejects, with Go 1.11 messages', () => {
    const cases: Array<[string, string]> = [
      ['', 'time: invalid duration '],
      ['1', 'time: missing unit in duration 1'],
      ['10x', 'time: unknown unit x in duration 10x'],
      ['.s', 'time: invalid duration .s'],
      ['s', 'time: invalid duration s'],
      ['-', 'time: invalid duration -'],
      ['1h 30m', 'time: unknown unit h  in duration 1h 30m'],
      ['9223372036854775808ns', 'time: invalid duration 9223372036854775808ns'],
      ['2562048h', 'time: invalid duration 2562048h'],
    ];
    for (const [input, message] of cases) expect(() => parseGoDuration(input), input).to.throw(message);
  });

  it('sums integer components of any unit exactly', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 100000 }), fc.constantFrom(...Object.keys(NS))), { minLength: 1, maxLength: 6 }),
        (parts) => {
          const text = parts.map(([n, u]) => `${n}${u}`).join('');
          const expected = parts.reduce((acc, [n, u]) => acc + BigInt(n) * NS[u]!, 0n);
          expect(parseGoDuration(text)).to.equal(expected);
        },
      ),
    );
  });
});

describe('shell words', () => {
  it('splits like go-shellwords', () => {
    expect(shellWords("sh -c 'echo hi; exit 3'")).to.deep.equal(['sh', '-c', 'echo hi; exit 3']);
    expect(shellWords('sh -c "echo \\"hi\\" there"')).to.deep.equal(['sh', '-c', 'echo "hi" there']);
    expect(shellWords('  a\t b\nc  ')).to.deep.equal(['a', 'b', 'c']);
    expect(shellWords('a\\ b c')).to.deep.equal(['a b', 'c']);
    expect(shellWords("it''s \"x\"y")).to.deep.equal(['its', 'xy']);
    expect(shellWords("'' a")).to.deep.equal(['a']);
    expect(shellWords('echo hi; exit 3')).to.deep.equal(['echo', 'hi']);
    expect(shellWords('ls 2>/dev/null')).to.deep.equal(['ls']);
    expect(shellWords('')).to.deep.equal([]);
    expect(() => shellWords("sh -c 'oops")).to.throw('invalid command line string');
    expect(() => shellWords('a "b')).to.throw('invalid command line string');
    expect(() => shellWords('a\\')).to.throw('invalid command line string');
  });

  it('gives back any non-empty words once single-quoted', () => {
    const quote = (w: string): string => `'${w.replace(/'/g, `'\\''`)}'`;
    fc.assert(
      fc.property(fc.array(fc.string({ minLength: 1 }), { maxLength: 6 }), (words) => {
        expect(shellWords(words.map(quote).join(' '))).to.deep.equal(words);
      }),
    );
  });
});

describe('gaol flag values', () => {
  it('parses bind mounts with gaol\'s RW default', () => {
    expect(parseBindMount('/tmp:/mnt:ro')).to.deep.equal({ src_path: '/tmp', dst_path: '/mnt', mode: 0, origin: 0 });
    expect(parseBindMount('/var:/v')).to.deep.equal({ src_path: '/var', dst_path: '/v', mode: 1, origin: 0 });
    expect(parseBindMount('/a:/b:rw')).to.deep.equal({ src_path: '/a', dst_path: '/b', mode: 1, origin: 0 });
    for (const bad of ['/a', '/a:/b:xx', ':/b', '/a:', '/a:/b:ro:x']) expect(() => parseBindMount(bad), bad).to.throw(/invalid bind-mount/);
  });

  it('writes IPs as Go marshals net.IP', () => {
    expect(goIP('10.0.0.1')).to.equal('10.0.0.1');
    expect(goIP('0:0:0:0:0:0:0:1')).to.equal('::1');
    expect(goIP('2001:DB8:0:0:1:0:0:1')).to.equal('2001:db8::1:0:0:1');
    expect(goIP('::ffff:1.2.3.4')).to.equal('1.2.3.4');
    expect(() => goIP('10.0.0')).to.throw("invalid IP: '10.0.0'");
  });
});
