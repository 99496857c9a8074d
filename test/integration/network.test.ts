// Container networking (issue #4) against the real daemon, as the ordinary user
// `gdn setup` gave a bridge, a /24 and a host-port range: addresses, container to
// container, deny-by-default egress opened by net-out (gaol and the API), net-in
// from the host, what a container's root cannot undo or get around (packet sockets),
// what destroy leaves (nothing, and its neighbours still reach the host), bad input,
// a daemon restart, and the seed walkthrough's networking steps.
//
// All traffic stays on this machine: servers on the host listen on the bridge's own
// address (the gateway), never on 127.0.0.1 (route_localnet is off on purpose).
// Rules and leases live where this user cannot read them (root's nat table, the
// gate's state): scripts/test compares iptables-save and the lease dirs from root
// around the suite; here the tests check what the user can see and what follows
// from a leak (an address or host port that cannot be handed out again).

import { expect } from 'chai';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { GardenClient } from '../../src/client/client.js';
import type { ContainerSpec, NetOutRule } from '../../src/client/types.js';
import { Protocol } from '../../src/client/types.js';
import { DEFAULT_GATE, inSubnet, intToIp, ipToInt, loadUserNetwork } from '../../plugins/networker/config.js';
import { gateId, hostResolvers } from '../../plugins/networker/networker.js';
import {
  cleanupServer, dumpLogsIfFailed, eventually, GAOL, gardenError, leftovers, PATHS, rawRequest, REPO, restartServer,
  runAndWait, runtimeDir, type Server, sh, sleep, spec, startServer, runGaol, teardownFinished, teardownsFinished } from './harness.js';

const uid = process.getuid?.() ?? 0;
/** What `gdn setup` gave this user (/etc/trellis/net/<uid>.conf). */
const NET = loadUserNetwork(uid);
const GW = NET.gateway;
const REPLY = 'pong';
/** The built-in networker's per-container state (this user's; one JSON per container). */
const NETWORKER_STATE = join(PATHS.runtimeDir, 'network');
const NETWORKER_MAIN = join(REPO, 'dist/plugins/networker/main.js');

// ---------------------------------------------------------------------------
// The host side

interface HostTcp {
  port: number;
  /** remote address:port of every connection, in order. */
  peers: string[];
  close(): Promise<void>;
}

/** A TCP server on the gateway address that answers every connection with REPLY. */
async function hostTcp(): Promise<HostTcp> {
  const peers: string[] = [];
  const open = new Set<net.Socket>();
  const srv = net.createServer((c) => {
    peers.push(`${c.remoteAddress}:${c.remotePort}`);
    open.add(c);
    c.on('close', () => open.delete(c));
    c.on('error', () => {});
    c.end(`${REPLY}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, GW, resolve);
  });
  return {
    port: (srv.address() as AddressInfo).port,
    peers,
    // A client whose container was destroyed mid-connection never sends its FIN: do not wait for it.
    close: () => new Promise((resolve) => {
      srv.close(() => resolve());
      for (const c of open) c.destroy();
    }),
  };
}

interface HostUdp {
  port: number;
  /** source address of every datagram, with its payload. */
  got: string[];
  close(): void;
}

/** A UDP socket on the gateway; answers every datagram with a TFTP error packet, so busybox tftp returns at once. */
async function hostUdp(): Promise<HostUdp> {
  const got: string[] = [];
  const sock = dgram.createSocket('udp4');
  sock.on('message', (m, r) => {
    got.push(`${r.address} ${m.toString('latin1')}`);
    sock.send(Buffer.from(`\x00\x05\x00\x01${REPLY}\x00`, 'latin1'), r.port, r.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, GW, resolve));
  return { port: sock.address().port, got, close: () => sock.close() };
}

/** One datagram from a fresh host socket: the first answer within 2 s, or 'timeout'. */
function hostUdpAsk(ip: string, port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const t = setTimeout(() => {
      s.close();
      resolve('timeout');
    }, 2000);
    s.on('message', (m) => {
      clearTimeout(t);
      s.close();
      resolve(m.toString());
    });
    s.send(text, port, ip);
  });
}

/** Connects from the host to ip:port and returns everything the other side wrote before closing. */
function hostConnect(ip: string, port: number, ms = 5000): Promise<{ text: string; local: string }> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, ip);
    let text = '';
    let local = '';
    const t = setTimeout(() => {
      c.destroy();
      reject(new Error(`no complete answer from ${ip}:${port} within ${ms} ms (got ${JSON.stringify(text)})`));
    }, ms);
    c.setEncoding('utf8');
    c.on('connect', () => (local = `${c.localAddress}:${c.localPort}`));
    c.on('data', (d: string) => (text += d));
    c.on('end', () => {
      clearTimeout(t);
      resolve({ text, local });
    });
    c.on('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

/** What a real curl reads from url (HTTP/0.9: the container's server answers with raw text). */
function curl(url: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '-g', '--http0.9', '--max-time', '5', url], { encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const hasIPv6Loopback = (): boolean => readFileSync('/proc/net/if_inet6', 'utf8').split('\n').some((l) => l.startsWith('00000000000000000000000000000001'));

interface Link {
  ifindex: number;
  ifname: string;
  master?: string;
  operstate?: string;
  address?: string;
}

function ipJson<T>(args: string[]): T {
  return JSON.parse(execFileSync('ip', ['-j', ...args], { encoding: 'utf8' })) as T;
}

const links = (): Link[] => ipJson<Link[]>(['link']);

/** The host ends of container veths on this user's bridge, by ifindex. */
function bridgeVeths(): Map<number, string> {
  return new Map(links().filter((l) => l.master === NET.bridge).map((l) => [l.ifindex, l.ifname]));
}

/** Links and routes (both families, every table) as comparable lines. */
function hostState(): { links: string[]; routes: string[] } {
  return {
    links: links().map((l) => `${l.ifindex} ${l.ifname} master=${l.master ?? '-'}`).sort(),
    // Without `flags`: `linkdown` follows the bridge's carrier (any port at all), which the
    // kernel updates up to a second late; it is not something a container leaves behind.
    routes: [
      ...ipJson<{ flags?: unknown }[]>(['route', 'show', 'table', 'all']),
      ...ipJson<{ flags?: unknown }[]>(['-6', 'route', 'show', 'table', 'all']),
    ].map(({ flags: _flags, ...r }) => JSON.stringify(r)).sort(),
  };
}

// ---------------------------------------------------------------------------
// The container side

/** Garden NetOutRule: tcp or udp to exactly ip:port. */
const rule = (protocol: Protocol, ip: string, port: number): NetOutRule => ({
  protocol,
  networks: [{ start: ip, end: ip }],
  ports: [{ start: port, end: port }],
});

/** 'open' (the host's REPLY came back), 'refused' (the connect was rejected), or what happened instead. */
async function tcpFrom(client: GardenClient, handle: string, ip: string, port: number): Promise<string> {
  const r = await runAndWait(client, handle, sh(`echo hi | nc -w 3 ${ip} ${port}`));
  if (r.code === 0 && r.stdout === `${REPLY}\n`) return 'open';
  if (r.code !== 0 && r.stdout === '' && /Connection refused/.test(r.stderr)) return 'refused';
  return `unexpected: exit ${r.code}, stdout ${JSON.stringify(r.stdout)}, stderr ${JSON.stringify(r.stderr)}`;
}

/** One UDP datagram with busybox tftp: 'open' when the host's reply came back, 'refused' when sending was rejected. */
async function udpFrom(client: GardenClient, handle: string, ip: string, port: number): Promise<string> {
  const r = await runAndWait(client, handle, sh(`tftp -g -r probe -l /dev/null ${ip} ${port}`));
  if (r.stderr.includes(`server error: (1) ${REPLY}`)) return 'open';
  if (r.code !== 0 && /sendto: Operation not permitted/.test(r.stderr)) return 'refused';
  return `unexpected: exit ${r.code}, stdout ${JSON.stringify(r.stdout)}, stderr ${JSON.stringify(r.stderr)}`;
}

/**
 * A detached busybox server on `port` that answers each connection with `netstat -tn`
 * (so the client sees the peer address the container saw), then waits until it listens.
 */
async function peerServer(client: GardenClient, handle: string, port: number): Promise<void> {
  const script = `printf '#!/bin/sh\\nnetstat -tn\\n' > /tmp/peer-${port}.sh && chmod +x /tmp/peer-${port}.sh && exec nc -ll -p ${port} -e /tmp/peer-${port}.sh`;
  const p = await client.run(handle, sh(script), {});
  p.detach();
  const ready = await runAndWait(client, handle, sh(`for i in $(seq 100); do netstat -tln | grep -q ':${port} ' && exit 0; sleep 0.1; done; exit 1`));
  expect(ready.code, `nc listening on ${port} in ${handle}`).to.equal(0);
}

/** The host ifindex of a container's veth peer (`eth0@if<N>`). */
async function vethPeer(client: GardenClient, handle: string): Promise<number> {
  const r = await runAndWait(client, handle, sh('ip link show eth0'));
  const m = /eth0@if(\d+):/.exec(r.stdout);
  if (!m) throw new Error(`no eth0@ifN in ${JSON.stringify(r.stdout)}`);
  return Number(m[1]);
}



const isIPv4 = (s: string | undefined): boolean => s !== undefined && net.isIPv4(s);

/** A host address of the user's subnet that no container of `client` holds: the highest one. */
async function freeAddress(client: GardenClient): Promise<string> {
  const used = new Set(Object.values(await client.bulkInfo(await client.list())).map((e) => e.Info.ContainerIP));
  const base = ipToInt(NET.subnet.split('/')[0] as string);
  const size = 2 ** (32 - Number(NET.subnet.split('/')[1]));
  for (let n = base + size - 2; n > base + 1; n--) {
    const ip = intToIp(n);
    if (ip !== GW && !used.has(ip)) return ip;
  }
  throw new Error('no free address in the subnet');
}

/** A host port of the user's range that no container of `client` maps: the highest one. */
async function freeHostPort(client: GardenClient): Promise<number> {
  const used = new Set(Object.values(await client.bulkInfo(await client.list())).flatMap((e) => (e.Info.MappedPorts ?? []).map((m) => m.HostPort)));
  for (let p = NET.portEnd; p >= NET.portStart; p--) if (!used.has(p)) return p;
  throw new Error('no free host port');
}

describe('network (integration, issue #4)', function () {
  let server: Server;
  const hostServers: HostTcp[] = [];
  let a: HostTcp;
  let b: HostTcp;

  before(async function () {
    server = await startServer({ maxContainers: 250 });
    a = await hostTcp();
    b = await hostTcp();
    hostServers.push(a, b);
  });

  after(async function () {
    await cleanupServer(server);
    for (const s of hostServers) await s.close();
  });

  afterEach(async function () {
    dumpLogsIfFailed(this, server);
    // Issue #10: teardowns run on after destroy replied; the next test's "as before" starts here.
    expect(await teardownsFinished(server.depot), 'teardowns finished').to.equal(true);
  });

  it('gives each container an address on the bridge, a default route via the gateway, /etc/hosts and /etc/resolv.conf', async function () {
    const h = await server.client.create(spec({ handle: 'net-addr' }));
    const info = await server.client.info(h);
    expect(inSubnet(info.ContainerIP, NET.subnet), `${info.ContainerIP} in ${NET.subnet}`).to.equal(true);
    expect(info.ContainerIP).to.not.equal(GW);
    expect(info.HostIP).to.equal(GW);
    const prefix = NET.subnet.split('/')[1];
    const r = await runAndWait(server.client, h, sh('ip addr show eth0; echo ---; ip route; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf'));
    const [addr, routes, hosts, resolv] = r.stdout.split('---\n');
    expect(addr).to.include(`inet ${info.ContainerIP}/${prefix} `);
    expect(routes).to.match(new RegExp(`^default via ${GW.replace(/\./g, '\\.')} dev eth0`, 'm'));
    expect(hosts).to.include(`${info.ContainerIP} ${h}\n`);
    // The host's resolvers but loopback ones (DNS to them is the one egress open by default).
    const expected = hostResolvers(readFileSync('/etc/resolv.conf', 'utf8')).map((s) => `nameserver ${s}\n`).join('');
    expect(resolv).to.equal(expected);
    expect([...bridgeVeths().keys()], 'the veth peer is on the user bridge').to.include(await vethPeer(server.client, h));
    await server.client.destroy(h);
  });

  it('two containers reach each other by IP: ping, and a TCP round trip with busybox nc', async function () {
    const c1 = await server.client.create(spec({ handle: 'net-peer-1' }));
    const c2 = await server.client.create(spec({ handle: 'net-peer-2' }));
    try {
      const ip1 = (await server.client.info(c1)).ContainerIP;
      const ip2 = (await server.client.info(c2)).ContainerIP;
      const ping = await runAndWait(server.client, c1, sh(`ping -c 1 -W 3 ${ip2}`));
      expect(ping.code, ping.stdout + ping.stderr).to.equal(0);
      expect(ping.stdout).to.include(`64 bytes from ${ip2}`);
      // c2 answers one line with what it read and the peer it saw.
      const serve = await server.client.run(c2, sh(
        "printf '#!/bin/sh\\nread l; echo \"echo:$l\"; netstat -tn | grep :9000\\n' > /tmp/echo.sh && chmod +x /tmp/echo.sh && exec nc -ll -p 9000 -e /tmp/echo.sh",
      ), {});
      serve.detach();
      const up = await runAndWait(server.client, c2, sh("for i in $(seq 100); do netstat -tln | grep -q ':9000 ' && exit 0; sleep 0.1; done; exit 1"));
      expect(up.code).to.equal(0);
      const rt = await runAndWait(server.client, c1, sh(`echo hello | nc -w 3 ${ip2} 9000`));
      expect(rt.code, rt.stderr).to.equal(0);
      expect(rt.stdout).to.match(new RegExp(`^echo:hello\\n.*(::ffff:)?${ip2.replace(/\./g, '\\.')}:9000 +(::ffff:)?${ip1.replace(/\./g, '\\.')}:\\d+ +(ESTABLISHED|CLOSE_WAIT)`, 's'));
    } finally {
      await server.client.destroy(c1);
      await server.client.destroy(c2);
    }
  });

  it('a host server on the gateway is closed until gaol net-out opens exactly that address and port; others stay closed', async function () {
    const c1 = await server.client.create(spec({ handle: 'net-out-1' }));
    const c2 = await server.client.create(spec({ handle: 'net-out-2' }));
    try {
      const ip1 = (await server.client.info(c1)).ContainerIP;
      expect(await tcpFrom(server.client, c1, GW, a.port), 'before any rule').to.equal('refused');
      const out = await runGaol(server.socketPath, [
        'net-out', '--ip-start', GW, '--ip-end', GW, '--port-start', String(a.port), '--port-end', String(a.port), '-p', 'tcp', c1,
      ]);
      expect(out).to.deep.equal({ code: 0, stdout: 'applied\n', stderr: '' });
      const seen = a.peers.length;
      expect(await tcpFrom(server.client, c1, GW, a.port), 'the opened address and port').to.equal('open');
      expect(a.peers.slice(seen).map((p) => p.split(':')[0]), 'the host saw the container itself').to.deep.equal([ip1]);
      expect(await tcpFrom(server.client, c1, GW, b.port), 'another port on the host').to.equal('refused');
      expect(await tcpFrom(server.client, c2, GW, a.port), 'another container without the rule').to.equal('refused');
      expect(await udpFrom(server.client, c1, GW, a.port), 'udp to the tcp-opened port').to.equal('refused');
    } finally {
      await server.client.destroy(c1);
      await server.client.destroy(c2);
    }
  });

  it('bulk net-out opens a tcp and a udp rule at once; other udp ports stay closed', async function () {
    const u = await hostUdp();
    const u2 = await hostUdp();
    const h = await server.client.create(spec({ handle: 'net-bulk' }));
    try {
      expect(await udpFrom(server.client, h, GW, u.port), 'udp before any rule').to.equal('refused');
      expect(u.got).to.deep.equal([]);
      await server.client.bulkNetOut(h, [rule(Protocol.UDP, GW, u.port), rule(Protocol.TCP, GW, a.port)]);
      expect(await udpFrom(server.client, h, GW, u.port)).to.equal('open');
      expect(u.got.length, 'datagrams the host got').to.equal(1);
      expect(u.got[0]).to.match(new RegExp(`^${(await server.client.info(h)).ContainerIP.replace(/\./g, '\\.')} \\x00\\x01probe\\x00`));
      expect(await tcpFrom(server.client, h, GW, a.port)).to.equal('open');
      expect(await udpFrom(server.client, h, GW, u2.port), 'another udp port').to.equal('refused');
      expect(u2.got).to.deep.equal([]);
    } finally {
      u.close();
      u2.close();
      await server.client.destroy(h);
    }
  });

  it('net-in: gaol net-in -p 8080 prints a host port; the host reaches the container at gateway:port and the container sees the real peer', async function () {
    const h = await server.client.create(spec({ handle: 'net-in' }));
    try {
      await peerServer(server.client, h, 8080);
      const r = await runGaol(server.socketPath, ['net-in', '-p', '8080', h]);
      expect(r.code, r.stderr).to.equal(0);
      const m = /^[^:\s]+:(\d+)\n$/.exec(r.stdout);
      expect(m, `gaol net-in output ${JSON.stringify(r.stdout)}`).to.not.equal(null);
      const hostPort = Number(m![1]);
      expect(hostPort).to.be.within(NET.portStart, NET.portEnd);
      const got = await hostConnect(GW, hostPort);
      const ip = (await server.client.info(h)).ContainerIP;
      // netstat in the container lists the connection it is serving: its 8080, and this very
      // client's address and port (the host's bridge address: nothing rewrote the source).
      const [localIp, localPort] = got.local.split(':');
      expect(localIp).to.equal(GW);
      expect(got.text).to.match(new RegExp(`(::ffff:)?${ip.replace(/\./g, '\\.')}:8080 +(::ffff:)?${GW.replace(/\./g, '\\.')}:${localPort} +ESTABLISHED`));
      expect((await server.client.info(h)).MappedPorts).to.deep.equal([{ HostPort: hostPort, ContainerPort: 8080 }]);
    } finally {
      await server.client.destroy(h);
    }
  });

  it('issue #12: net-in answers a real curl on 127.0.0.1:HOSTPORT and [::1]:HOSTPORT, with route_localnet off; destroy closes it', async function () {
    const h = await server.client.create(spec({ handle: 'net-in-loopback' }));
    let hostPort = 0;
    try {
      await peerServer(server.client, h, 8080);
      hostPort = (await server.client.netIn(h, 0, 8080)).host_port;
      const ip = (await server.client.info(h)).ContainerIP;
      const urls = [`http://127.0.0.1:${hostPort}/`, ...(hasIPv6Loopback() ? [`http://[::1]:${hostPort}/`] : [])];
      for (const url of urls) {
        const r = await curl(url);
        expect(r.code, `curl ${url}: ${r.stderr}`).to.equal(0);
        expect(r.stdout, `curl ${url}`).to.match(new RegExp(`${ip.replace(/\./g, '\\.')}:8080 .*ESTABLISHED`));
      }
      // The non-loopback path is still the kernel's: the container sees the real peer.
      const got = await hostConnect(GW, hostPort);
      expect(got.text).to.include(`${GW}:${got.local.split(':')[1]}`);
      expect(readFileSync(`/proc/sys/net/ipv4/conf/${NET.bridge}/route_localnet`, 'utf8').trim(), 'route_localnet').to.equal('0');
    } finally {
      await server.client.destroy(h);
    }
    expect(await teardownFinished(h, server.depot), 'teardown finished').to.equal(true);
    const after = await curl(`http://127.0.0.1:${hostPort}/`);
    expect(after.code, 'curl after destroy').to.not.equal(0);
    expect(after.stderr).to.match(/refused|Failed to connect/i);
  });

  it('issue #13: a net-in on a host port another service holds is refused with a Garden error; that service keeps working', async function () {
    const h = await server.client.create(spec({ handle: 'net-in-held' }));
    const port = await freeHostPort(server.client);
    const other = net.createServer((c) => c.end('other service\n'));
    await new Promise<void>((resolve, reject) => {
      other.once('error', reject);
      other.listen(port, GW, resolve);
    });
    try {
      const r = await rawRequest(server.socketPath, 'POST', `/containers/${h}/net/in`, JSON.stringify({ host_port: port, container_port: 8080 }));
      expect(r?.status).to.equal(500);
      expect(gardenError(r).Message).to.equal(`host port ${port}/tcp is in use on this host (another user's or the host's service holds it): not mapped`);
      expect((await server.client.info(h)).MappedPorts).to.deep.equal([]);
      expect((await hostConnect(GW, port)).text, 'the other service').to.equal('other service\n');
      // An automatic port skips it.
      const auto = await server.client.netIn(h, 0, 8080);
      expect(auto.host_port).to.not.equal(port);
    } finally {
      await new Promise((resolve) => other.close(resolve));
      await server.client.destroy(h);
    }
  });

  it('issue #13: a UDP mapping (the gate\'s own DNAT, not portmap\'s) delivers datagrams from the host and from another container, and stops with the mapping', async function () {
    // Garden's net-in is TCP only, so the gate is asked directly, as the networker would,
    // for the container gdn made. The gate installs the UDP DNAT itself (portmap's UDP ADD
    // flushed every UDP flow to that port on any address); root's leftovers check around
    // this suite proves the rule goes with the mapping.
    const work = await mkdtemp(join(runtimeDir(), 'net-udp-'));
    try {
      await writeFile(join(work, 'udpprobe.c'), UDPPROBE_C);
      execFileSync('gcc', ['-static', '-O2', '-o', join(work, 'udpprobe'), join(work, 'udpprobe.c')], { stdio: 'pipe' });
      const hostPort = await freeHostPort(server.client);
      const probe = [{ src_path: work, dst_path: '/opt/probe', mode: 0 as const, origin: 0 as const }];
      const target = await server.client.create(spec({ handle: 'net-udp-target', bind_mounts: probe }));
      const peer = await server.client.create(spec({ handle: 'net-udp-peer', bind_mounts: probe, netout_rules: [rule(Protocol.UDP, GW, hostPort)] }));
      try {
        const serving = await server.client.run(target, sh('exec /opt/probe/udpprobe serve 7000 > /tmp/udp.log'), {});
        serving.detach();
        const ready = await runAndWait(server.client, target, sh("for i in $(seq 100); do netstat -uln | grep -q ':7000 ' && exit 0; sleep 0.1; done; exit 1"));
        expect(ready.code, 'the probe serves :7000/udp in the target').to.equal(0);
        const { pid } = JSON.parse(readFileSync(join(NETWORKER_STATE, `${gateId(target)}.json`), 'utf8')) as { pid: number };
        const gate = (...args: string[]): { code: number | null; stderr: string } => {
          const r = spawnSync(DEFAULT_GATE, args, { env: {}, encoding: 'utf8' });
          return { code: r.status, stderr: r.stderr };
        };
        const targetIp = (await server.client.info(target)).ContainerIP;
        const peerIp = (await server.client.info(peer)).ContainerIP;
        const log = async (): Promise<string> => (await runAndWait(server.client, target, sh('cat /tmp/udp.log'))).stdout;
        // Before the mapping: nothing there (and nothing delivered).
        expect(await hostUdpAsk(GW, hostPort, 'early'), 'before the mapping').to.equal('timeout');
        expect(gate('ports', gateId(target), String(pid), `${hostPort}:7000/udp`), 'cni-gate ports').to.deep.equal({ code: 0, stderr: '' });
        // The host: its datagram arrives with its own source address, and the answer comes back from the mapped port.
        expect(await hostUdpAsk(GW, hostPort, 'from-host'), 'the host through the mapping').to.equal('echo:from-host');
        // Another container: through the gateway, DNATed on the bridge to its neighbour, which
        // sees the peer's own address. (The answer goes back across the bridge; it is un-NATed
        // only where bridged traffic passes netfilter, br_netfilter, as on these hosts: the
        // delivery is what this checks.)
        await runAndWait(server.client, peer, sh(`/opt/probe/udpprobe send ${GW} ${hostPort} from-peer`));
        expect(await log(), 'what the target received, from whom').to.equal(`${GW} from-host\n${peerIp} from-peer\n`);
        // Mapping gone: nothing gets through, from either side, and the target saw nothing more.
        expect(gate('ports', gateId(target), String(pid)), 'cni-gate ports (none)').to.deep.equal({ code: 0, stderr: '' });
        expect(await hostUdpAsk(GW, hostPort, 'late-host'), 'the host after the mapping is gone').to.equal('timeout');
        await runAndWait(server.client, peer, sh(`/opt/probe/udpprobe send ${GW} ${hostPort} late-peer`));
        expect(await log(), `what ${targetIp} received in all`).to.equal(`${GW} from-host\n${peerIp} from-peer\n`);
        // Mapped again, then the container destroyed: del takes the mapping with it (root's leftovers check).
        expect(gate('ports', gateId(target), String(pid), `${hostPort}:7000/udp`), 'cni-gate ports (again)').to.deep.equal({ code: 0, stderr: '' });
      } finally {
        await server.client.destroy(target);
        await server.client.destroy(peer);
      }
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it("issue #13: the owner's host shell reaches its container's unpublished port", async function () {
    const h = await server.client.create(spec({ handle: 'net-owner' }));
    try {
      await peerServer(server.client, h, 8080);
      const ip = (await server.client.info(h)).ContainerIP;
      expect((await hostConnect(ip, 8080)).text).to.include(`${ip}:8080`);
    } finally {
      await server.client.destroy(h);
    }
  });

  it('info and bulk_info report ContainerIP, HostIP, ExternalIP and MappedPorts', async function () {
    const h = await server.client.create(spec({ handle: 'net-info' }));
    try {
      const mapped = await server.client.netIn(h, 0, 8081);
      const info = await server.client.info(h);
      expect(isIPv4(info.ContainerIP), `ContainerIP ${info.ContainerIP}`).to.equal(true);
      expect(info.HostIP).to.equal(GW);
      // Garden sets garden.network.external-ip to gdn's external IP before `up` (spec/plugins.md §3.3);
      // without --external-ip that is the bridge address, where the host reaches mapped ports.
      expect(info.ExternalIP, 'ExternalIP').to.equal(GW);
      expect(info.MappedPorts).to.deep.equal([{ HostPort: mapped.host_port, ContainerPort: 8081 }]);
      expect(info.Properties).to.include({
        'garden.network.container-ip': info.ContainerIP,
        'garden.network.host-ip': GW,
        'garden.network.external-ip': GW,
      });
      const bulk = await server.client.bulkInfo([h]);
      const e = bulk[h]!.Info;
      expect({ ip: e.ContainerIP, host: e.HostIP, ext: e.ExternalIP, ports: e.MappedPorts }).to.deep.equal({
        ip: info.ContainerIP, host: GW, ext: info.ExternalIP, ports: info.MappedPorts,
      });
    } finally {
      await server.client.destroy(h);
    }
  });

  it('a create spec with netin and netout_rules applies both at create', async function () {
    const h = await server.client.create(spec({
      handle: 'net-create-rules',
      netin: [{ host_port: 0, container_port: 8080 }],
      netout_rules: [rule(Protocol.TCP, GW, a.port)],
    }));
    try {
      const info = await server.client.info(h);
      expect(info.MappedPorts?.length).to.equal(1);
      const { HostPort, ContainerPort } = info.MappedPorts![0]!;
      expect(ContainerPort).to.equal(8080);
      expect(HostPort).to.be.within(NET.portStart, NET.portEnd);
      await peerServer(server.client, h, 8080);
      expect((await hostConnect(GW, HostPort)).text).to.include(`${info.ContainerIP}:8080`);
      expect(await tcpFrom(server.client, h, GW, a.port)).to.equal('open');
      expect(await tcpFrom(server.client, h, GW, b.port)).to.equal('refused');
    } finally {
      await server.client.destroy(h);
    }
  });

  it("the container's root cannot undo its rules: no CAP_NET_ADMIN, no link, route or address changes, the host stays closed", async function () {
    const h = await server.client.create(spec({ handle: 'net-root' }));
    try {
      const cap = await runAndWait(server.client, h, sh('grep ^CapEff: /proc/self/status'));
      const capEff = BigInt(`0x${cap.stdout.split(/\s+/)[1]}`);
      expect(capEff & (1n << 12n), `CapEff ${cap.stdout.trim()} has CAP_NET_ADMIN`).to.equal(0n);
      const before = await runAndWait(server.client, h, sh('ip addr show eth0; ip route'));
      const ip = (await server.client.info(h)).ContainerIP;
      const other = intToIp(ipToInt(ip) === ipToInt(GW) + 1 ? ipToInt(ip) + 1 : ipToInt(ip) - 1);
      for (const cmd of [
        'ip link set eth0 down',
        'ip route del default',
        `ip addr add ${other}/24 dev eth0`,
        `ip route add ${GW}/32 dev eth0`,
        'ip link add dummy0 type dummy',
      ]) {
        const r = await runAndWait(server.client, h, sh(cmd));
        expect(r.code, cmd).to.not.equal(0);
        expect(r.stderr, cmd).to.include('Operation not permitted');
      }
      const sysctl = await runAndWait(server.client, h, sh('echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet'));
      expect(sysctl.code, 'writing /proc/sys/net').to.not.equal(0);
      const after = await runAndWait(server.client, h, sh('ip addr show eth0; ip route'));
      expect(after.stdout).to.equal(before.stdout);
      expect(await tcpFrom(server.client, h, GW, a.port)).to.equal('refused');
    } finally {
      await server.client.destroy(h);
    }
  });

  it("the container's root cannot get a datagram past its rules with a packet socket (CAP_NET_RAW, AF_PACKET)", async function () {
    // Rules in the container's own netns filter what its IP stack sends; a packet socket
    // (root holds CAP_NET_RAW, as in Garden) hands frames to eth0 below netfilter. The
    // probe crafts one UDP datagram to the host server on the gateway, once with the
    // container's address and once with a forged one.
    const work = await mkdtemp(join(runtimeDir(), 'net-raw-'));
    const u = await hostUdp();
    try {
      await writeFile(join(work, 'rawudp.c'), RAWUDP_C);
      execFileSync('gcc', ['-static', '-O2', '-o', join(work, 'rawudp'), join(work, 'rawudp.c')], { stdio: 'pipe' });
      const h = await server.client.create(spec({
        handle: 'net-raw',
        bind_mounts: [{ src_path: work, dst_path: '/opt/probe', mode: 0, origin: 0 }],
      }));
      try {
        const ip = (await server.client.info(h)).ContainerIP;
        // The probe runs in the container (its usage exit), so a silent host means the frames were stopped.
        expect((await runAndWait(server.client, h, sh('/opt/probe/rawudp'))).code, 'the probe runs').to.equal(2);
        expect(await udpFrom(server.client, h, GW, u.port), 'plain udp is closed').to.equal('refused');
        const bridgeMac = ipJson<{ address: string }[]>(['link', 'show', NET.bridge])[0]!.address;
        const forged = intToIp(ipToInt(GW) + 200 === ipToInt(ip) ? ipToInt(GW) + 201 : ipToInt(GW) + 200);
        const r = await runAndWait(server.client, h, sh(
          `/opt/probe/rawudp eth0 ${bridgeMac} ${ip} ${GW} ${u.port} own-address; /opt/probe/rawudp eth0 ${bridgeMac} ${forged} ${GW} ${u.port} forged-address`,
        ));
        await sleep(300);
        expect(u.got, `datagrams the host got (probe said ${JSON.stringify(r.stdout + r.stderr)})`).to.deep.equal([]);
      } finally {
        await server.client.destroy(h);
      }
    } finally {
      u.close();
      await rm(work, { recursive: true, force: true });
    }
  });

  it('destroying a container does not cut its neighbours off the host: the bridge keeps its MAC', async function () {
    // A Linux bridge without an address of its own takes the lowest MAC of its ports. When
    // that port's container goes, the gateway's MAC changes under the others, whose ARP
    // entries still name the old one: their traffic to the host is lost until the entries
    // expire. The container to destroy is the one whose veth lent the bridge its MAC.
    const hs: string[] = [];
    try {
      for (const n of [1, 2, 3]) hs.push(await server.client.create(spec({ handle: `net-mac-${n}`, netout_rules: [rule(Protocol.TCP, GW, a.port)] })));
      const peers = new Map<string, number>();
      for (const h of hs) peers.set(h, await vethPeer(server.client, h));
      const macOf = new Map(links().map((l) => [l.ifindex, l.address ?? '']));
      const bridgeMac = (): string => ipJson<{ address: string }[]>(['link', 'show', NET.bridge])[0]!.address;
      const before = bridgeMac();
      const byMac = [...hs].sort((x, y) => macOf.get(peers.get(x)!)!.localeCompare(macOf.get(peers.get(y)!)!));
      const leave = hs.find((h) => macOf.get(peers.get(h)!) === before) ?? byMac[0]!;
      // Every container has talked to the host: each holds an ARP entry for the gateway.
      for (const h of hs) expect(await tcpFrom(server.client, h, GW, a.port), `${h} before`).to.equal('open');
      await server.client.destroy(leave);
      expect(await teardownFinished(leave, server.depot), 'teardown finished').to.equal(true);
      hs.splice(hs.indexOf(leave), 1);
      const after = bridgeMac();
      for (const h of hs) {
        expect(await tcpFrom(server.client, h, GW, a.port), `${h} right after ${leave} went (bridge MAC ${before} → ${after})`).to.equal('open');
      }
      expect(after, 'the bridge MAC').to.equal(before);
    } finally {
      for (const h of hs) await server.client.destroy(h);
    }
  });

  it('destroy leaves no veth and no lease: 50 cycles on one address and host port leave links and routes as they were', async function () {
    this.timeout(600_000);
    // host-local hands addresses out round-robin, so a leaked lease would only show once
    // the /24 wraps. Asking for the same address (and host port) every cycle makes any
    // lease or port mapping left by destroy fail the very next create.
    const ip = await freeAddress(server.client);
    const hostPort = await freeHostPort(server.client);
    const before = hostState();
    const veths = bridgeVeths();
    for (let i = 0; i < 50; i++) {
      const handle = `net-cycle-${i}`;
      await server.client.create(spec({ handle, network: ip, netin: [{ host_port: hostPort, container_port: 8080 }] }))
        .catch((err: Error) => {
          throw new Error(`cycle ${i}: create with network ${ip} and host port ${hostPort}: ${err.message}`);
        });
      const info = await server.client.info(handle);
      expect(info.ContainerIP, `cycle ${i}`).to.equal(ip);
      expect(info.MappedPorts, `cycle ${i}`).to.deep.equal([{ HostPort: hostPort, ContainerPort: 8080 }]);
      const veth = await vethPeer(server.client, handle);
      expect(veths.has(veth), `cycle ${i}: veth ${veth} is new`).to.equal(false);
      expect(bridgeVeths().has(veth), `cycle ${i}: veth ${veth} on ${NET.bridge}`).to.equal(true);
      expect(await entries(NETWORKER_STATE), `cycle ${i}: networker state`).to.include(`${gateId(handle)}.json`);
      await server.client.destroy(handle);
      expect(await teardownFinished(handle, server.depot), `cycle ${i}: teardown finished`).to.equal(true);
      expect(bridgeVeths().has(veth), `cycle ${i}: veth ${veth} after destroy`).to.equal(false);
      expect(await entries(NETWORKER_STATE), `cycle ${i}: networker state after destroy`).to.not.include(`${gateId(handle)}.json`);
    }
    expect(hostState()).to.deep.equal(before);
    // And the ordinary way still works: a dynamic address, a host port picked by the server.
    const h = await server.client.create(spec({ handle: 'net-after-cycles', netin: [{ host_port: 0, container_port: 8080 }] }));
    const info = await server.client.info(h);
    expect(inSubnet(info.ContainerIP, NET.subnet)).to.equal(true);
    expect(info.MappedPorts?.[0]?.HostPort).to.be.within(NET.portStart, NET.portEnd);
    await server.client.destroy(h);
    expect(await teardownFinished(h, server.depot), 'teardown finished').to.equal(true);
    expect(hostState()).to.deep.equal(before);
  });

  describe('bad input is refused with Garden error JSON and changes nothing', function () {
    const h = 'net-bad';
    let ip: string;

    before(async function () {
      await server.client.create(spec({ handle: h, netout_rules: [rule(Protocol.TCP, GW, a.port)] }));
      ip = (await server.client.info(h)).ContainerIP;
    });

    after(async function () {
      await server.client.destroy(h).catch(() => {});
    });

    /** What the rules allow, by effect: a is open, b is closed. */
    async function rulesUnchanged(): Promise<void> {
      expect(await tcpFrom(server.client, h, GW, a.port), 'the rule from create').to.equal('open');
      expect(await tcpFrom(server.client, h, GW, b.port), 'a port no valid rule opened').to.equal('refused');
    }

    /** Each names b's port, so a rule applied in part would open it. */
    const badRules = (): [string, unknown, RegExp][] => {
      const gw = { start: GW, end: GW };
      const port = { start: b.port, end: b.port };
      return [
        ['protocol 9', { protocol: 9, networks: [gw], ports: [port] }, /invalid protocol: 9/],
        ['ports with icmp', { protocol: 3, networks: [gw], ports: [port] }, /Ports cannot be specified for Protocol ICMP/],
        ['a port range whose start is after its end', { protocol: 1, networks: [gw], ports: [{ start: b.port, end: b.port - 1 }] }, /ends before it starts/],
        ['a bad IP', { protocol: 1, networks: [{ start: '10.88.0.300', end: '10.88.0.300' }], ports: [port] }, /not an IPv4 address/],
        ['an IP range whose start is after its end', { protocol: 1, networks: [{ start: GW, end: intToIp(ipToInt(GW) - 1) }], ports: [port] }, /is after its end/],
      ];
    };

    it('net-out: protocol 9, ports with icmp, start > end, a bad IP', async function () {
      for (const [what, body, message] of badRules()) {
        const r = await rawRequest(server.socketPath, 'POST', `/containers/${h}/net/out`, JSON.stringify(body));
        expect(r?.status, what).to.equal(500);
        const e = gardenError(r);
        expect(e.Type, what).to.equal('');
        expect(e.Message, what).to.match(message);
      }
      await rulesUnchanged();
    });

    it('bulk net-out with one bad rule after a good one applies neither', async function () {
      for (const [what, body, message] of badRules()) {
        const both = JSON.stringify([rule(Protocol.TCP, GW, b.port), body]);
        const r = await rawRequest(server.socketPath, 'POST', `/containers/${h}/net/out/bulk`, both);
        expect(r?.status, what).to.equal(500);
        expect(gardenError(r).Message, what).to.match(message);
      }
      await rulesUnchanged();
    });

    it("net-in with a host port outside the user's range, or one another container maps, maps nothing", async function () {
      const before = (await server.client.info(h)).MappedPorts;
      for (const port of [NET.portStart - 1, NET.portEnd + 1, 80]) {
        const r = await rawRequest(server.socketPath, 'POST', `/containers/${h}/net/in`, JSON.stringify({ handle: h, host_port: port, container_port: 8080 }));
        expect(r?.status, `host port ${port}`).to.equal(500);
        expect(gardenError(r).Message, `host port ${port}`).to.match(new RegExp(`${port}.*outside.*${NET.portStart}-${NET.portEnd}`));
      }
      const taken = await server.client.netIn(h, 0, 8080);
      const other = await server.client.create(spec({ handle: 'net-bad-other' }));
      try {
        const r = await rawRequest(server.socketPath, 'POST', `/containers/${other}/net/in`, JSON.stringify({ host_port: taken.host_port, container_port: 8080 }));
        expect(r?.status, 'a host port another container maps').to.equal(500);
        expect(gardenError(r).Message).to.include(String(taken.host_port));
        expect((await server.client.info(other)).MappedPorts).to.deep.equal([]);
        // The first container keeps its mapping (on 127.0.0.1 too: gdn's socket stays), and its rules.
        await peerServer(server.client, h, 8080);
        expect((await hostConnect(GW, taken.host_port)).text).to.include(`${ip}:8080`);
        expect((await curl(`http://127.0.0.1:${taken.host_port}/`)).stdout, 'the mapping on 127.0.0.1').to.include(`${ip}:8080`);
        expect((await server.client.info(h)).MappedPorts).to.deep.equal([...(before ?? []), { HostPort: taken.host_port, ContainerPort: 8080 }]);
        await rulesUnchanged();
      } finally {
        await server.client.destroy(other);
      }
    });

    it("a create whose second netin fails leaves no host port held (issue #13: gdn's sockets go with the mappings)", async function () {
      const port = await freeHostPort(server.client);
      let failed = false;
      try {
        await server.client.create(spec({ handle: 'net-bad-netin', netin: [{ host_port: port, container_port: 8080 }, { host_port: port, container_port: 8081 }] }));
      } catch {
        failed = true;
      }
      expect(failed, 'the create failed').to.equal(true);
      expect((await curl(`http://127.0.0.1:${port}/`)).stderr, '127.0.0.1 after the failed create').to.match(/refused|Failed to connect/i);
      const again = await server.client.create(spec({ handle: 'net-bad-netin-2' }));
      try {
        expect((await server.client.netIn(again, port, 8080)).host_port, 'the port maps again').to.equal(port);
      } finally {
        await server.client.destroy(again);
      }
    });

    it('a create with network 8.8.8.8 (outside the subnet) fails and leaves nothing', async function () {
      const handles = (await server.client.list()).sort();
      const veths = [...bridgeVeths().keys()].sort();
      const state = await entries(NETWORKER_STATE);
      for (const [handle, network] of [['net-bad-8888', '8.8.8.8'], ['net-bad-gw', GW], ['net-bad-cidr', '10.0.0.0/8'], ['net-bad-junk', 'x.y']] as const) {
        const body: ContainerSpec = spec({ handle, network });
        const r = await rawRequest(server.socketPath, 'POST', '/containers', JSON.stringify(body));
        expect(r?.status, network).to.equal(500);
        expect(gardenError(r).Message, network).to.match(/network/);
        expect(await leftovers(handle, { depot: server.depot }), network).to.deep.equal([]);
      }
      expect((await server.client.list()).sort()).to.deep.equal(handles);
      expect([...bridgeVeths().keys()].sort()).to.deep.equal(veths);
      expect(await entries(NETWORKER_STATE)).to.deep.equal(state);
    });
  });

  it('--deny-network wins over a net-out rule', async function () {
    const denying = await startServer({ extraArgs: ['--deny-network', `${GW}/32`] });
    try {
      const h = await denying.client.create(spec({ handle: 'net-deny' }));
      await denying.client.netOut(h, rule(Protocol.TCP, GW, a.port));
      const r = await runAndWait(denying.client, h, sh(`echo hi | nc -w 3 ${GW} ${a.port}`));
      expect(r.code).to.not.equal(0);
      expect(r.stdout).to.equal('');
      await denying.client.destroy(h);
    } finally {
      await cleanupServer(denying);
    }
  });
});

describe('network across a daemon restart (integration, issue #4)', function () {
  let server: Server;
  let a: HostTcp;
  let b: HostTcp;

  before(async function () {
    a = await hostTcp();
    b = await hostTcp();
  });

  after(async function () {
    await cleanupServer(server);
    await a.close();
    await b.close();
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('containers keep their addresses, rules and net-in mappings; net-out after the restart works', async function () {
    server = await startServer();
    const h = await server.client.create(spec({ handle: 'net-restart', netout_rules: [rule(Protocol.TCP, GW, a.port)] }));
    const ip = (await server.client.info(h)).ContainerIP;
    await peerServer(server.client, h, 8080);
    const { host_port: hostPort } = await server.client.netIn(h, 0, 8080);
    const eth0 = (await runAndWait(server.client, h, sh('ip addr show eth0'))).stdout;

    const check = async (when: string): Promise<void> => {
      const info = await server.client.info(h);
      expect(info.ContainerIP, when).to.equal(ip);
      expect(info.MappedPorts, when).to.deep.equal([{ HostPort: hostPort, ContainerPort: 8080 }]);
      expect((await runAndWait(server.client, h, sh('ip addr show eth0'))).stdout, when).to.equal(eth0);
      expect(await tcpFrom(server.client, h, GW, a.port), `${when}: the rule from create`).to.equal('open');
      expect((await hostConnect(GW, hostPort)).text, `${when}: net-in`).to.include(`${ip}:8080`);
      const lo = await curl(`http://127.0.0.1:${hostPort}/`);
      expect(lo.stdout, `${when}: net-in on 127.0.0.1 (issue #12): ${lo.stderr}`).to.include(`${ip}:8080`);
    };

    await server.stop();
    server = await restartServer(server);
    await check('after a graceful restart');
    expect(await tcpFrom(server.client, h, GW, b.port), 'b before its rule').to.equal('refused');
    await server.client.netOut(h, rule(Protocol.TCP, GW, b.port));
    expect(await tcpFrom(server.client, h, GW, b.port), 'net-out after the restart').to.equal('open');

    await server.kill9();
    server = await restartServer(server);
    await check('after kill -9 and a restart');
    expect(await tcpFrom(server.client, h, GW, b.port), 'the rule added after the first restart').to.equal('open');
    const veth = await vethPeer(server.client, h);
    await server.client.destroy(h);
    expect(await teardownFinished(h, server.depot), 'teardown finished').to.equal(true);
    expect(bridgeVeths().has(veth), 'veth after destroy').to.equal(false);
  });
});

// seeds/004 "Internet access", with Trellis binaries: the seed's garden-cni-config.json
// (its keys are accepted and ignored: the gate decides plugins, subnet and ports), gdn
// with --network-plugin/--network-plugin-extra-arg=--configFile=, then gaol net-out
// and gaol run reaching a server that stands in for the internet (on the gateway).
describe('network: the seed walkthrough networking steps (integration, issue #4)', function () {
  let server: Server;
  let home: string;
  let internet: HostTcp;

  before(async function () {
    home = await mkdtemp(join(runtimeDir(), 'net-seed-'));
    await mkdir(join(home, 'gdn', 'config'), { recursive: true });
    await mkdir(join(home, 'gdn', 'garden-cni', 'config'), { recursive: true });
    const config = join(home, 'gdn', 'config', 'garden-cni-config.json');
    await writeFile(config, `{
  "cni_plugin_dir": "${home}/gdn/bin",
  "cni_config_dir": "${home}/gdn/garden-cni/config/",
  "bind_mount_dir": "${home}/gdn/garden-cni/container-netns",
  "overlay_network" :"10.0.2.0/24",
  "state_file" : "${home}/gdn/garden-cni/external-networker-state.json",
  "start_port" : 1000,
  "total_ports" : 2000,
  "iptables_lock_file" :"${home}/gdn/garden-cni/iptables.lock",
  "instance_address" : "1.2.3.4",
  "iptables_asg_logging" : false
}
`);
    internet = await hostTcp();
    server = await startServer({
      extraArgs: [`--network-plugin=${NETWORKER_MAIN}`, `--network-plugin-extra-arg=--configFile=${config}`],
    });
  });

  after(async function () {
    await cleanupServer(server);
    await internet.close();
    await rm(home, { recursive: true, force: true });
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  it('gaol create, gaol net-out (all tcp, as in the seed), gaol run -a -c "nc ..." reaches the server; net-in works; destroy leaves no veth', async function () {
    expect(await runGaol(server.socketPath, ['create', '-n', 'net-cake'])).to.deep.equal({ code: 0, stdout: 'net-cake\n', stderr: '' });
    const info = await server.client.info('net-cake');
    expect(inSubnet(info.ContainerIP, NET.subnet), `ContainerIP ${info.ContainerIP}`).to.equal(true);
    const veth = await vethPeer(server.client, 'net-cake');
    const nc = ['run', '-a', '-c', `sh -c 'echo hi | nc -w 3 ${GW} ${internet.port}'`, 'net-cake'];
    const closed = await runGaol(server.socketPath, nc);
    expect(closed.code, 'before net-out').to.not.equal(0);
    expect(closed.stderr).to.include('Connection refused');

    const out = await runGaol(server.socketPath, [
      'net-out', 'net-cake', '--ip-start=0.0.0.0', '--ip-end=255.255.255.255', '--port-start=0', '--port-end=65535', '--protocol=tcp',
    ]);
    expect(out).to.deep.equal({ code: 0, stdout: 'applied\n', stderr: '' });
    expect(await runGaol(server.socketPath, nc)).to.deep.equal({ code: 0, stdout: `${REPLY}\n`, stderr: '' });

    await peerServer(server.client, 'net-cake', 8080);
    const netIn = await runGaol(server.socketPath, ['net-in', '-p', '8080', 'net-cake']);
    expect(netIn.code, netIn.stderr).to.equal(0);
    const hostPort = Number(/:(\d+)\n$/.exec(netIn.stdout)?.[1]);
    expect(hostPort).to.be.within(NET.portStart, NET.portEnd);
    expect((await hostConnect(GW, hostPort)).text).to.include(`${info.ContainerIP}:8080`);

    expect(await runGaol(server.socketPath, ['destroy', 'net-cake'])).to.deep.equal({ code: 0, stdout: '', stderr: '' });
    expect(await teardownFinished('net-cake', server.depot), 'teardown finished').to.equal(true);
    expect(bridgeVeths().has(veth), 'veth after destroy').to.equal(false);
    expect(await eventually(async () => !(await entries(NETWORKER_STATE)).includes(`${gateId('net-cake')}.json`), 2000)).to.equal(true);
  });
});

async function entries(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** One UDP datagram through a packet socket: rawudp IFACE DSTMAC SRCIP DSTIP DSTPORT PAYLOAD. */
const RAWUDP_C = String.raw`
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

static unsigned short csum(const void *p, size_t n)
{
	const unsigned short *w = p;
	unsigned long s = 0;
	for (; n > 1; n -= 2)
		s += *w++;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (unsigned short)~s;
}

int main(int argc, char **argv)
{
	if (argc != 7)
		return 2;
	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
	if (fd < 0) {
		perror("socket(AF_PACKET)");
		return 1;
	}
	struct ifreq hw, ix;
	memset(&hw, 0, sizeof hw);
	memset(&ix, 0, sizeof ix);
	snprintf(hw.ifr_name, sizeof hw.ifr_name, "%s", argv[1]);
	snprintf(ix.ifr_name, sizeof ix.ifr_name, "%s", argv[1]);
	if (ioctl(fd, SIOCGIFHWADDR, &hw) < 0 || ioctl(fd, SIOCGIFINDEX, &ix) < 0) {
		perror("ioctl");
		return 1;
	}
	unsigned char frame[1514];
	memset(frame, 0, sizeof frame);
	size_t plen = strlen(argv[6]);
	struct ether_header *eth = (void *)frame;
	struct iphdr *ip = (void *)(frame + sizeof *eth);
	struct udphdr *udp = (void *)(frame + sizeof *eth + sizeof *ip);
	unsigned m[6];
	if (plen > 1000 || sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6)
		return 2;
	for (int i = 0; i < 6; i++)
		eth->ether_dhost[i] = (unsigned char)m[i];
	memcpy(eth->ether_shost, hw.ifr_hwaddr.sa_data, 6);
	eth->ether_type = htons(ETH_P_IP);
	ip->ihl = 5;
	ip->version = 4;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->saddr = inet_addr(argv[3]);
	ip->daddr = inet_addr(argv[4]);
	ip->tot_len = htons((unsigned short)(sizeof *ip + sizeof *udp + plen));
	ip->check = csum(ip, sizeof *ip);
	udp->source = htons(40000);
	udp->dest = htons((unsigned short)atoi(argv[5]));
	udp->len = htons((unsigned short)(sizeof *udp + plen));
	memcpy(frame + sizeof *eth + sizeof *ip + sizeof *udp, argv[6], plen);
	struct sockaddr_ll to;
	memset(&to, 0, sizeof to);
	to.sll_family = AF_PACKET;
	to.sll_ifindex = ix.ifr_ifindex;
	to.sll_halen = 6;
	memcpy(to.sll_addr, eth->ether_dhost, 6);
	size_t len = sizeof *eth + sizeof *ip + sizeof *udp + plen;
	if (sendto(fd, frame, len, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)len) {
		perror("sendto");
		return 1;
	}
	return 0;
}
`;

/**
 * udpprobe serve PORT: prints "<source address> <payload>" for each datagram and answers "echo:<payload>".
 * udpprobe send IP PORT TEXT: sends TEXT, prints the first answer within 2 s (exit 0), else exit 1.
 */
const UDPPROBE_C = String.raw`#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a;
  char buf[512];
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  if (s < 0) return 3;
  if (argc == 3 && !strcmp(argv[1], "serve")) {
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (bind(s, (struct sockaddr *)&a, sizeof a)) return 3;
    for (;;) {
      struct sockaddr_in f;
      socklen_t fl = sizeof f;
      ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&f, &fl);
      if (n < 0) continue;
      buf[n] = 0;
      printf("%s %s\n", inet_ntoa(f.sin_addr), buf);
      fflush(stdout);
      char out[600];
      int k = snprintf(out, sizeof out, "echo:%s", buf);
      sendto(s, out, (size_t)k, 0, (struct sockaddr *)&f, fl);
    }
  }
  if (argc == 5 && !strcmp(argv[1], "send")) {
    struct timeval tv = {2, 0};
    a.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) return 2;
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (sendto(s, argv[4], strlen(argv[4]), 0, (struct sockaddr *)&a, sizeof a) < 0) {
      perror("sendto");
      return 2;
    }
    ssize_t n = recv(s, buf, sizeof buf - 1, 0);
    if (n < 0) return 1;
    buf[n] = 0;
    printf("%s\n", buf);
    return 0;
  }
  return 2;
}
`;
