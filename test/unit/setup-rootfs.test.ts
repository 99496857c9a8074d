import { expect } from 'chai';
import fc from 'fast-check';
import { chmodSync, linkSync, lstatSync, mkdirSync, readdirSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tmp from 'tmp';
import { buildMappings } from '../../src/idmap/subid.js';
import { copyTreeMapped, mapOwner, stampText, treeDigest } from '../../src/setup/rootfs.js';
import { FailedPrecondition } from '../../src/errors.js';

function listing(root: string, rel = '.'): string[] {
  const st = lstatSync(join(root, rel));
  const link = st.isSymbolicLink() ? readlinkSync(join(root, rel)) : '';
  const own = `${rel} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.isFile() ? st.size : 0} ${link}`;
  if (!st.isDirectory()) return [own];
  return [own, ...readdirSync(join(root, rel)).sort().flatMap((n) => listing(root, `${rel}/${n}`))];
}

describe('setup: default rootfs', () => {
  describe('mapOwner', () => {
    const maps = buildMappings(1001, { start: 165536, count: 65536 });

    it('puts container root on the user and the rest into the range', () => {
      expect(mapOwner(maps, 0, 'uid')).to.equal(1001);
      expect(mapOwner(maps, 1, 'uid')).to.equal(165536);
      expect(mapOwner(maps, 1000, 'uid')).to.equal(166535);
      expect(mapOwner(maps, 65534, 'gid')).to.equal(165536 + 65533);
    });

    it('maps every covered id to start + id - 1, and refuses the rest', () => {
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 100_000 }), (id) => {
          if (id <= 65536) expect(mapOwner(maps, id, 'uid')).to.equal(165536 + id - 1);
          else expect(() => mapOwner(maps, id, 'uid')).to.throw(FailedPrecondition, /uid \d+/);
        }),
      );
    });
  });

  it('the stamp changes with the mappings', () => {
    const base = { version: 1 as const, source: '/s', sourceDigest: 'd', uidMappings: buildMappings(1, { start: 10, count: 5 }) };
    const a = stampText({ ...base, gidMappings: buildMappings(1, { start: 10, count: 5 }) });
    const b = stampText({ ...base, gidMappings: buildMappings(1, { start: 20, count: 5 }) });
    expect(a).to.not.equal(b);
  });

  describe('on disk (as the caller, with identity mappings)', () => {
    let dir: tmp.DirResult;
    beforeEach(() => {
      dir = tmp.dirSync({ unsafeCleanup: true });
    });
    afterEach(() => dir.removeCallback());

    it('copies modes with special bits, symlinks and hard links', () => {
      const src = join(dir.name, 'src');
      mkdirSync(join(src, 'bin'), { recursive: true });
      mkdirSync(join(src, 'tmp'));
      chmodSync(join(src, 'tmp'), 0o1777);
      writeFileSync(join(src, 'bin', 'tool'), 'x');
      chmodSync(join(src, 'bin', 'tool'), 0o4755);
      linkSync(join(src, 'bin', 'tool'), join(src, 'bin', 'tool2'));
      symlinkSync('/bin/tool', join(src, 'bin', 'sh'));
      mkdirSync(join(src, 'root'), { mode: 0o700 });
      chmodSync(join(src, 'root'), 0o700);

      const identity = [{ containerID: 0, hostID: 0, size: 4294967295 }];
      const skipped = copyTreeMapped(src, join(dir.name, 'dst'), identity, identity);
      const dst = join(dir.name, 'dst');
      expect(skipped).to.deep.equal([]);
      expect(lstatSync(join(dst, 'tmp')).mode & 0o7777).to.equal(0o1777);
      expect(lstatSync(join(dst, 'root')).mode & 0o7777).to.equal(0o700);
      expect(lstatSync(join(dst, 'bin', 'tool')).mode & 0o7777).to.equal(0o4755);
      expect(lstatSync(join(dst, 'bin', 'tool2')).ino).to.equal(lstatSync(join(dst, 'bin', 'tool')).ino);
      expect(readlinkSync(join(dst, 'bin', 'sh'))).to.equal('/bin/tool');
      // Owners and modes of every entry are the source's (mtimes are kept only to the millisecond).
      expect(listing(dst)).to.deep.equal(listing(src));
    });

    it('the source digest notices a new file', () => {
      const before = treeDigest(dir.name);
      writeFileSync(join(dir.name, 'new'), '');
      expect(treeDigest(dir.name)).to.not.equal(before);
    });
  });
});
