// Handle validation (src/gardener/gardener.ts validateHandle).

import { expect } from 'chai';
import fc from 'fast-check';
import { validateHandle } from '../../src/gardener/gardener.js';
import { InvalidArgument } from '../../src/errors.js';

describe('validateHandle', () => {
  it('accepts ordinary handles, spaces and non-ASCII included', () => {
    for (const h of ['c1', 'e3b0c442-98fc-4c14-9afb-000000000001', 'x y', 'a.b', 'é', 'a+b', 'x'.repeat(512), '€'.repeat(170)]) {
      expect(() => validateHandle(h), h).to.not.throw();
    }
  });

  it('rejects a "/"', () => {
    for (const h of ['/', 'a/b', '/x', 'x/']) expect(() => validateHandle(h), h).to.throw(InvalidArgument, /must not contain '\/'/);
  });

  it('rejects "." and ".."', () => {
    for (const h of ['.', '..', 'a..b', '...']) expect(() => validateHandle(h), h).to.throw(InvalidArgument, /\.\./);
  });

  it('rejects NUL', () => {
    for (const h of ['\0', 'a\0b']) expect(() => validateHandle(h), JSON.stringify(h)).to.throw(InvalidArgument, /NUL/);
  });

  it('rejects more than 512 bytes, counted in UTF-8', () => {
    expect(() => validateHandle('x'.repeat(513))).to.throw(InvalidArgument, /512/);
    expect(() => validateHandle('€'.repeat(171))).to.throw(InvalidArgument, /512/); // 513 bytes
  });

  it('accepts exactly the handles without "/", "..", NUL and within 512 bytes', () => {
    fc.assert(
      fc.property(fc.oneof(fc.fullUnicodeString({ maxLength: 300 }), fc.stringMatching(/^[a-z./\0]{0,8}$/)), (h) => {
        const ok = !h.includes('/') && !h.includes('..') && h !== '.' && !h.includes('\0') && Buffer.byteLength(h) <= 512;
        if (ok) expect(() => validateHandle(h)).to.not.throw();
        else expect(() => validateHandle(h)).to.throw(InvalidArgument);
      }),
    );
  });
});
