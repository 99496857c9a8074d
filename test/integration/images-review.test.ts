// Regressions from the security review of the grootfs image store (each named for
// what it guards). Driven through the grootfs command line on the user's overlay
// and btrfs stores, and through gdn where only a container can set the scene.

import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, existsSync, openSync, readFileSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { homedir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { TrellisError } from '../../src/errors.js';
import { requireRootOwnedChain } from '../../plugins/grootfs/store.js';
import {
  cleanupServer, dumpLogsIfFailed, entries, leftovers, processes, REPO, runAndWait, runtimeDir, type Server, sh, spec, startServer, STORE,
} from './harness.js';
import { busyboxLayerEntries, type Entry, gzip, layerTar, MEDIA, REF_NAME, sha256, writeOciLayout, chainIds } from './images.js';

const GROOTFS = join(REPO, 'dist/plugins/grootfs/main.js');
/** Made by `gdn setup --store-driver btrfs` (scripts/test). */
const BTRFS_STORE = join(dirname(STORE), 'btrfs-store');
/** Unique per run: the stores outlive the suite, and a layer unpacked before is never unpacked again. */
const RUN = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
const BASE_DIRECTORY = 'org.cloudfoundry.experimental.image.base-directory';

function subidStart(file: string): number {
  const names = [userInfo().username, String(process.getuid?.())];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [name, start] = line.split(':');
    if (name !== undefined && names.includes(name)) return Number(start);
  }
  throw new Error(`no ${file} entry for ${names.join('/')}`);
}
const SUBUID = subidStart('/etc/subuid');
const SUBGID = subidStart('/etc/subgid');
/** As the store's namespace root (what the unpack helper runs as). */
const UNSHARE = ['--user', '--map-root-user', `--map-users=${SUBUID},1,65536`, `--map-groups=${SUBGID},1,65536`];

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

async function grootfs(store: string, args: string[], timeout = 60_000): Promise<CliResult> {
  const r = await execa(process.execPath, [GROOTFS, '--store', store, ...args], { reject: false, stdin: 'ignore', stripFinalNewline: false, timeout });
  return { code: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr, timedOut: r.timedOut };
}

/** Removes trees holding files owned by subordinate ids (the plain user cannot). */
async function nsRm(...paths: string[]): Promise<void> {
  const r = await execa('unshare', [...UNSHARE, 'rm', '-rf', '--', ...paths], { reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0) console.error(`cleanup: rm -rf ${paths.join(' ')}: ${r.stderr}`);
}

/**
 * What a failed create left in a store for image `id` with layers `chains`: volumes
 * (done, half-made or condemned), the image dir, the dependency file. Only these
 * names: other suites may share the store.
 */
async function traces(store: string, id: string, chains: string[]): Promise<string[]> {
  const volumes = (await entries(join(store, 'volumes'))).filter((v) => chains.some((c) => v.includes(c)));
  const images = (await entries(join(store, 'images'))).filter((n) => n === id);
  const deps = (await entries(join(store, 'meta', 'dependencies'))).filter((n) => n.includes(id));
  return [...volumes.map((v) => `volumes/${v}`), ...images.map((n) => `images/${n}`), ...deps.map((n) => `meta/dependencies/${n}`)];
}

const layer = (es: Entry[]): Buffer => gzip(layerTar(es));
const BASE = layer(busyboxLayerEntries());

interface LayerSpec {
  blob: Buffer;
  /** Annotations on the layer's descriptor in the manifest. */
  annotations?: Record<string, string>;
}

/**
 * An OCI layout holding one image tagged `v`, with per-layer annotations
 * (writeOciLayout writes none): the manifest is rewritten with them and index.json
 * pointed at it. Returns the layers' diff ids and blob paths.
 */
async function writeLayout(dir: string, layers: LayerSpec[]): Promise<{ diffIds: string[]; blobs: string[] }> {
  const written = await writeOciLayout(dir, [{ tag: 'v', layers: layers.map((l) => l.blob) }]);
  const image = written.images[0]!;
  const result = { diffIds: image.diffIds, blobs: image.layers.map((l) => join(dir, 'blobs', 'sha256', l.digest.slice('sha256:'.length))) };
  if (layers.every((l) => l.annotations === undefined)) return result;
  const manifest = JSON.parse(image.manifestBytes.toString('utf8')) as { layers: Record<string, unknown>[] };
  manifest.layers = manifest.layers.map((d, i) => (layers[i]!.annotations === undefined ? d : { ...d, annotations: layers[i]!.annotations }));
  const bytes = Buffer.from(JSON.stringify(manifest));
  const digest = sha256(bytes);
  await writeFile(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)), bytes);
  const top = { mediaType: MEDIA.manifest, digest, size: bytes.length, platform: image.manifest.platform, annotations: { [REF_NAME]: 'v' } };
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: [top] }));
  return result;
}

/** Every path under `dir`, relative, sorted (directories end in `/`). */
async function tree(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix === '' ? e.name : `${prefix}/${e.name}`;
    if (e.isDirectory()) out.push(`${rel}/`, ...(await tree(dir, rel)));
    else out.push(rel);
  }
  return out.sort();
}

async function xattr(path: string, name: string): Promise<string | undefined> {
  const r = await execa('getfattr', ['--only-values', '-h', '-n', name, path], { reject: false, stripFinalNewline: false });
  return r.exitCode === 0 ? r.stdout : undefined;
}

describe('review: the grootfs image store after the security review (integration)', function () {
  let work: string;
  /** gdn with the in-process image store on the default (overlay) store. */
  let server: Server;

  before(async function () {
    this.timeout(60_000);
    expect((await readFile(join(BTRFS_STORE, 'meta', 'driver'), 'utf8')).trim(), `${BTRFS_STORE} is a btrfs store`).to.equal('btrfs');
    work = await mkdtemp(join(runtimeDir(), 'images-review-test-'));
    server = await startServer();
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  after(async function () {
    this.timeout(120_000);
    await cleanupServer(server);
    for (const store of [STORE, BTRFS_STORE]) {
      const cleaned = await grootfs(store, ['clean']);
      if (cleaned.code !== 0) console.error(`after: grootfs clean ${store} failed: ${cleaned.stdout}${cleaned.stderr}`);
    }
    if (work) await nsRm(work);
  });

  describe('review: a layer base-directory is resolved inside the image, never through a link to the host (btrfs)', function () {
    it('a lower layer links /opt to a host dir: the upper layer at base-directory /opt lands at that path inside the image, the host dir stays empty', async function () {
      const outside = await mkdtemp(join(work, 'outside-'));
      const dir = join(work, 'basedir-layout');
      const content = `through base-directory ${RUN}\n`;
      const { diffIds } = await writeLayout(dir, [
        { blob: layer([{ name: 'opt', type: 'symlink', linkname: outside }, { name: `lower-${RUN}`, type: 'file', content: 'lower\n' }]) },
        {
          blob: layer([
            { name: 'hello', type: 'file', content },
            { name: 'sub/', type: 'dir' },
            { name: 'sub/deep', type: 'file', content: 'deep\n' },
          ]),
          annotations: { [BASE_DIRECTORY]: '/opt' },
        },
      ]);
      const id = `review-basedir-${RUN}`;
      const rootfs = join(BTRFS_STORE, 'images', id, 'rootfs');
      try {
        const r = await grootfs(BTRFS_STORE, ['create', `oci://${dir}:v`, id]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        expect(await entries(outside), 'the host dir the link names').to.deep.equal([]);
        // chroot semantics: /opt -> <outside> is followed inside the image.
        expect(await readFile(join(rootfs, outside, 'hello'), 'utf8')).to.equal(content);
        expect(await readFile(join(rootfs, outside, 'sub/deep'), 'utf8')).to.equal('deep\n');
        expect((await lstat(join(rootfs, 'opt'))).isSymbolicLink(), '/opt is still the link').to.equal(true);
        const top = join(BTRFS_STORE, 'volumes', chainIds(diffIds)[1]!);
        expect(await readFile(join(top, outside, 'hello'), 'utf8'), 'in the layer volume too').to.equal(content);
        expect(await grootfs(BTRFS_STORE, ['delete', id])).to.include({ code: 0, stdout: `Image ${id} deleted\n` });
        expect(await entries(outside)).to.deep.equal([]);
      } finally {
        await grootfs(BTRFS_STORE, ['delete', id]);
      }
    });

    for (const base of ['/../etc', '../etc', '/opt/../../etc']) {
      it(`a base-directory of \`${base}\` is refused and leaves nothing of the image in the store`, async function () {
        const dir = await mkdtemp(join(work, 'basedir-climb-'));
        const { diffIds } = await writeLayout(dir, [
          { blob: layer([{ name: `climb-${RUN}`, type: 'file', content: `${base}\n` }]), annotations: { [BASE_DIRECTORY]: base } },
        ]);
        const id = `review-climb-${RUN}`;
        try {
          const r = await grootfs(BTRFS_STORE, ['create', `oci://${dir}:v`, id]);
          expect(r.code).to.equal(1);
          expect(r.stdout).to.match(/^[^\n]*base-directory `[^`]*` is not a clean absolute path[^\n]*\n$/);
          expect(await traces(BTRFS_STORE, id, chainIds(diffIds))).to.deep.equal([]);
        } finally {
          await grootfs(BTRFS_STORE, ['delete', id]);
        }
      });
    }
  });

  describe('review: opaque directories hide the lower layers at every depth', function () {
    const lower = layer([
      { name: 'app/', type: 'dir' },
      { name: 'app/sub/', type: 'dir' },
      { name: 'app/sub/old', type: 'file', content: `old ${RUN}\n` },
      { name: 'app/b/', type: 'dir' },
      { name: 'app/b/old2', type: 'file', content: 'old2\n' },
    ]);
    const upper = layer([
      { name: 'app/', type: 'dir' },
      { name: 'app/.wh..wh..opq', type: 'file' },
      { name: 'app/sub/', type: 'dir' },
      { name: 'app/sub/new', type: 'file', content: `new ${RUN}\n` },
      { name: 'app/b/c', type: 'file', content: 'c\n' },
    ]);
    const want = ['b/', 'b/c', 'sub/', 'sub/new'];

    it('btrfs: the snapshot keeps only what the opaque layer wrote (app/sub/new, app/b/c), nothing of app/sub/old or app/b/old2', async function () {
      const dir = join(work, 'opaque-btrfs');
      const { diffIds } = await writeLayout(dir, [{ blob: BASE }, { blob: lower }, { blob: upper }]);
      const id = `review-opaque-${RUN}`;
      try {
        const r = await grootfs(BTRFS_STORE, ['create', `oci://${dir}:v`, id]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        expect(await tree(join(BTRFS_STORE, 'images', id, 'rootfs', 'app'))).to.deep.equal(want);
        expect(await readFile(join(BTRFS_STORE, 'images', id, 'rootfs', 'app/sub/new'), 'utf8')).to.equal(`new ${RUN}\n`);
        const [, middle] = chainIds(diffIds);
        expect(await tree(join(BTRFS_STORE, 'volumes', middle!, 'app')), 'the layer below keeps its files').to.deep.equal(['b/', 'b/old2', 'sub/', 'sub/old']);
      } finally {
        await grootfs(BTRFS_STORE, ['delete', id]);
      }
    });

    it('overlay: a container sees the same app/ as btrfs gives; the upper layer carries the opaque xattr', async function () {
      const dir = join(work, 'opaque-overlay');
      const { diffIds } = await writeLayout(dir, [{ blob: BASE }, { blob: lower }, { blob: upper }]);
      const handle = `review-opaque-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri: `oci://${dir}:v` } }));
        const r = await runAndWait(server.client, handle, sh('cd /app && find . | sort; cat sub/new'));
        expect(r).to.include({ code: 0, stderr: '' });
        expect(r.stdout).to.equal(`.\n./b\n./b/c\n./sub\n./sub/new\nnew ${RUN}\n`);
        const top = join(STORE, 'volumes', chainIds(diffIds)[2]!);
        expect(await xattr(join(top, 'app'), 'user.overlay.opaque')).to.equal('y');
        expect(await tree(join(top, 'app'))).to.deep.equal(want);
        await server.client.destroy(handle);
        expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
      } finally {
        await server.client.destroy(handle).catch(() => undefined);
      }
    });
  });

  describe('review: nothing after the tar end-of-archive is extracted', function () {
    const hidden: Entry[] = [{ name: `after-end-${RUN}`, type: 'file', content: 'hidden past the end\n' }, { name: 'etc/', type: 'dir' }, { name: 'etc/passwd', type: 'file', content: 'evil::0:0::/:/bin/sh\n' }];
    const shown: Entry[] = [{ name: `before-end-${RUN}`, type: 'file', content: 'in the archive\n' }];

    it('a layer of tar A (with its two zero blocks) + tar B: only A is unpacked, and the diff id covering every byte verifies', async function () {
      const dir = join(work, 'tar-end');
      const plain = Buffer.concat([layerTar(shown), layerTar(hidden)]);
      const { diffIds } = await writeLayout(dir, [{ blob: gzip(plain) }]);
      expect(diffIds).to.deep.equal([sha256(plain)]);
      const id = `review-tar-end-${RUN}`;
      try {
        const r = await grootfs(STORE, ['create', `oci://${dir}:v`, id]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        expect(await tree(join(STORE, 'volumes', chainIds(diffIds)[0]!))).to.deep.equal([`before-end-${RUN}`]);
      } finally {
        await grootfs(STORE, ['delete', id]);
      }
    });

    it('one zero block followed by a header: create fails with a clear error and leaves nothing of the image in the store', async function () {
      const dir = join(work, 'tar-one-zero');
      const a = layerTar(shown);
      const plain = Buffer.concat([a.subarray(0, a.length - 1024), Buffer.alloc(512), layerTar(hidden)]);
      const { diffIds } = await writeLayout(dir, [{ blob: gzip(plain) }]);
      const id = `review-tar-one-zero-${RUN}`;
      try {
        const r = await grootfs(STORE, ['create', `oci://${dir}:v`, id]);
        expect(r.code).to.equal(1);
        expect(r.stdout).to.match(/^[^\n]*invalid layer: a tar header follows a single zero block[^\n]*\n$/);
        expect(await traces(STORE, id, chainIds(diffIds))).to.deep.equal([]);
      } finally {
        await grootfs(STORE, ['delete', id]);
      }
    });
  });

  describe('review: a layer blob that is not a regular file is refused, not read forever', function () {
    const cases: { what: string; make: (path: string) => Promise<void> }[] = [
      {
        what: 'a FIFO',
        make: async (p) => {
          await execa('mkfifo', [p]);
        },
      },
      { what: 'a symlink to /dev/zero', make: (p) => symlink('/dev/zero', p) },
    ];
    for (const c of cases) {
      it(`the blob is ${c.what}: create fails within seconds, saying so, and leaves no volume behind`, async function () {
        const dir = join(work, `blob-${c.what.replace(/\W+/g, '-')}`);
        const { diffIds, blobs } = await writeLayout(dir, [{ blob: layer([{ name: `blob-${RUN}`, type: 'file', content: `${c.what}\n` }]) }]);
        const path = blobs[0]!;
        await rm(path);
        await c.make(path);
        const id = `review-blob-${RUN}`;
        try {
          const r = await grootfs(STORE, ['create', `oci://${dir}:v`, id], 10_000);
          expect(r.timedOut, 'create returned within 10 s').to.equal(false);
          expect(r.code).to.equal(1);
          expect(r.stdout).to.match(/^[^\n]*not a regular file[^\n]*\n$/);
          expect(await traces(STORE, id, chainIds(diffIds)), 'no volume, not even an -incomplete- one').to.deep.equal([]);
        } finally {
          // A reader stuck on the FIFO gets its EOF; one reading /dev/zero is stopped.
          try {
            closeSync(openSync(path, fsc.O_WRONLY | fsc.O_NONBLOCK));
          } catch {
            // no reader, or not a FIFO
          }
          for (const p of await processes()) {
            if (p.pid !== process.pid && p.cmdline.join(' ').includes(dir)) {
              try {
                process.kill(p.pid, 'SIGKILL');
              } catch {
                // already gone
              }
            }
          }
          await grootfs(STORE, ['delete', id]);
        }
      });
    }
  });

  describe('review: overlay whiteouts are links of one 0:0 device per layer', function () {
    it('3000 whiteouts: each a 0:0 character device, all one inode, and no template file left in the layer', async function () {
      const n = 3000;
      const dir = join(work, 'whiteouts');
      const es: Entry[] = [{ name: 'w/', type: 'dir' }, { name: `w-${RUN}`, type: 'file', content: 'many whiteouts\n' }];
      for (let i = 0; i < n; i++) es.push({ name: `w/.wh.f${i}`, type: 'file' });
      const { diffIds } = await writeLayout(dir, [{ blob: layer(es) }]);
      const id = `review-whiteouts-${RUN}`;
      try {
        const r = await grootfs(STORE, ['create', `oci://${dir}:v`, id]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        const vol = join(STORE, 'volumes', chainIds(diffIds)[0]!);
        const names = await readdir(join(vol, 'w'));
        expect(names).to.have.length(n);
        const inodes = new Set<number>();
        const bad: string[] = [];
        for (const name of names) {
          const st = await lstat(join(vol, 'w', name));
          if (!st.isCharacterDevice() || st.rdev !== 0 || st.uid !== process.getuid!()) bad.push(`${name}: mode ${st.mode.toString(8)} rdev ${st.rdev} uid ${st.uid}`);
          inodes.add(st.ino);
        }
        expect(bad.slice(0, 5), 'whiteouts that are not 0:0 character devices of container root').to.deep.equal([]);
        expect(inodes.size, 'distinct inodes').to.equal(1);
        expect((await lstat(join(vol, 'w', names[0]!))).nlink).to.equal(n);
        expect((await readdir(vol)).sort()).to.deep.equal(['w', `w-${RUN}`]);
      } finally {
        await grootfs(STORE, ['delete', id]);
      }
    });
  });

  describe('review: an image its container made hard to delete is still deleted', function () {
    it('overlay: a directory tree deeper than PATH_MAX in the container: destroy succeeds and leaves no image dir', async function () {
      const dir = join(work, 'deep');
      await writeLayout(dir, [{ blob: BASE }]);
      const handle = `review-deep-${RUN}`;
      const imageDir = join(STORE, 'images', handle);
      try {
        await server.client.create(spec({ handle, image: { uri: `oci://${dir}:v` } }));
        // Two chains of 250 dirs, each made with paths below PATH_MAX, then one moved to the bottom of the other.
        const r = await runAndWait(
          server.client,
          handle,
          sh('cd /root && d=$(i=0; while [ $i -lt 250 ]; do printf a123456789/; i=$((i+1)); done) && mkdir -p "x/$d" "y/$d" && mv y "x/$d" && echo moved'),
        );
        expect(r).to.include({ code: 0, stdout: 'moved\n', stderr: '' });
        const upper = join(imageDir, 'diff', 'root');
        const deep = await execa('find', [upper, '-mindepth', '500', '-print', '-quit'], { reject: false });
        expect(deep.stdout.length, 'a path on the host longer than PATH_MAX').to.be.greaterThan(4096);
        await server.client.destroy(handle);
        expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
        expect(existsSync(imageDir), 'image dir').to.equal(false);
      } finally {
        await server.client.destroy(handle).catch(() => undefined);
        if (existsSync(imageDir)) await nsRm(imageDir);
      }
    });

    it('btrfs: an image whose rootfs subvolume was made read-only (btrfs property ro true): delete succeeds and leaves nothing', async function () {
      const dir = join(work, 'readonly');
      await writeLayout(dir, [{ blob: layer([{ name: `ro-${RUN}`, type: 'file', content: 'ro\n' }]) }]);
      const id = `review-ro-${RUN}`;
      const rootfs = join(BTRFS_STORE, 'images', id, 'rootfs');
      try {
        const r = await grootfs(BTRFS_STORE, ['create', `oci://${dir}:v`, id]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        await execa('btrfs', ['property', 'set', '-ts', rootfs, 'ro', 'true']);
        expect((await execa('btrfs', ['property', 'get', '-ts', rootfs, 'ro'])).stdout.trim()).to.equal('ro=true');
        const d = await grootfs(BTRFS_STORE, ['delete', id]);
        expect(d, d.stderr).to.include({ code: 0, stdout: `Image ${id} deleted\n` });
        expect(existsSync(join(BTRFS_STORE, 'images', id)), 'image dir').to.equal(false);
        expect(existsSync(join(BTRFS_STORE, 'meta', 'dependencies', `image:${id}.json`)), 'dependency file').to.equal(false);
      } finally {
        if (existsSync(rootfs)) await execa('btrfs', ['property', 'set', '-ts', rootfs, 'ro', 'false'], { reject: false });
        await grootfs(BTRFS_STORE, ['delete', id]);
      }
    });
  });

  describe('review: clean carries on and removes gc.* volumes an earlier clean left', function () {
    it('overlay: a stale gc.<chain> holding subordinate-owned files goes, and clean completes', async function () {
      const stale = join(STORE, 'volumes', `gc.${randomBytes(32).toString('hex')}`);
      try {
        await mkdir(stale);
        const made = await execa('unshare', [...UNSHARE, 'sh', '-c', 'mkdir -p "$1/etc" && echo x > "$1/etc/f" && chown -R 1000:1000 "$1/etc"', 'sh', stale], { reject: false });
        expect(made.exitCode, made.stderr).to.equal(0);
        expect((await lstat(join(stale, 'etc/f'))).uid).to.equal(SUBUID + 999);
        expect(await grootfs(STORE, ['clean'])).to.include({ code: 0, stdout: 'clean completed\n' });
        expect(existsSync(stale), stale).to.equal(false);
      } finally {
        if (existsSync(stale)) await nsRm(stale);
      }
    });

    it('btrfs: a stale gc.<chain> subvolume goes, and clean completes', async function () {
      const stale = join(BTRFS_STORE, 'volumes', `gc.${randomBytes(32).toString('hex')}`);
      try {
        await execa('btrfs', ['subvolume', 'create', stale]);
        await writeFile(join(stale, 'f'), 'x\n');
        expect(await grootfs(BTRFS_STORE, ['clean'])).to.include({ code: 0, stdout: 'clean completed\n' });
        expect(existsSync(stale), stale).to.equal(false);
      } finally {
        if (existsSync(stale)) await execa('btrfs', ['subvolume', 'delete', stale], { reject: false });
      }
    });
  });

  describe('review: credentials in a bare-host image URL never leak', function () {
    const secret = `s3cret${RUN}`;

    for (const url of [`docker://user:${secret}@127.0.0.1:1`, `docker://user:${secret}@127.0.0.1:1/x`, `docker://user:${secret}@localhost`]) {
      it(`grootfs create ${url.replace(secret, '<password>')}: exit 1; neither the message nor the debug log holds the password`, async function () {
        const id = `review-creds-${RUN}`;
        const r = await grootfs(STORE, ['--log-level', 'debug', 'create', url, id], 30_000);
        expect(r.code).to.equal(1);
        expect(r.stdout).to.match(/^[^\n]+\n$/);
        expect(r.stdout + r.stderr).to.not.include(secret);
        expect(existsSync(join(STORE, 'images', id))).to.equal(false);
      });
    }

    it('gdn create with such a URL: the error and the server log do not hold the password', async function () {
      const handle = `review-creds-${RUN}`;
      let err: unknown;
      try {
        await server.client.create(spec({ handle, image: { uri: `docker://user:${secret}@127.0.0.1:1` } }));
      } catch (e) {
        err = e;
      } finally {
        await server.client.destroy(handle).catch(() => undefined);
      }
      expect(err, 'create failed').to.be.instanceOf(Error);
      expect((err as Error).message).to.not.include(secret);
      expect(server.logs()).to.not.include(secret);
    });
  });

  describe('review: root prepares a store only below directories root alone can change', function () {
    it('requireRootOwnedChain accepts /var/lib and /tmp (sticky), and refuses a directory the user owns, naming it', async function () {
      expect(() => requireRootOwnedChain('/var/lib')).to.not.throw();
      expect(() => requireRootOwnedChain('/tmp')).to.not.throw();
      for (const mine of [homedir(), work, STORE]) {
        let err: unknown;
        try {
          requireRootOwnedChain(mine);
        } catch (e) {
          err = e;
        }
        expect(err, mine).to.be.instanceOf(TrellisError);
        expect((err as TrellisError).code).to.equal('ERR_TRELLIS_STORE_PARENT');
        expect((err as Error).message).to.include(`${mine} must be a directory owned by root`);
      }
    });
  });
});
