// Depot names for handles and process ids (src/runtime/depot.ts).

import { expect } from 'chai';
import fc from 'fast-check';
import { containerKey, processDirName } from '../../src/runtime/depot.js';

const anyHandle = fc.oneof(
  fc.fullUnicodeString({ maxLength: 200 }),
  fc.stringMatching(/^[A-Za-z0-9_.+\-/ ]{0,140}$/),
  fc.constantFrom('', '.', '..', '/', 'a/b', '../x', '\0', 'x\0y', '-rf', '--help'),
);

for (const [name, fn, prefix] of [['containerKey', containerKey, 'h-'], ['processDirName', processDirName, 'p-']] as const) {
  describe(name, () => {
    it('keeps a safe name as it is', () => {
      for (const h of ['c1', 'my-handle_1.2+3', 'e3b0c442-98fc-4c14-9afb-000000000001', 'A', '9', '_x', 'a..b', 'x'.repeat(128)]) {
        expect(fn(h)).to.equal(h);
      }
    });

    it('replaces an unsafe name by a stable digest', () => {
      for (const h of ['', '.', '..', '.hidden', 'a b', 'a/b', '../../etc', 'x\0', 'é', 'x'.repeat(129), 'a:b']) {
        const k = fn(h);
        expect(k, JSON.stringify(h)).to.match(new RegExp(`^${prefix}[0-9a-f]{40}$`));
        expect(fn(h)).to.equal(k);
      }
      expect(fn('a b')).to.not.equal(fn('a  b'));
    });

    it('never yields a path: no "/", no NUL, not "." or "..", at most 128 characters', () => {
      fc.assert(
        fc.property(anyHandle, (h) => {
          const k = fn(h);
          expect(k).to.not.include('/');
          expect(k).to.not.include('\0');
          expect(k).to.not.be.oneOf(['', '.', '..']);
          expect(k.length).to.be.within(1, 128);
          expect(k).to.match(/^[A-Za-z0-9_.+-]+$/);
          expect(fn(h)).to.equal(k);
        }),
      );
    });
  });
}

describe('containerKey as a runc/conmon id', () => {
  // BUG candidate: the key is passed to runc as a positional argument (`runc start <key>`,
  // `runc delete --force <key>`, `runc state <key>`, conmon's `-c <key>` ending up as
  // runc create's last argv). A handle like "-h" or "--help" is kept as the key and is then
  // parsed as a flag. Garden accepts such handles.
  it('never starts with "-" (it would be read as a flag)', () => {
    for (const h of ['-h', '--help', '-rf', '--force']) expect(containerKey(h), h).to.not.match(/^-/);
    fc.assert(fc.property(anyHandle, (h) => { expect(containerKey(h)).to.not.match(/^-/); }));
  });

  // BUG candidate (minor): a safe handle spelled like another handle's digest gets the same key,
  // so creating it fails with "Handle '<h>' already in use" though no container has that handle.
  it('maps distinct handles to distinct keys', () => {
    const a = 'a b';
    const b = containerKey(a); // "h-…": itself a safe handle
    expect(containerKey(b), `${JSON.stringify(a)} vs ${JSON.stringify(b)}`).to.not.equal(containerKey(a));
  });
});
