// Issue #3: the grootfs store's btrfs driver, run as Garden runs an image plugin
// (gdn server --image-plugin <grootfs> with extra args naming the btrfs store).
// Layers are subvolumes, an image is a writable snapshot at
// <store>/images/<id>/rootfs: no mount at all. What a container sees, where its
// writes land, what stats says, and what destroy and clean leave behind.

import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { lstat, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import {
  cleanupServer, dumpLogsIfFailed, entries, leftovers, REPO, runAndWait, runtimeDir, type Server, sh, spec, startServer, STORE, teardownFinished,
} from './harness.js';
import { busyboxLayerEntries, type Entry, gzip, layerTar, writeOciLayout, type WrittenLayout, subuidStart, chainIds } from './images.js';
import { type Registry, startRegistry, stopAllRegistries } from './registry.js';

const GROOTFS = join(REPO, 'dist/plugins/grootfs/main.js');
/** Made by `gdn setup --store-driver btrfs --store /var/lib/trellis/<uid>/btrfs-store` (scripts/test). */
const BTRFS_STORE = join(dirname(STORE), 'btrfs-store');
const RUN = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
/** A btrfs subvolume's root directory always has inode 256. */
const SUBVOLUME_ROOT_INO = 256;

const SUBUID = subuidStart();

async function grootfs(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [GROOTFS, '--store', BTRFS_STORE, ...args], {
    reject: false,
    stdin: 'ignore',
    stripFinalNewline: false,
    timeout: 120_000,
  });
  return { code: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

async function xattr(path: string, name: string): Promise<string | undefined> {
  const r = await execa('getfattr', ['--only-values', '-h', '-n', name, path], { reject: false, stripFinalNewline: false });
  return r.exitCode === 0 ? r.stdout : undefined;
}

const BASE = gzip(layerTar(busyboxLayerEntries()));
const layer = (es: Entry[]): Buffer => gzip(layerTar(es));

describe('images: grootfs store, btrfs driver (integration, issue #3)', function () {
  let registry: Registry;
  let server: Server;
  let work: string;

  async function push(repoTag: string, layers: Buffer[]): Promise<WrittenLayout> {
    const dir = await mkdtemp(join(work, 'push-'));
    const layout = await writeOciLayout(dir, [{ tag: 'v', layers }]);
    await registry.push(dir, 'v', repoTag);
    return layout;
  }

  const run = (handle: string, script: string) => runAndWait(server.client, handle, sh(script));

  before(async function () {
    this.timeout(120_000);
    expect((await readFile(join(BTRFS_STORE, 'meta', 'driver'), 'utf8')).trim(), `${BTRFS_STORE} is a btrfs store`).to.equal('btrfs');
    work = await mkdtemp(join(runtimeDir(), 'images-btrfs-test-'));
    registry = await startRegistry();
    const config = join(work, 'grootfs.yml');
    await writeFile(config, `create:\n  insecure_registries:\n    - "${registry.host}"\n`);
    server = await startServer({
      extraArgs: [
        '--image-plugin', GROOTFS,
        '--image-plugin-extra-arg=--store', `--image-plugin-extra-arg=${BTRFS_STORE}`,
        '--image-plugin-extra-arg=--driver', '--image-plugin-extra-arg=btrfs',
        '--image-plugin-extra-arg=--config', `--image-plugin-extra-arg=${config}`,
      ],
    });
  });

  after(async function () {
    this.timeout(120_000);
    await cleanupServer(server);
    const cleaned = await grootfs(['clean']);
    if (cleaned.code !== 0) console.error(`after: grootfs clean failed: ${cleaned.stdout}${cleaned.stderr}`);
    await stopAllRegistries();
    if (work) await rm(work, { recursive: true, force: true });
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('creates from the registry as snapshots; writes land in images/<id>/rootfs; destroy and clean leave nothing', async function () {
    const notes = `notes of ${RUN}\n`;
    const layout = await push('btrfs/busybox:v1', [
      BASE,
      layer([{ name: 'home/alice/notes.txt', type: 'file', content: notes, uid: 1000, gid: 1000 }]),
    ]);
    const chains = chainIds(layout.images[0]!.diffIds);
    const handle = `btrfs-main-${RUN}`;
    const rootfs = join(BTRFS_STORE, 'images', handle, 'rootfs');
    try {
      await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/btrfs/busybox:v1` } }));

      const ls = await run(handle, 'ls -ln /home/alice; id -u');
      expect(ls).to.include({ code: 0, stderr: '' });
      expect(ls.stdout).to.match(/^-rw-r--r--\s+1 1000\s+1000\s+\d+ .*notes\.txt$/m);
      expect(ls.stdout).to.match(/^0$/m);

      // On the host: the image and every layer are subvolumes, owners shifted into the subordinate range.
      expect((await lstat(rootfs)).ino, `${rootfs} is a subvolume`).to.equal(SUBVOLUME_ROOT_INO);
      for (const c of chains) expect((await lstat(join(BTRFS_STORE, 'volumes', c))).ino, `volume ${c} is a subvolume`).to.equal(SUBVOLUME_ROOT_INO);
      const onHost = await lstat(join(rootfs, 'home/alice/notes.txt'));
      expect([onHost.uid, onHost.gid]).to.deep.equal([SUBUID + 999, SUBUID + 999]);
      expect((await lstat(join(rootfs, 'bin/busybox'))).uid, 'container root is the user').to.equal(process.getuid!());
      expect((await lstat(join(BTRFS_STORE, 'volumes', chains[1]!, 'home/alice/notes.txt'))).uid).to.equal(SUBUID + 999);

      expect(await run(handle, `echo written-${RUN} > /root/written`)).to.include({ code: 0, stderr: '' });
      expect(await readFile(join(rootfs, 'root/written'), 'utf8')).to.equal(`written-${RUN}\n`);
      expect(existsSync(join(BTRFS_STORE, 'volumes', chains[1]!, 'root/written')), 'the layer is untouched').to.equal(false);

      // stats, through the plugin and straight from the CLI.
      const cli = await grootfs(['stats', handle]);
      expect(cli.code, cli.stdout).to.equal(0);
      expect(cli.stdout).to.match(/^\{"disk_usage":\{"total_bytes_used":\d+,"exclusive_bytes_used":\d+\}\}\n$/);
      const first = (JSON.parse(cli.stdout) as { disk_usage: { total_bytes_used: number; exclusive_bytes_used: number } }).disk_usage;
      expect(first.total_bytes_used).to.be.at.least(first.exclusive_bytes_used);
      expect(first.total_bytes_used, 'busybox counts').to.be.greaterThan(500_000);
      expect(await run(handle, 'head -c 2097152 /dev/zero > /root/two-mib')).to.include({ code: 0, stderr: '' });
      await execa('sync', ['-f', join(rootfs, 'root/two-mib')]);
      const disk = (await server.client.metrics(handle)).DiskStat;
      expect(Number(disk.TotalBytesUsed)).to.be.at.least(Number(disk.ExclusiveBytesUsed));
      expect(Number(disk.ExclusiveBytesUsed) - first.exclusive_bytes_used, 'exclusive bytes after writing 2 MiB').to.be.at.least(2 * 1024 * 1024);

      await server.client.destroy(handle);
      expect(await leftovers(handle, { depot: server.depot, store: BTRFS_STORE })).to.deep.equal([]);
      expect(await entries(join(BTRFS_STORE, 'images'))).to.not.include(handle);
      expect(existsSync(join(BTRFS_STORE, 'meta', 'dependencies', `image:${handle}.json`)), 'dependency file').to.equal(false);

      for (const c of chains) expect(existsSync(join(BTRFS_STORE, 'volumes', c)), `volume ${c} before clean`).to.equal(true);
      expect(await grootfs(['clean'])).to.include({ code: 0, stdout: 'clean completed\n' });
      const volumes = await entries(join(BTRFS_STORE, 'volumes'));
      for (const c of chains) expect(volumes.filter((v) => v.includes(c)), `volume ${c} after clean`).to.deep.equal([]);
    } finally {
      await server.client.destroy(handle).catch(() => undefined);
    }
  });

  it('issue #10: an image whose root belongs to another container user is snapshotted as the store\'s namespace root; one whose root is the user\'s, as the user', async function () {
    // The user can snapshot only a subvolume whose root it owns; container root's files are the
    // user's, so that is the usual case and takes one process. A layer can give / to alice.
    const layout = await push('btrfs/alice-root:v1', [BASE, layer([{ name: './', type: 'dir', uid: 1000, gid: 1000 }])]);
    const chains = chainIds(layout.images[0]!.diffIds);
    const handle = `btrfs-alice-root-${RUN}`;
    const rootfs = join(BTRFS_STORE, 'images', handle, 'rootfs');
    try {
      await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/btrfs/alice-root:v1` } }));
      expect((await lstat(join(BTRFS_STORE, 'volumes', chains[0]!))).uid, 'the base layer\'s root is the user\'s').to.equal(process.getuid!());
      expect((await lstat(join(BTRFS_STORE, 'volumes', chains[1]!))).uid, 'the top layer gives / to alice').to.equal(SUBUID + 999);
      expect((await lstat(rootfs)).uid).to.equal(SUBUID + 999);
      expect((await lstat(rootfs)).ino, `${rootfs} is a subvolume`).to.equal(SUBVOLUME_ROOT_INO);
      const r = await run(handle, 'stat -c %u:%g /; echo x > /root/x && cat /root/x');
      expect(r).to.include({ code: 0, stdout: '1000:1000\nx\n', stderr: '' });
      await server.client.destroy(handle);
      expect(await leftovers(handle, { depot: server.depot, store: BTRFS_STORE })).to.deep.equal([]);
      expect(await entries(join(BTRFS_STORE, 'images'))).to.not.include(handle);
    } finally {
      await server.client.destroy(handle).catch(() => undefined);
    }
  });

  it('applies whiteouts and opaque dirs to the snapshot itself (no overlay forms on disk)', async function () {
    const layout = await push('btrfs/layers:v1', [
      BASE,
      layer([
        { name: 'etc/gone', type: 'file', content: 'deleted above\n' },
        { name: 'data/', type: 'dir' },
        { name: 'data/old', type: 'file', content: 'hidden\n' },
      ]),
      layer([
        { name: 'etc/.wh.gone', type: 'file' },
        { name: 'data/', type: 'dir' },
        { name: 'data/.wh..wh..opq', type: 'file' },
        { name: 'data/new', type: 'file', content: `new ${RUN}\n` },
      ]),
    ]);
    const chains = chainIds(layout.images[0]!.diffIds);
    const handle = `btrfs-layers-${RUN}`;
    try {
      await server.client.create(spec({ handle, image: { uri: `docker://${registry.host}/btrfs/layers:v1` } }));
      const r = await run(handle, 'ls -A /data; cat /data/new; test -e /etc/gone || echo no-gone');
      expect(r).to.include({ code: 0, stdout: `new\nnew ${RUN}\nno-gone\n`, stderr: '' });
      const top = join(BTRFS_STORE, 'volumes', chains[2]!);
      expect(existsSync(join(top, 'etc/gone')), 'the whiteout deleted the file (no char device)').to.equal(false);
      expect(existsSync(join(top, 'data/old'))).to.equal(false);
      expect(await xattr(join(top, 'data'), 'user.overlay.opaque')).to.equal(undefined);
      expect(await readFile(join(BTRFS_STORE, 'volumes', chains[1]!, 'data/old'), 'utf8'), 'the layer below keeps its file').to.equal('hidden\n');
      await server.client.destroy(handle);
      expect(await leftovers(handle, { depot: server.depot, store: BTRFS_STORE })).to.deep.equal([]);
    } finally {
      await server.client.destroy(handle).catch(() => undefined);
    }
  });
});

// seeds/004, step 2 and 4 as written: scripts/test wrote the seed's grootfs.conf
// (store /var/lib/grootfs/btrfs, driver btrfs, the obsolete `create: json: true`) and
// ran the seed's `sudo grootfs --config ... init-store --uid-mapping ...` with no size;
// gdn then takes grootfs with only `--config` as extra args, exactly as the seed does.
describe('images: the seed walkthrough grootfs steps (integration, issue #3)', function () {
  const seedConf = join(process.env.HOME ?? '', 'gdn', 'config', 'grootfs.conf');
  let server: Server;
  let work: string;

  before(async function () {
    this.timeout(120_000);
    const conf = await readFile(seedConf, 'utf8');
    expect(conf).to.match(/^store: \/var\/lib\/grootfs\/btrfs$/m);
    expect(conf).to.match(/^driver: btrfs$/m);
    work = await mkdtemp(join(runtimeDir(), 'images-seed-test-'));
    const sub = (file: string): string[] => {
      const me = userInfo().username;
      const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith(`${me}:`)) ?? '';
      return line.split(':').slice(1, 3);
    };
    const [us, ul] = sub('/etc/subuid');
    const [gs, gl] = sub('/etc/subgid');
    server = await startServer({
      extraArgs: [
        `--uid-map-start=${us}`, `--uid-map-length=${ul}`, `--gid-map-start=${gs}`, `--gid-map-length=${gl}`,
        `--image-plugin=${GROOTFS}`,
        '--image-plugin-extra-arg=--config',
        `--image-plugin-extra-arg=${seedConf}`,
        '--skip-setup',
      ],
    });
  });

  after(async function () {
    this.timeout(60_000);
    await cleanupServer(server);
    if (work) await rm(work, { recursive: true, force: true });
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('init-store made a btrfs store with the seed mappings, and gaol-style create/run/destroy work on it', async function () {
    const ns = JSON.parse(await readFile('/var/lib/grootfs/btrfs/meta/namespace.json', 'utf8')) as Record<string, string[]>;
    // The user's whole /etc/subuid range, as the seed step passes it (issue #8: 1000000001 ids for the test user in scripts/test).
    const count = readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${userInfo().username}:`))?.split(':')[2];
    expect(ns['uid-mappings']).to.deep.equal([`0:${process.getuid?.()}:1`, `1:${SUBUID}:${count}`]);
    const layoutDir = join(work, 'layout');
    await writeOciLayout(layoutDir, [{ tag: 'cake', layers: [BASE, layer([{ name: 'home/alice/cake', type: 'file', content: 'cake\n', uid: 1000, gid: 1000 }])] }]);
    const handle = `seed-cake-${RUN}`;
    try {
      await server.client.create(spec({ handle, image: { uri: `oci://${layoutDir}:cake` } }));
      const hello = await runAndWait(server.client, handle, { path: 'echo', args: ['Hello', 'Rootless', ':D'] });
      expect(hello).to.include({ code: 0, stdout: 'Hello Rootless :D\n' });
      const ls = await runAndWait(server.client, handle, sh('ls -ln /home/alice/cake'));
      expect(ls.stdout).to.match(/^-\S+\s+1 1000\s+1000\s+5 /);
      const onHost = await lstat(join('/var/lib/grootfs/btrfs/images', handle, 'rootfs/home/alice/cake'));
      expect(onHost.uid).to.equal(SUBUID + 999);
      expect((await lstat(join('/var/lib/grootfs/btrfs/images', handle, 'rootfs'))).ino).to.equal(SUBVOLUME_ROOT_INO);
    } finally {
      await server.client.destroy(handle).catch(() => undefined);
    }
    // destroy replies once the teardown is journaled (issue #10): the image goes with its end
    expect(await teardownFinished(handle, server.depot), 'the teardown finished').to.equal(true);
    expect(existsSync(join('/var/lib/grootfs/btrfs/images', handle)), 'destroy removed the image').to.equal(false);
    expect(await leftovers(handle, { depot: server.depot, store: '/var/lib/grootfs/btrfs' })).to.deep.equal([]);
    const cleaned = await execa(process.execPath, [GROOTFS, '--config', seedConf, 'clean'], { reject: false });
    expect(cleaned.stdout.trim()).to.equal('clean completed');
  });
});
