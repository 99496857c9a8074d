// Where tar entries land: entry names are cleaned and may not climb out, and
// symlinks are followed as inside a chroot. An in-memory tree stands in for disk.
import { expect } from 'chai';
import fc from 'fast-check';
import { DirCache, droppedXattr, entryComponents, LayerEscape, resolveDir, type PathKind, type PathProbe } from '../../plugins/grootfs/layerpath.js';

const ROOT = '/layer';

function tree(entries: Record<string, string | 'dir' | 'file'>): PathProbe {
  return {
    kind(p: string): PathKind {
      const rel = p === ROOT ? '' : p.slice(ROOT.length + 1);
      const e = entries[rel];
      if (e === undefined) return rel === '' ? 'dir' : 'missing';
      if (e === 'dir') return 'dir';
      if (e === 'file') return 'other';
      return 'symlink';
    },
    readlink(p: string): string {
      return entries[p.slice(ROOT.length + 1)] as string;
    },
  };
}

describe('grootfs layer paths', () => {
  describe('entryComponents', () => {
    it('drops leading slashes and dots, and resolves inner ..', () => {
      expect(entryComponents('./etc/passwd')).to.deep.equal(['etc', 'passwd']);
      expect(entryComponents('/abs/name')).to.deep.equal(['abs', 'name']);
      expect(entryComponents('a/./b//c/')).to.deep.equal(['a', 'b', 'c']);
      expect(entryComponents('a/../b')).to.deep.equal(['b']);
      expect(entryComponents('./')).to.deep.equal([]);
    });

    it('refuses names that climb out of the layer', () => {
      for (const bad of ['../evil', 'a/../../evil', '/../../etc/passwd', '..']) {
        expect(() => entryComponents(bad), bad).to.throw(LayerEscape, /points outside the layer/);
      }
    });

    it('never yields .. or empty components (property)', () => {
      fc.assert(
        fc.property(fc.array(fc.constantFrom('a', 'b', '.', '..', '', 'c.d', '...'), { maxLength: 12 }), (parts) => {
          const name = parts.join('/');
          let comps: string[];
          try {
            comps = entryComponents(name);
          } catch (err) {
            return err instanceof LayerEscape;
          }
          return comps.every((c) => c !== '' && c !== '.' && c !== '..');
        }),
      );
    });
  });

  describe('resolveDir', () => {
    it('follows an absolute symlink back to the layer root', () => {
      const probe = tree({ etc: 'dir', link: '/etc' });
      expect(resolveDir(ROOT, ['link'], probe)).to.deep.equal(['etc']);
    });

    it('clamps a relative symlink that climbs past the root', () => {
      const probe = tree({ tmp: 'dir', esc: '../../../../tmp' });
      expect(resolveDir(ROOT, ['esc'], probe)).to.deep.equal(['tmp']);
    });

    it('follows chains of links and keeps missing components for mkdir', () => {
      const probe = tree({ a: 'b', b: '/c/d', c: 'dir' });
      expect(resolveDir(ROOT, ['a', 'x', 'y'], probe)).to.deep.equal(['c', 'd', 'x', 'y']);
    });

    it('refuses a parent that is a file, and symlink loops', () => {
      expect(() => resolveDir(ROOT, ['f', 'x'], tree({ f: 'file' }))).to.throw(/is not a directory/);
      expect(() => resolveDir(ROOT, ['l1'], tree({ l1: 'l2', l2: 'l1' }))).to.throw(/too many levels/);
    });

    it('never leaves the root whatever the links say (property)', () => {
      const target = fc.array(fc.constantFrom('..', 'a', 'b', '', '.', '/'), { maxLength: 6 }).map((p) => p.join('/'));
      fc.assert(
        fc.property(target, target, fc.array(fc.constantFrom('a', 'b', 'l1', 'l2', '..'), { maxLength: 6 }), (t1, t2, comps) => {
          const probe = tree({ a: 'dir', b: 'dir', l1: t1 || '.', l2: t2 || '.' });
          let out: string[];
          try {
            out = resolveDir(ROOT, comps, probe);
          } catch {
            return true;
          }
          return out.every((c) => c !== '..');
        }),
      );
    });
  });

  it('DirCache forgets everything when cleared', () => {
    const c = new DirCache();
    c.set('a/b', ['a', 'b']);
    expect(c.get('a/b')).to.deep.equal(['a', 'b']);
    c.clear();
    expect(c.get('a/b')).to.equal(undefined);
  });

  it('drops overlay and trusted xattrs from images', () => {
    expect(droppedXattr('trusted.overlay.redirect')).to.equal(true);
    expect(droppedXattr('user.overlay.opaque')).to.equal(true);
    expect(droppedXattr('security.capability')).to.equal(false);
    expect(droppedXattr('user.mime_type')).to.equal(false);
  });
});
