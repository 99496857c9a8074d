import { expect } from 'chai';
import fc from 'fast-check';
import { parseSubIds } from '../../src/idmap/subid.js';
import { appendLine, checkSubIdCount, isFree, MAX_SUBID, parsePasswd, planSubIds, RANGE_SIZE, subIdFloor } from '../../src/setup/subids.js';
import { resolveIds } from '../../src/setup/command.js';
import { FailedPrecondition, InvalidArgument } from '../../src/errors.js';

describe('setup: subordinate ids', () => {
  describe('planSubIds', () => {
    it('keeps a big enough range the user has, by name or by uid', () => {
      const text = '# comment\nalice:100000:65536\n1001:200000:70000\n';
      expect(planSubIds(text, { name: 'alice', id: 1000 })).to.deep.equal({
        range: { owner: 'alice', start: 100000, count: 65536 },
        present: true,
        text,
      });
      expect(planSubIds(text, { name: 'bob', id: 1001 }).range).to.deep.equal({ owner: '1001', start: 200000, count: 70000 });
    });

    it('appends a line after the existing ranges, keeping every old line', () => {
      const text = 'cloudsdk:100000:65536\n# keep me\nbroken line';
      const plan = planSubIds(text, { name: 'trellis-test', id: 1001 });
      expect(plan.present).to.equal(false);
      expect(plan.range).to.deep.equal({ owner: 'trellis-test', start: 165536, count: RANGE_SIZE });
      expect(plan.text).to.equal('cloudsdk:100000:65536\n# keep me\nbroken line\ntrellis-test:165536:65536\n');
    });

    it('grows a too small range in place when the ids after it are free (issue 8)', () => {
      const plan = planSubIds('alice:100000:1000\n', { name: 'alice', id: 1000 });
      expect(plan.present).to.equal(false);
      expect(plan.range).to.deep.equal({ owner: 'alice', start: 100000, count: RANGE_SIZE });
      expect(parseSubIds(plan.text)).to.deep.equal([plan.range]);
    });

    it('names the uid when the user has no passwd entry', () => {
      expect(planSubIds('', { id: 4242 }).text).to.equal('4242:100000:65536\n');
    });

    it('takes the preferred start when it is free, else the next free one', () => {
      expect(planSubIds('a:100000:65536\n', { name: 'u', id: 5 }, RANGE_SIZE, 300000).range.start).to.equal(300000);
      expect(planSubIds('a:100000:65536\n', { name: 'u', id: 5 }, RANGE_SIZE, 120000).range.start).to.equal(165536);
    });

    it('never overlaps an existing range, and keeps the old text as a prefix', () => {
      const range = fc.record({ start: fc.integer({ min: 0, max: 2_000_000 }), count: fc.integer({ min: 1, max: 200_000 }) });
      fc.assert(
        fc.property(fc.array(range, { maxLength: 8 }), fc.option(fc.integer({ min: 0, max: 2_000_000 }), { nil: undefined }), (rs, preferred) => {
          const text = rs.map((r, i) => `other${i}:${r.start}:${r.count}`).join('\n');
          const plan = planSubIds(text, { name: 'me', id: 1000 }, RANGE_SIZE, preferred);
          expect(plan.present).to.equal(false);
          expect(plan.text.startsWith(text)).to.equal(true);
          expect(isFree(parseSubIds(text), plan.range.start, plan.range.count)).to.equal(true);
          const after = parseSubIds(plan.text);
          expect(after).to.have.length(rs.length + 1);
          expect(after.at(-1)).to.deep.equal(plan.range);
        }),
      );
    });
  });

  describe('issue 8: --subid-count', () => {
    it('takes a whole count from 65536 up to what fits below 4294967295 above 100000', () => {
      expect(checkSubIdCount(65536)).to.equal(65536);
      expect(checkSubIdCount(1000000001)).to.equal(1000000001);
      expect(checkSubIdCount(MAX_SUBID - 100000 + 1)).to.equal(4294867295);
      for (const bad of [65535, 0, -1, 1.5, Number.NaN, MAX_SUBID - 100000 + 2, 2 ** 32, '70000', undefined]) {
        expect(() => checkSubIdCount(bad), String(bad)).to.throw(InvalidArgument, /^--subid-count must be a whole number of ids between 65536 and 4294867295, got /);
      }
    });

    it("puts a larger range above useradd's window (login.defs SUB_UID_MAX, SUB_GID_MAX), a default one at 100000", () => {
      expect(subIdFloor(65536, 'SUB_UID_MAX 5\n')).to.equal(100000);
      expect(subIdFloor(65537, '')).to.equal(600100001);
      expect(subIdFloor(1000000001, '# x\nSUB_UID_MIN\t\t   100000\nSUB_UID_MAX\t\t600100000\nSUB_GID_MAX 700000000\n')).to.equal(700000001);
      expect(subIdFloor(1000000001, '#SUB_UID_MAX 9\nSUB_UID_MAX 200000\n')).to.equal(200001);
    });

    it('gives a new user a range of the count, never past 4294967294', () => {
      const plan = planSubIds('a:100000:65536\n', { name: 'me', id: 1000 }, 1000000001);
      expect(plan.range).to.deep.equal({ owner: 'me', start: 165536, count: 1000000001 });
      expect(plan.text).to.equal('a:100000:65536\nme:165536:1000000001\n');
      expect(() => planSubIds(`a:100000:${MAX_SUBID - 200000}\n`, { name: 'me', id: 1000 }, 200000, undefined, '/etc/subgid')).to.throw(
        FailedPrecondition,
        'no free range of 200000 ids below 4294967295 in /etc/subgid: pass a smaller --subid-count',
      );
    });

    it('grows a smaller range in place when the ids after it are free, keeping every other line', () => {
      const text = '# mine\nme:300000:65536\nother:100000:65536\nbroken\n';
      const plan = planSubIds(text, { name: 'me', id: 1000 }, 1000000001);
      expect(plan.present).to.equal(false);
      expect(plan.grownFrom).to.deep.equal({ owner: 'me', start: 300000, count: 65536 });
      expect(plan.range).to.deep.equal({ owner: 'me', start: 300000, count: 1000000001 });
      expect(plan.text).to.equal('# mine\nme:300000:1000000001\nother:100000:65536\nbroken\n');
      // by uid too, and a range already big enough is kept as it is
      expect(planSubIds('1000:300000:65536', { name: 'me', id: 1000 }, 70000).text).to.equal('1000:300000:70000');
      expect(planSubIds(plan.text, { name: 'me', id: 1000 }, 65536)).to.include({ present: true, text: plan.text });
    });

    it("refuses to grow into another user's ids or past 4294967294, naming the fix", () => {
      const text = 'me:100000:65536\nother:165536:65536\n';
      expect(() => planSubIds(text, { name: 'me', id: 1000 }, 1000000001)).to.throw(
        FailedPrecondition,
        "me's range 100000:65536 in /etc/subuid has fewer than the 1000000001 ids asked for and cannot grow in place (ids 165536-231071 after it are other's): " +
          "purge the user's setup (/usr/lib/trellis/scripts/purge-user 1000), remove me's lines from /etc/subuid and /etc/subgid, and run gdn setup again, or keep --subid-count at most 65536",
      );
      expect(() => planSubIds(`me:${MAX_SUBID - 65535}:65536\n`, { name: 'me', id: 1000 }, 70000)).to.throw(FailedPrecondition, /cannot grow in place \(it would pass 4294967294\)/);
    });

    it('never overlaps any range, whatever the file holds', () => {
      const range = fc.record({ start: fc.integer({ min: 0, max: 3_000_000 }), count: fc.integer({ min: 1, max: 500_000 }) });
      fc.assert(
        fc.property(fc.array(range, { maxLength: 6 }), fc.option(range, { nil: undefined }), fc.integer({ min: RANGE_SIZE, max: 2_000_000 }), (rs, mine, count) => {
          const lines = rs.map((r, i) => `other${i}:${r.start}:${r.count}`);
          if (mine !== undefined) lines.push(`me:${mine.start}:${mine.count}`);
          const text = lines.join('\n');
          let plan;
          try {
            plan = planSubIds(text, { name: 'me', id: 1000 }, count);
          } catch (err) {
            expect(err).to.be.instanceOf(FailedPrecondition);
            expect(mine, 'only a range that cannot grow is refused').to.not.equal(undefined);
            return;
          }
          expect(plan.range.count).to.be.at.least(count);
          expect(plan.range.start + plan.range.count - 1).to.be.at.most(MAX_SUBID);
          const others = parseSubIds(text).filter((r) => r.owner !== 'me');
          if (!plan.present) expect(isFree(others, plan.range.start, plan.range.count)).to.equal(true);
          expect(parseSubIds(plan.text).filter((r) => r.owner !== 'me')).to.deep.equal(others);
        }),
      );
    });
  });

  it('appendLine ends the previous line first', () => {
    expect(appendLine('', 'x:1:2')).to.equal('x:1:2\n');
    expect(appendLine('a:1:1', 'x:1:2')).to.equal('a:1:1\nx:1:2\n');
    expect(appendLine('a:1:1\n', 'x:1:2')).to.equal('a:1:1\nx:1:2\n');
  });

  it('parsePasswd reads names, ids and homes', () => {
    expect(parsePasswd('root:x:0:0:root:/root:/bin/bash\nbad\ntrellis-test:x:1001:1002::/home/trellis-test:/bin/bash\n')).to.deep.equal([
      { name: 'root', uid: 0, gid: 0, home: '/root' },
      { name: 'trellis-test', uid: 1001, gid: 1002, home: '/home/trellis-test' },
    ]);
  });

  describe('resolveIds (gdn setup flags)', () => {
    const own = { uid: 1000, gid: 1000 };
    it('takes the flags, else the sudo caller', () => {
      expect(resolveIds({ uid: 7, gid: 8 }, { SUDO_UID: '1', SUDO_GID: '2' }, 0, own)).to.deep.equal({ uid: 7, gid: 8 });
      expect(resolveIds({}, { SUDO_UID: '1001', SUDO_GID: '1002' }, 0, own)).to.deep.equal({ uid: 1001, gid: 1002 });
    });

    it('refuses to guess', () => {
      expect(() => resolveIds({}, {}, 0, own)).to.throw(InvalidArgument, /--rootless-uid/);
      expect(() => resolveIds({ uid: 5 }, {}, 0, own)).to.throw(InvalidArgument, /together/);
    });

    it('tells a non-root caller the command to run', () => {
      expect(() => resolveIds({}, {}, 1000, own)).to.throw(
        FailedPrecondition,
        /^gdn setup must run as root: sudo gdn setup --rootless-uid 1000 --rootless-gid 1000$/,
      );
      expect(() => resolveIds({ uid: 7, gid: 8 }, {}, 1000, own)).to.throw(FailedPrecondition, /--rootless-uid 7 --rootless-gid 8$/);
    });
  });
});
