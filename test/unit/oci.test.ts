import { expect } from 'chai';
import fc from 'fast-check';
import { BASE_DIRECTORY_ANNOTATION, MEDIA_TYPES, type Descriptor } from '../../plugins/grootfs/image.js';
import {
  chainIDs,
  checkLayerMediaType,
  hostPlatform,
  imageLayers,
  layerBaseDirectory,
  parseDigest,
  parseImageConfig,
  parseIndex,
  parseManifest,
  parseManifestDocument,
  parseOciUrl,
  resolveManifest,
  selectLayoutEntry,
  selectPlatform,
  sha256Hex,
  verifyBlob,
  verifyDigest,
} from '../../plugins/grootfs/oci.js';

const HEX_A = 'a'.repeat(64);
const HEX_B = 'b'.repeat(64);
const HEX_C = 'c'.repeat(64);

// Diff ids sha256("layer0".."layer2") and their chain ids, computed with sha256sum:
//   printf '%s %s' <chain n-1> <diff n> | sha256sum
const D0 = '4fbec69b941195fd56f8212a5000e304129451d82efca94ff0e0fb2d5355472e';
const D1 = '77ea7eee3d80b1a38f83906dd3048e2689457eb90e18a7d12f839c5ae37106a2';
const D2 = '95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06';
const C1 = '69e3e22b36a95ca604f69ee3f1dd943534a1c4e4d478100c46f9f429a07fbd0f';
const C2 = '5a17537aca706343e07bd683c4e21042e5be2a1e08d322717d28022af05a1fcf';

function desc(over: Partial<Descriptor> = {}): Descriptor {
  return { mediaType: MEDIA_TYPES.ociManifest, digest: `sha256:${HEX_A}`, size: 10, ...over };
}

function platformEntry(architecture: string, variant?: string, os = 'linux'): Descriptor {
  return desc({ digest: `sha256:${sha256Hex(`${os}/${architecture}/${variant ?? ''}`)}`, platform: { os, architecture, variant } });
}

const OCI_MANIFEST = {
  schemaVersion: 2,
  mediaType: MEDIA_TYPES.ociManifest,
  config: { mediaType: MEDIA_TYPES.ociConfig, digest: `sha256:${HEX_A}`, size: 100 },
  layers: [
    { mediaType: MEDIA_TYPES.ociLayerGzip, digest: `sha256:${HEX_B}`, size: 1000 },
    {
      mediaType: MEDIA_TYPES.ociLayer,
      digest: `sha256:${HEX_C}`,
      size: 2000,
      annotations: { [BASE_DIRECTORY_ANNOTATION]: '/home/vcap' },
    },
  ],
};

const CONFIG = {
  architecture: 'amd64',
  os: 'linux',
  config: { Env: ['PATH=/usr/bin', 'LANG=C'], User: 'vcap', WorkingDir: '/home/vcap' },
  rootfs: { type: 'layers', diff_ids: [`sha256:${D0}`, `sha256:${D1}`] },
};

describe('oci digests and chain ids', () => {
  it('parses sha256 digests to their hex and refuses everything else', () => {
    expect(parseDigest(`sha256:${HEX_A}`)).to.equal(HEX_A);
    expect(() => parseDigest(`sha512:${'a'.repeat(128)}`)).to.throw(/unsupported digest algorithm `sha512`.*only sha256/);
    expect(() => parseDigest(`sha256:${'A'.repeat(64)}`)).to.throw(/invalid digest/);
    expect(() => parseDigest(`sha256:${HEX_A.slice(1)}`)).to.throw(/invalid digest/);
    expect(() => parseDigest('sha256:../../etc/passwd')).to.throw(/invalid digest/);
    expect(() => parseDigest(HEX_A)).to.throw(/invalid digest/);
    expect(() => parseDigest('')).to.throw(/invalid digest/);
    try {
      parseDigest('x');
    } catch (err) {
      expect((err as { code?: string }).code).to.equal('ERR_TRELLIS_INVALID_ARGUMENT');
    }
  });

  it('accepts exactly the well-formed digests (property)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (s) => {
        const ok = /^sha256:[0-9a-f]{64}$/.test(s);
        let parsed: string | undefined;
        try {
          parsed = parseDigest(s);
        } catch {
          parsed = undefined;
        }
        expect(parsed !== undefined).to.equal(ok);
        if (ok) expect(`sha256:${parsed}`).to.equal(s);
      }),
    );
    fc.assert(
      fc.property(fc.hexaString({ minLength: 64, maxLength: 64 }), (h) => {
        const hex = h.toLowerCase();
        expect(parseDigest(`sha256:${hex}`)).to.equal(hex);
      }),
    );
  });

  it('hashes and verifies blobs, naming what failed and what it got', () => {
    const data = Buffer.from('layer0');
    expect(sha256Hex(data)).to.equal(D0);
    expect(() => verifyDigest(data, `sha256:${D0}`)).not.to.throw();
    expect(() => verifyDigest(data, `sha256:${D1}`, 'manifest')).to.throw(`manifest sha256:${D1} failed verification: got sha256:${D0}`);
    expect(() => verifyBlob(data, { digest: `sha256:${D0}`, size: 6 })).not.to.throw();
    expect(() => verifyBlob(data, { digest: `sha256:${D0}`, size: 7 }, 'config')).to.throw(/config .* failed verification: got 6 bytes, expected 7/);
  });

  it('computes chain ids as cli.md §6.5 says (vector computed with sha256sum)', () => {
    expect(chainIDs([])).to.deep.equal([]);
    expect(chainIDs([`sha256:${D0}`])).to.deep.equal([D0]);
    expect(chainIDs([`sha256:${D0}`, `sha256:${D1}`, `sha256:${D2}`])).to.deep.equal([D0, C1, C2]);
    expect(() => chainIDs([D0])).to.throw(/invalid digest/);
  });

  it('makes each chain id depend on every layer below it (property)', () => {
    const digest = fc.hexaString({ minLength: 64, maxLength: 64 }).map((h) => `sha256:${h.toLowerCase()}`);
    fc.assert(
      fc.property(fc.array(digest, { minLength: 1, maxLength: 6 }), (ids) => {
        const chain = chainIDs(ids);
        expect(chain).to.have.length(ids.length);
        expect(chain[0]).to.equal(ids[0]!.slice(7));
        for (let i = 1; i < ids.length; i++) expect(chain[i]).to.equal(sha256Hex(`${chain[i - 1]} ${ids[i]!.slice(7)}`));
        expect(chainIDs(ids.slice(0, -1))).to.deep.equal(chain.slice(0, -1));
      }),
    );
  });
});

describe('oci manifests, indexes and configs', () => {
  it('parses an OCI manifest and a Docker v2 schema 2 manifest', () => {
    const m = parseManifest(JSON.stringify(OCI_MANIFEST));
    expect(m.mediaType).to.equal(MEDIA_TYPES.ociManifest);
    expect(m.config.digest).to.equal(`sha256:${HEX_A}`);
    expect(m.layers.map((l) => l.size)).to.deep.equal([1000, 2000]);
    expect(m.layers[1]!.annotations).to.deep.equal({ [BASE_DIRECTORY_ANNOTATION]: '/home/vcap' });

    const docker = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.dockerManifest,
      config: { mediaType: MEDIA_TYPES.dockerConfig, digest: `sha256:${HEX_A}`, size: 7 },
      layers: [{ mediaType: MEDIA_TYPES.dockerLayerGzip, digest: `sha256:${HEX_B}`, size: 8 }],
    };
    expect(parseManifest(Buffer.from(JSON.stringify(docker))).mediaType).to.equal(MEDIA_TYPES.dockerManifest);
  });

  it('tells manifests from indexes by their own media type, then the hint, then their shape', () => {
    const index = { schemaVersion: 2, manifests: [platformEntry('amd64')] };
    expect(parseManifestDocument(JSON.stringify({ ...index, mediaType: MEDIA_TYPES.dockerManifestList })).kind).to.equal('index');
    expect(parseManifestDocument(JSON.stringify(index), `${MEDIA_TYPES.ociIndex}; charset=utf-8`).kind).to.equal('index');
    expect(parseManifestDocument(JSON.stringify(index)).kind).to.equal('index');
    expect(parseManifestDocument(JSON.stringify(index), 'application/json').kind).to.equal('index');
    const { mediaType: _omit, ...bare } = OCI_MANIFEST;
    expect(parseManifestDocument(JSON.stringify(bare)).kind).to.equal('manifest');
    expect(parseManifestDocument(JSON.stringify(bare), MEDIA_TYPES.dockerManifest).kind).to.equal('manifest');
    expect(parseIndex(JSON.stringify(index)).manifests[0]!.platform).to.deep.equal({ os: 'linux', architecture: 'amd64' });
    expect(() => parseIndex(JSON.stringify(OCI_MANIFEST))).to.throw(/expected an image index/);
    expect(() => parseManifest(JSON.stringify(index), MEDIA_TYPES.ociIndex)).to.throw(/expected an image manifest/);
  });

  it('rejects Docker schema 1 with a clear error', () => {
    const s1 = { schemaVersion: 1, name: 'library/busybox', tag: 'latest', fsLayers: [{ blobSum: `sha256:${HEX_A}` }] };
    expect(() => parseManifestDocument(JSON.stringify(s1))).to.throw(/Docker manifest schema 1, which is not supported/);
    expect(() => parseManifestDocument('{}', 'application/vnd.docker.distribution.manifest.v1+prettyjws')).to.throw(/schema 1/);
  });

  it('rejects malformed documents, saying where', () => {
    expect(() => parseManifestDocument('not json')).to.throw(/image manifest is not valid JSON/);
    expect(() => parseManifestDocument('[]')).to.throw(/not a JSON object/);
    expect(() => parseManifestDocument('{"schemaVersion":2}')).to.throw(/neither an image manifest nor an index/);
    const broken = { ...OCI_MANIFEST, layers: [{ mediaType: MEDIA_TYPES.ociLayer, digest: `sha256:${HEX_B}` }] };
    expect(() => parseManifest(JSON.stringify(broken))).to.throw(/invalid image manifest: layers\.0\.size/);
    const negative = { ...OCI_MANIFEST, layers: [{ mediaType: MEDIA_TYPES.ociLayer, digest: `sha256:${HEX_B}`, size: -1 }] };
    expect(() => parseManifest(JSON.stringify(negative))).to.throw(/layers\.0\.size/);
    expect(() => parseManifestDocument(JSON.stringify({ ...OCI_MANIFEST, mediaType: 'application/vnd.oci.artifact.manifest.v1+json' }))).to.throw(
      /unsupported manifest media type `application\/vnd\.oci\.artifact\.manifest\.v1\+json`/,
    );
  });

  it('never throws anything but its own errors on arbitrary input (property)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json()), fc.option(fc.string(), { nil: undefined }), (text, hint) => {
        try {
          parseManifestDocument(text, hint);
        } catch (err) {
          expect((err as { code?: string }).code).to.be.oneOf(['ERR_TRELLIS_IMAGE_INVALID', 'ERR_TRELLIS_IMAGE_UNSUPPORTED']);
        }
      }),
    );
  });

  it('reads Env, User, WorkingDir and diff ids from an image config', () => {
    expect(parseImageConfig(JSON.stringify(CONFIG))).to.deep.equal({
      env: ['PATH=/usr/bin', 'LANG=C'],
      user: 'vcap',
      workingDir: '/home/vcap',
      diffIDs: [`sha256:${D0}`, `sha256:${D1}`],
    });
    // Docker writes nulls for what a Dockerfile never set.
    const sparse = { config: { Env: null, User: '', WorkingDir: null }, rootfs: { type: 'layers', diff_ids: [] } };
    expect(parseImageConfig(JSON.stringify(sparse))).to.deep.equal({ env: [], user: '', workingDir: '', diffIDs: [] });
    expect(parseImageConfig(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [`sha256:${D2}`] } })).env).to.deep.equal([]);
    expect(() => parseImageConfig(JSON.stringify({ config: {} }))).to.throw(/invalid image config: rootfs/);
    expect(() => parseImageConfig(JSON.stringify({ rootfs: { type: 'other', diff_ids: [] } }))).to.throw(/rootfs.type/);
    expect(() => parseImageConfig(JSON.stringify({ rootfs: { type: 'layers', diff_ids: ['md5:x'] } }))).to.throw(/diff_ids\[0\]/);
  });

  it('accepts tar, gzip, non-distributable and foreign layers and refuses zstd and others by name', () => {
    for (const t of [
      MEDIA_TYPES.ociLayer,
      MEDIA_TYPES.ociLayerGzip,
      MEDIA_TYPES.ociLayerNonDistributable,
      MEDIA_TYPES.ociLayerNonDistributableGzip,
      MEDIA_TYPES.dockerLayerGzip,
      MEDIA_TYPES.dockerForeignLayerGzip,
    ]) {
      expect(() => checkLayerMediaType(t)).not.to.throw();
    }
    expect(() => checkLayerMediaType(MEDIA_TYPES.ociLayerZstd)).to.throw(/`application\/vnd\.oci\.image\.layer\.v1\.tar\+zstd`.*zstd/);
    expect(() => checkLayerMediaType('application/vnd.cncf.helm.chart.content.v1.tar+gzip')).to.throw(/unsupported layer media type `application\/vnd\.cncf\.helm/);
  });

  it('reads the base-directory annotation only as a clean absolute path', () => {
    const withDir = (dir: string) => ({ digest: `sha256:${HEX_A}`, annotations: { [BASE_DIRECTORY_ANNOTATION]: dir } });
    expect(layerBaseDirectory({ digest: `sha256:${HEX_A}` })).to.equal('');
    expect(layerBaseDirectory(withDir(''))).to.equal('');
    expect(layerBaseDirectory(withDir('/'))).to.equal('');
    expect(layerBaseDirectory(withDir('/home/vcap'))).to.equal('/home/vcap');
    for (const bad of ['home', '/home/', '/a/../b', '/..', '/a/./b', '//a', '/a//b', '/a\0b']) {
      expect(() => layerBaseDirectory(withDir(bad)), bad).to.throw(/is not a clean absolute path/);
    }
  });

  it('pairs layers with diff ids and refuses a count mismatch', () => {
    const manifest = parseManifest(JSON.stringify(OCI_MANIFEST));
    const config = parseImageConfig(JSON.stringify(CONFIG));
    const layers = imageLayers(manifest, config, (d) => async () => ({ path: d.digest, release: async () => {} }));
    expect(layers.map((l) => [l.diffID, l.digest, l.size, l.baseDirectory])).to.deep.equal([
      [`sha256:${D0}`, `sha256:${HEX_B}`, 1000, ''],
      [`sha256:${D1}`, `sha256:${HEX_C}`, 2000, '/home/vcap'],
    ]);
    const short = { ...config, diffIDs: [`sha256:${D0}`] };
    expect(() => imageLayers(manifest, short, () => async () => ({ path: '', release: async () => {} }))).to.throw(
      /config lists 1 diff ids .* but the manifest has 2 layers/,
    );
    const zstd = { ...manifest, layers: [{ ...manifest.layers[0]!, mediaType: MEDIA_TYPES.ociLayerZstd }, manifest.layers[1]!] };
    expect(() => imageLayers(zstd, config, () => async () => ({ path: '', release: async () => {} }))).to.throw(/zstd/);
  });
});

describe('oci platform selection', () => {
  it("maps Node's arch to OCI's", () => {
    expect(hostPlatform('x64')).to.deep.equal({ os: 'linux', architecture: 'amd64' });
    expect(hostPlatform('arm64')).to.deep.equal({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    expect(hostPlatform('arm', '7')).to.deep.equal({ os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(hostPlatform('arm', 'v6')).to.deep.equal({ os: 'linux', architecture: 'arm', variant: 'v6' });
    expect(hostPlatform('arm', 'default').variant).to.equal('v7');
    expect(hostPlatform('ia32').architecture).to.equal('386');
    expect(hostPlatform('ppc64').architecture).to.equal('ppc64le');
    expect(hostPlatform('s390x').architecture).to.equal('s390x');
  });

  const index = {
    manifests: [
      platformEntry('amd64', undefined, 'windows'),
      platformEntry('arm', 'v6'),
      platformEntry('arm64'),
      platformEntry('arm', 'v7'),
      platformEntry('amd64'),
      platformEntry('arm64', 'v8'),
      desc({ digest: `sha256:${HEX_C}` }),
    ],
  };

  it('prefers the exact variant, then no variant, never another OS', () => {
    expect(selectPlatform(index, { os: 'linux', architecture: 'amd64' })).to.equal(index.manifests[4]);
    expect(selectPlatform(index, { os: 'linux', architecture: 'arm64', variant: 'v8' })).to.equal(index.manifests[5]);
    expect(selectPlatform({ manifests: index.manifests.slice(0, 5) }, { os: 'linux', architecture: 'arm64', variant: 'v8' })).to.equal(
      index.manifests[2],
    );
    expect(selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v7' })).to.equal(index.manifests[3]);
    expect(selectPlatform(index, { os: 'windows', architecture: 'amd64' })).to.equal(index.manifests[0]);
  });

  it('lets an arm host run an older arm variant', () => {
    expect(selectPlatform({ manifests: [platformEntry('arm', 'v6')] }, { os: 'linux', architecture: 'arm', variant: 'v7' }).platform?.variant).to.equal(
      'v6',
    );
    expect(() => selectPlatform({ manifests: [platformEntry('arm', 'v7')] }, { os: 'linux', architecture: 'arm', variant: 'v6' })).to.throw(
      /no image for linux\/arm\/v6/,
    );
  });

  it('names the platforms it has when none fits', () => {
    expect(() => selectPlatform(index, { os: 'linux', architecture: 's390x' })).to.throw(
      'no image for linux/s390x in the manifest list; it has windows/amd64, linux/arm/v6, linux/arm64, linux/arm/v7, linux/amd64, linux/arm64/v8',
    );
    expect(() => selectPlatform({ manifests: [desc()] }, { os: 'linux', architecture: 'amd64' })).to.throw(/it has no platform-specific images/);
  });

  it('always returns an entry that fits the wanted platform (property)', () => {
    const arches = fc.constantFrom('amd64', 'arm64', 'arm', '386', 's390x');
    const variants = fc.constantFrom(undefined, 'v5', 'v6', 'v7', 'v8');
    const entry = fc.record({ os: fc.constantFrom('linux', 'windows'), architecture: arches, variant: variants });
    fc.assert(
      fc.property(fc.array(entry, { maxLength: 8 }), entry, (entries, want) => {
        const manifests = entries.map((p) => platformEntry(p.architecture, p.variant, p.os));
        let got: Descriptor | undefined;
        try {
          got = selectPlatform({ manifests }, want);
        } catch (err) {
          expect((err as { code?: string }).code).to.equal('ERR_TRELLIS_IMAGE_PLATFORM');
          expect(manifests.some((m) => m.platform?.os === want.os && m.platform.architecture === want.architecture && (m.platform.variant ?? '') === (want.variant ?? ''))).to.equal(false);
          return;
        }
        expect(got.platform?.os).to.equal(want.os);
        expect(got.platform?.architecture).to.equal(want.architecture);
        const exact = manifests.find((m) => m.platform?.os === want.os && m.platform.architecture === want.architecture && (m.platform.variant ?? '') === (want.variant ?? ''));
        if (exact !== undefined) expect(got).to.equal(exact);
      }),
    );
  });

  it('follows nested indexes down to a manifest, reading each through the verified reader', async () => {
    const manifestBytes = Buffer.from(JSON.stringify(OCI_MANIFEST));
    const manifestDesc = desc({ digest: `sha256:${sha256Hex(manifestBytes)}`, size: manifestBytes.length, platform: { os: 'linux', architecture: 'amd64' } });
    const inner = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [platformEntry('arm64'), manifestDesc] }));
    const innerDesc = desc({ mediaType: MEDIA_TYPES.ociIndex, digest: `sha256:${sha256Hex(inner)}`, size: inner.length, platform: { os: 'linux', architecture: 'amd64' } });
    const blobs = new Map([
      [manifestDesc.digest, manifestBytes],
      [innerDesc.digest, inner],
    ]);
    const read = async (d: Descriptor) => {
      const b = blobs.get(d.digest);
      if (b === undefined) throw new Error(`no ${d.digest}`);
      verifyBlob(b, d);
      return b;
    };
    const top = parseManifestDocument(JSON.stringify({ schemaVersion: 2, manifests: [innerDesc] }), MEDIA_TYPES.ociIndex);
    const got = await resolveManifest(top, read, { os: 'linux', architecture: 'amd64' });
    expect(got.descriptor).to.deep.equal(manifestDesc);
    expect(got.manifest.layers).to.have.length(2);
  });
});

describe('oci layout URLs and refs', () => {
  it('takes oci:///abs/path[:ref]', () => {
    expect(parseOciUrl('oci:///var/vcap/images/cflinuxfs4')).to.deep.equal({ path: '/var/vcap/images/cflinuxfs4', ref: '' });
    expect(parseOciUrl('oci:///var/vcap/images/cflinuxfs4:latest')).to.deep.equal({ path: '/var/vcap/images/cflinuxfs4', ref: 'latest' });
    expect(parseOciUrl('oci:///a//b/./c/:v1:extra')).to.deep.equal({ path: '/a/b/c', ref: 'v1:extra' });
    expect(parseOciUrl('oci:///my%20images/x')).to.deep.equal({ path: '/my images/x', ref: '' });
    expect(parseOciUrl('oci:/abs')).to.deep.equal({ path: '/abs', ref: '' });
    expect(() => parseOciUrl('oci://host/path')).to.throw(/expected oci:\/\/\/<absolute path/);
    expect(() => parseOciUrl('oci:relative')).to.throw(/expected oci:\/\/\//);
    expect(() => parseOciUrl('docker:///x')).to.throw(/invalid image URL/);
  });

  const named = (ref: string, d: Descriptor) => ({ ...d, annotations: { 'org.opencontainers.image.ref.name': ref } });
  const amd = platformEntry('amd64');
  const arm = platformEntry('arm64', 'v8');
  const host = { os: 'linux', architecture: 'amd64' };

  it('chooses the only image, or the named one, or the platform among same-named ones', () => {
    expect(selectLayoutEntry({ mediaType: MEDIA_TYPES.ociIndex, manifests: [desc()] }, '', host, '/l')).to.deep.equal(desc());
    const idx = { mediaType: MEDIA_TYPES.ociIndex, manifests: [named('a', desc()), named('b', desc({ digest: `sha256:${HEX_B}` }))] };
    expect(selectLayoutEntry(idx, 'b', host, '/l').digest).to.equal(`sha256:${HEX_B}`);
    expect(() => selectLayoutEntry(idx, 'c', host, '/l')).to.throw('OCI layout /l has no image named `c`; it has `a`, `b`');
    expect(() => selectLayoutEntry(idx, '', host, '/l')).to.throw(/holds 2 images; name one with oci:\/\/\/l:<ref> \(`a`, `b`\)/);
    expect(() => selectLayoutEntry({ mediaType: MEDIA_TYPES.ociIndex, manifests: [] }, '', host, '/l')).to.throw(/holds no images/);
    const multi = { mediaType: MEDIA_TYPES.ociIndex, manifests: [named('x', arm), named('x', amd)] };
    expect(selectLayoutEntry(multi, 'x', host, '/l')).to.deep.equal(named('x', amd));
    expect(selectLayoutEntry({ mediaType: MEDIA_TYPES.ociIndex, manifests: [arm, amd] }, '', host, '/l')).to.equal(amd);
  });
});
