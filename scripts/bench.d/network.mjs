// scripts/bench's network part (issue #4, item 5), run by bench.mjs in the same invocation:
//   A. TCP throughput, host -> container through net-in (the gateway's kernel DNAT path, and
//      127.0.0.1 through gdn's splice, issue #12) and container -> host, for Trellis
//      (veth + bridge via the CNI gate) against rootless podman (slirp4netns, its default
//      MTU; -p through rootlessport on 127.0.0.1) and the host's own loopback. One small static C tool (compiled here) does every
//      transfer on every path: same code, buffers and socket options. (busybox's nc reads
//      1 KiB per read(2), so it would measure itself, not the path.)
//   B. What the networker's up and down add to create and destroy: the bench's gdn server
//      (the built-in networker) against a second server whose networker is `/bin/true` (an
//      external networker that does nothing: loopback only); with, for reference, the
//      networker in-process and the gate's add/del alone against an `unshare --net` process.
// Timings are reported, never asserted.
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { podmanTeardown } from './podman.mjs';
import { median, now, p90 } from './stats.mjs';

export const TARGET_THROUGHPUT = 3; // Trellis / slirp4netns, at least
export const TARGET_UP_MS = 30; // what up adds to create, under

const NET_CONF = (uid) => `/etc/trellis/net/${uid}.conf`;
// TRELLIS_GATE_UNDER_TEST: a gate build installed setuid elsewhere (pass the same to gdn with --gdn-flag=--network-gate=...).
const GATE = process.env.TRELLIS_GATE_UNDER_TEST || '/usr/local/libexec/trellis/cni-gate';
const WARMUP_BYTES = 64 * 1024 * 1024;
const UPDOWN_WARMUP = 2;
const LIMITS = { bandwidth_limits: {}, cpu_limits: {}, disk_limits: {}, memory_limits: {}, pid_limits: {} };
const CONTAINER_PORT = 8080;
const TOOL_IN_CONTAINER = '/opt/nbench/nbench';

// The tool. `send` times from connect() to the EOF after the receiver's reply, which the
// receiver writes only once it has read everything: the whole transfer, end to end.
const TOOL_C = String.raw`/* scripts/bench's network tool (written and compiled by scripts/bench.d/network.mjs).
 *   nbench sink ADDR PORT COUNT   listen (PORT 0: any), print "listening <port>", then serve COUNT
 *                                 connections (0: forever) one at a time: read to EOF, reply
 *                                 "<bytes>\n", close; print "recv <bytes> <ns>" for each
 *   nbench send ADDR PORT BYTES   connect, write BYTES, shut down writing, read the reply to EOF;
 *                                 print "sent <bytes> <ns> <acked>" (ns: connect to the reply's EOF)
 * 128 KiB reads and writes, kernel default socket buffers (autotuned), no other options. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (128 * 1024)
static char buf[BUF];

static long long nsnow(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) {
  dprintf(2, "nbench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static struct sockaddr_in addr(const char *ip, const char *port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(port));
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    dprintf(2, "nbench: bad address %s\n", ip);
    exit(2);
  }
  return a;
}

static int sink(const char *ip, const char *port, long count) {
  struct sockaddr_in a = addr(ip, port);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (l < 0) die("socket");
  if (setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(l, 16) < 0) die("listen");
  socklen_t len = sizeof a;
  if (getsockname(l, (struct sockaddr *)&a, &len) < 0) die("getsockname");
  dprintf(1, "listening %u\n", ntohs(a.sin_port));
  for (long i = 0; count == 0 || i < count; i++) {
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR) { i--; continue; }
      die("accept");
    }
    long long t0 = nsnow(), total = 0;
    for (;;) {
      ssize_t n = read(c, buf, BUF);
      if (n < 0) {
        if (errno == EINTR) continue;
        die("read");
      }
      if (n == 0) break;
      total += n;
    }
    long long t1 = nsnow();
    char ack[32];
    int k = snprintf(ack, sizeof ack, "%lld\n", total);
    if (write(c, ack, (size_t)k) != k) die("write reply");
    close(c);
    dprintf(1, "recv %lld %lld\n", total, t1 - t0);
  }
  return 0;
}

static int send_(const char *ip, const char *port, long long bytes) {
  struct sockaddr_in a = addr(ip, port);
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket");
  long long t0 = nsnow();
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  long long left = bytes;
  while (left > 0) {
    ssize_t n = write(s, buf, left < BUF ? (size_t)left : BUF);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    left -= n;
  }
  if (shutdown(s, SHUT_WR) < 0) die("shutdown");
  char ack[64];
  size_t got = 0;
  for (;;) {
    ssize_t n = read(s, ack + got, sizeof ack - 1 - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read reply");
    }
    if (n == 0) break;
    got += (size_t)n;
    if (got == sizeof ack - 1) break;
  }
  long long t1 = nsnow();
  ack[got] = 0;
  close(s);
  dprintf(1, "sent %lld %lld %lld\n", bytes, t1 - t0, got ? atoll(ack) : -1LL);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc == 5 && strcmp(argv[1], "sink") == 0) return sink(argv[2], argv[3], atol(argv[4]));
  if (argc == 5 && strcmp(argv[1], "send") == 0) return send_(argv[2], argv[3], atoll(argv[4]));
  dprintf(2, "usage: nbench sink ADDR PORT COUNT | nbench send ADDR PORT BYTES\n");
  return 2;
}
`;

// ---------------------------------------------------------------- small helpers (bench.mjs's style)

const ms = (x) => (Number.isNaN(x) ? '-' : `${x.toFixed(1)} ms`);
const gbit = (x) => (x === undefined || Number.isNaN(x) ? '-' : `${x.toFixed(1)} Gb/s`);
const pad = (s, n) => String(s).padEnd(n);
const lpad = (s, n) => String(s).padStart(n);
const signed = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(1)} ms`;

function run(cmd, args, env, { stdin } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { env, stdio: [stdin ?? 'ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.once('error', rej);
    child.once('close', (code, signal) => res({ code: code ?? 128, signal, out, err }));
  });
}

/** A Writable that keeps what is written and can wait for a line matching `re`. */
function collector() {
  const w = new Writable({
    write(chunk, _enc, cb) {
      w.text += chunk;
      for (const waiter of [...w.waiters]) {
        const m = waiter.re.exec(w.text);
        if (m) {
          w.waiters.delete(waiter);
          waiter.resolve(m);
        }
      }
      cb();
    },
  });
  w.text = '';
  w.waiters = new Set();
  w.waitFor = (re, ms, what) => {
    const m = re.exec(w.text);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const waiter = { re, resolve };
      w.waiters.add(waiter);
      setTimeout(() => {
        if (w.waiters.delete(waiter)) reject(new Error(`${what}: no ${re} within ${ms} ms; output: ${w.text.trim().slice(-300)}`));
      }, ms).unref();
    });
  };
  return w;
}

/** A TCP port nobody is listening on right now (the kernel's pick). */
function freePort(host) {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** `sent <bytes> <ns> <acked>` -> Gbit/s; anything else is an error. */
function parseSent(out, bytes, what) {
  const m = /^sent (\d+) (\d+) (-?\d+)$/m.exec(out);
  if (!m) throw new Error(`${what}: the sender said ${JSON.stringify(out.trim().slice(-300))}`);
  if (Number(m[3]) !== bytes) throw new Error(`${what}: sent ${bytes} bytes, the receiver read ${m[3]}`);
  return (bytes * 8) / Number(m[2]);
}

/** key=value lines of the user's network config (gdn setup's; world-readable). */
function readNetConf(uid) {
  const conf = {};
  for (const line of readFileSync(NET_CONF(uid), 'utf8').split('\n')) {
    const m = /^([a-z_]+)=(\S+)$/.exec(line.trim());
    if (m) conf[m[1]] = m[2];
  }
  return conf;
}

/** What podman's containers.conf files (system, /etc; the bench's podman has no user file) set for slirp4netns. */
function podmanNetConfig() {
  const found = [];
  for (const f of ['/usr/share/containers/containers.conf', '/etc/containers/containers.conf']) {
    let text;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      if (/^\s*(network_cmd_options|network_cmd_path|default_rootless_network_cmd)\s*=/.test(line)) found.push(`${f}: ${line.trim()}`);
    }
  }
  return found;
}

// ---------------------------------------------------------------- the network bench

export class NetworkBench {
  /**
   * @param o.repo          the checkout (dist/ must be built)
   * @param o.tmp           bench.mjs's temp dir (everything of ours goes under <tmp>/net)
   * @param o.env           environment for children (PATH, XDG_RUNTIME_DIR)
   * @param o.tag           bench.mjs's run tag (names handles, podman objects, gate ids)
   * @param o.subuid        { start, count } of the user's /etc/subuid entry; o.subgid likewise
   * @param o.rootfs        the default rootfs (the podman image is made from it)
   * @param o.launchServer  bench.mjs's: (name, flags) => { child, pid, log, socket, client, cmd }
   * @param o.stopServer    bench.mjs's: (server) => Promise<void>
   */
  constructor(o) {
    Object.assign(this, o);
    this.dir = join(o.tmp, 'net');
    this.uid = process.getuid();
    this.handles = new Map(); // handle -> client
    this.handleSeq = 0;
    this.children = new Set(); // host processes of ours (sinks, the unshare'd sleep)
    this.gateIds = new Set();
    this.inProcessHandles = new Set();
    this.notes = [];
    this.results = {};
  }

  #check() {
    if (this.stopping) throw new Error('network bench interrupted');
  }

  async #create(client, spec = {}) {
    const handle = `${this.tag}-net-${this.handleSeq++}`;
    this.handles.set(handle, client);
    const h = await client.create({ handle, image: {}, limits: LIMITS, ...spec });
    if (h !== handle) this.handles.set(h, client);
    return h;
  }

  async #destroy(client, h) {
    await client.destroy(h);
    this.handles.delete(h);
  }

  /** A host process of ours, stdout collected; killed (by pid) in cleanup if still running. */
  #spawn(cmd, args, env = this.env) {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = collector();
    let err = '';
    child.stdout.pipe(out);
    child.stderr.on('data', (d) => (err += d));
    child.exited = new Promise((res) => child.once('close', (code, sig) => res(code ?? sig)));
    child.once('error', (e) => (err += e.message));
    child.out = out;
    child.errText = () => err.trim();
    this.children.add(child);
    void child.exited.then(() => this.children.delete(child));
    return child;
  }

  async #hostSink(addr, count, what) {
    const child = this.#spawn(this.tool, ['sink', addr, '0', String(count)]);
    const m = await Promise.race([
      child.out.waitFor(/^listening (\d+)$/m, 10_000, what),
      child.exited.then((c) => Promise.reject(new Error(`${what}: the sink exited ${c}: ${child.errText()}`))),
    ]);
    return { child, port: Number(m[1]) };
  }

  async #hostSend(addr, port, bytes, what) {
    const r = await run(this.tool, ['send', addr, String(port), String(bytes)], this.env);
    if (r.code !== 0) throw new Error(`${what}: nbench send exited ${r.code}: ${r.err.trim()}`);
    return parseSent(r.out, bytes, what);
  }

  async #trellisRun(client, h, args, io = {}) {
    return client.run(h, { path: TOOL_IN_CONTAINER, args, user: 'root', rlimits: {}, image: {} }, io);
  }

  async #trellisExec(client, h, path, args, what) {
    const out = collector();
    const err = collector();
    const p = await client.run(h, { path, args, user: 'root', rlimits: {}, image: {} }, { stdout: out, stderr: err });
    const code = await p.wait();
    if (code !== 0) throw new Error(`${what}: exit ${code}: ${err.text.trim() || out.text.trim()}`);
    return out.text;
  }

  #podman(args, opts) {
    return run('podman', [...this.pod.args, ...args], this.pod.env, opts);
  }

  async #podmanMust(args, what) {
    const r = await this.#podman(args);
    if (r.code !== 0) throw new Error(`${what}: podman ${args.join(' ')}: exit ${r.code}: ${(r.err || r.out).trim().split('\n').slice(-3).join(' / ')}`);
    return r.out;
  }

  // ------------------------------------------------------------ setup

  /** The tool (gcc -O2 -static), the user's network, and whether podman's slirp4netns can run here. */
  async prepare() {
    const t0 = Date.now();
    this.t0 = t0;
    mkdirSync(join(this.dir, 'bin'), { recursive: true, mode: 0o755 });
    const src = join(this.dir, 'nbench.c');
    writeFileSync(src, TOOL_C);
    this.tool = join(this.dir, 'bin', 'nbench');
    const cc = await run('gcc', ['-O2', '-static', '-Wall', '-Wextra', '-o', this.tool, src], this.env);
    if (cc.code !== 0) throw new Error(`gcc -O2 -static ${src}: ${(cc.err || cc.out).trim()} (needs gcc and libc6-dev)`);
    if (!existsSync(NET_CONF(this.uid))) throw new Error(`${NET_CONF(this.uid)} missing: run 'sudo gdn setup' (or pass --no-network)`);
    this.conf = readNetConf(this.uid);
    this.podmanSkip = undefined;
    try {
      accessSync('/dev/net/tun', constants.R_OK | constants.W_OK);
    } catch {
      let mode = '?';
      try {
        mode = (await run('stat', ['-c', '%a %U:%G', '/dev/net/tun'], this.env)).out.trim();
      } catch {
        // no stat
      }
      this.podmanSkip = `/dev/net/tun is not read-write for this user (${mode}; udev's default is 0666), so rootless slirp4netns cannot start: podman not measured`;
    }
    const v = await run('podman', ['--version'], this.env).catch(() => ({ code: 127, out: '', err: 'podman not found' }));
    if (v.code !== 0) this.podmanSkip ??= `podman --version: ${(v.err || v.out).trim()}: podman not measured`;
    else this.podmanVersion = v.out.trim();
    this.prepSecs = (Date.now() - t0) / 1000;
  }

  /** podman: rootless, its own storage, HOME, config, runtime and temp dirs (as images.mjs does); an image of the default rootfs. */
  async #preparePodman() {
    const pod = join(this.dir, 'p');
    // (podman refuses a runroot path longer than 50 characters)
    if (join(pod, 'rr').length > 50) throw new Error(`podman's runroot ${join(pod, 'rr')} would be longer than podman takes (50)`);
    // slirp4netns's API socket is <XDG_RUNTIME_DIR>/libpod/tmp/<64 hex>.net, and must fit a
    // socket address (< 108 bytes): podman's runtime dir is a short one of its own.
    this.podRun = mkdtempSync(join(this.env.XDG_RUNTIME_DIR, 'tn-'));
    if (this.podRun.length + '/libpod/tmp/'.length + 68 >= 108) throw new Error(`${this.podRun}: too long for slirp4netns's API socket path`);
    this.pod = {
      dir: pod,
      args: ['--root', join(pod, 'root'), '--runroot', join(pod, 'rr'), '--storage-driver', 'overlay', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'],
      env: {
        PATH: this.env.PATH, HOME: join(pod, 'home'), XDG_RUNTIME_DIR: this.podRun,
        XDG_CONFIG_HOME: join(pod, 'home/.config'), XDG_DATA_HOME: join(pod, 'home/.local/share'), TMPDIR: join(pod, 'tmp'),
      },
    };
    for (const d of ['home', 'tmp']) mkdirSync(join(pod, d), { recursive: true, mode: 0o700 });
    // The rootfs's files belong to the user and its subordinate ids; the image only needs them as root's.
    const tar = spawn('tar', ['-C', this.rootfs, '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', '.'], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.podImage = `localhost/${this.tag}-net:1`;
    const imp = await this.#podman(['import', '--quiet', '-', this.podImage], { stdin: tar.stdout });
    if (imp.code !== 0) throw new Error(`podman import of ${this.rootfs}: ${(imp.err || imp.out).trim()}`);
    this.podConfig = podmanNetConfig();
  }

  /** A detached podman container running the sink on 8080, published on 127.0.0.1:<free port>. */
  async #podmanSink(name, network) {
    const hostPort = await freePort('127.0.0.1');
    await this.#podmanMust(['run', '-d', '--name', name, '--network', network, '-p', `127.0.0.1:${hostPort}:${CONTAINER_PORT}`,
      '-v', `${join(this.dir, 'bin')}:/opt/nbench:ro`, this.podImage, TOOL_IN_CONTAINER, 'sink', '0.0.0.0', String(CONTAINER_PORT), '0'], `podman run ${name}`);
    this.podContainers.push(name);
    for (let i = 0; ; i++) {
      const logs = await this.#podman(['logs', name]);
      if (/^listening \d+$/m.test(logs.out)) break;
      if (i > 200) throw new Error(`podman container ${name}: its sink did not start: ${(logs.out + logs.err).trim()}`);
      await sleep(25);
    }
    return hostPort;
  }

  // ------------------------------------------------------------ A: throughput

  /**
   * One container on each side, sinks everywhere, then `runs` rounds of every case, interleaved
   * (forward, then reverse order), each sending `bytes`; one round of WARMUP_BYTES first.
   */
  async measureThroughput(client, runs, bytes) {
    const sinks = 1 + runs;
    const cases = [];
    const gw = this.conf.gateway;

    // Loopback.
    const lo = await this.#hostSink('127.0.0.1', sinks, 'loopback sink');
    cases.push({ key: 'lo', fn: (b) => this.#hostSend('127.0.0.1', lo.port, b, 'loopback') });

    // Trellis: a container with the tool streamed in, its sink on 8080 mapped by net-in; a host
    // sink on the gateway, opened to the container by a net-out rule.
    const th = await this.#create(client);
    const info = await client.info(th);
    this.trellisInfo = { containerIp: info.ContainerIP, hostIp: info.HostIP };
    if (!info.ContainerIP) {
      this.notes.push("Trellis throughput not measured: the bench's gdn server gave the container no IP (networking off: check --gdn-flag)");
    } else {
      const tarChild = spawn('tar', ['-C', join(this.dir, 'bin'), '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', 'nbench'], { env: this.env, stdio: ['ignore', 'pipe', 'ignore'] });
      await client.streamIn(th, { path: '/opt/nbench', user: 'root', tarStream: tarChild.stdout });
      this.trellisMtu = (await this.#trellisExec(client, th, 'cat', ['/sys/class/net/eth0/mtu'], 'Trellis eth0 mtu')).trim();
      const hostPort = await this.#netIn(client, th);
      this.trellisHostPort = hostPort;
      const tout = collector();
      const terr = collector();
      // Two cases use this sink: the gateway (DNAT) and 127.0.0.1 (gdn's splice).
      this.trellisSink = await this.#trellisRun(client, th, ['sink', '0.0.0.0', String(CONTAINER_PORT), String(2 * sinks)], { stdout: tout, stderr: terr });
      await tout.waitFor(/^listening \d+$/m, 10_000, 'Trellis container sink');
      const hs = await this.#hostSink(gw, sinks, 'host sink on the gateway');
      await client.netOut(th, { protocol: 1, networks: [{ start: gw, end: gw }], ports: [{ start: hs.port, end: hs.port }] });
      cases.push({ key: 'tIn', fn: (b) => this.#hostSend(gw, hostPort, b, 'Trellis host -> container') });
      cases.push({ key: 'tInLo', fn: (b) => this.#hostSend('127.0.0.1', hostPort, b, 'Trellis host -> container on 127.0.0.1 (gdn splice)') });
      cases.push({
        key: 'tOut',
        fn: async (b) => parseSent(await this.#trellisExec(client, th, TOOL_IN_CONTAINER, ['send', gw, String(hs.port), String(b)], 'Trellis container -> host'), b, 'Trellis container -> host'),
      });
    }

    // podman: its default (slirp4netns, rootlessport for -p), and for reference slirp4netns's own port forwarding.
    this.podContainers = [];
    if (this.podmanSkip) {
      this.notes.push(this.podmanSkip);
    } else {
      await this.#preparePodman();
      const pd = `${this.tag}-net-d`;
      const pdPort = await this.#podmanSink(pd, 'slirp4netns:allow_host_loopback=true');
      const ps = `${this.tag}-net-s`;
      const psPort = await this.#podmanSink(ps, 'slirp4netns:port_handler=slirp4netns');
      this.podMtu = (await this.#podmanMust(['exec', pd, 'cat', '/sys/class/net/tap0/mtu'], 'podman tap0 mtu')).trim();
      this.slirpCmd = this.#slirpCmdlines();
      const hs = await this.#hostSink('127.0.0.1', sinks, 'host sink for podman');
      cases.push({ key: 'pIn', fn: (b) => this.#hostSend('127.0.0.1', pdPort, b, 'podman host -> container (rootlessport)') });
      cases.push({ key: 'pInSlirp', fn: (b) => this.#hostSend('127.0.0.1', psPort, b, 'podman host -> container (slirp4netns port_handler)') });
      cases.push({
        key: 'pOut',
        fn: async (b) => {
          const what = 'podman container -> host (10.0.2.2)';
          const out = await this.#podmanMust(['exec', pd, TOOL_IN_CONTAINER, 'send', '10.0.2.2', String(hs.port), String(b)], what);
          return parseSent(out, b, what);
        },
      });
    }

    const t = Object.fromEntries(cases.map((c) => [c.key, []]));
    const s0 = Date.now();
    for (let i = 0; i < 1 + runs; i++) {
      for (const c of i % 2 === 0 ? cases : [...cases].reverse()) {
        this.#check();
        const g = await c.fn(i === 0 ? WARMUP_BYTES : bytes);
        if (i > 0) t[c.key].push(g);
      }
    }
    this.results.throughput = { runs, bytes, times: t, secs: (Date.now() - s0) / 1000 };

    // Done with the containers (the storage goes in cleanup).
    await this.#destroy(client, th);
    for (const name of this.podContainers.splice(0)) {
      const r = await this.#podman(['rm', '-f', '-t', '0', name]);
      if (r.code !== 0) this.podContainers.push(name);
    }
  }

  /**
   * net-in with host port 0 (the server picks). The networker picks among the ports its own
   * state records, so a port mapped by another gdn server of the same user makes the gate
   * refuse; then take explicit ports from the top of the range, and say so.
   */
  async #netIn(client, h) {
    try {
      return (await client.netIn(h, 0, CONTAINER_PORT)).host_port;
    } catch (err) {
      if (!/already mapped|in use on this host/.test(err.message)) throw err;
      const first = err.message;
      for (let p = Number(this.conf.port_end); p >= Number(this.conf.port_start); p--) {
        try {
          const got = (await client.netIn(h, p, CONTAINER_PORT)).host_port;
          this.notes.push(`net-in with host port 0 failed ("${first}": another server of this user maps it); used ${got}, tried from the top of the range`);
          return got;
        } catch (e) {
          if (!/already mapped|in use on this host/.test(e.message)) throw e;
        }
      }
      throw err;
    }
  }

  /** slirp4netns command lines of our podman (its netns paths are under our XDG_RUNTIME_DIR). */
  #slirpCmdlines() {
    const out = new Set();
    for (const e of readdirSafe('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      try {
        const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').filter(Boolean);
        if (argv[0]?.endsWith('slirp4netns') && argv.some((a) => a.startsWith(this.pod.env.XDG_RUNTIME_DIR))) {
          out.add(argv.find((a) => a.startsWith('--mtu')) ?? '(no --mtu)');
        }
      } catch {
        // gone
      }
    }
    return [...out];
  }

  // ------------------------------------------------------------ B: up and down

  /**
   * n interleaved rounds after UPDOWN_WARMUP: create + destroy on the bench's server and on a
   * server whose networker is /bin/true; the networker in-process (up + down); the gate alone
   * (add + del); and an exec of /bin/true as ExecNetworkPlugin does it.
   */
  async measureUpDown(client, n) {
    const t = { netCreate: [], netDestroy: [], offCreate: [], offDestroy: [], up: [], down: [], add: [], del: [], trueExec: [] };
    this.offServer = await this.launchServer('net-off', ['--network-plugin', '/bin/true']);
    const off = this.offServer.client;

    // A user + network namespace of our own, as a container's (its user namespace owns its netns).
    const ns = this.#spawn('unshare', ['--user', '--map-root-user', '--net', 'sleep', '600']);
    const myNet = readlinkSafe('/proc/self/ns/net');
    for (let i = 0; readlinkSafe(`/proc/${ns.pid}/ns/net`) === myNet || readlinkSafe(`/proc/${ns.pid}/exe`)?.endsWith('/unshare'); i++) {
      if (i > 400) throw new Error(`unshare --user --map-root-user --net: no new namespaces after 10 s: ${ns.errText()}`);
      await sleep(25);
    }

    const { networkerFor } = await import(join(this.repo, 'dist/plugins/networker/wiring.js'));
    const { pino } = await import('pino');
    const networker = networkerFor(this.uid, { stateDir: join(this.dir, 'netstate'), gate: GATE }, pino({ level: 'silent' }));
    const { execa } = await import('execa');

    const sides = [
      { key: 'net', fn: async () => {
        const a = now();
        const h = await this.#create(client);
        const b = now();
        await this.#destroy(client, h);
        return [['netCreate', b - a], ['netDestroy', now() - b]];
      } },
      { key: 'off', fn: async () => {
        const a = now();
        const h = await this.#create(off);
        const b = now();
        await this.#destroy(off, h);
        return [['offCreate', b - a], ['offDestroy', now() - b]];
      } },
      { key: 'inproc', fn: async () => {
        const h = `${this.tag}-inproc-${this.handleSeq++}`;
        this.inProcessHandles.add(h);
        const a = now();
        await networker.up(h, { Pid: ns.pid });
        const b = now();
        await networker.down(h);
        const c = now();
        this.inProcessHandles.delete(h);
        return [['up', b - a], ['down', c - b]];
      } },
      { key: 'gate', fn: async () => {
        const id = `${this.tag}-g${this.handleSeq++}`;
        this.gateIds.add(id);
        const a = now();
        const r1 = await run(GATE, ['add', id, String(ns.pid)], {});
        const b = now();
        if (r1.code !== 0) throw new Error(`cni-gate add ${id} ${ns.pid}: exit ${r1.code}: ${r1.err.trim()}`);
        const r2 = await run(GATE, ['del', id, String(ns.pid)], {});
        const c = now();
        if (r2.code !== 0) throw new Error(`cni-gate del ${id} ${ns.pid}: exit ${r2.code}: ${r2.err.trim()}`);
        this.gateIds.delete(id);
        return [['add', b - a], ['del', c - b]];
      } },
      { key: 'true', fn: async () => {
        // As ExecNetworkPlugin runs its binary for up (and again for down).
        const a = now();
        await execa('/bin/true', ['--action', 'up', '--handle', 'x'], { input: '{"Pid":2,"Properties":{}}', reject: false });
        return [['trueExec', now() - a]];
      } },
    ];
    const s0 = Date.now();
    for (let i = 0; i < UPDOWN_WARMUP + n; i++) {
      for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
        this.#check();
        const r = await s.fn();
        if (i >= UPDOWN_WARMUP) for (const [k, v] of r) t[k].push(v);
      }
    }
    this.results.updown = { n, times: t, secs: (Date.now() - s0) / 1000 };
    ns.kill('SIGKILL');
    await ns.exited;
    await this.stopServer(this.offServer);
    this.totalSecs = (Date.now() - this.t0) / 1000;
  }

  // ------------------------------------------------------------ report

  header() {
    const lines = [];
    const c = this.conf;
    if (c) lines.push(`  network: Trellis ${NET_CONF(this.uid)}: bridge ${c.bridge}, subnet ${c.subnet}, gateway ${c.gateway}, mtu ${c.mtu ?? '1500 (default)'}, host ports ${c.port_start}-${c.port_end}`);
    if (this.tool) lines.push(`  network tool: ${this.tool} (C, gcc -O2 -static; 128 KiB reads/writes, default socket buffers) in every case; busybox nc reads 1 KiB at a time`);
    if (this.podmanVersion) {
      const conf = this.podConfig?.length ? this.podConfig.join('; ') : 'network_cmd_options unset in /usr/share/containers/containers.conf and /etc/containers/containers.conf (default mtu=65520)';
      lines.push(`  podman: ${this.podmanVersion}, rootless, ${this.pod ? this.pod.args.join(' ') : '(not run)'}; containers.conf: ${conf}`);
      if (this.slirpCmd) lines.push(`  podman's slirp4netns ran with ${this.slirpCmd.join(', ')}; tap0 in the container: mtu ${this.podMtu}; -p goes through rootlessport (port_handler=rootlesskit, podman 4's default), not through slirp`);
    }
    if (this.trellisInfo) lines.push(`  Trellis container ${this.trellisInfo.containerIp}, eth0 mtu ${this.trellisMtu ?? '?'}; net-in host port ${this.trellisHostPort ?? '-'}`);
    if (this.offServer) lines.push(`  loopback-only server for up/down: ${this.offServer.cmd}`);
    if (this.totalSecs !== undefined) lines.push(`  network part: ${this.totalSecs.toFixed(0)} s in all (tool built in ${this.prepSecs.toFixed(1)} s)`);
    for (const n of this.notes) lines.push(`  (${n})`);
    return lines;
  }

  /** Prints the network sections in bench.mjs's table layout; returns the verdict lines. */
  report(W) {
    const verdicts = [];
    const tp = this.results.throughput;
    if (tp) {
      const t = tp.times;
      const has = (k) => t[k]?.length > 0;
      const med = (k) => median(t[k]);
      console.log(`TCP throughput: ${tp.bytes / 1048576} MiB per transfer, N=${tp.runs} per case after one of ${WARMUP_BYTES / 1048576} MiB, interleaved (${tp.secs.toFixed(0)} s); higher is better`);
      console.log(`${pad('', W)}${lpad('median', 10)}${lpad('min', 10)}${lpad('ratio', 8)}  target`);
      const row = (label, k, baseKey, target = '') => {
        if (!has(k)) return;
        const ratio = has(baseKey) ? `${(med(k) / med(baseKey)).toFixed(2)}x` : '';
        console.log(`  ${pad(label, W - 2)}${lpad(gbit(med(k)), 10)}${lpad(gbit(Math.min(...t[k])), 10)}${lpad(ratio, 8)}  ${target}`);
      };
      const verdict = (dir, k, baseKey, baseLabel) => {
        if (!has(k)) return '';
        if (!has(baseKey)) {
          verdicts.push(`TCP throughput ${dir}: Trellis ${gbit(med(k))}; podman not measured, no verdict`);
          return `>= ${TARGET_THROUGHPUT}x: podman not measured`;
        }
        const r = med(k) / med(baseKey);
        const ok = r >= TARGET_THROUGHPUT;
        verdicts.push(`TCP throughput ${dir}: Trellis ${gbit(med(k))}, ${r.toFixed(2)}x ${baseLabel} ${gbit(med(baseKey))} ${ok ? 'PASS' : 'MISS'}`);
        return `>= ${TARGET_THROUGHPUT}x  ${ok ? 'PASS' : 'MISS'}`;
      };
      const tm = `MTU ${this.trellisMtu ?? '?'}`;
      const pm = `MTU ${this.podMtu ?? '?'}`;
      const vs = (k, baseKey) => (has(k) && has(baseKey) ? `Trellis/this ${(med(k) / med(baseKey)).toFixed(2)}x` : '');
      console.log('host -> container');
      row(`podman -p: rootlessport, slirp4netns (${pm})    [baseline]`, 'pIn', 'pIn');
      row(`podman, port_handler=slirp4netns (${pm})        [ref]`, 'pInSlirp', 'pIn', vs('tIn', 'pInSlirp'));
      row(`Trellis net-in: gateway:port DNAT, veth+bridge (${tm})`, 'tIn', 'pIn', verdict('host -> container', 'tIn', 'pIn', "podman's -p (rootlessport)"));
      row(`Trellis net-in on 127.0.0.1: gdn's splice (${tm})`, 'tInLo', 'pIn', has('tInLo') && has('pIn') ? `loopback path vs podman -p on 127.0.0.1` : '');
      console.log('container -> host');
      row(`podman: slirp4netns to 10.0.2.2 (${pm})         [baseline]`, 'pOut', 'pOut');
      row(`Trellis: veth+bridge to the gateway, net-out rule (${tm})`, 'tOut', 'pOut', verdict('container -> host', 'tOut', 'pOut', 'slirp4netns'));
      console.log('host loopback');
      const ofLo = ['tIn', 'tOut'].filter(has).map((k) => `${Math.round((100 * med(k)) / med('lo'))}%`).join(' / ');
      row('127.0.0.1 -> 127.0.0.1 (MTU 65536)                     [ref]', 'lo', undefined, ofLo ? `Trellis in / out: ${ofLo} of this` : '');
    }
    const ud = this.results.updown;
    if (ud) {
      const t = ud.times;
      const r = (label, xs, extra = '') => console.log(`  ${pad(label, W - 2)}${lpad(ms(median(xs)), 10)}${lpad(ms(p90(xs)), 10)}${lpad('', 8)}  ${extra}`);
      const dUp = median(t.netCreate) - median(t.offCreate);
      const dDown = median(t.netDestroy) - median(t.offDestroy);
      const ok = dUp < TARGET_UP_MS;
      console.log(`networker up and down: create + destroy, N=${ud.n} each after ${UPDOWN_WARMUP} warm-up, interleaved (${ud.secs.toFixed(0)} s)`);
      r('create, networker /bin/true (loopback only)       [baseline]', t.offCreate);
      r('create, built-in networker', t.netCreate, `up adds ${signed(dUp)} < ${TARGET_UP_MS} ms  ${ok ? 'PASS' : 'MISS'}`);
      r('destroy, networker /bin/true (loopback only)      [baseline]', t.offDestroy);
      r('destroy, built-in networker', t.netDestroy, `down adds ${signed(dDown)}`);
      r('Networker.up in-process, own unshare --net         [ref]', t.up, `gate add + state + nsenter iptables-restore x2`);
      r('  cni-gate add alone (veth, address, lease)        [ref]', t.add, `rest of up: ${signed(median(t.up) - median(t.add))}`);
      r('Networker.down in-process                          [ref]', t.down);
      r('  cni-gate del alone (veth, lease)                 [ref]', t.del);
      r('exec of /bin/true, as ExecNetworkPlugin runs it    [ref]', t.trueExec, 'once in each baseline create and destroy');
      verdicts.push(`networker up adds ${signed(dUp)} to create (target < ${TARGET_UP_MS} ms) ${ok ? 'PASS' : 'MISS'}; down adds ${signed(dDown)} to destroy; gate add ${ms(median(t.add))}, del ${ms(median(t.del))}`);
    }
    return verdicts;
  }

  // ------------------------------------------------------------ cleanup

  /** Containers (both servers), the loopback-only server, host processes, gate leases, podman, files. */
  async cleanup() {
    const problems = [];
    this.stopping = true;
    for (const [h, client] of [...this.handles]) {
      try {
        await Promise.race([client.destroy(h), sleep(30_000).then(() => Promise.reject(new Error('timed out')))]);
        this.handles.delete(h);
      } catch (err) {
        problems.push(`Trellis destroy ${h}: ${err.message}`);
      }
    }
    if (this.offServer) await this.stopServer(this.offServer).catch((err) => problems.push(`loopback-only gdn server: ${err.message}`));
    if (this.inProcessHandles.size > 0 || this.gateIds.size > 0) {
      const { networkerFor } = await import(join(this.repo, 'dist/plugins/networker/wiring.js'));
      const { pino } = await import('pino');
      const networker = networkerFor(this.uid, { stateDir: join(this.dir, 'netstate'), gate: GATE }, pino({ level: 'silent' }));
      for (const h of this.inProcessHandles) await networker.down(h).catch((err) => problems.push(`networker down ${h}: ${err.message}`));
      for (const id of this.gateIds) {
        const r = await run(GATE, ['del', id], {});
        if (r.code !== 0) problems.push(`cni-gate del ${id}: ${r.err.trim()}`);
      }
    }
    for (const child of [...this.children]) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await Promise.race([child.exited, sleep(5000)]);
      }
    }
    if (this.pod) {
      for (const name of this.podContainers ?? []) {
        const r = await this.#podman(['rm', '-f', '-t', '0', name]);
        if (r.code !== 0) problems.push(`podman rm ${name}: ${r.err.trim()}`);
      }
    }
    // podman's pause process is our XDG_RUNTIME_DIR's
    problems.push(...(await podmanTeardown(this.pod?.env.XDG_RUNTIME_DIR, [this.dir, this.podRun], this.subuid, this.subgid, this.env)));
    return problems;
  }
}

function readdirSafe(d) {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
}

function readlinkSafe(p) {
  try {
    return readlinkSync(p);
  } catch {
    return undefined;
  }
}
