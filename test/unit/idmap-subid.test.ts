import { expect } from 'chai';
import fc from 'fast-check';
import {
  buildMappings, formatMapping, nextFreeStart, parseMappingFlag, parseSubIds, primaryRange, rangesFor, toHost,
} from '../../src/idmap/subid.js';

describe('subuid/subgid parsing', function () {
  it('reads name:start:count lines, by name or by uid', function () {
    const r = parseSubIds('alice:100000:65536\n1001:165536:65536\n');
    expect(r).to.deep.equal([
      { owner: 'alice', start: 100000, count: 65536 },
      { owner: '1001', start: 165536, count: 65536 },
    ]);
    expect(rangesFor(r, { name: 'alice', id: 1000 })).to.have.length(1);
    expect(rangesFor(r, { name: 'bob', id: 1001 })[0]!.start).to.equal(165536);
  });

  it('skips comments, blank and malformed lines as shadow-utils does', function () {
    const text = '# comment\n\nbad\nalice:x:10\nalice:10:0\nalice:-5:10\n:1:2\nalice:4294967295:2\nalice:200000:10\n';
    expect(parseSubIds(text)).to.deep.equal([{ owner: 'alice', start: 200000, count: 10 }]);
  });

  it('takes the largest range as the primary one', function () {
    const r = parseSubIds('alice:100000:1000\nalice:300000:65536\n');
    expect(primaryRange(r, { name: 'alice', id: 1000 })).to.deep.equal({ owner: 'alice', start: 300000, count: 65536 });
    expect(primaryRange(r, { name: 'bob', id: 1001 })).to.equal(undefined);
  });

  it('finds a free start that overlaps no existing range', function () {
    fc.assert(
      fc.property(fc.array(fc.record({ start: fc.integer({ min: 0, max: 1_000_000 }), count: fc.integer({ min: 1, max: 100_000 }) })), fc.integer({ min: 1, max: 70_000 }), (ranges, count) => {
        const existing = ranges.map((r) => ({ owner: 'u', ...r }));
        const start = nextFreeStart(existing, count);
        expect(start).to.be.at.least(100000);
        for (const r of existing) expect(start + count <= r.start || start >= r.start + r.count).to.equal(true);
      }),
    );
  });

  it('maps container root to the user and 1.. to the range', function () {
    const maps = buildMappings(1001, { start: 165536, count: 65536 });
    expect(maps).to.deep.equal([
      { containerID: 0, hostID: 1001, size: 1 },
      { containerID: 1, hostID: 165536, size: 65536 },
    ]);
    expect(toHost(maps, 0)).to.equal(1001);
    expect(toHost(maps, 1000)).to.equal(166535);
    expect(toHost(maps, 65536)).to.equal(231071);
    expect(toHost(maps, 65537)).to.equal(undefined);
  });

  it('parses and formats grootfs CONTAINER:HOST:SIZE flags, refusing bad ones', function () {
    expect(formatMapping(parseMappingFlag('1:100000:65536'))).to.equal('1:100000:65536');
    for (const bad of ['1:2', 'a:b:c', '1:2:0', '-1:2:3', '']) expect(() => parseMappingFlag(bad), bad).to.throw(/invalid id mapping/);
  });
});
