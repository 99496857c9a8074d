// Who is on the other end of a loopback TCP connection. /proc/net/tcp{,6} lists every
// socket with the uid that owns it; the client's end of our connection is the entry whose
// local address is the peer's and whose remote address is ours.
import { readFile } from 'node:fs/promises';

export interface Endpoint {
  address: string;
  port: number;
}

/** "0100007F:1E61" (IPv4, host byte order) or the 32-hex-digit IPv6 form, to an endpoint. */
export function parseProcAddress(field: string): Endpoint | undefined {
  const [hexRaw, portHex] = field.split(':');
  const hex = hexRaw?.toLowerCase();
  if (hex === undefined || portHex === undefined) return undefined;
  const port = parseInt(portHex, 16);
  if (hex.length === 8) {
    const n = parseInt(hex, 16);
    return { address: [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24].join('.'), port };
  }
  if (hex.length === 32) {
    const words: string[] = [];
    for (let i = 0; i < 4; i++) {
      const w = hex.slice(i * 8, i * 8 + 8);
      // each 32-bit word is in host (little-endian) order
      words.push(w.slice(6, 8) + w.slice(4, 6), w.slice(2, 4) + w.slice(0, 2));
    }
    const v4mapped = words.slice(0, 5).every((x) => x === '0000') && words[5] === 'ffff';
    if (v4mapped) {
      const a = parseInt(words[6]!, 16);
      const b = parseInt(words[7]!, 16);
      return { address: [a >> 8, a & 0xff, b >> 8, b & 0xff].join('.'), port };
    }
    return { address: words.map((x) => parseInt(x, 16).toString(16)).join(':').replace(/(^|:)0(:0)+(:|$)/, '::'), port };
  }
  return undefined;
}

function normalise(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}

/** The uid owning `peer`'s end of a connection to `local`, from the text of /proc/net/tcp{,6}. */
export function peerUidFrom(table: string, peer: Endpoint, local: Endpoint): number | undefined {
  const want = { address: normalise(peer.address), port: peer.port };
  const ours = { address: normalise(local.address), port: local.port };
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const l = parseProcAddress(f[1]!);
    const r = parseProcAddress(f[2]!);
    if (!l || !r) continue;
    if (l.port === want.port && r.port === ours.port && l.address === want.address && r.address === ours.address) {
      const uid = Number(f[7]);
      return Number.isInteger(uid) ? uid : undefined;
    }
  }
  return undefined;
}

export function isLoopback(address: string): boolean {
  const a = normalise(address);
  return a === '::1' || a.startsWith('127.');
}

export async function loopbackPeerUid(peer: Endpoint, local: Endpoint): Promise<number | undefined> {
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const uid = peerUidFrom(text, peer, local);
    if (uid !== undefined) return uid;
  }
  return undefined;
}
