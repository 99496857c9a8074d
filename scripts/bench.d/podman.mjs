// scripts/bench's podman rows (issue #10): `podman run --rm IMAGE true` with slirp4netns
// and with --network none, `--runtime runc`, rootless as the same user, on an image made
// from the same busybox tree Trellis and bare runc run. bench.mjs interleaves these with
// its own cases; this file only knows how to set podman up, run it and clean up after it.
// podman gets a storage, runroot, HOME, config and runtime dir of its own under the
// bench's temp dir, so nothing of the user's (or a fresh machine's missing) podman setup
// matters; it needs only the user's /etc/subuid and /etc/subgid ranges (gdn setup's).
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { now } from './stats.mjs';

function run(cmd, args, env, { stdin } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { env, stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    if (stdin) stdin.pipe(child.stdin);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.once('error', rej);
    child.once('close', (code) => res({ code: code ?? 128, out, err }));
  });
}

/**
 * What a rootless podman of its own leaves: the pause process (runDir's) that holds the
 * namespaces its storage is mounted in, and dirs whose files belong to subordinate ids
 * (removed as root of a namespace with the user's maps). Returns what could not be undone.
 */
export async function podmanTeardown(runDir, dirs, subuid, subgid, env) {
  const problems = [];
  let pid;
  try {
    if (runDir) pid = Number(readFileSync(join(runDir, 'libpod/tmp/pause.pid'), 'utf8').trim());
  } catch {
    // never started
  }
  if (pid > 0) {
    try {
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await sleep(20);
      if (existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
    } catch (err) {
      if (err.code !== 'ESRCH') problems.push(`podman pause process ${pid}: ${err.message}`);
    }
  }
  for (const dir of dirs) {
    if (!dir || !existsSync(dir)) continue;
    const r = await run('unshare', [
      '--user', '--map-root-user',
      `--map-users=${subuid.start},1,${subuid.count}`, `--map-groups=${subgid.start},1,${subgid.count}`,
      'rm', '-rf', '--', dir,
    ], env);
    if (r.code !== 0) problems.push(`rm ${dir}: ${r.err.trim()}`);
  }
  return problems;
}

export class PodmanBench {
  /**
   * @param o.tmp     bench.mjs's temp dir (podman's storage goes under <tmp>/pod)
   * @param o.env     environment for children (PATH, XDG_RUNTIME_DIR)
   * @param o.tag     bench.mjs's run tag (names the image)
   * @param o.rootfs  the default rootfs (the image is made from it)
   * @param o.subuid  { start, count } of the user's /etc/subuid entry; o.subgid likewise
   */
  constructor(o) {
    Object.assign(this, o);
    this.skip = undefined;
    this.seq = 0;
  }

  /** Whether podman can run here at all; if not, `skip` says why and the rows are left out. */
  async prepare() {
    const v = await run('podman', ['--version'], this.env).catch(() => ({ code: 127, out: '', err: 'podman not found' }));
    if (v.code !== 0) {
      this.skip = `podman --version: ${(v.err || v.out).trim()}: podman not measured`;
      return;
    }
    this.version = v.out.trim();
    try {
      accessSync('/dev/net/tun', constants.R_OK | constants.W_OK);
      this.slirp = true;
    } catch {
      this.slirp = false; // rootless slirp4netns needs /dev/net/tun: only the --network none rows
    }
    const dir = join(this.tmp, 'pod');
    // (podman refuses a runroot path longer than 50 characters)
    if (join(dir, 'rr').length > 50) throw new Error(`podman's runroot ${join(dir, 'rr')} would be longer than podman takes (50)`);
    // slirp4netns's API socket lives under podman's XDG_RUNTIME_DIR and must fit a socket address.
    this.runDir = mkdtempSync(join(this.env.XDG_RUNTIME_DIR, 'tp-'));
    this.dir = dir;
    this.args = ['--root', join(dir, 'root'), '--runroot', join(dir, 'rr'), '--storage-driver', 'overlay',
      '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', '--runtime', 'runc'];
    this.podEnv = {
      PATH: this.env.PATH, HOME: join(dir, 'home'), XDG_RUNTIME_DIR: this.runDir,
      XDG_CONFIG_HOME: join(dir, 'home/.config'), XDG_DATA_HOME: join(dir, 'home/.local/share'), TMPDIR: join(dir, 'tmp'),
    };
    for (const d of ['home', 'tmp']) mkdirSync(join(dir, d), { recursive: true, mode: 0o700 });
    // The tree's files belong to the user and its subordinate ids; the image only needs them as root's.
    const tar = spawn('tar', ['-C', this.rootfs, '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', '.'], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.image = `localhost/${this.tag}-life:1`;
    const imp = await run('podman', [...this.args, 'import', '--quiet', '-', this.image], this.podEnv, { stdin: tar.stdout });
    if (imp.code !== 0) throw new Error(`podman import of ${this.rootfs}: ${(imp.err || imp.out).trim()}`);
    // The first run creates podman's pause process and storage layout: not part of any sample.
    await this.run('none');
  }

  header() {
    if (this.skip) return [`  podman: ${this.skip}`];
    return [`  podman: ${this.version}, rootless, --runtime runc, cgroupfs, own storage (overlay) under the bench's temp dir; image = the same tree (podman import)`,
      ...(this.slirp ? [] : ['  podman slirp4netns rows left out: /dev/net/tun is not read-write for this user'])];
  }

  /** One `podman run --rm IMAGE true`; network 'slirp4netns' or 'none'. Resolves with its ms. */
  async run(network) {
    const t0 = now();
    const r = await run('podman', [...this.args, 'run', '--rm', '--pull', 'never', '--network', network, this.image, 'true'], this.podEnv);
    const t = now() - t0;
    if (r.code !== 0) throw new Error(`podman run --rm --network ${network}: exit ${r.code}: ${(r.err || r.out).trim().split('\n').slice(-3).join(' / ')}`);
    return t;
  }

  async cleanup() {
    const problems = [];
    if (!this.dir) return problems;
    // Containers a failed or interrupted run left (--rm removes the others).
    const ps = await run('podman', [...this.args, 'ps', '-aq'], this.podEnv).catch(() => ({ code: 1, out: '' }));
    for (const id of ps.out.split('\n').filter(Boolean)) {
      const r = await run('podman', [...this.args, 'rm', '-f', '-t', '0', id], this.podEnv);
      if (r.code !== 0) problems.push(`podman rm ${id}: ${r.err.trim()}`);
    }
    problems.push(...(await podmanTeardown(this.runDir, [this.dir, this.runDir], this.subuid, this.subgid, this.env)));
    return problems;
  }
}
