// scripts/bench's image part (issue #3, item 7), run by bench.mjs in the same invocation:
//   A. create from a cached registry image against the directory image (the default
//      rootfs), through the gdn server bench.mjs started;
//   B. cold unpack of a ~100 MB, ~3000-file, multi-layer image with the image store
//      against `podman import` of the same tree, rootless, throwaway storage.
// Everything is made under one temp dir and removed only at the very end: the root
// filesystem (ext4, no journal) creates files slowly for a while after a big delete.
// Timings are reported, never asserted.
import { spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { chmodSync, existsSync, linkSync, mkdirSync, openSync, closeSync, readFileSync, writeFileSync, writevSync } from 'node:fs';
import { gzip as gzipCb } from 'node:zlib';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { median, now, p90 } from './stats.mjs';

const gzipAsync = promisify(gzipCb);

export const TARGET_CACHE_MS = 10; // create from a cached image adds under this over the directory image
export const TARGET_UNPACK = 2; // podman import time / Trellis unpack time, at least

const TREE_BYTES = 100 * 1024 * 1024;
const TREE_FILES = 3000;
const TREE_LAYERS = 4;
const SEED = 0x7e11;
const UNPACK_WARMUP = 1;
const PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const LIMITS = { bandwidth_limits: {}, cpu_limits: {}, disk_limits: {}, memory_limits: {}, pid_limits: {} };

// ---------------------------------------------------------------- small helpers (bench.mjs's style)

const ms = (x) => (Number.isNaN(x) ? '-' : `${x.toFixed(1)} ms`);
const pad = (s, n) => String(s).padEnd(n);
const lpad = (s, n) => String(s).padStart(n);
const signed = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(1)} ms`;
const mib = (b) => `${(b / 1048576).toFixed(0)} MiB`;

function run(cmd, args, env) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.once('error', rej);
    child.once('close', (code, signal) => res({ code: code ?? 128, signal, out, err }));
  });
}

/** The mount holding `path` (longest mount point prefix in /proc/mounts). */
function mountOf(path) {
  let best;
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, dir, type, opts] = line.split(' ');
    if (dir === undefined) continue;
    if ((path === dir || path.startsWith(dir === '/' ? '/' : `${dir}/`)) && (!best || dir.length >= best.dir.length)) {
      best = { dir, type, options: opts.split(',') };
    }
  }
  return best;
}

// ---------------------------------------------------------------- deterministic content

/** mulberry32: a tiny seeded PRNG for sizes, names and modes. */
function prng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` bytes of AES-256-CTR keystream keyed by `seed`: random-looking, incompressible, reproducible. */
function keystream(seed, n) {
  const key = createHash('sha256').update(`trellis-bench-${seed}`).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

/** Text from a seeded 512-word vocabulary: compresses about like source and config files do. */
function textPool(rand, n) {
  const letters = 'abcdefghijklmnopqrstuvwxyz_';
  const words = Array.from({ length: 512 }, () =>
    Array.from({ length: 2 + Math.floor(rand() * 9) }, () => letters[Math.floor(rand() * letters.length)]).join(''));
  const parts = [];
  let len = 0;
  while (len < n) {
    const w = words[Math.floor(rand() * words.length)] + (rand() < 0.1 ? '\n' : ' ');
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

/**
 * The tree: TREE_FILES files totalling TREE_BYTES over TREE_LAYERS layers under opt/bench/l<k>/.
 * Sizes are log-normal (median ~4 KiB, a few MiB-sized), scaled to the exact total; half the
 * files are keystream bytes, half text. A few executables, files owned by uid 1000, symlinks
 * and hard links, as real images have. Returns per-layer tar entries (parent dirs repeated
 * in each layer, as layers do).
 */
function buildTree() {
  const rand = prng(SEED);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const raw = Array.from({ length: TREE_FILES }, () => Math.min(8 << 20, Math.exp(Math.log(4096) + 2 * gauss())));
  const sum = raw.reduce((a, b) => a + b, 0);
  const sizes = raw.map((x) => Math.floor((x * TREE_BYTES) / sum));
  sizes[sizes.length - 1] += TREE_BYTES - sizes.reduce((a, b) => a + b, 0);

  const binBytes = keystream(SEED, TREE_BYTES);
  const text = textPool(rand, Math.max(...sizes) + (1 << 20));
  let binAt = 0;
  const exts = ['so', 'py', 'txt', 'json', 'bin', 'h', 'js', 'conf'];
  const layers = [];
  let fileNo = 0;
  for (let k = 0; k < TREE_LAYERS; k++) {
    const base = `opt/bench/l${k}`;
    const entries = [{ name: 'opt/', type: 'dir' }, { name: 'opt/bench/', type: 'dir' }, { name: `${base}/`, type: 'dir' }];
    const dirs = [base];
    for (let a = 0; a < 8; a++) {
      entries.push({ name: `${base}/d${a}/`, type: 'dir' });
      dirs.push(`${base}/d${a}`);
      for (let b = 0; b < 4; b++) {
        entries.push({ name: `${base}/d${a}/e${b}/`, type: 'dir', ...(rand() < 0.1 ? { uid: 1000, gid: 1000 } : {}) });
        dirs.push(`${base}/d${a}/e${b}`);
      }
    }
    const files = [];
    const end = Math.round(((k + 1) * TREE_FILES) / TREE_LAYERS);
    for (; fileNo < end; fileNo++) {
      const size = sizes[fileNo];
      let content;
      if (fileNo % 2 === 0) {
        content = binBytes.subarray(binAt, binAt + size);
        binAt += size;
      } else {
        const at = Math.floor(rand() * (text.length - size));
        content = text.subarray(at, at + size);
      }
      const name = `${dirs[Math.floor(rand() * dirs.length)]}/f${fileNo}.${exts[Math.floor(rand() * exts.length)]}`;
      const r = rand();
      const owner = r < 0.05 ? { uid: 1000, gid: 1000 } : {};
      entries.push({ name, type: 'file', content, mode: rand() < 0.1 ? 0o755 : 0o644, ...owner });
      files.push(name);
    }
    for (let j = 0; j < 40; j++) {
      const target = files[Math.floor(rand() * files.length)];
      entries.push({ name: `${base}/link${j}`, type: 'symlink', linkname: `/${target}` });
    }
    for (let j = 0; j < 10; j++) {
      const target = files[Math.floor(rand() * files.length)];
      entries.push({ name: `${base}/hard${j}`, type: 'link', linkname: target });
    }
    layers.push(entries);
  }
  return layers;
}

// ---------------------------------------------------------------- the image bench

export class ImageBench {
  /**
   * @param o.repo     the checkout (dist/ must be built)
   * @param o.tmp      bench.mjs's temp dir (everything of ours goes under <tmp>/images)
   * @param o.env      environment for children (PATH, XDG_RUNTIME_DIR)
   * @param o.tag      bench.mjs's run tag (names handles and image ids)
   * @param o.subuid   { start, count } of the user's /etc/subuid entry; o.subgid likewise
   */
  constructor(o) {
    Object.assign(this, o);
    this.dir = join(o.tmp, 'images');
    this.uid = process.getuid();
    this.gid = process.getgid();
    this.handles = new Set();
    this.handleSeq = 0;
    this.results = {};
  }

  async #imports() {
    const d = (p) => join(this.repo, 'dist', p);
    for (const p of ['test/integration/images.js', 'test/integration/registry.js', 'plugins/grootfs/store.js']) {
      if (!existsSync(d(p))) throw new Error(`${d(p)} missing: run 'npm run build'`);
    }
    this.img ??= await import(d('test/integration/images.js'));
    this.reg ??= await import(d('test/integration/registry.js'));
    this.store ??= await import(d('plugins/grootfs/store.js'));
  }

  // ------------------------------------------------------------ A: create from a cached registry image

  /** Starts the registry and pushes the small image; returns the flags the gdn server needs. */
  async startRegistry() {
    await this.#imports();
    mkdirSync(this.dir, { recursive: true });
    const before = { SIGINT: process.listeners('SIGINT'), SIGTERM: process.listeners('SIGTERM') };
    this.registry = await this.reg.startRegistry();
    // The harness re-raises SIGINT/SIGTERM after killing its registries, which would end the
    // process before bench.mjs's own cleanup destroys its containers; its 'exit' hook and the
    // registry's parent-death signal still cover an abrupt end.
    for (const sig of ['SIGINT', 'SIGTERM']) {
      for (const l of process.listeners(sig)) if (!before[sig].includes(l)) process.removeListener(sig, l);
    }
    const { layerTar, busyboxLayerEntries, writeOciLayout, gzip } = this.img;
    // busybox plus four small layers: as many layers as the unpack image, none of its bulk.
    const layers = [gzip(layerTar(busyboxLayerEntries()))];
    for (let k = 0; k < TREE_LAYERS; k++) {
      layers.push(gzip(layerTar([
        { name: 'opt/', type: 'dir' }, { name: `opt/l${k}/`, type: 'dir' },
        ...Array.from({ length: 20 }, (_, j) => ({ name: `opt/l${k}/f${j}`, type: 'file', content: `layer ${k} file ${j}\n`.repeat(50) })),
      ])));
    }
    const layout = join(this.dir, 'cached-layout');
    await writeOciLayout(layout, [{ tag: 'v1', layers, config: { Env: [PATH_ENV] } }]);
    await this.registry.push(layout, 'v1', 'bench/cached:v1');
    this.cachedUri = `docker://${this.registry.host}/bench/cached:v1`;
    // The same layers from the layout on disk: cached alike (same chain ids), but no registry round trips.
    this.cachedLayoutUri = `oci://${layout}:v1`;
    this.cachedLayers = layers.length;
    return ['--insecure-docker-registry', this.registry.host];
  }

  /** Stop at the next step once cleanup has begun (a signal): its rm must not race our writes. */
  #check() {
    if (this.stopping) throw new Error('image bench interrupted');
  }

  async #create(client, image) {
    const handle = `${this.tag}-img-${this.handleSeq++}`;
    this.handles.add(handle);
    const h = await client.create({ handle, image, limits: LIMITS });
    if (h !== handle) this.handles.add(h);
    return h;
  }

  async #destroy(client, h) {
    await client.destroy(h);
    this.handles.delete(h);
  }

  /**
   * One unmeasured pull (create + destroy), then n interleaved creates + destroys of each image:
   * the directory image, the cached registry image, and [ref] the same layers from the layout.
   */
  async measureCachedCreate(client, n) {
    this.client = client;
    const sides = [
      { key: 'dir', image: {} },
      { key: 'cached', image: { uri: this.cachedUri } },
      { key: 'layout', image: { uri: this.cachedLayoutUri } },
    ];
    const t = { dir: [], cached: [], layout: [], dirDestroy: [], cachedDestroy: [], layoutDestroy: [] };
    const t0 = now();
    const pull = await this.#create(client, sides[1].image);
    this.pullMs = now() - t0;
    await this.#destroy(client, pull);
    await this.#destroy(client, await this.#create(client, sides[0].image));
    await this.#destroy(client, await this.#create(client, sides[2].image));
    const s0 = Date.now();
    for (let i = 0; i < n; i++) {
      for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
        this.#check();
        const a = now();
        const h = await this.#create(client, s.image);
        const b = now();
        await this.#destroy(client, h);
        t[s.key].push(b - a);
        t[`${s.key}Destroy`].push(now() - b);
      }
    }
    this.results.cached = { n, times: t, secs: (Date.now() - s0) / 1000 };
  }

  // ------------------------------------------------------------ B: cold unpack against podman import

  /** Builds the content, the OCI layouts (gzip and plain tar), the podman tars, the store and podman's dirs. */
  async prepareUnpack(n) {
    await this.#imports();
    const { layerTar, busyboxLayerEntries, sha256, MEDIA, hostPlatform } = this.img;
    const root = join(this.dir, 'unpack');
    const pool = join(root, 'pool');
    mkdirSync(pool, { recursive: true });
    const t0 = Date.now();

    const treeLayers = buildTree();
    const allEntries = [busyboxLayerEntries(), ...treeLayers];
    const tars = allEntries.map((e) => layerTar(e));
    const gzs = await Promise.all(tars.map((t) => gzipAsync(t)));
    const diffIds = tars.map((t) => sha256(t));
    this.treeInfo = {
      files: treeLayers.flat().filter((e) => e.type === 'file').length,
      bytes: treeLayers.flat().reduce((a, e) => a + (e.content?.length ?? 0), 0),
      tarBytes: tars.reduce((a, t) => a + t.length, 0),
      gzBytes: gzs.reduce((a, t) => a + t.length, 0),
      layers: tars.length,
    };
    const put = (dir, bytes) => {
      const digest = sha256(bytes);
      const path = join(dir, digest.slice(7));
      if (!existsSync(path)) writeFileSync(path, bytes);
      return digest;
    };
    const pooled = {
      gz: gzs.map((b) => ({ digest: put(pool, b), size: b.length, mediaType: MEDIA.layerGzip })),
      tar: tars.map((b) => ({ digest: put(pool, b), size: b.length, mediaType: MEDIA.layer })),
    };

    // One layout per variant and iteration: a tiny unique layer at the bottom changes every
    // chain id, so each create unpacks all layers; the big blobs are hard links into the pool.
    const platform = hostPlatform();
    const nonce = (variant, i) => layerTar([{ name: '.bench-nonce', type: 'file', content: `${this.tag} ${variant} ${i}\n` }]);
    const layout = async (variant, i) => {
      const dir = join(root, `oci-${variant}-${i}`);
      const blobs = join(dir, 'blobs', 'sha256');
      mkdirSync(blobs, { recursive: true });
      const nTar = nonce(variant, i);
      const nBlob = variant === 'gz' ? await gzipAsync(nTar) : nTar;
      const layers = [{ digest: put(blobs, nBlob), size: nBlob.length, mediaType: pooled[variant][0].mediaType }];
      for (const l of pooled[variant]) {
        linkSync(join(pool, l.digest.slice(7)), join(blobs, l.digest.slice(7)));
        layers.push(l);
      }
      const json = (o) => Buffer.from(JSON.stringify(o));
      const config = json({
        architecture: platform.architecture, os: platform.os, config: { Env: [PATH_ENV] },
        rootfs: { type: 'layers', diff_ids: [sha256(nTar), ...diffIds] },
      });
      const configDesc = { mediaType: MEDIA.config, digest: put(blobs, config), size: config.length };
      const manifest = json({ schemaVersion: 2, mediaType: MEDIA.manifest, config: configDesc, layers });
      const manifestDesc = { mediaType: MEDIA.manifest, digest: put(blobs, manifest), size: manifest.length, platform };
      writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
      writeFileSync(join(dir, 'index.json'), JSON.stringify({
        schemaVersion: 2, mediaType: MEDIA.index,
        manifests: [{ ...manifestDesc, annotations: { 'org.opencontainers.image.ref.name': 'bench' } }],
      }));
      return `oci://${dir}:bench`;
    };

    // podman gets the merged tree as one tar: the nonce first, then every layer's entries
    // (parent dirs once). The body is serialised once; each iteration's tar is nonce + body.
    const seen = new Set();
    const flat = allEntries.flat().filter((e) => e.type !== 'dir' || (!seen.has(e.name) && seen.add(e.name)));
    const body = layerTar(flat);
    const podTar = (i) => {
      const path = join(root, `podman-${i}.tar`);
      const head = nonce('podman', i);
      const fd = openSync(path, 'w');
      try {
        writevSync(fd, [head.subarray(0, head.length - 1024), body]);
      } finally {
        closeSync(fd);
      }
      return path;
    };

    this.iters = [];
    for (let i = 0; i < UNPACK_WARMUP + n; i++) {
      this.iters.push({ gz: await layout('gz', i), tar: await layout('tar', i), podman: podTar(i) });
    }
    this.podmanTarBytes = body.length;

    // The bench's own store: initialised as init-store does (same dirs, namespace file, driver),
    // by the user who owns it, so nothing else using the user's default store is disturbed.
    const storePath = join(root, 'store');
    mkdirSync(storePath, { mode: 0o700 });
    for (const d of this.store.STORE_DIRS) mkdirSync(join(storePath, d), { recursive: true, mode: 0o755 });
    this.maps = {
      uidMappings: [{ containerID: 0, hostID: this.uid, size: 1 }, { containerID: 1, hostID: this.subuid.start, size: this.subuid.count }],
      gidMappings: [{ containerID: 0, hostID: this.gid, size: 1 }, { containerID: 1, hostID: this.subgid.start, size: this.subgid.count }],
    };
    writeFileSync(join(storePath, 'meta/namespace.json'), JSON.stringify(this.store.namespaceFileFor(this.maps)), { mode: 0o644 });
    writeFileSync(join(storePath, 'meta/driver'), 'overlay\n', { mode: 0o644 });
    this.storeLogs = [];
    const { pino } = await import('pino');
    const logger = pino({ level: 'info' }, { write: (s) => this.storeLogs.push(s) });
    this.imageStore = new this.store.ImageStore({ storePath, logger });
    this.storePath = storePath;

    // podman: rootless, its own storage, HOME, config, runtime and temp dirs (so its pause
    // process and events are ours alone), native overlay.
    // (podman refuses a runroot path longer than 50 characters: keep it short.)
    const pod = join(this.dir, 'p');
    if (join(pod, 'rr').length > 50) throw new Error(`podman's runroot ${join(pod, 'rr')} would be longer than podman takes (50)`);
    this.pod = {
      dir: pod,
      args: ['--root', join(pod, 'root'), '--runroot', join(pod, 'rr'), '--storage-driver', 'overlay'],
      env: {
        PATH: this.env.PATH, HOME: join(pod, 'home'), XDG_RUNTIME_DIR: join(pod, 'run'),
        XDG_CONFIG_HOME: join(pod, 'home/.config'), XDG_DATA_HOME: join(pod, 'home/.local/share'), TMPDIR: join(pod, 'tmp'),
      },
    };
    for (const d of ['home', 'run', 'tmp']) mkdirSync(join(pod, d), { recursive: true, mode: 0o700 });
    chmodSync(join(pod, 'run'), 0o700);
    const v = await run('podman', ['--version'], this.pod.env);
    if (v.code !== 0) throw new Error(`podman --version: ${(v.err || v.out).trim()}`);
    this.podmanVersion = v.out.trim();
    const info = await run('podman', [...this.pod.args, 'info', '--format', '{{.Store.GraphDriverName}} {{json .Store.GraphOptions}} native-diff={{index .Store.GraphStatus "Native Overlay Diff"}} copy-tmp={{.Store.ImageCopyTmpDir}}'], this.pod.env);
    if (info.code !== 0) throw new Error(`podman info: ${(info.err || info.out).trim()}`);
    this.podmanStore = info.out.trim();
    this.prepSecs = (Date.now() - t0) / 1000;
    // Flush what was just written, so writeback of the inputs does not land on the measurements.
    await run('sync', [], this.env);
  }

  async #trellisUnpack(variant, i) {
    const id = `${this.tag}-${variant}-${i}`;
    const mark = this.storeLogs.length;
    const t0 = now();
    try {
      await this.imageStore.create({ image: this.iters[i][variant], id });
    } catch (err) {
      throw new Error(`ImageStore.create ${this.iters[i][variant]} (id ${id}, store ${this.storePath}): ${err.message}`);
    }
    const t = now() - t0;
    let unpack = NaN;
    let layers = 0;
    for (const line of this.storeLogs.slice(mark)) {
      const o = JSON.parse(line);
      if (o.msg === 'create.layers-unpacked') {
        unpack = o.ms;
        layers += o.layers?.length ?? 0;
      }
    }
    // Cold means every layer, the unique bottom one included, was unpacked by this create.
    if (layers !== this.treeInfo.layers + 1) throw new Error(`ImageStore.create ${id}: unpacked ${layers} layers, not all ${this.treeInfo.layers + 1}: not a cold create`);
    return { t, unpack };
  }

  async #podmanImport(i) {
    const t0 = now();
    const r = await run('podman', [...this.pod.args, 'import', '--quiet', this.iters[i].podman, `bench-unpack:${i}`], this.pod.env);
    const t = now() - t0;
    if (r.code !== 0) throw new Error(`podman import ${this.iters[i].podman}: exit ${r.code}: ${(r.err || r.out).trim()}`);
    return { t };
  }

  async measureUnpack(n) {
    const sides = [
      { key: 'gz', fn: (i) => this.#trellisUnpack('gz', i) },
      { key: 'tar', fn: (i) => this.#trellisUnpack('tar', i) },
      { key: 'podman', fn: (i) => this.#podmanImport(i) },
    ];
    const t = { gz: [], tar: [], podman: [], gzUnpack: [], tarUnpack: [] };
    const s0 = Date.now();
    for (let i = 0; i < UNPACK_WARMUP + n; i++) {
      for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
        this.#check();
        this.busy = s.fn(i);
        const r = await this.busy;
        if (i < UNPACK_WARMUP) continue;
        t[s.key].push(r.t);
        if (r.unpack !== undefined) t[`${s.key}Unpack`].push(r.unpack);
      }
    }
    this.results.unpack = { n, times: t, secs: (Date.now() - s0) / 1000 };
  }

  // ------------------------------------------------------------ report

  /** Prints the image sections in bench.mjs's table layout; returns the verdict lines. */
  report(W) {
    const verdicts = [];
    const row = (label, xs, ratio, target = '') =>
      console.log(`  ${pad(label, W - 2)}${lpad(ms(median(xs)), 10)}${lpad(ms(p90(xs)), 10)}${lpad(ratio === undefined ? '' : `${ratio.toFixed(2)}x`, 8)}  ${target}`);
    const sub = (label, xs) => console.log(`    ${pad(label, W - 4)}${lpad(ms(median(xs)), 10)}${lpad(ms(p90(xs)), 10)}`);
    const c = this.results.cached;
    if (c) {
      const d = median(c.times.cached) - median(c.times.dir);
      const ok = d < TARGET_CACHE_MS;
      console.log(`create from a cached registry image (N=${c.n} each, interleaved, ${c.secs.toFixed(0)} s; first pull ${ms(this.pullMs)})`);
      row('Trellis create, directory image (default rootfs)   [baseline]', c.times.dir, 1);
      sub('destroy', c.times.dirDestroy);
      row(`Trellis create, cached registry image (${this.cachedLayers} layers)`, c.times.cached, median(c.times.cached) / median(c.times.dir),
        `${signed(d)} < ${TARGET_CACHE_MS} ms  ${ok ? 'PASS' : 'MISS'}`);
      sub('destroy', c.times.cachedDestroy);
      row('Trellis create, same layers from an OCI layout     [ref]', c.times.layout, median(c.times.layout) / median(c.times.dir),
        `${signed(median(c.times.layout) - median(c.times.dir))} (cached, no registry round trips)`);
      verdicts.push(`create from a cached registry image: ${signed(d)} over the directory image ${ok ? 'PASS' : 'MISS'}`);
    }
    const u = this.results.unpack;
    if (u) {
      const base = median(u.times.podman);
      const ti = this.treeInfo;
      console.log(`unpack, cold: ${ti.files} files, ${mib(ti.bytes)} in ${ti.layers - 1} layers + busybox (tar ${mib(ti.tarBytes)}, gzip ${mib(ti.gzBytes)}); N=${u.n} after ${UNPACK_WARMUP} warm-up, interleaved (${u.secs.toFixed(0)} s)`);
      row('podman import of the same tree as one tar          [baseline]', u.times.podman, 1);
      for (const [key, label] of [['gz', 'Trellis ImageStore.create, OCI layout, gzip layers'], ['tar', 'Trellis ImageStore.create, OCI layout, plain tar [ref]']]) {
        const med = median(u.times[key]);
        const speedup = base / med;
        let target = `podman/Trellis ${speedup.toFixed(2)}x`;
        if (key === 'gz') {
          const ok = speedup >= TARGET_UNPACK;
          target += ` >= ${TARGET_UNPACK}x  ${ok ? 'PASS' : 'MISS'}`;
          verdicts.push(`cold unpack of the ~100 MiB multi-layer image: podman/Trellis ${speedup.toFixed(2)}x ${ok ? 'PASS' : 'MISS'}`);
        }
        row(label, u.times[key], med / base, target);
        sub('of which the unpack child (unshare + node, all layers)', u.times[`${key}Unpack`]);
      }
    }
    return verdicts;
  }

  /** Context lines for the report header. */
  header() {
    const lines = [];
    if (this.registry) lines.push(`  registry: docker-registry on ${this.registry.host}; cached image ${this.cachedUri} in the user's default store`);
    if (this.imageStore) {
      lines.push(`  unpack: Trellis ImageStore in-process on a fresh store of its own (${this.storePath}), one new layout per create (unique bottom layer: every layer cold)`);
      lines.push(`  podman: ${this.podmanVersion}, rootless, ${this.pod.args.join(' ')} (storage ${this.podmanStore}); ${mib(this.podmanTarBytes)} tar per import, unique per import`);
      lines.push(`  inputs made in ${this.prepSecs.toFixed(0)} s and synced first; nothing is deleted until all measurements are done`);
      const m = mountOf(this.dir);
      if (m?.options.includes('discard')) {
        lines.push(`  (${m.dir} is ${m.type} mounted with discard: for a minute or more after a big delete, e.g. a previous bench run, creating files is slow and unpack times rise on both sides)`);
      }
    }
    return lines;
  }

  // ------------------------------------------------------------ cleanup

  /** Containers first (needs the server), then the registry, podman's pause process, and every file. */
  async cleanup() {
    const problems = [];
    this.stopping = true;
    // An unpack or import under way finishes first (bounded), so nothing writes while we remove.
    if (this.busy) await Promise.race([this.busy.catch(() => {}), new Promise((r) => setTimeout(r, 60_000))]);
    for (const h of [...this.handles]) {
      try {
        await this.client.destroy(h);
        this.handles.delete(h);
      } catch (err) {
        problems.push(`Trellis destroy ${h}: ${err.message}`);
      }
    }
    if (this.registry) await this.registry.stop().catch((err) => problems.push(`registry: ${err.message}`));
    if (this.pod) {
      // podman keeps a pause process (our XDG_RUNTIME_DIR's) holding the namespaces its storage is mounted in.
      const pidFile = join(this.pod.env.XDG_RUNTIME_DIR, 'libpod/tmp/pause.pid');
      let pid;
      try {
        pid = Number(readFileSync(pidFile, 'utf8').trim());
      } catch {
        // never started
      }
      if (pid > 0) {
        try {
          process.kill(pid, 'SIGTERM');
          for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await new Promise((r) => setTimeout(r, 20));
          if (existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
        } catch (err) {
          if (err.code !== 'ESRCH') problems.push(`podman pause process ${pid}: ${err.message}`);
        }
      }
    }
    if (existsSync(this.dir)) {
      // Store and podman files belong to subordinate ids: remove as root of a namespace with the user's maps.
      const r = await run('unshare', [
        '--user', '--map-root-user',
        `--map-users=${this.subuid.start},1,${this.subuid.count}`, `--map-groups=${this.subgid.start},1,${this.subgid.count}`,
        'rm', '-rf', '--', this.dir,
      ], this.env);
      if (r.code !== 0) problems.push(`rm ${this.dir}: ${r.err.trim()}`);
    }
    return problems;
  }
}
