// The image-test tooling itself: layers come out as the entries said, a real
// registry serves what skopeo pushed byte for byte, token auth behaves like
// Docker Hub's, manifest lists survive the trip, and corruptBlob corrupts.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { extract as tarExtract } from 'tar-stream';
import { processes, runtimeDir } from './harness.js';
import {
  busyboxLayerEntries,
  type Entry,
  gzip,
  layerTar,
  MEDIA,
  sha256,
  writeOciLayout,
  type WrittenLayout,
} from './images.js';
import { type Credentials, type Registry, startRegistry, stopAllRegistries } from './registry.js';

const ACCEPT_ALL = [MEDIA.manifest, MEDIA.index, MEDIA.dockerManifest, MEDIA.dockerList].join(', ');

interface Fetched {
  status: number;
  headers: Headers;
  body: Buffer;
}

async function get(url: string, headers: Record<string, string> = {}): Promise<Fetched> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(15_000) });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

/** What the distribution client does: ask the realm from the 401 challenge for a scoped token. */
async function token(registry: Registry, scope: string, creds?: Credentials): Promise<Fetched & { token?: string }> {
  const auth = registry.auth!;
  const url = `${auth.realm}?service=${encodeURIComponent(auth.service)}&scope=${encodeURIComponent(scope)}`;
  const headers: Record<string, string> = {};
  if (creds) headers.Authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
  const r = await get(url, headers);
  const parsed = r.status === 200 ? (JSON.parse(r.body.toString()) as { token?: string }) : {};
  return { ...r, token: parsed.token };
}

interface ReadEntry {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  linkname: string | null;
  devmajor: number;
  devminor: number;
  pax: Record<string, string> | null;
  content: Buffer;
}

async function readTar(buf: Buffer): Promise<ReadEntry[]> {
  const out: ReadEntry[] = [];
  const extract = tarExtract();
  Readable.from([buf]).pipe(extract);
  for await (const entry of extract) {
    const parts: Buffer[] = [];
    for await (const chunk of entry) parts.push(chunk as Buffer);
    const h = entry.header;
    out.push({
      name: h.name,
      type: h.type,
      mode: h.mode,
      uid: h.uid,
      gid: h.gid,
      linkname: h.linkname,
      devmajor: h.devmajor,
      devminor: h.devminor,
      pax: (h.pax ?? null) as Record<string, string> | null,
      content: Buffer.concat(parts),
    });
  }
  return out;
}

/** Two gzipped layers: the busybox root, then one file on top. */
function busyboxLayers(): Buffer[] {
  return [gzip(layerTar(busyboxLayerEntries())), gzip(layerTar([{ name: 'etc/motd', type: 'file', content: 'layer two\n' }]))];
}

describe('image test tooling (integration)', function () {
  let work: string;

  before(async function () {
    work = await mkdtemp(join(runtimeDir(), 'images-'));
  });

  after(async function () {
    await stopAllRegistries();
    await rm(work, { recursive: true, force: true });
  });

  describe('layerTar', function () {
    it('writes every entry exactly as given, hostile names and PAX records included', async function () {
      const long = `${'d'.repeat(90)}/${'f'.repeat(90)}`;
      const entries: Entry[] = [
        { name: '../evil', type: 'file', content: 'x', mode: 0 },
        { name: '/abs', type: 'file', content: 'abs', mode: 0o4755, uid: 1000, gid: 1000 },
        { name: 'a/../../x', type: 'symlink', linkname: '/etc/shadow' },
        { name: 'hard', type: 'link', linkname: '../evil' },
        { name: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'dev/sda', type: 'block', devmajor: 8, devminor: 0 },
        { name: 'fifo', type: 'fifo' },
        { name: 'tmp/', type: 'dir', mode: 0o1777 },
        { name: 'caps', type: 'file', content: Buffer.from([0, 1, 2]), xattrs: { 'security.capability': 'v', 'user.note': 'héllo' } },
        { name: long, type: 'file', content: 'long', uid: 4_000_000_000 },
        { name: '.wh..wh..opq', type: 'file' },
        { name: 'etc/.wh.passwd', type: 'file' },
      ];
      const got = await readTar(layerTar(entries));
      expect(got.map((e) => e.name)).to.deep.equal(entries.map((e) => e.name));
      expect(got.map((e) => e.type)).to.deep.equal([
        'file', 'file', 'symlink', 'link', 'character-device', 'block-device', 'fifo', 'directory', 'file', 'file', 'file', 'file',
      ]);
      expect(got[0]!.mode).to.equal(0);
      expect(got[1]).to.include({ mode: 0o4755, uid: 1000, gid: 1000 });
      expect(got[1]!.content.toString()).to.equal('abs');
      expect(got[2]!.linkname).to.equal('/etc/shadow');
      expect(got[3]!.linkname).to.equal('../evil');
      expect(got[4]).to.include({ devmajor: 1, devminor: 3, mode: 0o666 });
      expect(got[7]!.mode).to.equal(0o1777);
      expect(got[8]!.pax).to.deep.include({ 'SCHILY.xattr.security.capability': 'v', 'SCHILY.xattr.user.note': 'héllo' });
      // tar-stream applies only path/linkpath/size from PAX; a big uid is a PAX record.
      expect(got[9]!.pax).to.deep.include({ uid: '4000000000' });
      expect(got[9]!.content.toString()).to.equal('long');

      // GNU tar agrees (it is what a person would check the layer with).
      const path = join(work, 'hostile.tar');
      await writeFile(path, layerTar(entries));
      const listed = await execa('tar', ['--xattrs', '--numeric-owner', '-tvf', path], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C' }, extendEnv: false });
      expect(listed.stdout).to.include('../evil');
      expect(listed.stdout).to.match(new RegExp(`^-rw-r--r--\\s+4000000000/0 .* ${long}$`, 'm'));
      expect(listed.stdout).to.match(/^crw-rw-rw-\s+0\/0\s+1,3 .* dev\/null$/m);
    });

    it('gives the same bytes for the same entries (stable digests)', function () {
      expect(sha256(gzip(layerTar(busyboxLayerEntries())))).to.equal(sha256(gzip(layerTar(busyboxLayerEntries()))));
    });
  });

  describe('plain registry', function () {
    let registry: Registry;
    let layout: WrittenLayout;

    before(async function () {
      registry = await startRegistry();
      layout = await writeOciLayout(join(work, 'plain'), [{ tag: 'v1', layers: busyboxLayers(), config: { Env: ['PATH=/bin'], User: 'alice' } }]);
      await registry.push(layout.dir, 'v1', 'busybox:latest');
    });

    after(async function () {
      await registry?.stop();
    });

    it('lists the pushed tag', async function () {
      const r = await get(`${registry.url}/v2/busybox/tags/list`);
      expect(r.status).to.equal(200);
      expect(JSON.parse(r.body.toString())).to.deep.equal({ name: 'busybox', tags: ['latest'] });
    });

    it('serves the manifest, config and both layers with the digests writeOciLayout returned', async function () {
      const image = layout.images[0]!;
      expect(image.layers).to.have.length(2);
      const byTag = await get(`${registry.url}/v2/busybox/manifests/latest`, { Accept: ACCEPT_ALL });
      expect(byTag.status).to.equal(200);
      expect(byTag.headers.get('docker-content-digest')).to.equal(image.manifest.digest);
      expect(byTag.headers.get('content-type')).to.equal(MEDIA.manifest);
      expect(sha256(byTag.body)).to.equal(image.manifest.digest);
      expect(byTag.body.equals(image.manifestBytes)).to.equal(true);

      const byDigest = await get(`${registry.url}/v2/busybox/manifests/${image.manifest.digest}`, { Accept: ACCEPT_ALL });
      expect(byDigest.status).to.equal(200);
      expect(sha256(byDigest.body)).to.equal(image.manifest.digest);

      const manifest = JSON.parse(byTag.body.toString()) as { config: { digest: string }; layers: Array<{ digest: string; mediaType: string }> };
      expect(manifest.config.digest).to.equal(image.config.digest);
      expect(manifest.layers.map((l) => l.digest)).to.deep.equal(image.layers.map((l) => l.digest));
      expect(manifest.layers.map((l) => l.mediaType)).to.deep.equal([MEDIA.layerGzip, MEDIA.layerGzip]);

      for (const d of [image.config, ...image.layers]) {
        const blob = await get(`${registry.url}/v2/busybox/blobs/${d.digest}`);
        expect(blob.status, d.digest).to.equal(200);
        expect(sha256(blob.body)).to.equal(d.digest);
        expect(blob.body.length).to.equal(d.size);
      }
      const config = JSON.parse(image.configBytes.toString()) as { rootfs: { diff_ids: string[] }; config: { User: string } };
      expect(config.rootfs.diff_ids).to.deep.equal(image.diffIds);
      expect(config.config.User).to.equal('alice');
    });

    it('puts a busybox root in the first layer', async function () {
      const image = layout.images[0]!;
      const blob = await get(`${registry.url}/v2/busybox/blobs/${image.layers[0]!.digest}`);
      const tarBytes = gunzipSync(blob.body);
      expect(sha256(tarBytes)).to.equal(image.diffIds[0]);
      const entries = await readTar(tarBytes);
      const byName = new Map(entries.map((e) => [e.name, e]));
      expect(byName.get('bin/busybox')).to.include({ type: 'file', mode: 0o755 });
      expect(byName.get('bin/sh')).to.include({ type: 'symlink', linkname: 'busybox' });
      expect(byName.get('tmp/')).to.include({ type: 'directory', mode: 0o1777 });
      expect(byName.get('home/alice/')).to.include({ uid: 1000, gid: 1000 });
      expect(byName.get('etc/passwd')!.content.toString()).to.match(/^alice:x:1000:1000:.*:\/home\/alice:/m);
    });

    it('corruptBlob makes the served blob differ from its digest', async function () {
      const layer = layout.images[0]!.layers[1]!;
      await registry.corruptBlob(layer.digest);
      const blob = await get(`${registry.url}/v2/busybox/blobs/${layer.digest}`);
      expect(blob.status).to.equal(200);
      expect(blob.body.length).to.equal(layer.size);
      expect(sha256(blob.body)).to.not.equal(layer.digest);
    });
  });

  describe('token-auth registry', function () {
    const creds = { username: 'alice', password: 's3cret' };
    let registry: Registry;
    let layout: WrittenLayout;

    before(async function () {
      registry = await startRegistry({ auth: creds });
      layout = await writeOciLayout(join(work, 'auth'), [{ tag: 'v1', layers: busyboxLayers() }]);
      await registry.push(layout.dir, 'v1', 'private/busybox:v1');
    });

    after(async function () {
      await registry?.stop();
    });

    it('refuses an anonymous manifest GET with a Bearer challenge naming the realm', async function () {
      const r = await get(`${registry.url}/v2/private/busybox/manifests/v1`, { Accept: ACCEPT_ALL });
      expect(r.status).to.equal(401);
      const challenge = r.headers.get('www-authenticate') ?? '';
      expect(challenge).to.match(/^Bearer /);
      expect(challenge).to.include(`realm="${registry.auth!.realm}"`);
      expect(challenge).to.include(`service="${registry.auth!.service}"`);
      expect(challenge).to.include('scope="repository:private/busybox:pull"');
    });

    it('serves the manifest to a token issued for the right credentials', async function () {
      const t = await token(registry, 'repository:private/busybox:pull', creds);
      expect(t.status).to.equal(200);
      const r = await get(`${registry.url}/v2/private/busybox/manifests/v1`, { Accept: ACCEPT_ALL, Authorization: `Bearer ${t.token}` });
      expect(r.status, r.body.toString()).to.equal(200);
      expect(r.headers.get('docker-content-digest')).to.equal(layout.images[0]!.manifest.digest);
    });

    it('refuses a token for a repository the token does not name', async function () {
      const t = await token(registry, 'repository:other:pull', creds);
      const r = await get(`${registry.url}/v2/private/busybox/manifests/v1`, { Accept: ACCEPT_ALL, Authorization: `Bearer ${t.token}` });
      expect(r.status).to.equal(401);
    });

    it('gives no token for wrong or missing credentials', async function () {
      const wrong = await token(registry, 'repository:private/busybox:pull', { username: 'alice', password: 'nope' });
      expect(wrong.status).to.equal(401);
      const none = await token(registry, 'repository:private/busybox:pull');
      expect(none.status).to.equal(401);
      const seen = registry.auth!.requests.slice(-2);
      expect(seen.map((s) => s.granted)).to.deep.equal([false, false]);
    });

    it('takes a hand-made manifest byte for byte through putBlob/putManifest', async function () {
      const layer = gzip(layerTar([{ name: 'hello', type: 'file', content: 'hi\n' }]));
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256('a lie')] } }));
      const layerDigest = await registry.putBlob('private/raw', layer);
      const configDigest = await registry.putBlob('private/raw', config);
      // The size claimed for the layer is wrong on purpose: the registry stores the manifest anyway.
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA.manifest,
          config: { mediaType: MEDIA.config, digest: configDigest, size: config.length },
          layers: [{ mediaType: MEDIA.layerGzip, digest: layerDigest, size: layer.length + 7 }],
        }),
      );
      expect(await registry.putManifest('private/raw', 'v1', manifest, MEDIA.manifest)).to.equal(sha256(manifest));
      const back = await registry.fetch('/v2/private/raw/manifests/v1', { headers: { Accept: ACCEPT_ALL } });
      expect(back.status).to.equal(200);
      expect(Buffer.from(await back.arrayBuffer()).equals(manifest)).to.equal(true);
    });

    it('saw skopeo ask for push access with the credentials', function () {
      const push = registry.auth!.requests.find((r) => r.scopes.some((s) => s.endsWith(':pull,push') || s.endsWith(':push,pull')));
      expect(push, JSON.stringify(registry.auth!.requests)).to.not.equal(undefined);
      expect(push!.user).to.equal('alice');
      expect(push!.granted).to.equal(true);
    });
  });

  describe('manifest list', function () {
    let registry: Registry;
    let layout: WrittenLayout;

    before(async function () {
      registry = await startRegistry();
      const layers = busyboxLayers();
      layout = await writeOciLayout(
        join(work, 'multi'),
        [
          { layers, platform: { architecture: 'amd64', os: 'linux' } },
          { layers: [layers[0]!], platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
        ],
        { index: true, tag: 'multi' },
      );
      await registry.push(layout.dir, 'multi', 'multi:latest', { all: true });
    });

    after(async function () {
      await registry?.stop();
    });

    it('comes back as an index with the platform manifests writeOciLayout wrote', async function () {
      const r = await get(`${registry.url}/v2/multi/manifests/latest`, { Accept: ACCEPT_ALL });
      expect(r.status).to.equal(200);
      expect(r.headers.get('content-type')).to.equal(MEDIA.index);
      expect(r.headers.get('docker-content-digest')).to.equal(layout.index!.digest);
      const index = JSON.parse(r.body.toString()) as { manifests: Array<{ digest: string; platform: { architecture: string } }> };
      expect(index.manifests.map((m) => m.digest)).to.deep.equal(layout.images.map((i) => i.manifest.digest));
      expect(index.manifests.map((m) => m.platform.architecture)).to.deep.equal(['amd64', 'arm64']);
      for (const image of layout.images) {
        const m = await get(`${registry.url}/v2/multi/manifests/${image.manifest.digest}`, { Accept: ACCEPT_ALL });
        expect(m.status).to.equal(200);
        expect(sha256(m.body)).to.equal(image.manifest.digest);
      }
    });
  });

  describe('cleanup', function () {
    it('stop() leaves no registry process, token server or temp dir behind', async function () {
      const registry = await startRegistry({ auth: { username: 'u', password: 'p' } });
      const { dir, url } = registry;
      const realm = registry.auth!.realm;
      await registry.stop();
      expect(existsSync(dir)).to.equal(false);
      const mine = (await processes()).filter((p) => p.state !== 'Z' && p.cmdline.some((a) => a.startsWith(dir)));
      expect(mine).to.deep.equal([]);
      const refused = async (u: string): Promise<boolean> => fetch(u, { signal: AbortSignal.timeout(2_000) }).then(() => false, () => true);
      expect(await refused(`${url}/v2/`)).to.equal(true);
      expect(await refused(realm)).to.equal(true);
      await registry.stop(); // idempotent
    });
  });
});
