import { expect } from 'chai';
import fc from 'fast-check';
import { parseSubIds } from '../../src/idmap/subid.js';
import { appendLine, isFree, parsePasswd, planSubIds, RANGE_SIZE } from '../../src/setup/subids.js';
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

    it('replaces a too small range by adding a full one', () => {
      const plan = planSubIds('alice:100000:1000\n', { name: 'alice', id: 1000 });
      expect(plan.present).to.equal(false);
      expect(plan.range.start).to.equal(101000);
      expect(parseSubIds(plan.text)).to.have.length(2);
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
