// Handle validation (src/gardener/gardener.ts validateHandle).

import { expect } from 'chai';
import fc from 'fast-check';
import { validateHandle } from '../../src/gardener/gardener.js';
import { InvalidArgument } from '../../src/errors.js';

describe('validateHandle', () => {
  it('accepts ordinary handles, non-ASCII included', () => {
    for (const h of ['c1', 'e3b0c442-98fc-4c14-9afb-000000000001', 'a.b', 'a_b-c:d@e=f,g;h', 'é', '日本', 'x'.repeat(512), '€'.repeat(170)]) {
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

  // issue #12: Garden clients decode '+' as a space and '%XX' as a byte in paths; '?' and '#' end the path.
  it('issue #12: rejects what a Garden client cannot address: "+", "%", space, "?", "#", control characters', () => {
    const cases: Array<[string, RegExp]> = [
      ['a+b', /'\+'/], ['100%', /'%'/], ['x y', /a space/], ['a?b', /'\?'/], ['a#b', /'#'/],
      ['tab\there', /U\+0009/], ['nl\n', /U\+000A/], ['del\x7f', /U\+007F/], ['c1\u0085', /U\+0085/],
    ];
    for (const [h, what] of cases) {
      expect(() => validateHandle(h), JSON.stringify(h)).to.throw(InvalidArgument, what);
      expect(() => validateHandle(h), JSON.stringify(h)).to.throw(InvalidArgument, /Garden clients could not address/);
    }
  });

  it('accepts exactly the handles without "/", "..", NUL, unaddressable characters and within 512 bytes', () => {
    fc.assert(
      fc.property(fc.oneof(fc.fullUnicodeString({ maxLength: 300 }), fc.stringMatching(/^[a-z./\0+% ?#\t]{0,8}$/)), (h) => {
        const addressable = !/[+% ?#]/.test(h) && [...h].every((ch) => { const c = ch.codePointAt(0)!; return c >= 0x20 && !(c >= 0x7f && c <= 0x9f); });
        const ok = addressable && !h.includes('/') && !h.includes('..') && h !== '.' && !h.includes('\0') && Buffer.byteLength(h) <= 512;
        if (ok) expect(() => validateHandle(h)).to.not.throw();
        else expect(() => validateHandle(h)).to.throw(InvalidArgument);
      }),
    );
  });
});
