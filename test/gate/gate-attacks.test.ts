// The setuid CNI gate (issue #4) attacked by a second ordinary user. scripts/test runs
// this suite as `trellis-intruder`, which has its own network from `gdn setup`, after
// it started a victim owned by `trellis-test`: a user+net namespace holding a `sleep`,
// given a network with `cni-gate add <TRELLIS_VICTIM_ID> <TRELLIS_VICTIM_PID>`.
//
// Every attack must be refused (exit 2, one `cni-gate: ` line on stderr, nothing on
// stdout) and change nothing. "Nothing" is checked by what this user can observe:
//   - the host's links, addresses and routes (`ip -j`), minus this user's own bridge;
//   - the victim's network namespace as /proc/<pid>/net shows it to anyone (its
//     interfaces, addresses and routes);
//   - the intruder's own container still answering through its port mapping;
//   - no file created by root anywhere the intruder can write, and none of the fake
//     plugins or the LD_PRELOAD library planted through the environment ever ran.
// The gate's state (/var/lib/trellis/net, root-only) and the nat table are checked
// from root by scripts/test before and after this suite.
// A positive control (the intruder's own container: add, ports, check, del) shows
// that the refusals are not just a broken gate.

import { expect } from 'chai';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import dgram from 'node:dgram';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_GATE, inSubnet, intToIp, ipToInt, loadUserNetwork } from '../../plugins/networker/config.js';

// TRELLIS_GATE_UNDER_TEST: a build installed setuid elsewhere, tried before `gdn setup` installs it.
const GATE = process.env.TRELLIS_GATE_UNDER_TEST || DEFAULT_GATE;
const me = process.getuid?.() ?? 0;
const env = (name: string): string => {
  const v = process.env[name];
  // The suite never skips: without a victim it has nothing to prove.
  if (v === undefined || v === '') throw new Error(`${name} is not set: scripts/test starts the victim and passes it to this suite`);
  return v;
};

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * forge <error>: run as root of a user namespace of the caller's own, inside its network
 * namespace. Until SIGTERM it sends forged rtnetlink answers (NLMSG_ERROR carrying <error>,
 * sequence numbers 1..16) once to every NETLINK_ROUTE socket of a cni-gate process that
 * appears in that namespace (autobind names a socket after its process), while a second
 * process keeps the rtnl lock busy (a bridge made and deleted), so that a request of the
 * gate waits in the kernel with its socket already bound. Prints how many sockets of the
 * gate it reached and how many forged messages the kernel delivered to them.
 */
const FORGE_C = String.raw`#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static void hammer(void) {
  int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
  char b[4096];
  struct sockaddr_nl k = {.nl_family = AF_NETLINK};
  for (unsigned seq = 1;; seq++) {
    struct { struct nlmsghdr h; struct ifinfomsg i; char a[64]; } q;
    memset(&q, 0, sizeof q);
    int del = seq & 1;
    q.h.nlmsg_type = del ? RTM_DELLINK : RTM_NEWLINK;
    q.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (del ? 0 : NLM_F_CREATE);
    q.h.nlmsg_seq = seq;
    size_t off = NLMSG_LENGTH(sizeof q.i);
    struct rtattr *a = (struct rtattr *)((char *)&q + off);
    a->rta_type = IFLA_IFNAME; a->rta_len = RTA_LENGTH(4); memcpy(RTA_DATA(a), "hx0", 4); off += RTA_ALIGN(a->rta_len);
    if (!del) {
      struct rtattr *li = (struct rtattr *)((char *)&q + off), *kind = RTA_DATA(li);
      li->rta_type = IFLA_LINKINFO; kind->rta_type = IFLA_INFO_KIND; kind->rta_len = RTA_LENGTH(7); memcpy(RTA_DATA(kind), "bridge", 7);
      li->rta_len = RTA_LENGTH(RTA_ALIGN(kind->rta_len)); off += RTA_ALIGN(li->rta_len);
    }
    q.h.nlmsg_len = off;
    if (sendto(fd, &q, off, 0, (struct sockaddr *)&k, sizeof k) >= 0) recv(fd, b, sizeof b, 0);
  }
}
int main(int argc, char **argv) {
  if (argc < 2) return 100;
  int error = atoi(argv[1]);
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  struct sockaddr_nl me = {.nl_family = AF_NETLINK};
  socklen_t l = sizeof me;
  if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof me) || getsockname(fd, (struct sockaddr *)&me, &l)) return 101;
  signal(SIGTERM, on_term);
  pid_t h = fork();
  if (h == 0) hammer();
  printf("ready\n");
  fflush(stdout);
  long delivered = 0, reached = 0;
  static unsigned long long done[65536];
  int ndone = 0;
  char buf[4096];
  while (!stop) {
    FILE *f = fopen("/proc/self/net/netlink", "r");
    if (!f) return 102;
    unsigned long long sk;
    int proto;
    unsigned pid;
    while (fgets(buf, sizeof buf, f)) {
      if (sscanf(buf, "%llx %d %u", &sk, &proto, &pid) != 3 || proto != NETLINK_ROUTE || pid == 0 || pid == me.nl_pid || pid == (unsigned)h) continue;
      int seen = 0;
      for (int i = 0; i < ndone; i++) if (done[i] == sk) seen = 1;
      if (seen) continue;
      char cp[64], comm[64] = "";
      snprintf(cp, sizeof cp, "/proc/%u/comm", pid);
      FILE *c = fopen(cp, "r");
      if (c) { if (!fgets(comm, sizeof comm, c)) comm[0] = 0; fclose(c); }
      if (strcmp(comm, "cni-gate\n")) continue;
      if (ndone < 65536) done[ndone++] = sk;
      long before = delivered;
      for (unsigned seq = 1; seq <= 16; seq++) {
        struct { struct nlmsghdr h; struct nlmsgerr e; } m;
        memset(&m, 0, sizeof m);
        m.h.nlmsg_len = sizeof m; m.h.nlmsg_type = NLMSG_ERROR; m.h.nlmsg_seq = seq; m.h.nlmsg_pid = pid;
        m.e.error = error; m.e.msg.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg)); m.e.msg.nlmsg_type = RTM_GETLINK;
        m.e.msg.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK; m.e.msg.nlmsg_seq = seq; m.e.msg.nlmsg_pid = pid;
        struct sockaddr_nl to = {.nl_family = AF_NETLINK, .nl_pid = pid};
        if (sendto(fd, &m, sizeof m, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) == (ssize_t)sizeof m) delivered++;
      }
      if (delivered > before) reached++;
    }
    fclose(f);
  }
  kill(h, SIGKILL);
  printf("reached %ld delivered %ld\n", reached, delivered);
  return 0;
}
`;

/** Runs the gate with exactly `environment` (nothing inherited). */
function gate(args: string[], environment: Record<string, string> = {}): Ran {
  const r = spawnSync(GATE, args, { env: environment, encoding: 'utf8', timeout: 90_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const ipJson = <T>(args: string[]): T => JSON.parse(execFileSync('ip', ['-j', ...args], { encoding: 'utf8' })) as T;

interface Link {
  ifindex: number;
  ifname: string;
  master?: string;
  flags?: string[];
  operstate?: string;
  address?: string;
  mtu?: number;
}

interface World {
  /** Every link but this user's bridge and its ports: identity, state, MAC, addresses (not IPv6 link-local). */
  host: string[];
  /** Routes of both families on links that are not this user's. */
  routes: string[];
  /** This user's bridge and its ports (identity only: a new veth's state settles on its own). */
  mine: string[];
  /** The victim's netns, as /proc/<pid>/net shows it: interface names, addresses, routes. */
  victim: string[];
}

function procNet(pid: string): string[] {
  const dev = readFileSync(`/proc/${pid}/net/dev`, 'utf8').split('\n').slice(2).map((l) => l.split(':')[0]!.trim()).filter(Boolean).sort();
  const fib = readFileSync(`/proc/${pid}/net/fib_trie`, 'utf8');
  const route = readFileSync(`/proc/${pid}/net/route`, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
  return [`dev ${dev.join(' ')}`, `fib ${fib}`, ...route.map((r) => `route ${r}`)];
}

/** Sends one hand-made Ethernet frame: raw IPv4/UDP or an ARP reply, with optional 802.1Q tags (review of issue #13). */
const FRAME_C = String.raw`#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static void mac(const char *s, unsigned char *o) { for (int i = 0; i < 6; i++) o[i] = (unsigned char)strtoul(s + 3 * i, NULL, 16); }
static unsigned short sum(const unsigned char *b, int n) { unsigned long s = 0; for (int i = 0; i + 1 < n; i += 2) s += (b[i] << 8) | b[i + 1]; while (s >> 16) s = (s & 0xffff) + (s >> 16); return (unsigned short)~s; }
/* frame IFNAME DSTMAC SRCMAC TAGS(-|0|0,0) ip|arp SRCIP DSTIP DPORT PAYLOAD */
int main(int argc, char **argv) {
  if (argc != 10) return 2;
  unsigned char f[256] = {0}; int n = 0;
  mac(argv[2], f); mac(argv[3], f + 6); n = 12;
  for (const char *t = argv[4]; *t && *t != '-'; t += (t[1] == ',') ? 2 : 1) { f[n++] = 0x81; f[n++] = 0x00; f[n++] = 0; f[n++] = (unsigned char)atoi(t); if (!t[1]) break; }
  struct in_addr sa, da; inet_aton(argv[6], &sa); inet_aton(argv[7], &da);
  if (!strcmp(argv[5], "ip")) {
    f[n++] = 0x08; f[n++] = 0x00;
    unsigned char *ip = f + n; int pl = (int)strlen(argv[9]); int len = 20 + 8 + pl;
    ip[0] = 0x45; ip[2] = (unsigned char)(len >> 8); ip[3] = (unsigned char)len; ip[5] = 1; ip[8] = 64; ip[9] = 17;
    memcpy(ip + 12, &sa, 4); memcpy(ip + 16, &da, 4);
    unsigned short c = sum(ip, 20); ip[10] = (unsigned char)(c >> 8); ip[11] = (unsigned char)c;
    unsigned char *u = ip + 20; int dp = atoi(argv[8]);
    u[0] = 0x11; u[1] = 0x5c; u[2] = (unsigned char)(dp >> 8); u[3] = (unsigned char)dp; u[4] = (unsigned char)((8 + pl) >> 8); u[5] = (unsigned char)(8 + pl);
    memcpy(u + 8, argv[9], (size_t)pl); n += len;
  } else {
    f[n++] = 0x08; f[n++] = 0x06;
    unsigned char *a = f + n;
    a[1] = 1; a[2] = 8; a[4] = 6; a[5] = 4; a[7] = 2;
    memcpy(a + 8, f + 6, 6); memcpy(a + 14, &sa, 4); memcpy(a + 18, f, 6); memcpy(a + 24, &da, 4); n += 28;
  }
  if (n < 60) n = 60;
  int s = socket(AF_PACKET, SOCK_RAW, 0); if (s < 0) return 3;
  struct sockaddr_ll ll = {0}; ll.sll_family = AF_PACKET; ll.sll_ifindex = (int)if_nametoindex(argv[1]); ll.sll_halen = 6; memcpy(ll.sll_addr, f, 6);
  if (sendto(s, f, (size_t)n, 0, (struct sockaddr *)&ll, sizeof ll) != n) return 4;
  return 0;
}
`;

/** Host addresses a container holds, from /proc/<pid>/net/fib_trie (the `/32 host LOCAL` entries). */
function addressesOf(pid: string): string[] {
  const lines = readFileSync(`/proc/${pid}/net/fib_trie`, 'utf8').split('\n');
  const out = new Set<string>();
  for (let i = 1; i < lines.length; i++) {
    if (/\/32 host LOCAL/.test(lines[i]!)) out.add(lines[i - 1]!.replace(/[|\-\s]/g, ''));
  }
  return [...out].filter((a) => !a.startsWith('127.')).sort();
}

function interfacesOf(pid: string): string[] {
  return readFileSync(`/proc/${pid}/net/dev`, 'utf8').split('\n').slice(2).map((l) => l.split(':')[0]!.trim()).filter(Boolean).sort();
}

describe('cni-gate attacks (issue #4): another user cannot touch a victim through the gate', function () {
  this.timeout(60_000);
  const victim = { pid: env('TRELLIS_VICTIM_PID'), uid: Number(env('TRELLIS_VICTIM_UID')), id: env('TRELLIS_VICTIM_ID') };
  const mine = loadUserNetwork(me);
  const theirs = loadUserNetwork(victim.uid);
  const spawned: ChildProcess[] = [];
  let work: string;
  let fake: string;
  let hostile: Record<string, string>;
  let lure: string;
  let start: World;
  let victimAddresses: string[];
  let bornAfter: number;
  let own: string;
  let ownServer: ChildProcess | undefined;

  function world(): World {
    const all = ipJson<Link[]>(['link']);
    const ours = new Set(all.filter((l) => l.ifname === mine.bridge || l.master === mine.bridge).map((l) => l.ifname));
    const addrs = ipJson<{ ifname: string; addr_info?: { local?: string; prefixlen?: number }[] }[]>(['addr']);
    // IPv6 link-local addresses and their routes come and go with the kernel's DAD on a
    // fresh veth (the victim's is seconds old): not state anyone asked for, so left out.
    const kernelV6 = (s: string | undefined): boolean => s !== undefined && /^(fe80:|ff00::)/.test(s);
    const addrOf = new Map(addrs.map((a) => [a.ifname, (a.addr_info ?? []).filter((i) => !kernelV6(i.local)).map((i) => `${i.local}/${i.prefixlen}`).sort().join(',')]));
    const routes = [...ipJson<{ dev?: string; dst?: string }[]>(['route', 'show', 'table', 'all']), ...ipJson<{ dev?: string; dst?: string }[]>(['-6', 'route', 'show', 'table', 'all'])]
      .filter((r) => !kernelV6(r.dst));
    return {
      host: all
        .filter((l) => !ours.has(l.ifname))
        .map((l) => `${l.ifindex} ${l.ifname} master=${l.master ?? '-'} ${(l.flags ?? []).join(',')} ${l.operstate} ${l.address} mtu=${l.mtu} ${addrOf.get(l.ifname) ?? ''}`)
        .sort(),
      routes: routes.filter((r) => r.dev === undefined || !ours.has(r.dev)).map((r) => JSON.stringify(r)).sort(),
      mine: all.filter((l) => ours.has(l.ifname)).map((l) => `${l.ifindex} ${l.ifname} master=${l.master ?? '-'}`).sort(),
      victim: procNet(victim.pid),
    };
  }

  /** A user+net namespace of the intruder's own, holding a sleep: its pid once `unshare` is done. */
  async function container(args: string[] = ['--user', '--map-root-user', '--net']): Promise<string> {
    const child = spawn('unshare', [...args, 'sleep', '600'], { stdio: 'ignore' });
    spawned.push(child);
    const pid = String(child.pid);
    for (let i = 0; i < 200; i++) {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep') return pid;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`unshare ${args.join(' ')} did not get to sleep`);
  }

  /** What the intruder's own mapping answers from the host: its gateway and first host port. */
  function viaMapping(): Promise<string> {
    return new Promise((resolve) => {
      const c = net.connect(mine.portStart, mine.gateway);
      let text = '';
      const t = setTimeout(() => {
        c.destroy();
        resolve(`timeout (${JSON.stringify(text)})`);
      }, 5000);
      c.setEncoding('utf8');
      c.on('data', (d: string) => (text += d));
      c.on('end', () => {
        clearTimeout(t);
        resolve(text);
      });
      c.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(t);
        resolve(err.code ?? err.message);
      });
    });
  }

  /** Files a planted plugin or preload library would have left. */
  async function markers(): Promise<string[]> {
    return (await readdir(fake)).filter((f) => f.startsWith('ran-') || f.startsWith('preload-ran-')).sort();
  }

  /** The attack: exit 2, nothing on stdout, exactly one `cni-gate: ` line matching `why`, and nothing changed. */
  async function refused(args: string[], why: RegExp, environment: Record<string, string> = {}): Promise<void> {
    const before = world();
    const r = gate(args, environment);
    const what = `cni-gate ${JSON.stringify(args)}`;
    expect(r.code, `${what}: exit status (stderr ${JSON.stringify(r.stderr)})`).to.equal(2);
    expect(r.stdout, `${what}: stdout`).to.equal('');
    expect(r.stderr, `${what}: stderr`).to.match(/^cni-gate: [^\n]*\n$/);
    expect(r.stderr, `${what}: the reason`).to.match(why);
    expect(world(), `${what}: host, own bridge and victim after the refusal`).to.deep.equal(before);
    expect(await markers(), `${what}: planted programs that ran`).to.deep.equal([]);
  }

  before(async function () {
    expect(existsSync(`/proc/${victim.pid}`), `victim pid ${victim.pid} is alive`).to.equal(true);
    expect(victim.uid, 'the victim belongs to another user').to.not.equal(me);
    work = await mkdtemp(join(tmpdir(), 'gate-attack-'));
    const born = join(work, 'born');
    await writeFile(born, '');
    bornAfter = (await lstat(born)).birthtimeMs;

    // Planted programs: every name the gate or a plugin might look up through PATH or
    // CNI_PATH. Run as root they would leave a root-owned ran-<name> here.
    fake = join(work, 'fake');
    await mkdir(fake);
    await chmod(fake, 0o777);
    for (const name of ['bridge', 'host-local', 'portmap', 'loopback', 'iptables', 'iptables-restore', 'iptables-save', 'iptables-nft',
      'iptables-legacy', 'ip6tables', 'xtables-nft-multi', 'ip', 'nsenter', 'sysctl', 'modprobe', 'unshare']) {
      // A shell redirection, not touch: the planted PATH has no touch.
      await writeFile(join(fake, name), `#!/bin/sh\n: > '${fake}/ran-${name}'\nexit 0\n`, { mode: 0o755 });
    }
    await writeFile(join(work, 'preload.c'), [
      '#include <fcntl.h>', '#include <stdio.h>', '#include <unistd.h>',
      '__attribute__((constructor)) static void mark(void)',
      `{ char p[512]; snprintf(p, sizeof p, "${fake}/preload-ran-%d", (int)geteuid()); int fd = open(p, O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }`,
      '',
    ].join('\n'));
    execFileSync('gcc', ['-shared', '-fPIC', '-o', join(fake, 'preload.so'), join(work, 'preload.c')], { stdio: 'pipe' });
    lure = intToIp(ipToInt(mine.gateway) + 199);
    hostile = {
      PATH: `${fake}:/usr/sbin:/usr/bin:/sbin:/bin`,
      CNI_PATH: fake,
      CNI_COMMAND: 'DEL',
      CNI_CONTAINERID: `u${victim.uid}-${victim.id}`,
      CNI_NETNS: `/proc/${victim.pid}/ns/net`,
      CNI_IFNAME: 'eth7',
      CNI_ARGS: `IgnoreUnknown=1;IP=${lure}`,
      NETCONFPATH: fake,
      LD_PRELOAD: join(fake, 'preload.so'),
      LD_LIBRARY_PATH: fake,
      XTABLES_LIBDIR: fake,
      GCONV_PATH: fake,
      LOCPATH: fake,
      TMPDIR: fake,
      HOME: fake,
      IFS: '/',
    };

    victimAddresses = addressesOf(victim.pid);
    expect(victimAddresses.length, `the victim has an address (${victim.pid})`).to.equal(1);
    expect(interfacesOf(victim.pid)).to.include('eth0');
    own = await container();
    start = world();
  });

  after(async function () {
    ownServer?.kill('SIGKILL');
    // Leave nothing of the intruder's own behind, whatever failed.
    if (own) gate(['del', 'mine', own]);
    gate(['del', 'spare']);
    for (const id of ['renamed', 'full', 'forged', 'twin', 'pooled']) gate(['del', id]);
    for (const c of spawned) c.kill('SIGKILL');
    if (work) await rm(work, { recursive: true, force: true });
  });

  describe("positive control: the intruder's own container", function () {
    it('the planted programs and the preload library do run when something honours the environment', async function () {
      // So that "they never ran" below means the gate ignored them, not that they cannot run.
      try {
        expect(spawnSync('/bin/true', [], { env: { LD_PRELOAD: join(fake, 'preload.so') } }).status).to.equal(0);
        expect(spawnSync('bridge', [], { env: { PATH: fake } }).status).to.equal(0);
        expect(await markers()).to.deep.equal([`preload-ran-${me}`, 'ran-bridge']);
      } finally {
        for (const m of await markers()) await rm(join(fake, m));
      }
    });

    it('add, with a hostile environment, gives it an address of its own subnet; the environment is ignored', async function () {
      const r = gate(['add', 'mine', own], hostile);
      expect(r.code, r.stderr).to.equal(0);
      const result = JSON.parse(r.stdout) as { ips: { address: string }[]; interfaces: { name: string }[] };
      const address = result.ips[0]!.address.split('/')[0]!;
      expect(inSubnet(address, mine.subnet), `${address} in ${mine.subnet}`).to.equal(true);
      expect(address, 'CNI_ARGS IP= was not honoured').to.not.equal(lure);
      expect(interfacesOf(own), 'CNI_IFNAME was not honoured').to.include('eth0');
      expect(interfacesOf(own)).to.not.include('eth7');
      expect(addressesOf(own)).to.deep.equal([address]);
      expect(await markers(), 'planted programs that ran').to.deep.equal([]);
      const now = world();
      expect(now.mine.filter((l) => l.endsWith(`master=${mine.bridge}`)).length, 'one veth on the own bridge').to.equal(1);
      expect({ host: now.host, routes: now.routes, victim: now.victim }, 'everything but the own bridge').to.deep.equal({
        host: start.host, routes: start.routes, victim: start.victim,
      });
    });

    it('ports maps the first host port of its range to the container; check passes', async function () {
      // A server inside the intruder's own namespaces, reachable only through the mapping.
      ownServer = spawn('nsenter', ['--preserve-credentials', '-t', own, '-U', '-n', process.execPath, '-e',
        "require('net').createServer((c) => c.end('mine\\n')).listen(80, '0.0.0.0', () => console.log('listening'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
      spawned.push(ownServer);
      await new Promise<void>((resolve, reject) => {
        ownServer!.stdout!.once('data', () => resolve());
        ownServer!.once('exit', (code) => reject(new Error(`the server in the own netns exited ${code}`)));
      });
      const r = gate(['ports', 'mine', own, `${mine.portStart}:80/tcp`], hostile);
      expect(r, 'ports').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(await viaMapping()).to.equal('mine\n');
      expect(gate(['check', 'mine', own], hostile), 'check').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(await markers(), 'planted programs that ran').to.deep.equal([]);
    });
  });

  describe("issue #8: the address pool (the intruder's own, from gdn setup --network-pool)", function () {
    let pooled: string;
    /** The intruder's pool, and its first /25 (its own container's subnet below). */
    const pool = (): { base: number; prefix: number } => {
      if (mine.pool === undefined) throw new Error(`uid ${me} has no address pool: scripts/test grants the intruder one`);
      const [a, p] = mine.pool.split('/');
      return { base: ipToInt(a!), prefix: Number(p) };
    };
    const poolBridges = (): string[] => ipJson<Link[]>(['link']).filter((l) => new RegExp(`^tr${me}p\\d+$`).test(l.ifname)).map((l) => l.ifname);

    it('positive control: add net= on a subnet of its own pool gets a bridge tr<uid>p<n> named by the gate, with that subnet\'s gateway', async function () {
      expect(pool().prefix, 'a pool that holds a /25').to.be.at.most(25);
      expect(theirs.pool, "the victim's user has a pool too").to.be.a('string');
      pooled = await container();
      const subnet = `${intToIp(pool().base)}/25`;
      const r = gate(['add', 'pooled', pooled, `net=${subnet}`], hostile);
      expect(r.code, r.stderr).to.equal(0);
      const address = (JSON.parse(r.stdout) as { ips: { address: string }[] }).ips[0]!.address;
      expect(inSubnet(address.split('/')[0]!, subnet), `${address} in ${subnet}`).to.equal(true);
      expect(address.endsWith('/25')).to.equal(true);
      const bridges = poolBridges();
      expect(bridges).to.have.length(1);
      const gw = intToIp(pool().base + 1);
      const addrs = ipJson<{ addr_info?: { local?: string }[] }[]>(['-4', 'addr', 'show', 'dev', bridges[0]!]);
      expect(addrs[0]?.addr_info?.map((i) => i.local)).to.deep.equal([gw]);
      expect(gate(['check', 'pooled', pooled], hostile), 'check').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(await markers(), 'planted programs that ran').to.deep.equal([]);
    });

    it("refused: a subnet outside the caller's pool: another user's pool or subnet, its own default subnet, anywhere else", async function () {
      const x = await container();
      const victimPool = theirs.pool!.split('/')[0]!;
      for (const net of [`${victimPool}/24`, `${intToIp(ipToInt(victimPool) + 5)}/24`, theirs.subnet, mine.subnet, '172.31.250.0/24', '8.8.8.0/24', '127.0.0.0/24']) {
        await refused(['add', 'x', x, `net=${net}`], /is not inside your address pool/);
      }
      // a subnet that starts inside the pool but is wider than it
      await refused(['add', 'x', x, `net=${intToIp(pool().base)}/${pool().prefix - 1}`], /is not inside your address pool/);
    });

    it("refused: the caller's pool with a bad prefix, the gateway or broadcast address, a malformed subnet", async function () {
      const x = await container();
      const base = intToIp(pool().base);
      for (const p of ['31', '32', '0', '8', '15']) await refused(['add', 'x', x, `net=${base}/${p}`], /must be a \/16 to a \/30|is not inside your address pool/);
      await refused(['add', 'x', x, `net=${intToIp(pool().base + 129)}/25`], /gateway or the broadcast address/);
      await refused(['add', 'x', x, `net=${intToIp(pool().base + 255)}/25`], /gateway or the broadcast address/);
      for (const bad of [`${base}/33`, `${base}/024`, `0${base}/25`, `${base}`, `${base}/25/25`, `${base}/25,bridge=evil`, `${base}/-1`, ' ', '']) {
        await refused(['add', 'x', x, `net=${bad}`], /bad net=/);
      }
    });

    it('refused: a subnet overlapping one of its own in use with another prefix', async function () {
      const x = await container();
      await refused(['add', 'x', x, `net=${intToIp(pool().base)}/26`], /overlaps .* the subnet of your container pooled/);
      await refused(['add', 'x', x, `net=${intToIp(pool().base)}/24`], /overlaps .* the subnet of your container pooled|is not inside/);
    });

    it('refused: bridge names come from the gate only (no argument names one)', async function () {
      const x = await container();
      const net = `net=${intToIp(pool().base)}/25`;
      for (const b of [`bridge=${theirs.bridge}`, `bridge=tr${victim.uid}p0`, 'bridge=eth0', `br=${mine.bridge}`]) {
        await refused(['add', 'x', x, b], /bad argument/);
        await refused(['add', 'x', x, net, b], /too many arguments/);
      }
      await refused(['add', 'x', x, `${net}`, 'ip=1.2.3.4'], /too many arguments/);
    });

    it("refused: the victim's namespace, with a subnet of the caller's own pool", async function () {
      await refused(['add', 'x', victim.pid, `net=${intToIp(pool().base + 128)}/25`], /not in a user namespace of uid/);
    });

    it('del of its pool container removes the bridge with the subnet\'s last container; a repeated del is fine', async function () {
      expect(gate(['del', 'pooled', pooled]), 'del').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(poolBridges()).to.deep.equal([]);
      expect(interfacesOf(pooled)).to.not.include('eth0');
      expect(gate(['del', 'pooled']), 'del again').to.deep.equal({ code: 0, stdout: '', stderr: '' });
    });
  });

  describe('refused: malformed requests', function () {
    it('no arguments, unknown subcommands, too few arguments', async function () {
      await refused([], /usage: cni-gate add/);
      for (const cmd of ['frob', 'ADD', 'help', '--help', 'version']) await refused([cmd, 'x', own], /unknown command/);
      await refused(['add'], /too few arguments/);
      await refused(['add', 'x'], /too few arguments/);
      await refused(['check', 'mine'], /too few arguments/);
    });

    it('a config path or any other extra argument (there is no flag for one)', async function () {
      await refused(['add', 'x', own, '--config=/tmp/evil.conf'], /bad argument/);
      await refused(['add', 'x', own, 'config=/tmp/evil.conf'], /bad argument/);
      await refused(['--config', '/tmp/evil.conf', 'add', 'x', own], /unknown command/);
      await refused(['check', 'mine', own, `/etc/trellis/net/${victim.uid}.conf`], /too many arguments/);
      await refused(['del', 'mine', own, 'extra'], /too many arguments/);
      await refused(['add', 'x', own, `ip=${intToIp(ipToInt(mine.gateway) + 9)}`, 'extra'], /too many arguments/);
    });

    it('bad ids: a path, a leading dash or dot, 65 characters, empty, spaces, format directives', async function () {
      for (const id of ['../x', 'x/y', '-x', '.x', '_x', 'a'.repeat(65), '', 'x y', 'mine\n', '%s%n%x', `u${victim.uid}-${victim.id}/..`]) {
        await refused(['add', id, own], /bad container id/);
        await refused(['del', id], /bad container id/);
      }
    });

    it('bad pids: 1, 0, signs, leading zeros, not decimal, too large', async function () {
      for (const pid of ['1', '0', '-5', '+5', ' 5', '0123', '1e3', '0x10', '99999999999', `${own}x`]) {
        await refused(['add', 'x', pid], /bad pid/);
      }
    });
  });

  describe("refused: someone else's or the host's namespaces", function () {
    it("the victim's pid, for every subcommand and for the victim's own id", async function () {
      const notMine = new RegExp(`pid ${victim.pid} is not in a user namespace of uid ${me}`);
      await refused(['add', 'x', victim.pid], notMine);
      await refused(['add', victim.id, victim.pid], notMine);
      await refused(['del', victim.id, victim.pid], notMine);
      await refused(['del', 'mine', victim.pid], notMine);
      await refused(['check', victim.id, victim.pid], notMine);
      await refused(['ports', victim.id, victim.pid, `${mine.portStart + 1}:80/tcp`], notMine);
      await refused(['ports', 'mine', victim.pid], notMine);
    });

    it('the same, with the hostile environment pointing CNI_NETNS and CNI_CONTAINERID at the victim', async function () {
      await refused(['add', 'x', victim.pid], /not in a user namespace/, hostile);
      await refused(['del', victim.id, victim.pid], /not in a user namespace/, hostile);
    });

    it("the intruder's own process in the host namespaces (this mocha)", async function () {
      await refused(['add', 'x', String(process.pid)], new RegExp(`pid ${process.pid} is not in a user namespace of uid ${me}`));
      await refused(['del', 'mine', String(process.pid)], /not in a user namespace/);
    });

    it('a user namespace of its own that shares the host network namespace', async function () {
      const pid = await container(['--user', '--map-root-user']);
      await refused(['add', 'x', pid], /in the host network namespace/);
      await refused(['del', 'mine', pid], /in the host network namespace/);
    });

    it("a nested user namespace whose network namespace belongs to its parent", async function () {
      const pid = await container(['--user', '--map-root-user', '--net', 'unshare', '--user']);
      await refused(['add', 'x', pid], /network namespace is not owned by its user namespace/);
    });

    it('a pid that does not exist', async function () {
      const dead = spawnSync('true').pid!;
      await refused(['add', 'x', String(dead)], /no such process|exited/);
    });
  });

  describe("refused: the victim's addresses and ports", function () {
    let fresh: string;

    before(async function () {
      fresh = await container();
    });

    it("ip= the victim's address, range= the victim's subnet, the own gateway, everything", async function () {
      await refused(['add', 'x', fresh, `ip=${victimAddresses[0]}`], /is not a host address of your subnet/);
      await refused(['add', 'x', fresh, `range=${theirs.subnet}`], /is not inside your subnet/);
      await refused(['add', 'x', fresh, 'range=0.0.0.0/0'], /is not inside your subnet/);
      await refused(['add', 'x', fresh, `ip=${mine.gateway}`], /is not a host address of your subnet/);
      await refused(['add', 'x', fresh, `ip=${victimAddresses[0]}.0`], /bad ip=/);
      await refused(['add', 'x', fresh, `ip=0${intToIp(ipToInt(mine.gateway) + 5)}`], /bad ip=/);
      expect(interfacesOf(fresh), 'the fresh namespace got nothing').to.not.include('eth0');
    });

    it("host ports outside the own range, inside the victim's, twice, malformed, too many; the own mapping stays", async function () {
      for (const p of [mine.portStart - 1, mine.portEnd + 1, 1023, theirs.portStart, theirs.portEnd]) {
        await refused(['ports', 'mine', own, `${p}:80/tcp`], /is outside your range/);
        await refused(['ports', 'mine', own, `${mine.portStart}:80/tcp`, `${p}:80/udp`], /is outside your range/);
      }
      await refused(['ports', 'mine', own, `${mine.portStart}:80/tcp`, `${mine.portStart}:81/tcp`], /mapped twice/);
      for (const m of [`${mine.portStart}:0/tcp`, `${mine.portStart}:80/sctp`, `${mine.portStart}:80`, `${mine.portStart}:65536/tcp`, `0${mine.portStart}:80/tcp`]) {
        await refused(['ports', 'mine', own, m], /bad port mapping/);
      }
      const many = Array.from({ length: 65 }, (_, i) => `${mine.portStart + i}:80/tcp`);
      await refused(['ports', 'mine', own, ...many], /too many arguments/);
      expect(await viaMapping(), 'the own mapping after the refusals').to.equal('mine\n');
    });

    it('an own namespace that already has an eth0, an id that already has a network', async function () {
      await refused(['add', 'other', own], /already has an eth0/);
      await refused(['add', 'mine', fresh], /already has a network/);
      expect(interfacesOf(fresh)).to.not.include('eth0');
    });
  });

  describe("ids are the caller's: the victim's id names nothing of the victim's", function () {
    it("check and ports with the victim's id refer to the intruder's own (missing) container", async function () {
      await refused(['check', victim.id, own], new RegExp(`container ${victim.id} has no network`));
      await refused(['ports', victim.id, own, `${mine.portStart + 1}:80/tcp`], new RegExp(`container ${victim.id} has no network`));
    });

    it("del of the victim's id (or its CNI container id) exits 0 as an unknown id and changes nothing", async function () {
      for (const id of [victim.id, `u${victim.uid}-${victim.id}`]) {
        const before = world();
        expect(gate(['del', id]), `del ${id}`).to.deep.equal({ code: 0, stdout: '', stderr: '' });
        expect(world(), `del ${id}`).to.deep.equal(before);
      }
      expect(addressesOf(victim.pid)).to.deep.equal(victimAddresses);
      expect(await viaMapping(), 'the own mapping').to.equal('mine\n');
    });
  });

  describe("the caller's other containers", function () {
    let spare: string;

    it('add with stdin and stderr closed works; with stdout closed it fails and rolls back', async function () {
      // glibc opens /dev/null for a setuid program's closed fds 0-2 (stdout read-only), so
      // nothing of the gate's lands on them; a result that cannot be written is rolled back.
      const pid = await container();
      spare = pid;
      const veths = (): string[] => world().mine.filter((l) => l.endsWith(`master=${mine.bridge}`));
      const before = veths();
      const noOut = spawnSync('bash', ['-c', 'exec 1>&-; exec "$0" add spare "$1"', GATE, pid], { env: {}, encoding: 'utf8' });
      expect(noOut.status, `add with stdout closed (stderr ${JSON.stringify(noOut.stderr)})`).to.equal(1);
      expect(noOut.stderr).to.match(/^cni-gate: cannot write the result to stdout \(rolled back\)\n$/);
      expect(interfacesOf(pid), 'rolled back: no eth0').to.not.include('eth0');
      expect(veths(), 'rolled back: no veth').to.deep.equal(before);
      const add = spawnSync('bash', ['-c', 'exec 0<&- 2>&-; exec "$0" add spare "$1"', GATE, pid], { env: {}, encoding: 'utf8' });
      expect(add.status, 'add with stdin and stderr closed (and nothing stored by the rolled-back one)').to.equal(0);
      expect(JSON.parse(add.stdout)).to.have.property('ips');
      expect(gate(['check', 'spare', pid]), 'the stored result is intact').to.deep.equal({ code: 0, stdout: '', stderr: '' });
    });

    it('del of an unknown id with the pid of another container leaves that container alone', async function () {
      // README: "unknown id: exit 0". Given the pid of another of the caller's containers,
      // del must not take that container's eth0: no stored result names it.
      expect(interfacesOf(spare), 'spare before').to.include('eth0');
      const before = world();
      expect(gate(['del', 'not-spare', spare])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(interfacesOf(spare), "spare's eth0 after del of another id").to.include('eth0');
      expect(world(), 'host after del of another id').to.deep.equal(before);
      expect(gate(['check', 'spare', spare]), 'spare after del of another id').to.deep.equal({ code: 0, stdout: '', stderr: '' });
    });

    after(function () {
      if (spare) gate(['del', 'spare', spare]);
    });
  });

  describe('issue #13: isolation between users', function () {
    // scripts/test gives the victim a server on :8080 in its netns (never published), and
    // services of the victim user on the host inside this user's port block.
    const VICTIM_PORT = 8080;
    const held = (): { port: number; proto: 'tcp' | 'udp'; host: string }[] => [
      { port: mine.portEnd, proto: 'tcp', host: theirs.gateway },
      { port: mine.portEnd - 1, proto: 'tcp', host: '127.0.0.1' },
      { port: mine.portEnd - 2, proto: 'udp', host: theirs.gateway },
    ];
    let helper: string;

    function tcpFetch(host: string, port: number, ms = 3000): Promise<string> {
      return new Promise((resolve) => {
        const c = net.connect({ host, port });
        let text = '';
        const t = setTimeout(() => {
          c.destroy();
          resolve(`timeout (${JSON.stringify(text)})`);
        }, ms);
        c.setEncoding('utf8');
        c.on('data', (d: string) => (text += d));
        c.on('end', () => {
          clearTimeout(t);
          resolve(text);
        });
        c.on('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(t);
          resolve(err.code ?? err.message);
        });
      });
    }

    function udpAsk(host: string, port: number, ms = 3000): Promise<string> {
      return new Promise((resolve) => {
        const s = dgram.createSocket('udp4');
        const t = setTimeout(() => {
          s.close();
          resolve('timeout');
        }, ms);
        s.on('message', (m) => {
          clearTimeout(t);
          s.close();
          resolve(m.toString());
        });
        s.send('hello', port, host);
      });
    }

    /** The victim's IPv6 link-local address on its eth0, from /proc/<pid>/net/if_inet6. */
    function victimLinkLocal(): string {
      const line = readFileSync(`/proc/${victim.pid}/net/if_inet6`, 'utf8').split('\n').find((l) => / eth0$/.test(l.trim()) && l.startsWith('fe80'));
      expect(line, "the victim's eth0 has an IPv6 link-local address").to.be.a('string');
      const hex = line!.split(/\s+/)[0]!;
      return hex.match(/.{4}/g)!.join(':');
    }

    before(async function () {
      const c = join(work, 'timer-exec.c');
      await writeFile(c, [
        '#include <stdlib.h>', '#include <string.h>', '#include <sys/time.h>', '#include <unistd.h>',
        '/* timer-exec <usec> <prog> <args...>: all three interval timers armed, then exec (they survive it) */',
        'int main(int argc, char **argv) {',
        '  if (argc < 3) return 100;',
        '  struct itimerval t; memset(&t, 0, sizeof t); long us = atol(argv[1]);',
        '  t.it_value.tv_sec = us / 1000000; t.it_value.tv_usec = us % 1000000;',
        '  t.it_interval.tv_usec = 1000;',
        '  setitimer(ITIMER_REAL, &t, 0); setitimer(ITIMER_VIRTUAL, &t, 0); setitimer(ITIMER_PROF, &t, 0);',
        '  execv(argv[2], argv + 2); return 101; }',
        '',
      ].join('\n'));
      helper = join(work, 'timer-exec');
      execFileSync('gcc', ['-O2', '-o', helper, c], { stdio: 'pipe' });
    });

    it("finding 1: another user's unpublished container port is closed to this user's host shell (IPv4 and IPv6)", async function () {
      const [ip] = victimAddresses;
      expect(await tcpFetch(ip!, VICTIM_PORT), `${ip}:${VICTIM_PORT} from the intruder's host shell`).to.not.equal('victim\n');
      const ll = `${victimLinkLocal()}%${theirs.bridge}`;
      expect(await tcpFetch(ll, VICTIM_PORT), `[${ll}]:${VICTIM_PORT} from the intruder's host shell`).to.not.equal('victim\n');
    });

    it("finding 2: net-in cannot take a port that another user's socket holds (TCP on its gateway and on 127.0.0.1, UDP); those services keep working", async function () {
      for (const h of held()) {
        await refused(['ports', 'mine', own, `${mine.portStart}:80/tcp`, `${h.port}:80/${h.proto}`],
          new RegExp(`host port ${h.port}/${h.proto} is in use on this host by a socket of uid ${victim.uid}`));
      }
      expect(await viaMapping(), 'the own mapping').to.equal('mine\n');
      for (const h of held()) {
        const got = h.proto === 'tcp' ? await tcpFetch(h.host, h.port) : await udpAsk(h.host, h.port);
        expect(got, `the victim's ${h.host}:${h.port}/${h.proto}`).to.equal('victim\n');
      }
    });

    it("finding 2, UDP: a UDP mapping is the gate's own DNAT (portmap's UDP ADD flushed every flow to that port, on any address): the own container answers through it and not after it is gone; the victim's UDP service is untouched", async function () {
      // What the mapping does to conntrack (only entries of local destinations on the port go,
      // not a flow of the victim's to a remote host on it) is checked from root by scripts/test
      // (udp_flush_checks in scripts/test.d/isolation.sh): this user cannot read the table.
      const port = mine.portStart + 1;
      const echo = spawn('nsenter', ['--preserve-credentials', '-t', own, '-U', '-n', process.execPath, '-e',
        "const u = require('dgram').createSocket('udp4'); u.on('message', (m, r) => u.send('mine ' + m, r.port, r.address)); u.bind(7000, () => console.log('bound'))"],
      { stdio: ['ignore', 'pipe', 'inherit'] });
      spawned.push(echo);
      await new Promise<void>((resolve, reject) => {
        echo.stdout!.once('data', () => resolve());
        echo.once('exit', (code) => reject(new Error(`the UDP echo in the own netns exited ${code}`)));
      });
      const [, , victimUdp] = held();
      try {
        expect(await udpAsk(mine.gateway, port, 1500), 'before the mapping').to.equal('timeout');
        expect(gate(['ports', 'mine', own, `${mine.portStart}:80/tcp`, `${port}:7000/udp`], hostile), 'ports with a UDP mapping').to.deep.equal({ code: 0, stdout: '', stderr: '' });
        expect(await udpAsk(mine.gateway, port), 'the own container through the UDP mapping').to.equal('mine hello');
        expect(await viaMapping(), 'the TCP mapping beside it').to.equal('mine\n');
        expect(await udpAsk(victimUdp!.host, victimUdp!.port), "the victim's UDP service in this port block").to.equal('victim\n');
        expect(gate(['ports', 'mine', own, `${mine.portStart}:80/tcp`]), 'ports without it').to.deep.equal({ code: 0, stdout: '', stderr: '' });
        expect(await udpAsk(mine.gateway, port, 1500), 'after the mapping is gone').to.equal('timeout');
        expect(await viaMapping(), 'the TCP mapping stays').to.equal('mine\n');
        expect(await markers(), 'planted programs that ran').to.deep.equal([]);
      } finally {
        echo.kill('SIGKILL');
      }
    });

    it('finding 2: setup reserved every port block (ip_local_reserved_ports)', function () {
      const reserved = readFileSync('/proc/sys/net/ipv4/ip_local_reserved_ports', 'utf8').trim().split(',').map((r) => r.split('-').map(Number));
      for (const n of [mine, theirs]) {
        expect(reserved.some(([a, b]) => a! <= n.portStart && n.portEnd <= (b ?? a)!), `${n.portStart}-${n.portEnd} in ${JSON.stringify(reserved)}`).to.equal(true);
      }
    });

    it('finding 3: interval timers armed before the exec cannot end the gate half-way (SIGALRM, SIGVTALRM, SIGPROF)', async function () {
      this.timeout(120_000);
      // A ports call takes tens of ms (a portmap DEL and ADD), so the old gate died half-way
      // at these. A timer can still fire before main() when exec is slow (a loaded machine):
      // then the gate died before it did anything, and that delay is tried again.
      for (const us of [25_000, 35_000, 50_000, 70_000, 100_000, 140_000]) {
        let r = spawnSync(helper, [String(us), GATE, 'ports', 'mine', own, `${mine.portStart}:80/tcp`], { env: {}, encoding: 'utf8', timeout: 90_000 });
        for (let retry = 0; retry < 3 && r.signal !== null; retry++) {
          r = spawnSync(helper, [String(us), GATE, 'ports', 'mine', own, `${mine.portStart}:80/tcp`], { env: {}, encoding: 'utf8', timeout: 90_000 });
        }
        expect({ us, status: r.status, signal: r.signal, stderr: r.stderr }).to.deep.equal({ us, status: 0, signal: null, stderr: '' });
        expect(await viaMapping(), `the mapping after a timer of ${us} us`).to.equal('mine\n');
      }
      expect(await viaMapping(), 'the mapping after the timed calls').to.equal('mine\n');
    });

    it('finding 4: del removes the host veth even when the container renamed its eth0', async function () {
      const pid = await container();
      const veths = (): string[] => world().mine.filter((l) => l.endsWith(`master=${mine.bridge}`));
      const before = veths();
      expect(gate(['add', 'renamed', pid]).code, 'add').to.equal(0);
      expect(veths().length, 'one more veth').to.equal(before.length + 1);
      const ns = ['--preserve-credentials', '-t', pid, '-U', '-n'];
      execFileSync('nsenter', [...ns, 'ip', 'link', 'set', 'eth0', 'down']);
      execFileSync('nsenter', [...ns, 'ip', 'link', 'set', 'eth0', 'name', 'eth9']);
      expect(gate(['del', 'renamed', pid]), 'del').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(veths(), 'the host veth is gone').to.deep.equal(before);
      expect(interfacesOf(pid), 'and its renamed end').to.not.include('eth9');
    });

    it("finding 5: a container cannot send from another user's container address", async function () {
      const [spoofed] = victimAddresses;
      const ownIp = addressesOf(own)[0]!;
      const port = mine.portStart + 7;
      const got: string[] = [];
      const listener = dgram.createSocket('udp4');
      listener.on('message', (m) => got.push(m.toString()));
      await new Promise<void>((resolve) => listener.bind(port, mine.gateway, () => resolve()));
      const ns = ['--preserve-credentials', '-t', own, '-U', '-n'];
      const send = (from: string): void => {
        execFileSync('nsenter', [...ns, process.execPath, '-e',
          `const s = require('dgram').createSocket('udp4'); s.bind({ address: '${from}' }, () => s.send('from ${from}', ${port}, '${mine.gateway}', () => s.close()))`]);
      };
      try {
        execFileSync('nsenter', [...ns, 'ip', 'addr', 'add', `${spoofed}/32`, 'dev', 'eth0']);
        send(spoofed!);
        send(ownIp);
        await new Promise((r) => setTimeout(r, 1500));
      } finally {
        spawnSync('nsenter', [...ns, 'ip', 'addr', 'del', `${spoofed}/32`, 'dev', 'eth0']);
        listener.close();
      }
      expect(got, 'what the host listener saw').to.deep.equal([`from ${ownIp}`]);
    });

    it("finding 5, per veth: a container cannot send from its neighbour's address (another container of the same user, same subnet)", async function () {
      // The bridge's subnet rule cannot tell two containers of one user apart; the host veth
      // can: gdn setup's nftables bridge table drops IPv4 and ARP whose sender is not the
      // veth's own address (the gate lists each veth and its addresses at add, and unlists them at del).
      const twin = await container();
      const added = gate(['add', 'twin', twin]);
      expect(added.code, `add twin: ${added.stderr}`).to.equal(0);
      const twinIp = addressesOf(twin)[0]!;
      const ownIp = addressesOf(own)[0]!;
      const port = mine.portStart + 8;
      const got: string[] = [];
      const listener = dgram.createSocket('udp4');
      listener.on('message', (m) => got.push(m.toString()));
      await new Promise<void>((resolve) => listener.bind(port, mine.gateway, () => resolve()));
      const send = (pid: string, from: string): void => {
        execFileSync('nsenter', ['--preserve-credentials', '-t', pid, '-U', '-n', process.execPath, '-e',
          `const s = require('dgram').createSocket('udp4'); s.bind({ address: '${from}' }, () => s.send('from ${from} by ${pid === own ? 'own' : 'twin'}', ${port}, '${mine.gateway}', () => s.close()))`]);
      };
      const ns = ['--preserve-credentials', '-t', own, '-U', '-n'];
      try {
        execFileSync('nsenter', [...ns, 'ip', 'addr', 'add', `${twinIp}/32`, 'dev', 'eth0']);
        send(own, twinIp);
        send(own, ownIp);
        send(twin, twinIp);
        await new Promise((r) => setTimeout(r, 1500));
      } finally {
        spawnSync('nsenter', [...ns, 'ip', 'addr', 'del', `${twinIp}/32`, 'dev', 'eth0']);
        listener.close();
        expect(gate(['del', 'twin', twin]), 'del twin').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      }
      expect(got.sort(), 'what the host listener saw').to.deep.equal([`from ${ownIp} by own`, `from ${twinIp} by twin`].sort());
    });

    it("finding 5, per veth (review): VLAN-0 tags, a neighbour's MAC and the bridge's link-local group address carry no spoofed frame", async function () {
      // A security review of the first per-veth guard got spoofed IPv4 and ARP through it: under one
      // or two VLAN-0 tags (the rules read the tag as the frame's type), with the container's own
      // address but its neighbour's MAC (the bridge learnt the neighbour on the wrong port), and to
      // 01:80:c2:00:00:0e, which the bridge hands to the host as received on the veth itself.
      const src = join(work, 'frame.c');
      const frame = join(work, 'frame');
      await writeFile(src, FRAME_C);
      execFileSync('gcc', ['-O2', '-o', frame, src], { stdio: 'pipe' });
      const twin = await container();
      const added = gate(['add', 'twin', twin]);
      expect(added.code, `add twin: ${added.stderr}`).to.equal(0);
      /** The host end of a container's eth0: its peer's index (eth0@ifN), named on the host. */
      const hostVethOf = (pid: string): string => {
        const out = execFileSync('nsenter', ['--preserve-credentials', '-t', pid, '-U', '-n', 'ip', '-o', 'link', 'show', 'eth0'], { encoding: 'utf8' });
        const index = /eth0@if(\d+)/.exec(out)![1]!;
        const host = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).split('\n').find((l) => l.startsWith(`${index}: `))!;
        return /^\d+: ([^@:]+)/.exec(host)![1]!;
      };
      const linkMac = (pid: string): string => {
        const out = execFileSync('nsenter', ['--preserve-credentials', '-t', pid, '-U', '-n', 'ip', '-o', 'link', 'show', 'eth0'], { encoding: 'utf8' });
        return /link\/ether ([0-9a-f:]{17})/.exec(out)![1]!;
      };
      const twinIp = addressesOf(twin)[0]!;
      const ownIp = addressesOf(own)[0]!;
      const ownMac = linkMac(own);
      const twinMac = linkMac(twin);
      const gwMac = readFileSync(`/sys/class/net/${mine.bridge}/address`, 'utf8').trim();
      const port = mine.portStart + 9;
      const got: string[] = [];
      const listener = dgram.createSocket('udp4');
      listener.on('message', (m) => got.push(m.toString()));
      await new Promise<void>((resolve) => listener.bind(port, mine.gateway, () => resolve()));
      const send = (dst: string, srcMac: string, tags: string, kind: string, from: string, to: string, what: string): void => {
        execFileSync('nsenter', ['--preserve-credentials', '-t', own, '-U', '-n', frame, 'eth0', dst, srcMac, tags, kind, from, to, String(port), what]);
      };
      try {
        send(gwMac, ownMac, '-', 'ip', ownIp, mine.gateway, 'control: own MAC and address');
        send(gwMac, ownMac, '0', 'ip', twinIp, mine.gateway, 'one VLAN-0 tag');
        send(gwMac, ownMac, '0,0', 'ip', twinIp, mine.gateway, 'two VLAN-0 tags');
        send(gwMac, ownMac, '0,0', 'ip', '8.8.8.8', mine.gateway, 'two VLAN-0 tags, a foreign source');
        send(gwMac, twinMac, '-', 'ip', ownIp, mine.gateway, "own address, the twin's MAC");
        send('01:80:c2:00:00:0e', ownMac, '-', 'ip', twinIp, mine.gateway, 'link-local group, the twin address');
        send('01:80:c2:00:00:0e', ownMac, '-', 'ip', '8.8.8.8', mine.gateway, 'link-local group, a foreign source');
        // ARP: "the twin's address is at my MAC", plain and under a VLAN-0 tag
        send(gwMac, ownMac, '-', 'arp', twinIp, mine.gateway, 'x');
        send(gwMac, ownMac, '0', 'arp', twinIp, mine.gateway, 'x');
        await new Promise((r) => setTimeout(r, 1500));
      } finally {
        listener.close();
      }
      const neigh = execFileSync('ip', ['neigh', 'show', twinIp, 'dev', mine.bridge], { encoding: 'utf8' });
      const fdb = execFileSync('bridge', ['fdb', 'show', 'br', mine.bridge], { encoding: 'utf8' });
      expect(gate(['del', 'twin', twin]), 'del twin').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(got, 'what the host listener saw').to.deep.equal(['control: own MAC and address']);
      expect(neigh, "the host's entry for the twin").not.to.include(ownMac);
      const learnt = fdb.split('\n').filter((l) => l.startsWith(`${twinMac} `));
      const ownVeth = hostVethOf(own);
      expect(learnt.filter((l) => l.includes(`dev ${ownVeth} `)), "the bridge learnt the twin's MAC on own's port").to.deep.equal([]);
    });

    it('finding 6: forged rtnetlink answers from root of the own user namespace are ignored; the gate finishes correctly', async function () {
      this.timeout(180_000);
      const src = join(work, 'forge.c');
      const forge = join(work, 'forge');
      await writeFile(src, FORGE_C);
      execFileSync('gcc', ['-O2', '-o', forge, src], { stdio: 'pipe' });
      const pid = await container();
      const veths = (): string[] => world().mine.filter((l) => l.endsWith(`master=${mine.bridge}`));
      const before = veths();
      // "Plausible": every sequence number the gate uses, with "success" (error 0). The old
      // gate took the first answer with its sequence number from anyone: a forged ack to its
      // RTM_GETLINK of eth0 read as "the namespace already has an eth0" and add was refused.
      const forger = spawn('nsenter', ['--preserve-credentials', '-t', pid, '-U', '-n', forge, '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
      spawned.push(forger);
      let said = '';
      forger.stdout!.setEncoding('utf8').on('data', (d: string) => (said += d));
      for (let i = 0; i < 100 && !said.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(said, 'the forger runs').to.include('ready');
      const outcomes: string[] = [];
      try {
        for (let i = 0; i < 15; i++) {
          const started = Date.now();
          const r = gate(['add', 'forged', pid]);
          const took = Date.now() - started;
          // the gate's netlink waits are bounded (5 s each): never held for ever
          expect(took, `add ${i} took`).to.be.below(60_000);
          outcomes.push(r.code === 0 ? 'added' : `add: ${r.code} ${r.stderr.trim()}`);
          if (r.code !== 0) continue;
          const ip = (JSON.parse(r.stdout) as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]!;
          expect(inSubnet(ip, mine.subnet), `add ${i}: an address of the own subnet`).to.equal(true);
          expect(interfacesOf(pid), `add ${i}: eth0`).to.include('eth0');
          const d = gate(['del', 'forged', pid]);
          outcomes.push(d.code === 0 ? 'deleted' : `del: ${d.code} ${d.stderr.trim()}`);
          expect(interfacesOf(pid), `del ${i}: no eth0`).to.not.include('eth0');
        }
      } finally {
        // 'close', not 'exit': its last words may still be in the pipe when it exits
        const closed = new Promise((r) => forger.on('close', r));
        forger.kill('SIGTERM');
        await closed;
        gate(['del', 'forged', pid]);
      }
      const reached = /reached (\d+) delivered (\d+)/.exec(said);
      expect(reached, `the forger's report: ${said}`).to.not.equal(null);
      // the attack did land: forged answers sat in the gate's own netlink sockets
      expect(Number(reached![1]), 'sockets of the gate the forger reached').to.be.above(0);
      expect(outcomes, 'every add and del did its work despite the forged answers').to.deep.equal(Array(15).fill(['added', 'deleted']).flat());
      // The CNI bridge plugin (not the gate) takes any answer to its own netlink requests:
      // flooded like this, it has once in several runs made a second veth pair whose peer
      // stays in the namespace. Sending to another netlink socket needs CAP_NET_ADMIN over
      // the namespace, which a container's root never has, so only a user's own bare
      // namespace can do it, to itself; and such a veth dies with that namespace.
      const left = veths();
      if (JSON.stringify(left) !== JSON.stringify(before)) {
        const inside = spawnSync('nsenter', ['--preserve-credentials', '-t', pid, '-U', '-n', 'ip', '-o', '-d', 'link'], { encoding: 'utf8' }).stdout;
        console.log(`      (a veth the bridge plugin left while the namespace lives: ${JSON.stringify(left)}; inside: ${inside.trim()})`);
      }
      process.kill(Number(pid), 'SIGKILL');
      let now = veths();
      for (let i = 0; i < 100 && JSON.stringify(now) !== JSON.stringify(before); i++) {
        await new Promise((r) => setTimeout(r, 100));
        now = veths();
      }
      expect(now, 'no veth of the forged container outlives its namespace').to.deep.equal(before);
    });

    it('finding 6: a caller that never reads stdout cannot hold the gate (a full pipe)', async function () {
      this.timeout(60_000);
      const pid = await container();
      const veths = (): string[] => world().mine.filter((l) => l.endsWith(`master=${mine.bridge}`));
      const before = veths();
      const started = Date.now();
      // The pipe to a reader that never reads is filled (64 KiB) before the gate writes its result.
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn('bash', ['-c', 'exec 3> >(exec sleep 40); head -c 65536 /dev/zero >&3; exec "$0" add full "$1" >&3', GATE, pid], { env: {}, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        child.on('exit', (code) => resolve({ code, stderr }));
      });
      const took = Date.now() - started;
      expect(took, 'the gate gave up on its output').to.be.below(20_000);
      expect(r).to.deep.equal({ code: 1, stderr: 'cni-gate: cannot write the result to stdout (rolled back)\n' });
      expect(interfacesOf(pid), 'rolled back: no eth0').to.not.include('eth0');
      expect(veths(), 'no host veth left on the own bridge').to.deep.equal(before);
      expect(gate(['check', 'full', pid]).stderr, 'and no record').to.match(/container full has no network/);
    });
  });

  describe('afterwards', function () {
    it('del removes the own container: no eth0, no veth, no mapping; a second del is fine', async function () {
      expect(gate(['del', 'mine', own], hostile), 'del').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(interfacesOf(own)).to.not.include('eth0');
      expect(world().mine.filter((l) => l.endsWith(`master=${mine.bridge}`)), 'veths on the own bridge').to.deep.equal([]);
      expect(await viaMapping(), 'the mapping after del').to.match(/ECONNREFUSED|^$/);
      expect(gate(['del', 'mine', own]), 'del again').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(gate(['del', 'mine']), 'del without a pid').to.deep.equal({ code: 0, stdout: '', stderr: '' });
      expect(await markers(), 'planted programs that ran').to.deep.equal([]);
    });

    it('the victim and the rest of the host are as they were', function () {
      const now = world();
      expect(now.victim, "the victim's namespace").to.deep.equal(start.victim);
      expect(addressesOf(victim.pid)).to.deep.equal(victimAddresses);
      expect(now.host, 'links and addresses').to.deep.equal(start.host);
      expect(now.routes, 'routes').to.deep.equal(start.routes);
    });

    it('root created no file anywhere the intruder can write', async function () {
      const found: string[] = [];
      const walk = async (dir: string, depth: number): Promise<void> => {
        let names: string[];
        try {
          names = await readdir(dir);
        } catch {
          return; // not ours to read
        }
        for (const name of names) {
          const p = join(dir, name);
          const st = await lstat(p).catch(() => undefined);
          if (!st) continue;
          if (st.uid === 0 && st.birthtimeMs >= bornAfter) found.push(`${p} (born ${new Date(st.birthtimeMs).toISOString()})`);
          if (st.isDirectory() && depth < 8) await walk(p, depth + 1);
        }
      };
      const roots = ['/tmp', '/var/tmp', '/dev/shm', process.env.HOME, process.env.XDG_RUNTIME_DIR].filter((d): d is string => !!d);
      for (const d of roots) await walk(d, 0);
      expect(found).to.deep.equal([]);
    });
  });
});
