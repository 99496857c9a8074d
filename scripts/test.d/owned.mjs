// Filters scripts/test's host state (lines "iptables -A ...", "iptables :CHAIN -",
// "link NAME [master BRIDGE]", "gate state UID/...") down to what belongs to the given
// users (issue #12): a leftovers check must not count another user's containers on the
// same host. Usage: node scripts/test.d/owned.mjs UID... <state >owned-state
// A user's: rules naming its bridge, its CNI network name (trellis-UID) or container ids
// (uUID-...), or an address in its subnet; the per-container CNI chains those rules jump
// to, and the chains whose rules are its; its bridge and the links enslaved to it; its
// gate state. Unattributable debris (a per-container chain nothing refers to and holding
// no rule, a veth on no bridge) is counted too: it is what a crash leaves, and the check
// compares before and after, so another user's old debris does not fail it.
import { readFileSync } from 'node:fs';

const uids = process.argv.slice(2).filter((u) => /^\d+$/.test(u));
const ipToInt = (s) => s.split('.').reduce((a, o) => a * 256 + Number(o), 0);
const users = uids.map((uid) => {
  const conf = {};
  try {
    for (const l of readFileSync(`/etc/trellis/net/${uid}.conf`, 'utf8').split('\n')) {
      const m = /^([a-z_]+)=(.*)$/.exec(l.trim());
      if (m) conf[m[1]] = m[2];
    }
  } catch {
    // no network for this user: only its ids and gate state can be its
  }
  // issue #8: the address pool root granted (/etc/trellis/net/UID.pool), whose subnets get bridges trUIDpN
  try {
    const m = /^pool=(\S+)$/m.exec(readFileSync(`/etc/trellis/net/${uid}.pool`, 'utf8'));
    if (m) conf.pool = m[1];
  } catch {
    // no pool
  }
  const netOf = (cidr) => {
    const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr ?? '');
    if (!m) return undefined;
    const prefix = Number(m[2]);
    const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    return { base: (ipToInt(m[1]) & mask) >>> 0, mask };
  };
  return { uid, bridge: conf.bridge, net: netOf(conf.subnet), pool: netOf(conf.pool), poolBridge: new RegExp(`^tr${uid}p\\d+$`) };
});

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
function mentionsUser(text) {
  for (const u of users) {
    if (text.includes(`u${u.uid}-`) || text.includes(`trellis-${u.uid}\\"`) || text.includes(`trellis-${u.uid}"`)) return true;
    if (u.bridge && new RegExp(`(^|[^A-Za-z0-9+])${escape(u.bridge)}($|[^A-Za-z0-9+])`).test(text)) return true;
    if (new RegExp(`(^|[^A-Za-z0-9+])tr${u.uid}p(\\d+|\\+)($|[^A-Za-z0-9+])`).test(text)) return true;
    for (const n of [u.net, u.pool]) {
      if (!n) continue;
      for (const [, ip, p] of text.matchAll(/(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?:\/(\d+))?(?![\d.])/g)) {
        // An address, or a network no wider than the user's subnet (or pool), inside it.
        if (p !== undefined && Number(p) < bitsOf(n.mask)) continue;
        if (((ipToInt(ip) & n.mask) >>> 0) === n.base) return true;
      }
    }
  }
  return false;
}
function bitsOf(mask) {
  let n = 0;
  for (let m = mask; m; m = (m << 1) >>> 0) n++;
  return n;
}

const lines = readFileSync(0, 'utf8').split('\n').filter((l) => l !== '');
const perContainer = (chain) => /^CNI-(?!HOSTPORT-)/.test(chain);
const rules = [];
const decls = [];
for (const l of lines) {
  let m = /^iptables -A (\S+)(.*)$/.exec(l);
  if (m) {
    const target = /\s-[jg] (\S+)/.exec(m[2]);
    rules.push({ line: l, chain: m[1], target: target?.[1], owned: mentionsUser(m[2]) });
    continue;
  }
  m = /^iptables :(\S+) /.exec(l);
  if (m) decls.push({ line: l, chain: m[1] });
}
const ownedChains = new Set();
for (let changed = true; changed; ) {
  changed = false;
  for (const r of rules) {
    if (!r.owned && ownedChains.has(r.chain)) r.owned = changed = true;
    if (r.owned && r.target && perContainer(r.target) && !ownedChains.has(r.target)) {
      ownedChains.add(r.target);
      changed = true;
    }
    if (r.owned && perContainer(r.chain) && !ownedChains.has(r.chain)) {
      ownedChains.add(r.chain);
      changed = true;
    }
  }
}
const referenced = new Set(rules.flatMap((r) => [r.chain, r.target].filter(Boolean)));
const bridges = new Set(users.map((u) => u.bridge).filter(Boolean));

const out = [];
for (const l of lines) {
  if (l.startsWith('iptables -A ')) {
    if (rules.find((r) => r.line === l)?.owned) out.push(l);
  } else if (l.startsWith('iptables :')) {
    const chain = /^iptables :(\S+) /.exec(l)?.[1] ?? '';
    if (ownedChains.has(chain) || (perContainer(chain) && !referenced.has(chain))) out.push(l);
  } else if (l.startsWith('iptables ')) {
    if (mentionsUser(l)) out.push(l);
  } else if (l.startsWith('link ')) {
    const [, name, , master] = l.split(' ');
    const base = name.split('@')[0];
    const pool = (n) => n !== undefined && users.some((u) => u.poolBridge.test(n));
    if (bridges.has(base) || pool(base) || (master !== undefined && (bridges.has(master) || pool(master))) || (master === undefined && /^veth/.test(base))) out.push(`link ${base}`);
  } else if (l.startsWith('nft ')) {
    // issue #13: a veth's anti-spoofing entry is the user's whose subnet holds its address
    if (mentionsUser(l)) out.push(l);
  } else if (l.startsWith('gate state ')) {
    if (uids.includes(l.slice('gate state '.length).split('/')[0])) out.push(l);
  } else {
    out.push(l);
  }
}
process.stdout.write(out.map((l) => `${l}\n`).join(''));
