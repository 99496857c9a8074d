// Issue #3: the grootfs-compatible image store on the default (overlay) store.
// Images from a registry on loopback, OCI layouts and rootfs tarballs, through
// gaol, the Garden client and the grootfs CLI: what a container sees, what lands
// on the host (owners, whiteouts, xattrs), what a failure or a destroy leaves
// behind, and what clean removes.

import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdtemp, readFile, readlink, realpath, rm, writeFile } from 'node:fs/promises';

import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { GardenError } from '../../src/client/errors.js';
import { ContainerNotFound } from '../../src/errors.js';
import {
  cleanupServer, dumpLogsIfFailed, entries, GAOL, leftovers, REPO, runAndWait, runtimeDir, type Server, sh, sleep, spec,
  startServer, STORE, runGaol } from './harness.js';
import {
  busyboxLayerEntries, type Entry, gzip, hostPlatform, type ImageSpec, layerTar, rootfsTarball, writeOciLayout, type WrittenLayout, subuidStart, chainIds } from './images.js';
import { type Registry, startRegistry, stopAllRegistries } from './registry.js';

const GROOTFS = join(REPO, 'dist/plugins/grootfs/main.js');
/** Unique per run: the store outlives the suite, so "never pulled" layers need fresh bytes. */
const RUN = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;

const SUBUID = subuidStart();
const hostUid = (containerUid: number): number => (containerUid === 0 ? process.getuid!() : SUBUID + containerUid - 1);

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function grootfs(args: string[]): Promise<CliResult> {
  const r = await execa(process.execPath, [GROOTFS, ...args], { reject: false, stdin: 'ignore', stripFinalNewline: false, timeout: 120_000 });
  return { code: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}


/** An xattr's value on the host, undefined when the file has none of that name. */
async function xattr(path: string, name: string): Promise<string | undefined> {
  const r = await execa('getfattr', ['--only-values', '-h', '-n', name, path], { reject: false, stripFinalNewline: false });
  return r.exitCode === 0 ? r.stdout : undefined;
}

/** What a failed create must not change. */
async function storeView(store = STORE): Promise<Record<string, string[]>> {
  return {
    volumes: await entries(join(store, 'volumes')),
    images: await entries(join(store, 'images')),
    tmp: await entries(join(store, 'tmp')),
    links: await entries(join(store, 'l')),
    dependencies: await entries(join(store, 'meta', 'dependencies')),
  };
}

/** Volume dirs whose name starts with the chain id (the volume, or a half-made or condemned copy). */
async function volumesFor(chain: string, store = STORE): Promise<string[]> {
  return (await entries(join(store, 'volumes'))).filter((n) => n.includes(chain));
}

async function createError(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('create succeeded, expected it to fail');
}

const BASE = gzip(layerTar(busyboxLayerEntries()));
const layer = (es: Entry[]): Buffer => gzip(layerTar(es));
/** A busybox root nobody has pulled before: same files plus a file naming this run. */
const freshBase = (tag: string, extra: Entry[] = []): Buffer =>
  layer([...busyboxLayerEntries(), { name: `etc/fresh-${tag}-${RUN}`, type: 'file', content: `${tag}\n` }, ...extra]);

describe('images: grootfs store, overlay driver (integration, issue #3)', function () {
  let registry: Registry;
  let authRegistry: Registry;
  let server: Server;
  let work: string;
  const creds = { username: 'alice', password: `pw-${RUN}-S3cr3t!` };

  /** Push `layers` as one image to registry `r` under `repoTag`; returns the written layout. */
  async function push(r: Registry, repoTag: string, layers: Buffer[], config?: ImageSpec['config']): Promise<WrittenLayout> {
    const dir = await mkdtemp(join(work, 'push-'));
    const layout = await writeOciLayout(dir, [{ tag: 'v', layers, config }]);
    await r.push(dir, 'v', repoTag);
    return layout;
  }

  const run = (handle: string, script: string, extra: Parameters<typeof sh>[1] = {}) => runAndWait(server.client, handle, sh(script, extra));

  async function destroyAndCheck(handle: string, s: Server = server, store = STORE): Promise<void> {
    await s.client.destroy(handle);
    expect(await leftovers(handle, { depot: s.depot, store })).to.deep.equal([]);
    expect(existsSync(join(store, 'meta', 'dependencies', `image:${handle}.json`)), 'dependency file').to.equal(false);
  }

  /** For finally blocks: the container goes even when the test failed half way. */
  async function destroyQuietly(handle: string, s: Server = server): Promise<void> {
    await s.client.destroy(handle).catch(() => undefined);
  }

  before(async function () {
    this.timeout(120_000);
    work = await mkdtemp(join(runtimeDir(), 'images-test-'));
    [registry, authRegistry] = await Promise.all([startRegistry(), startRegistry({ auth: creds })]);
    server = await startServer({
      extraArgs: ['--insecure-docker-registry', registry.host, '--insecure-docker-registry', authRegistry.host],
    });
  });

  after(async function () {
    this.timeout(120_000);
    await cleanupServer(server);
    // Layers this suite pulled belong to subordinate ids: only the store can remove them.
    const cleaned = await grootfs(['--store', STORE, 'clean']);
    if (cleaned.code !== 0) console.error(`after: grootfs clean failed: ${cleaned.stdout}${cleaned.stderr}`);
    await stopAllRegistries();
    if (work) await rm(work, { recursive: true, force: true });
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  describe('sources', function () {
    it('gaol create -r docker://<registry>/busybox: files owned by 1000 inside are subuid-owned on the host', async function () {
      const notes = `notes of ${RUN}\n`;
      const layout = await push(registry, 'busybox:latest', [
        BASE,
        layer([{ name: 'home/alice/notes.txt', type: 'file', content: notes, uid: 1000, gid: 1000 }]),
      ]);
      const handle = `img-gaol-${RUN}`;
      const gaol = (args: string[]) => runGaol(server.socketPath, args);
      try {
        expect(await gaol(['create', '-n', handle, '-r', `docker://${registry.host}/busybox`])).to.deep.equal({ code: 0, stdout: `${handle}\n`, stderr: '' });
        const r = await gaol(['run', '-a', '-c', "sh -c 'ls -ln /home/alice; id'", handle]);
        expect(r.stderr).to.equal('');
        expect(r.code).to.equal(0);
        expect(r.stdout).to.match(/^-rw-r--r--\s+1 1000\s+1000\s+\d+ .*notes\.txt$/m);
        expect(r.stdout).to.match(/^uid=0\(root\) gid=0\(root\)/m);

        const [base, top] = chainIds(layout.images[0]!.diffIds) as [string, string];
        const onHost = join(STORE, 'volumes', top, 'home/alice/notes.txt');
        const st = await lstat(onHost);
        expect(st.uid, `${onHost} uid`).to.equal(SUBUID + 999);
        expect(st.gid, `${onHost} gid`).to.equal(SUBUID + 999);
        expect(await readFile(onHost, 'utf8')).to.equal(notes);
        const busybox = await lstat(join(STORE, 'volumes', base, 'bin/busybox'));
        expect(busybox.uid, 'container root is the user').to.equal(process.getuid!());
        expect(busybox.mode & 0o7777).to.equal(0o755);

        expect(await gaol(['destroy', handle])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
        expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
      } finally {
        await destroyQuietly(handle);
      }
    });

    it('oci:///layout:ref gives a working container', async function () {
      const dir = join(work, 'oci-source');
      await writeOciLayout(dir, [
        { tag: 'one', layers: [BASE, layer([{ name: 'which', type: 'file', content: 'one\n' }])] },
        { tag: 'two', layers: [BASE, layer([{ name: 'which', type: 'file', content: 'two\n' }])] },
      ]);
      const handle = `img-oci-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri: `oci://${dir}:two` } }));
        expect(await run(handle, 'cat /which; id -u')).to.include({ code: 0, stdout: 'two\n0\n', stderr: '' });
        await destroyAndCheck(handle);
      } finally {
        await destroyQuietly(handle);
      }
    });

    for (const gz of [false, true]) {
      const ext = gz ? 'tar.gz' : 'tar';
      it(`an absolute path to a rootfs .${ext} gives a working container (one layer)`, async function () {
        const path = join(work, `rootfs-${RUN}.${ext}`);
        await rootfsTarball(path, [...busyboxLayerEntries(), { name: 'marker', type: 'file', content: `${ext}\n` }], { gzip: gz });
        const handle = `img-${gz ? 'tgz' : 'tar'}-${RUN}`;
        const before = await entries(join(STORE, 'volumes'));
        try {
          await server.client.create(spec({ handle, image: { uri: path } }));
          const r = await run(handle, 'cat /marker; ls -ln /home');
          expect(r).to.include({ code: 0, stderr: '' });
          expect(r.stdout.startsWith(`${ext}\n`), r.stdout).to.equal(true);
          expect(r.stdout).to.match(/^drwxr-xr-x\s+\d+ 1000\s+1000\s+.* alice$/m);
          const added = (await entries(join(STORE, 'volumes'))).filter((v) => !before.includes(v));
          expect(added, 'one new volume: the tarball is one layer').to.have.length(1);
          await destroyAndCheck(handle);
        } finally {
          await destroyQuietly(handle);
        }
      });
    }
  });

  it('a multi-layer image: whiteouts, opaque dirs, hard and symbolic links, setuid, non-root owners', async function () {
    const middle = layer([
      { name: 'etc/gone', type: 'file', content: 'deleted above\n' },
      { name: 'data/', type: 'dir' },
      { name: 'data/old', type: 'file', content: 'hidden by the opaque dir\n' },
      { name: 'data/sub/', type: 'dir' },
      { name: 'data/sub/older', type: 'file', content: 'also hidden\n' },
    ]);
    const top = layer([
      { name: 'etc/.wh.gone', type: 'file' },
      { name: 'data/', type: 'dir', mode: 0o750 },
      { name: 'data/.wh..wh..opq', type: 'file' },
      { name: 'data/new', type: 'file', content: 'upper\n' },
      { name: 'hl/', type: 'dir' },
      { name: 'hl/a', type: 'file', content: 'hard\n' },
      { name: 'hl/b', type: 'link', linkname: 'hl/a' },
      { name: 'sl/', type: 'dir' },
      { name: 'sl/rel', type: 'symlink', linkname: '../hl/a' },
      { name: 'sl/abs', type: 'symlink', linkname: '/hl/a' },
      { name: 'usr/', type: 'dir' },
      { name: 'usr/bin/', type: 'dir' },
      { name: 'usr/bin/suid', type: 'file', mode: 0o4755, content: '#!/bin/sh\necho suid\n' },
      { name: 'home/alice/own', type: 'file', content: 'alice\n', uid: 1000, gid: 1000 },
      { name: 'srv/', type: 'dir' },
      { name: 'srv/nobody', type: 'file', mode: 0o600, content: 'nobody\n', uid: 65534, gid: 65534 },
    ]);
    const layout = await push(registry, 'layers/multi:v1', [BASE, middle, top]);
    const chains = chainIds(layout.images[0]!.diffIds);
    const handle = `img-multi-${RUN}`;
    try {
      await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/layers/multi:v1` } }));
      const stats = await run(handle, 'stat -c "%n %a %u %g %h %F" /home/alice/own /srv/nobody /usr/bin/suid /hl/a /hl/b');
      expect(stats).to.deep.include({ code: 0, stderr: '' });
      expect(stats.stdout).to.equal(
        '/home/alice/own 644 1000 1000 1 regular file\n' +
          '/srv/nobody 600 65534 65534 1 regular file\n' +
          '/usr/bin/suid 4755 0 0 1 regular file\n' +
          '/hl/a 644 0 0 2 regular file\n' +
          '/hl/b 644 0 0 2 regular file\n',
      );
      const inodes = await run(handle, 'stat -c %i /hl/a /hl/b');
      const [ia, ib] = inodes.stdout.trim().split('\n');
      expect(ia, 'hard links share an inode').to.equal(ib);

      const ls = await run(handle, 'ls -ln /home/alice/own /srv/nobody /usr/bin/suid');
      expect(ls.stdout).to.match(/^-rw-r--r--\s+1 1000\s+1000\s+\d+ .*\/home\/alice\/own$/m);
      expect(ls.stdout).to.match(/^-rw-------\s+1 65534\s+65534\s+\d+ .*\/srv\/nobody$/m);
      expect(ls.stdout).to.match(/^-rwsr-xr-x\s+1 0\s+0\s+\d+ .*\/usr\/bin\/suid$/m);

      const links = await run(handle, 'readlink /sl/rel; readlink /sl/abs; cat /sl/rel /sl/abs');
      expect(links).to.include({ code: 0, stdout: '../hl/a\n/hl/a\nhard\nhard\n' });

      const layered = await run(handle, 'ls -A /data; stat -c %a /data; test -e /etc/gone && echo gone-is-there; ls /etc | grep -c "^gone$"');
      expect(layered.stdout).to.equal('new\n750\n0\n');

      // On the host: overlay's own forms, owners shifted into the subordinate range.
      const upper = join(STORE, 'volumes', chains[2]!);
      const whiteout = await lstat(join(upper, 'etc/gone'));
      expect(whiteout.isCharacterDevice(), 'whiteout is a char device').to.equal(true);
      expect(whiteout.rdev, 'whiteout is 0:0').to.equal(0);
      expect(await xattr(join(upper, 'data'), 'user.overlay.opaque')).to.equal('y');
      expect(existsSync(join(upper, 'data/old')), 'the upper layer does not copy the lower file').to.equal(false);
      expect((await lstat(join(upper, 'home/alice/own'))).uid).to.equal(hostUid(1000));
      expect((await lstat(join(upper, 'srv/nobody'))).uid).to.equal(hostUid(65534));
      const suid = await lstat(join(upper, 'usr/bin/suid'));
      expect(suid.mode & 0o7777).to.equal(0o4755);
      expect(suid.uid).to.equal(hostUid(0));
      expect((await lstat(join(upper, 'hl/a'))).ino).to.equal((await lstat(join(upper, 'hl/b'))).ino);
      expect(await readlink(join(upper, 'sl/abs'))).to.equal('/hl/a');
      expect(await readFile(join(STORE, 'volumes', chains[1]!, 'data/old'), 'utf8')).to.equal('hidden by the opaque dir\n');
      await destroyAndCheck(handle);
    } finally {
      await destroyQuietly(handle);
    }
  });

  describe('references', function () {
    it('pulls by tag and by @sha256: digest', async function () {
      const v1 = await push(registry, 'refs/app:v1', [BASE, layer([{ name: 'which', type: 'file', content: 'v1\n' }])]);
      await push(registry, 'refs/app:v2', [BASE, layer([{ name: 'which', type: 'file', content: 'v2\n' }])]);
      const digest = v1.images[0]!.manifest.digest;
      const byTag = `img-tag-${RUN}`;
      const byDigest = `img-digest-${RUN}`;
      try {
        await server.client.create(spec({ handle: byTag, image: { uri: `docker://${registry.host}/refs/app:v2` } }));
        await server.client.create(spec({ handle: byDigest, image: { uri: `docker://${registry.host}/refs/app@${digest}` } }));
        expect(await run(byTag, 'cat /which')).to.include({ code: 0, stdout: 'v2\n' });
        expect(await run(byDigest, 'cat /which')).to.include({ code: 0, stdout: 'v1\n' });
        await destroyAndCheck(byTag);
        await destroyAndCheck(byDigest);
      } finally {
        await destroyQuietly(byTag);
        await destroyQuietly(byDigest);
      }
    });

    it("a manifest list resolves to this host's platform", async function () {
      const host = hostPlatform();
      const other = host.architecture === 'amd64' ? { architecture: 'arm64', os: 'linux' } : { architecture: 'amd64', os: 'linux' };
      const dir = join(work, 'manifest-list');
      await writeOciLayout(
        dir,
        [
          { layers: [BASE, layer([{ name: 'platform', type: 'file', content: `${other.architecture}\n` }])], platform: other },
          { layers: [BASE, layer([{ name: 'platform', type: 'file', content: `${host.architecture}\n` }])], platform: host },
        ],
        { index: true, tag: 'multi' },
      );
      await registry.push(dir, 'multi', 'multi/arch:latest', { all: true });
      const handle = `img-list-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/multi/arch` } }));
        expect(await run(handle, 'cat /platform')).to.include({ code: 0, stdout: `${host.architecture}\n` });
        await destroyAndCheck(handle);
      } finally {
        await destroyQuietly(handle);
      }
    });
  });

  describe('a registry demanding a token', function () {
    let uri: string;

    before(async function () {
      await push(authRegistry, 'private/app:v1', [BASE, layer([{ name: 'secret-app', type: 'file', content: 'private\n' }])]);
      uri = `docker://${authRegistry.host}/private/app:v1`;
    });

    it('refuses a create without credentials, naming the image and the lack of permission', async function () {
      const handle = `img-noauth-${RUN}`;
      const err = await createError(server.client.create(spec({ handle, image: { uri } })));
      expect(err).to.be.instanceOf(GardenError);
      expect(err.message).to.include(`${authRegistry.host}/private/app`);
      expect(err.message).to.match(/permission|unauthori[sz]ed|credentials|authori[sz]ation/i);
      expect(await server.client.list()).to.not.include(handle);
      expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    });

    it('refuses a wrong password without echoing it', async function () {
      const wrong = `wrong-${RUN}-pw`;
      const handle = `img-badauth-${RUN}`;
      const err = await createError(server.client.create(spec({ handle, image: { uri, username: creds.username, password: wrong } })));
      expect(err.message).to.match(/authori[sz]ation failed|username and password|credentials/i);
      expect(err.message).to.not.include(wrong);
      expect(server.logs()).to.not.include(wrong);
      expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    });

    it('creates with image { uri, username, password }; the password is in no log line', async function () {
      const handle = `img-auth-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri, ...creds } }));
        expect(await run(handle, 'cat /secret-app')).to.include({ code: 0, stdout: 'private\n' });
        const granted = authRegistry.auth!.requests.filter((r) => r.user === creds.username && r.granted && r.scopes.includes('repository:private/app:pull'));
        expect(granted.length, 'the token service granted a pull to alice').to.be.greaterThan(0);
        await destroyAndCheck(handle);
      } finally {
        await destroyQuietly(handle);
      }
      expect(server.logs()).to.not.include(creds.password);
      expect(server.logs()).to.not.include(Buffer.from(`${creds.username}:${creds.password}`).toString('base64'));
    });
  });

  it('a corrupted blob fails the create with a verification error and leaves nothing behind', async function () {
    // A fresh base (with 4 MiB that do not compress) downloads alongside the corrupted layer,
    // so a download that outlives the failure would show up in <store>/tmp.
    const big = randomBytes(4 * 1024 * 1024);
    const layout = await push(registry, 'broken/app:v1', [
      freshBase('corrupt', [{ name: 'big', type: 'file', content: big }]),
      layer([{ name: `corrupt-${RUN}`, type: 'file', content: 'will not arrive\n' }]),
    ]);
    const bad = layout.images[0]!.layers[1]!.digest;
    await registry.corruptBlob(bad);
    const chains = chainIds(layout.images[0]!.diffIds);
    const handle = `img-corrupt-${RUN}`;
    const before = await storeView();
    try {
      const err = await createError(server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/broken/app:v1` } })));
      expect(err.message).to.match(/verif|digest/i);
      expect(err.message).to.include(bad);

      expect(await storeView(), 'store right after the failure').to.deep.equal(before);
      for (const c of chains) expect(await volumesFor(c), `volumes for ${c}`).to.deep.equal([]);
      await sleep(2000);
      expect(await storeView(), 'store 2 s after the failure (no download finishing late)').to.deep.equal(before);
      expect(await server.client.list()).to.not.include(handle);
      let lookup: unknown;
      await server.client.info(handle).catch((e: unknown) => (lookup = e));
      expect(lookup).to.be.instanceOf(ContainerNotFound);
      expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    } finally {
      // Downloads the store leaked are the user's own files (clean does not look in tmp): do not let them pile up across runs.
      for (const f of await entries(join(STORE, 'tmp'))) if (!before.tmp!.includes(f)) await rm(join(STORE, 'tmp', f), { force: true });
    }
  });

  describe('hostile layers', function () {
    it('a `../` entry name fails the create with "points outside the layer"; nothing is written', async function () {
      const dir = join(work, 'hostile-dotdot');
      const name = `evil-${RUN}`;
      const layout = await writeOciLayout(dir, [{ layers: [BASE, layer([{ name: `../${name}`, type: 'file', content: 'escaped\n' }])] }]);
      const handle = `img-dotdot-${RUN}`;
      const before = await storeView();
      const err = await createError(server.client.create(spec({ handle, image: { uri: `oci://${dir}` } })));
      expect(err.message).to.include('points outside the layer');
      expect(await storeView()).to.deep.equal(before);
      expect(existsSync(join(STORE, 'volumes', name)), 'no file next to the layer').to.equal(false);
      expect(await volumesFor(chainIds(layout.images[0]!.diffIds)[1]!)).to.deep.equal([]);
      expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    });

    it('symlinks lead back into the layer, devices are skipped, overlay xattrs are dropped', async function () {
      const dir = join(work, 'hostile-links');
      const pwned = `pwned-${RUN}`;
      const pwned2 = `pwned2-${RUN}`;
      const abs = `abs-${RUN}`;
      const lower = layer([
        { name: 'hide/', type: 'dir' },
        { name: 'hide/visible', type: 'file', content: 'visible\n' },
        { name: 'redir/', type: 'dir' },
        { name: 'redir/mine', type: 'file', content: 'mine\n' },
      ]);
      const hostile = layer([
        { name: 'etc/link', type: 'symlink', linkname: '/tmp' },
        { name: `etc/link/${pwned}`, type: 'file', content: 'through an absolute link\n' },
        // Deep enough to reach the host's / from anywhere under the store.
        { name: 'esc', type: 'symlink', linkname: `${'../'.repeat(16)}tmp` },
        { name: `esc/${pwned2}`, type: 'file', content: 'through a relative link\n' },
        { name: `/tmp/${abs}`, type: 'file', content: 'an absolute name\n' },
        { name: 'opt/', type: 'dir' },
        { name: 'opt/keep', type: 'file', content: 'kept\n' },
        { name: 'opt/chardev', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'opt/blockdev', type: 'block', devmajor: 7, devminor: 0, mode: 0o660 },
        { name: 'hide/', type: 'dir', xattrs: { 'user.overlay.opaque': 'y', 'trusted.overlay.opaque': 'y' } },
        { name: 'redir/', type: 'dir', xattrs: { 'user.overlay.redirect': '/hide', 'trusted.overlay.redirect': '/hide' } },
      ]);
      const layout = await writeOciLayout(dir, [{ tag: 'hostile', layers: [BASE, lower, hostile] }]);
      const top = join(STORE, 'volumes', chainIds(layout.images[0]!.diffIds)[2]!);
      const handle = `img-links-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri: `oci://${dir}:hostile` } }));
        for (const f of [pwned, pwned2, abs]) expect(existsSync(join('/tmp', f)), `/tmp/${f} on the host`).to.equal(false);
        expect(resolve(top, await readlink(join(top, 'esc'))), 'the link, followed on the host, names /tmp').to.equal('/tmp');

        const inside = await run(handle, `cat /tmp/${pwned} /tmp/${pwned2} /tmp/${abs}; ls -A /opt; ls -A /hide; ls -A /redir`);
        expect(inside).to.include({ code: 0, stderr: '' });
        expect(inside.stdout).to.equal('through an absolute link\nthrough a relative link\nan absolute name\nkeep\nvisible\nmine\n');
        for (const f of [pwned, pwned2, abs]) expect((await lstat(join(top, 'tmp', f))).isFile(), `${f} inside the layer`).to.equal(true);
        expect(existsSync(join(top, 'opt/chardev'))).to.equal(false);
        expect(existsSync(join(top, 'opt/blockdev'))).to.equal(false);
        expect(await xattr(join(top, 'hide'), 'user.overlay.opaque')).to.equal(undefined);
        expect(await xattr(join(top, 'redir'), 'user.overlay.redirect')).to.equal(undefined);
        await destroyAndCheck(handle);
        for (const f of [pwned, pwned2, abs]) expect(existsSync(join('/tmp', f)), `/tmp/${f} on the host`).to.equal(false);
      } finally {
        await destroyQuietly(handle);
      }
    });
  });

  it('two concurrent creates of a never-pulled image both succeed; each layer is fetched and unpacked once', async function () {
    const layout = await push(registry, 'race/app:v1', [freshBase('race'), layer([{ name: 'race-top', type: 'file', content: `${RUN}\n` }])]);
    const image = layout.images[0]!;
    const chains = chainIds(image.diffIds);
    for (const c of chains) expect(await volumesFor(c), 'not pulled before').to.deep.equal([]);
    const handles = [`img-race-a-${RUN}`, `img-race-b-${RUN}`];
    try {
      const results = await Promise.allSettled(
        handles.map((handle) => server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/race/app:v1` } }))),
      );
      expect(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason)))).to.deep.equal(handles);
      for (const h of handles) expect(await run(h, `cat /race-top /etc/fresh-race-${RUN}`)).to.include({ code: 0, stdout: `${RUN}\nrace\n` });
      for (const c of chains) expect(await volumesFor(c), `volume dirs for ${c}`).to.deep.equal([c]);
      expect((await entries(join(STORE, 'volumes'))).filter((v) => v.includes('-incomplete-'))).to.deep.equal([]);
      for (const l of image.layers) {
        const gets = registry.logs().split('\n').filter((line) => line.includes(`"GET /v2/race/app/blobs/${l.digest} `));
        expect(gets, `GETs of layer ${l.digest}`).to.have.length(1);
      }
      for (const h of handles) await destroyAndCheck(h);
    } finally {
      for (const h of handles) await destroyQuietly(h);
    }
  });

  describe('grootfs CLI on the same store', function () {
    /** `--config` naming the registry insecure, as a user's grootfs.yml would. */
    let config: string;

    before(async function () {
      config = join(work, 'cli-grootfs.yml');
      await writeFile(config, `create:\n  insecure_registries:\n    - "${registry.host}"\n`);
    });

    it('create --insecure-registry <host> <image> <id>: the flag takes one value, the positionals stay positionals', async function () {
      await push(registry, 'cli/flag:v1', [BASE]);
      const id = `cli-flag-${RUN}`;
      try {
        const r = await grootfs(['--store', STORE, 'create', '--insecure-registry', registry.host, `docker://${registry.host}/cli/flag:v1`, id]);
        expect(r.stdout).to.match(/^\{"root":\{"path":"[^"]+"\}/);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        expect(JSON.parse(r.stdout)).to.have.nested.property('root.path', join(STORE, 'images', id, 'rootfs'));
      } finally {
        await grootfs(['--store', STORE, 'delete', id]);
      }
    });

    it('create prints the rootfs and an overlay mount over <store>/l links, with userxattr', async function () {
      const layout = await push(registry, 'cli/mount:v1', [BASE, layer([{ name: 'cli', type: 'file', content: 'cli\n' }])]);
      const chains = chainIds(layout.images[0]!.diffIds);
      const id = `cli-mount-${RUN}`;
      try {
        const r = await grootfs(['--store', STORE, '--config', config, 'create', `docker://${registry.host}/cli/mount:v1`, id]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        const out = JSON.parse(r.stdout) as { root: { path: string }; mounts: { destination: string; type: string; options: string[] }[] };
        expect(out.root.path).to.equal(join(STORE, 'images', id, 'rootfs'));
        expect(out.mounts).to.have.length(1);
        expect(out.mounts[0]).to.include({ destination: '/', type: 'overlay' });
        const options = out.mounts[0]!.options.join(',').split(',');
        expect(options).to.include('userxattr');
        expect(options).to.include(`upperdir=${join(STORE, 'images', id, 'diff')}`);
        const lowers = options.find((o) => o.startsWith('lowerdir='))!.slice('lowerdir='.length).split(':');
        expect(lowers).to.have.length(2);
        // Top first: each lower dir is a short link that leads to the layer's volume.
        for (const [i, l] of lowers.entries()) {
          expect(l.startsWith(join(STORE, 'l') + '/'), l).to.equal(true);
          expect(await realpath(l)).to.equal(join(STORE, 'volumes', chains[chains.length - 1 - i]!));
        }
        expect(JSON.parse(await readFile(join(STORE, 'meta', 'dependencies', `image:${id}.json`), 'utf8'))).to.deep.equal(chains);
      } finally {
        await grootfs(['--store', STORE, 'delete', id]);
      }
    });

    it('refuses plain HTTP to a registry not named insecure', async function () {
      await push(registry, 'cli/plain:v1', [BASE]);
      const id = `cli-plain-${RUN}`;
      const before = await storeView();
      const r = await grootfs(['--store', STORE, 'create', `docker://${registry.host}/cli/plain:v1`, id]);
      expect(r.code).to.equal(1);
      expect(r.stdout).to.match(/^[^\n]*insecure[^\n]*\n$/i);
      expect(await storeView()).to.deep.equal(before);
    });

    it('clean removes exactly the layers no image uses; a threshold above usage skips it', async function () {
      const shared = layer([{ name: `shared-${RUN}`, type: 'file', content: 'base\n' }]);
      const a = await push(registry, 'clean/a:v1', [shared, layer([{ name: 'only-a', type: 'file', content: 'a\n' }])]);
      const b = await push(registry, 'clean/b:v1', [shared, layer([{ name: 'only-b', type: 'file', content: 'b\n' }])]);
      const [base, onlyA] = chainIds(a.images[0]!.diffIds) as [string, string];
      const [baseB, onlyB] = chainIds(b.images[0]!.diffIds) as [string, string];
      expect(baseB).to.equal(base);
      const idA = `clean-a-${RUN}`;
      const idB = `clean-b-${RUN}`;
      const g = (...args: string[]) => grootfs(['--store', STORE, ...args]);
      const present = async (c: string) => existsSync(join(STORE, 'volumes', c));
      try {
        for (const [id, repo] of [[idA, 'clean/a:v1'], [idB, 'clean/b:v1']] as const) {
          const r = await g('--config', config, 'create', `docker://${registry.host}/${repo}`, id);
          expect(r.code, r.stdout + r.stderr).to.equal(0);
        }
        expect([await present(base), await present(onlyA), await present(onlyB)]).to.deep.equal([true, true, true]);

        expect(await g('delete', idA)).to.include({ code: 0, stdout: `Image ${idA} deleted\n` });
        expect(existsSync(join(STORE, 'images', idA)), 'image dir after delete').to.equal(false);
        expect(existsSync(join(STORE, 'meta', 'dependencies', `image:${idA}.json`)), 'dependency file after delete').to.equal(false);

        expect(await g('clean', '--threshold-bytes', String(10 ** 15))).to.include({ code: 0, stdout: 'threshold not reached: skipping clean\n' });
        expect(await present(onlyA), 'nothing removed below the threshold').to.equal(true);

        expect(await g('clean')).to.include({ code: 0, stdout: 'clean completed\n' });
        expect(await volumesFor(onlyA), "A's own layer").to.deep.equal([]);
        expect(await volumesFor(base), 'the shared layer').to.deep.equal([base]);
        expect(await volumesFor(onlyB), "B's own layer").to.deep.equal([onlyB]);

        expect(await g('delete', idB)).to.include({ code: 0, stdout: `Image ${idB} deleted\n` });
        expect(await g('delete', idB)).to.include({ code: 0, stdout: `Image \`${idB}\` not found. Skipping delete.\n` });
        expect(await g('clean')).to.include({ code: 0, stdout: 'clean completed\n' });
        expect([...(await volumesFor(base)), ...(await volumesFor(onlyB))]).to.deep.equal([]);
      } finally {
        await g('delete', idA);
        await g('delete', idB);
      }
    });

    it('stats prints disk usage; exclusive bytes grow with what the container writes', async function () {
      await push(registry, 'cli/stats:v1', [BASE]);
      const handle = `img-stats-${RUN}`;
      const stats = async (): Promise<{ total: number; exclusive: number }> => {
        const r = await grootfs(['--store', STORE, 'stats', handle]);
        expect(r.code, r.stdout + r.stderr).to.equal(0);
        expect(r.stdout).to.match(/^\{"disk_usage":\{"total_bytes_used":\d+,"exclusive_bytes_used":\d+\}\}\n$/);
        const u = (JSON.parse(r.stdout) as { disk_usage: { total_bytes_used: number; exclusive_bytes_used: number } }).disk_usage;
        return { total: u.total_bytes_used, exclusive: u.exclusive_bytes_used };
      };
      try {
        await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/cli/stats:v1` } }));
        const first = await stats();
        expect(first.total).to.be.at.least(first.exclusive);
        expect(first.total, 'the busybox layer counts').to.be.greaterThan(500_000);
        expect(await run(handle, 'head -c 2097152 /dev/zero > /root/two-mib')).to.include({ code: 0, stderr: '' });
        const second = await stats();
        expect(second.exclusive - first.exclusive).to.be.at.least(2 * 1024 * 1024);
        expect(second.total).to.be.at.least(second.exclusive);
        expect(second.total - first.total).to.be.at.least(2 * 1024 * 1024);

        const missing = await grootfs(['--store', STORE, 'stats', `no-such-image-${RUN}`]);
        expect(missing.code).to.equal(1);
        expect(missing.stdout).to.match(/^[^\n]*not found[^\n]*\n$/);
        await destroyAndCheck(handle);
      } finally {
        await destroyQuietly(handle);
      }
    });
  });

  it('gdn server --image-plugin <grootfs> --image-plugin-extra-arg=--config ...: create from the registry, destroy leaves nothing', async function () {
    await push(registry, 'plugin/app:v1', [BASE, layer([{ name: 'via-plugin', type: 'file', content: 'plugin\n' }])]);
    const config = join(work, 'grootfs.yml');
    await writeFile(config, `store: ${STORE}\ncreate:\n  insecure_registries:\n    - "${registry.host}"\n`);
    const plugged = await startServer({
      extraArgs: ['--image-plugin', GROOTFS, '--image-plugin-extra-arg=--config', `--image-plugin-extra-arg=${config}`],
    });
    const handle = `img-plugin-${RUN}`;
    try {
      expect(await plugged.client.create(spec({ handle, image: { uri: `docker://${registry.host}/plugin/app:v1` } }))).to.equal(handle);
      expect(existsSync(join(STORE, 'images', handle)), 'the plugin names the image by the handle').to.equal(true);
      const r = await runAndWait(plugged.client, handle, sh('cat /via-plugin; ls -ln /home'));
      expect(r).to.include({ code: 0, stderr: '' });
      expect(r.stdout).to.match(/^plugin\n/);
      expect(r.stdout).to.match(/^drwxr-xr-x\s+\d+ 1000\s+1000\s+.* alice$/m);
      await destroyAndCheck(handle, plugged);
    } catch (err) {
      console.log(`    --- image-plugin server output ---\n${plugged.logs().split('\n').slice(-40).join('\n')}`);
      throw err;
    } finally {
      await cleanupServer(plugged);
    }
  });

  describe('the image config reaches processes', function () {
    it('Env, USER "1000:1000" and WORKDIR apply when the process names no user or dir', async function () {
      await push(
        registry,
        'config/app:v1',
        [BASE, layer([{ name: 'home/alice/work/', type: 'dir', uid: 1000, gid: 1000 }])],
        { Env: ['PATH=/usr/bin:/bin', 'GREETING=hello from the image'], User: '1000:1000', WorkingDir: '/home/alice/work' },
      );
      const handle = `img-config-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/config/app:v1` } }));
        const r = await run(handle, 'id -u; id -g; pwd; env | sort');
        expect(r).to.include({ code: 0, stderr: '' });
        const lines = r.stdout.split('\n');
        expect(lines.slice(0, 3)).to.deep.equal(['1000', '1000', '/home/alice/work']);
        expect(lines).to.include.members(['GREETING=hello from the image', 'PATH=/usr/bin:/bin']);
        // A process that names them still gets its own.
        expect(await run(handle, 'id -u; pwd', { user: 'root', dir: '/tmp' })).to.include({ code: 0, stdout: '0\n/tmp\n' });
        await destroyAndCheck(handle);
      } finally {
        await destroyQuietly(handle);
      }
    });

    it('USER by name (oci layout): the process runs as alice in her home', async function () {
      const dir = join(work, 'config-oci');
      await writeOciLayout(dir, [{ layers: [BASE], config: { User: 'alice', Env: ['PATH=/bin'] } }]);
      const handle = `img-config-name-${RUN}`;
      try {
        await server.client.create(spec({ handle, image: { uri: `oci://${dir}` } }));
        expect(await run(handle, 'id -un; id -u; pwd; echo "$PATH"')).to.include({ code: 0, stdout: 'alice\n1000\n/home/alice\n/bin\n' });
        await destroyAndCheck(handle);
      } finally {
        await destroyQuietly(handle);
      }
    });
  });
});
