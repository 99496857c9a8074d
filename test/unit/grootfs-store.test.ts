import { expect } from 'chai';
import fc from 'fast-check';
import type { IdMapping } from '../../src/idmap/subid.js';
import { overlayDirs, overlayMount, overlayMountOptions } from '../../plugins/grootfs/overlay.js';
import { unshareRemoveArgv } from '../../plugins/grootfs/remove.js';
import { parseImageUrl, tarballChainID } from '../../plugins/grootfs/sources.js';
import { createHash } from 'node:crypto';
import {
  mappingsExtend,
  mappingsMismatch,
  namespaceFileFor,
  parseNamespaceFile,
  storeOwner,
  validateImageId,
} from '../../plugins/grootfs/store.js';

const ROOTLESS: IdMapping[] = [
  { containerID: 0, hostID: 1000, size: 1 },
  { containerID: 1, hostID: 100000, size: 65536 },
];

describe('grootfs overlay mount', () => {
  it('builds the option string grootfs returns without mounting', () => {
    expect(overlayMountOptions(['/top', '/base'], '/s/images/x/diff', '/s/images/x/workdir')).to.equal(
      'lowerdir=/top:/base,upperdir=/s/images/x/diff,workdir=/s/images/x/workdir,userxattr',
    );
    expect(overlayMount(['/var/lib/trellis/rootfs'], overlayDirs('/s/images/cake'))).to.deep.equal({
      destination: '/',
      type: 'overlay',
      source: 'overlay',
      options: ['lowerdir=/var/lib/trellis/rootfs,upperdir=/s/images/cake/diff,workdir=/s/images/cake/workdir,userxattr'],
    });
    expect(overlayDirs('/s/images/cake').rootfs).to.equal('/s/images/cake/rootfs');
    expect(() => overlayMountOptions([], '/u', '/w')).to.throw();
  });
});

describe('grootfs image sources', () => {
  it('takes absolute paths and file:/// URLs, normalised', () => {
    expect(parseImageUrl('/var/lib/trellis/rootfs')).to.deep.equal({ kind: 'path', path: '/var/lib/trellis/rootfs' });
    expect(parseImageUrl('/var/lib//trellis/./rootfs/')).to.deep.equal({ kind: 'path', path: '/var/lib/trellis/rootfs' });
    expect(parseImageUrl('file:///srv/my%20root')).to.deep.equal({ kind: 'path', path: '/srv/my root' });
    expect(parseImageUrl('/srv/rootfs.tar.gz')).to.deep.equal({ kind: 'path', path: '/srv/rootfs.tar.gz' });
    expect(parseImageUrl('/')).to.deep.equal({ kind: 'path', path: '/' });
  });

  it('hands docker:// and oci:// URLs to their sources', () => {
    expect(parseImageUrl('docker:///busybox')).to.deep.equal({ kind: 'docker', url: 'docker:///busybox' });
    expect(parseImageUrl('docker://127.0.0.1:5000/busybox:1.36').kind).to.equal('docker');
    expect(parseImageUrl('oci:///srv/layout:v1')).to.deep.equal({ kind: 'oci', url: 'oci:///srv/layout:v1' });
  });

  it('says which sources it supports when given another', () => {
    for (const url of ['raw:///x', 'http://x/y.tar']) {
      expect(() => parseImageUrl(url), url).to.throw(/unsupported image URL scheme .* use docker:\/\/, oci:\/\//);
    }
    expect(() => parseImageUrl('rootfs')).to.throw(/not an absolute path/);
    expect(() => parseImageUrl('')).to.throw(/image was not specified/);
  });

  it('names a tarball volume by its path and mtime, as grootfs does', () => {
    const a = tarballChainID('/srv/r.tar', 1700000000123456789n);
    expect(a).to.match(/^[0-9a-f]{64}$/);
    expect(a).to.equal(createHash('sha256').update('/srv/r.tar-1700000000123456789').digest('hex'));
    expect(tarballChainID('/srv/r.tar', 1700000000123456790n)).to.not.equal(a);
  });
});

describe('grootfs image ids', () => {
  it('rejects `/` with the grootfs message, and ids that would name a store dir', () => {
    expect(() => validateImageId('a/b')).to.throw('id `a/b` contains invalid characters: `/`');
    for (const id of ['', '.', '..']) expect(() => validateImageId(id)).to.throw(/invalid id/);
    expect(() => validateImageId('5b2f-e1_cake.v2')).not.to.throw();
  });
});

describe('grootfs namespace.json', () => {
  it('writes the grootfs shape', () => {
    expect(JSON.stringify(namespaceFileFor({ uidMappings: ROOTLESS, gidMappings: ROOTLESS }))).to.equal(
      '{"uid-mappings":["0:1000:1","1:100000:65536"],"gid-mappings":["0:1000:1","1:100000:65536"]}',
    );
  });

  it('round-trips any mappings, and compares them regardless of order', () => {
    const mapping = fc.record({
      containerID: fc.nat(1 << 20),
      hostID: fc.nat(1 << 30),
      size: fc.integer({ min: 1, max: 1 << 20 }),
    });
    fc.assert(
      fc.property(fc.array(mapping, { maxLength: 5 }), fc.array(mapping, { maxLength: 5 }), (uid, gid) => {
        const back = parseNamespaceFile(JSON.stringify(namespaceFileFor({ uidMappings: uid, gidMappings: gid })));
        expect(back).to.deep.equal({ uidMappings: uid, gidMappings: gid });
        expect(mappingsMismatch(back, { uidMappings: [...uid].reverse(), gidMappings: [...gid].reverse() })).to.equal(undefined);
      }),
    );
  });

  it('names which kind differs', () => {
    const have = { uidMappings: ROOTLESS, gidMappings: ROOTLESS };
    const other = [ROOTLESS[0] as IdMapping, { containerID: 1, hostID: 100000, size: 65535 }];
    expect(mappingsMismatch(have, { uidMappings: other, gidMappings: ROOTLESS })).to.equal('UID');
    expect(mappingsMismatch(have, { uidMappings: ROOTLESS, gidMappings: other })).to.equal('GID');
    expect(mappingsMismatch(have, { uidMappings: ROOTLESS, gidMappings: [] })).to.equal('GID');
  });

  it('reads a file missing a kind as no mappings and rejects garbage', () => {
    expect(parseNamespaceFile('{"uid-mappings":["0:1000:1"]}').gidMappings).to.deep.equal([]);
    expect(() => parseNamespaceFile('{"uid-mappings":"0:1000:1"}')).to.throw();
    expect(() => parseNamespaceFile('{"uid-mappings":["x"]}')).to.throw(/invalid id mapping/);
  });

  it('takes the owner from the 0:<host>:1 entry', () => {
    expect(storeOwner(ROOTLESS)).to.equal(1000);
    expect(storeOwner([{ containerID: 0, hostID: 100000, size: 65536 }])).to.equal(undefined);
    expect(storeOwner([])).to.equal(undefined);
  });
});

describe('grootfs removal in a user namespace', () => {
  it('maps root via --map-root-user and the subordinate range with util-linux 2.38 syntax', () => {
    const gid: IdMapping[] = [ROOTLESS[0] as IdMapping, { containerID: 1, hostID: 200000, size: 1000 }];
    expect(unshareRemoveArgv({ uidMappings: ROOTLESS, gidMappings: gid }, ['/s/images/a', '/s/images/b'])).to.deep.equal([
      '--user',
      '--map-root-user',
      '--map-users=100000,1,65536',
      '--map-groups=200000,1,1000',
      'rm',
      '-rf',
      '--',
      '/s/images/a',
      '/s/images/b',
    ]);
  });

  it('refuses more ranges than unshare can map', () => {
    const many: IdMapping[] = [...ROOTLESS, { containerID: 70000, hostID: 300000, size: 10 }];
    expect(() => unshareRemoveArgv({ uidMappings: many, gidMappings: ROOTLESS }, ['/x'])).to.throw(/unshare takes one/);
  });
});

describe('issue 8: mappingsExtend (a store whose subordinate range grew in place)', () => {
  const small: IdMapping[] = [{ containerID: 0, hostID: 1001, size: 1 }, { containerID: 1, hostID: 100000, size: 65536 }];
  const grown: IdMapping[] = [{ containerID: 0, hostID: 1001, size: 1 }, { containerID: 1, hostID: 100000, size: 1000000001 }];
  it('accepts larger mappings that map every old id the same way, in any order', () => {
    expect(mappingsExtend(small, grown)).to.equal(true);
    expect(mappingsExtend(small, [...grown].reverse())).to.equal(true);
    expect(mappingsExtend(grown, grown)).to.equal(true);
  });
  it('refuses mappings that move, shrink or drop an old id', () => {
    expect(mappingsExtend(grown, small)).to.equal(false);
    expect(mappingsExtend(small, [{ containerID: 0, hostID: 1001, size: 1 }, { containerID: 1, hostID: 165536, size: 1000000001 }])).to.equal(false);
    expect(mappingsExtend(small, [{ containerID: 0, hostID: 1002, size: 1 }, { containerID: 1, hostID: 100000, size: 1000000001 }])).to.equal(false);
    expect(mappingsExtend(small, [{ containerID: 1, hostID: 100000, size: 1000000001 }])).to.equal(false);
    expect(mappingsExtend(small, [{ containerID: 0, hostID: 1001, size: 1 }, { containerID: 2, hostID: 100001, size: 1000000001 }])).to.equal(false);
  });
});
