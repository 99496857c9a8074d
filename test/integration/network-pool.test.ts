// Issue #8: containers on subnets of the address pool root granted this user
// (`gdn setup --network-pool`, scripts/test grants 10.253.0.0/16), against the real
// daemon, gate, bridge plugin and kernel: the address asked for, a bridge per subnet
// (made and removed by the gate), neighbours on a subnet reaching each other, subnets of
// one user kept apart as different users' are, a refusal outside the pool or over a
// subnet in use, and nothing left once the last container of a subnet is gone.
//
// Only what belongs to this user's pool is compared (its bridges tr<uid>p<n>, their veths
// and routes): other suites may run containers on this host at the same time.

import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { GardenClient } from '../../src/client/client.js';
import type { ContainerSpec, NetOutRule } from '../../src/client/types.js';
import { Protocol } from '../../src/client/types.js';
import { intToIp, ipToInt, loadUserNetwork } from '../../plugins/networker/config.js';
import { parseCidr } from '../../plugins/networker/netout.js';
import { gateId } from '../../plugins/networker/networker.js';
import {
  cleanupServer, dumpLogsIfFailed, entries, gardenError, leftovers, PATHS, rawRequest, restartServer, runAndWait, type Server, sh, spec, startServer,
  teardownFinished, teardownsFinished,
} from './harness.js';

const uid = process.getuid?.() ?? 0;
const NET = loadUserNetwork(uid);
const GW = NET.gateway;
const NETWORKER_STATE = join(PATHS.runtimeDir, 'network');
const POOL_BRIDGE = new RegExp(`^tr${uid}p\\d+$`);

/** The i-th /24 of the pool (the suite uses the first 9: a pool of a /20 or more). */
function subnet(i: number): { cidr: string; base: number; gw: string; at: (n: number) => string } {
  if (NET.pool === undefined) throw new Error(`uid ${uid} has no address pool: run gdn setup --network-pool (scripts/test does)`);
  const pool = parseCidr(NET.pool);
  if ((i + 1) * 256 > 2 ** (32 - pool.prefix)) throw new Error(`the pool ${NET.pool} has no ${i + 1}th /24: this suite needs a /20 or more`);
  const base = ipToInt(pool.network) + i * 256;
  return { cidr: `${intToIp(base)}/24`, base, gw: intToIp(base + 1), at: (n) => intToIp(base + n) };
}

interface Link {
  ifindex: number;
  ifname: string;
  master?: string;
  address?: string;
}
const ipJson = <T>(args: string[]): T => JSON.parse(execFileSync('ip', ['-j', ...args], { encoding: 'utf8' })) as T;

/** This user's pool bridges, their ports and their routes, as comparable lines. */
function poolState(): string[] {
  const links = ipJson<Link[]>(['link']);
  const out = links.filter((l) => POOL_BRIDGE.test(l.ifname)).map((l) => `bridge ${l.ifname} ${l.address ?? ''}`);
  out.push(...links.filter((l) => l.master !== undefined && POOL_BRIDGE.test(l.master)).map((l) => `port ${l.ifname} on ${l.master}`));
  // IPv4 only: the bridge's IPv6 link-local routes come up to a second late (duplicate address detection), and containers get no IPv6
  out.push(...ipJson<{ dst: string; dev?: string }[]>(['-4', 'route', 'show', 'table', 'all']).filter((r) => r.dev !== undefined && POOL_BRIDGE.test(r.dev)).map((r) => `route ${r.dst} dev ${r.dev}`));
  return out.sort();
}

/** The pool bridge that carries subnet cidr's gateway, if any. */
function bridgeOf(cidr: string): string | undefined {
  const gw = intToIp(ipToInt(parseCidr(cidr).network) + 1);
  const addrs = ipJson<{ ifname: string; addr_info?: { local?: string }[] }[]>(['-4', 'addr']);
  return addrs.find((a) => POOL_BRIDGE.test(a.ifname) && (a.addr_info ?? []).some((i) => i.local === gw))?.ifname;
}

/** The host ifindex of a container's veth peer (`eth0@if<N>`). */
async function vethPeer(client: GardenClient, handle: string): Promise<number> {
  const r = await runAndWait(client, handle, sh('ip link show eth0'));
  const m = /eth0@if(\d+):/.exec(r.stdout);
  if (!m) throw new Error(`no eth0@ifN in ${JSON.stringify(r.stdout)}`);
  return Number(m[1]);
}

const rule = (ip: string, port: number): NetOutRule => ({ protocol: Protocol.TCP, networks: [{ start: ip, end: ip }], ports: [{ start: port, end: port }] });

/** busybox nc in handle listening on port, answering each connection with its name; returns once it listens. */
async function listen(client: GardenClient, handle: string, port: number): Promise<void> {
  const p = await client.run(handle, sh(`exec nc -ll -p ${port} -e echo ${handle}`), {});
  p.detach();
  const ready = await runAndWait(client, handle, sh(`for i in $(seq 100); do netstat -tln | grep -q ':${port} ' && exit 0; sleep 0.1; done; exit 1`));
  expect(ready.code, `nc listening on ${port} in ${handle}`).to.equal(0);
}

/** What `nc` from handle to ip:port read (its exit code too): the listener's name when it got through. */
async function tcpFrom(client: GardenClient, handle: string, ip: string, port: number): Promise<string> {
  const r = await runAndWait(client, handle, sh(`echo hi | nc -w 3 ${ip} ${port}`));
  return r.code === 0 ? r.stdout.trim() : `exit ${r.code}: ${r.stderr.trim()}`;
}

/** A TCP server on the user's default gateway (a host address) answering 'host'. */
async function hostServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const open = new Set<net.Socket>();
  const srv = net.createServer((c) => {
    open.add(c);
    c.on('close', () => open.delete(c));
    c.on('error', () => {});
    c.end('host\n');
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, GW, resolve);
  });
  return {
    port: (srv.address() as AddressInfo).port,
    close: () => new Promise((resolve) => {
      srv.close(() => resolve());
      for (const c of open) c.destroy();
    }),
  };
}

describe('network pool (integration, issue #8)', function () {
  let server: Server;
  let initial: string[];

  before(async function () {
    server = await startServer({});
    initial = poolState();
  });

  after(async function () {
    await cleanupServer(server);
  });

  afterEach(async function () {
    dumpLogsIfFailed(this, server);
    // Issue #10: teardowns run on after destroy replied; the next test's "as before" starts here.
    expect(await teardownsFinished(server.depot), 'teardowns finished').to.equal(true);
  });

  it('issue #8: two containers on one subnet of the pool: the address asked for, its own bridge and gateway, and they reach each other', async function () {
    const s = subnet(1);
    const hs: string[] = [];
    try {
      hs.push(await server.client.create(spec({ handle: 'pool-a', network: s.cidr })));
      hs.push(await server.client.create(spec({ handle: 'pool-b', network: `${s.at(5)}/24` })));
      const a = await server.client.info('pool-a');
      const b = await server.client.info('pool-b');
      expect(b.ContainerIP, 'the address asked for').to.equal(s.at(5));
      expect(ipToInt(a.ContainerIP) & 0xffffff00, `${a.ContainerIP} in ${s.cidr}`).to.equal(s.base | 0);
      expect(a.ContainerIP).to.not.equal(b.ContainerIP);
      expect([a.HostIP, b.HostIP], "the subnet's gateway").to.deep.equal([s.gw, s.gw]);

      const r = await runAndWait(server.client, 'pool-b', sh('ip -o -4 addr show eth0; ip route'));
      expect(r.stdout).to.include(`inet ${s.at(5)}/24`);
      expect(r.stdout).to.include(`default via ${s.gw}`);

      // one bridge for the subnet, named and addressed by the gate, holding both veths
      const bridge = bridgeOf(s.cidr);
      expect(bridge, `a pool bridge with ${s.gw}`).to.match(POOL_BRIDGE);
      expect(bridge).to.not.equal(NET.bridge);
      const links = ipJson<Link[]>(['link']);
      for (const h of hs) {
        const peer = await vethPeer(server.client, h);
        expect(links.find((l) => l.ifindex === peer)?.master, `${h}'s veth`).to.equal(bridge);
      }
      expect(links.find((l) => l.ifname === bridge)?.address, 'a fixed, locally administered MAC').to.match(/^02:74:/);

      const ping = await runAndWait(server.client, 'pool-a', sh(`ping -c 1 -W 3 ${s.at(5)}`));
      expect(ping.code, ping.stdout + ping.stderr).to.equal(0);
      await listen(server.client, 'pool-b', 9000);
      expect(await tcpFrom(server.client, 'pool-a', s.at(5), 9000)).to.equal('pool-b');
    } finally {
      for (const h of hs) await server.client.destroy(h);
    }
    expect(await teardownsFinished(server.depot), 'teardowns finished').to.equal(true);
    expect(bridgeOf(s.cidr), "the subnet's bridge after its last container").to.equal(undefined);
  });

  it("issue #8: destroying containers on a subnet keeps the others' route out (Garden's subnet spec): the bridge keeps its MAC", async function () {
    const s = subnet(2);
    const host = await hostServer();
    const hs: string[] = [];
    try {
      const open: Partial<ContainerSpec> = { network: s.cidr, netout_rules: [rule(GW, host.port)] };
      hs.push(await server.client.create(spec({ handle: 'pool-stay', ...open })));
      expect(await tcpFrom(server.client, 'pool-stay', GW, host.port), 'before').to.equal('host');
      const mac = ipJson<Link[]>(['link', 'show', bridgeOf(s.cidr) as string])[0]?.address;
      for (let i = 0; i < 3; i++) {
        await server.client.create(spec({ handle: `pool-go-${i}`, ...open }));
        expect(await tcpFrom(server.client, `pool-go-${i}`, GW, host.port), `pool-go-${i}`).to.equal('host');
        await server.client.destroy(`pool-go-${i}`);
        expect(await teardownFinished(`pool-go-${i}`, server.depot), `pool-go-${i}: teardown finished`).to.equal(true);
        expect(await tcpFrom(server.client, 'pool-stay', GW, host.port), `after pool-go-${i} went`).to.equal('host');
      }
      expect(ipJson<Link[]>(['link', 'show', bridgeOf(s.cidr) as string])[0]?.address, 'the bridge MAC').to.equal(mac);
      // and a container made in the subnet again after all of it was gone routes as well
      await server.client.destroy('pool-stay');
      hs.length = 0;
      expect(await teardownFinished('pool-stay', server.depot), 'pool-stay: teardown finished').to.equal(true);
      expect(bridgeOf(s.cidr)).to.equal(undefined);
      hs.push(await server.client.create(spec({ handle: 'pool-again', ...open })));
      expect(await tcpFrom(server.client, 'pool-again', GW, host.port), 'in a previously used subnet').to.equal('host');
    } finally {
      for (const h of hs) await server.client.destroy(h);
      await host.close();
    }
  });

  it('issue #8: subnets of one user are kept apart, from each other and from its default subnet, even with net-out open', async function () {
    const s1 = subnet(3);
    const s2 = subnet(4);
    const hs: string[] = [];
    try {
      hs.push(await server.client.create(spec({ handle: 'pool-far', network: `${s2.at(9)}/24` })));
      await listen(server.client, 'pool-far', 9001);
      hs.push(await server.client.create(spec({ handle: 'pool-near', network: s1.cidr, netout_rules: [rule(s2.at(9), 9001)] })));
      hs.push(await server.client.create(spec({ handle: 'pool-default', netout_rules: [rule(s2.at(9), 9001)] })));
      expect(bridgeOf(s1.cidr)).to.not.equal(bridgeOf(s2.cidr));
      for (const from of ['pool-near', 'pool-default']) {
        expect(await tcpFrom(server.client, from, s2.at(9), 9001), `${from} to ${s2.at(9)}:9001`).to.match(/^exit [1-9]/);
      }
      // the listener is up: its own subnet's neighbour gets through
      hs.push(await server.client.create(spec({ handle: 'pool-far-2', network: s2.cidr })));
      expect(await tcpFrom(server.client, 'pool-far-2', s2.at(9), 9001)).to.equal('pool-far');
    } finally {
      for (const h of hs) await server.client.destroy(h);
    }
  });

  it('issue #8: a subnet outside the pool, over a subnet in use with another prefix, a /31, the gateway: Garden error JSON, nothing left', async function () {
    const s = subnet(5);
    const live = await server.client.create(spec({ handle: 'pool-live', network: s.cidr }));
    try {
      const handles = (await server.client.list()).sort();
      const pool = poolState();
      const cases: [string, string, RegExp][] = [
        ['pool-bad-outside', '172.31.250.0/24', /outside this user's subnet .* and address pool/],
        ['pool-bad-overlap', `${s.at(128)}/25`, /overlaps .*the subnet of your container/],
        ['pool-bad-wider', `${intToIp(s.base & ~0x3ff)}/22`, /overlaps .*the subnet of your container/],
        ['pool-bad-31', `${s.at(4)}/31`, /must be a \/16 to a \/30/],
        ['pool-bad-gw', `${subnet(6).gw}/24`, /gateway or the broadcast address/],
        ['pool-bad-bare', subnet(6).at(7), /give its subnet too/],
      ];
      for (const [handle, network, why] of cases) {
        const r = await rawRequest(server.socketPath, 'POST', '/containers', JSON.stringify(spec({ handle, network })));
        expect(r?.status, network).to.equal(500);
        expect(gardenError(r).Message, network).to.match(why);
        expect(await leftovers(handle, { depot: server.depot }), network).to.deep.equal([]);
        expect(await entries(NETWORKER_STATE), network).to.not.include(`${gateId(handle)}.json`);
      }
      expect((await server.client.list()).sort()).to.deep.equal(handles);
      // (the state dir is shared with every server of this user: only these handles' files are compared)
      expect(await entries(NETWORKER_STATE), 'the live container keeps its state').to.include(`${gateId(live)}.json`);
      expect(poolState(), 'no bridge, veth or route came or went').to.deep.equal(pool);
    } finally {
      await server.client.destroy(live);
    }
  });

  it('issue #8: a pool container keeps its subnet, address, gateway and net-in across a daemon restart; net-in from the host reaches it', async function () {
    const s = subnet(8);
    const host = await hostServer();
    const h = 'pool-restart';
    try {
      await server.client.create(spec({ handle: h, network: `${s.at(20)}/24`, netout_rules: [rule(GW, host.port)] }));
      await listen(server.client, h, 8080);
      const { host_port: hostPort } = await server.client.netIn(h, 0, 8080);
      const hostReads = (): Promise<string> => new Promise((resolve) => {
        const c = net.connect(hostPort, GW);
        let text = '';
        c.setEncoding('utf8');
        c.setTimeout(5000, () => c.destroy());
        c.on('data', (d: string) => (text += d));
        c.on('close', () => resolve(text));
        c.on('error', () => resolve(text));
      });
      const check = async (when: string): Promise<void> => {
        const info = await server.client.info(h);
        expect([info.ContainerIP, info.HostIP], when).to.deep.equal([s.at(20), s.gw]);
        expect(info.MappedPorts, when).to.deep.equal([{ HostPort: hostPort, ContainerPort: 8080 }]);
        expect((await hostReads()).trim(), `${when}: net-in through ${GW}:${hostPort}`).to.equal(h);
        expect(await tcpFrom(server.client, h, GW, host.port), `${when}: out through ${s.gw}`).to.equal('host');
      };
      await check('before the restart');
      await server.stop();
      server = await restartServer(server);
      await check('after the restart');
      expect(bridgeOf(s.cidr), 'the bridge').to.match(POOL_BRIDGE);
    } finally {
      await server.client.destroy(h).catch(() => undefined);
      await host.close();
    }
    expect(await teardownFinished(h, server.depot), 'teardown finished').to.equal(true);
    expect(bridgeOf(s.cidr), 'after destroy').to.equal(undefined);
  });

  it('issue #8: destroy leaves nothing of the pool: the same address can be had again at once, and bridges, veths and routes are as before', async function () {
    const s = subnet(7);
    for (let i = 0; i < 5; i++) {
      const h = await server.client.create(spec({ handle: `pool-cycle-${i}`, network: `${s.at(9)}/24` }));
      expect((await server.client.info(h)).ContainerIP, `cycle ${i}`).to.equal(s.at(9));
      expect(bridgeOf(s.cidr), `cycle ${i}`).to.match(POOL_BRIDGE);
      await server.client.destroy(h);
      expect(await teardownFinished(h, server.depot), `cycle ${i}: teardown finished`).to.equal(true);
      expect(bridgeOf(s.cidr), `cycle ${i}: after destroy`).to.equal(undefined);
      expect(await entries(NETWORKER_STATE), `cycle ${i}`).to.not.include(`${gateId(h)}.json`);
    }
    expect(poolState()).to.deep.equal(initial);
  });
});
