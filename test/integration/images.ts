// Images the integration tests build themselves (no internet): tar layers
// from exact entries, a busybox root, OCI layouts with correct digests, and
// plain rootfs tarballs.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';

/** One tar entry, written exactly as described: the name is not cleaned, so tests can craft `../evil` or `/abs`. */
export interface Entry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'link' | 'char' | 'block' | 'fifo';
  /** Permission bits incl. setuid/setgid/sticky; default 0644 (dir 0755, symlink 0777). 0 is written as 0. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Only for files. */
  content?: Buffer | string;
  /** Target of a symlink, or the archive path a hard link (`link`) points to. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Default 2020-01-01T00:00:00Z, so the same entries always give the same digest. */
  mtime?: Date;
  /** Written as PAX `SCHILY.xattr.<name>` records. */
  xattrs?: Record<string, string | Buffer>;
  /** Extra PAX records written verbatim (e.g. to contradict the ustar header). */
  pax?: Record<string, string | Buffer>;
}

const FIXED_MTIME = new Date('2020-01-01T00:00:00Z');
const BLOCK = 512;

const TYPEFLAG: Record<Entry['type'], string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

function defaultMode(type: Entry['type']): number {
  if (type === 'dir') return 0o755;
  if (type === 'symlink') return 0o777;
  return 0o644;
}

/** `width`-byte numeric field: octal digits + NUL, or undefined when the value does not fit (PAX carries it). */
function octal(value: number, width: number): string | undefined {
  if (!Number.isInteger(value) || value < 0) return undefined;
  const digits = value.toString(8);
  if (digits.length > width - 1) return undefined;
  return digits.padStart(width - 1, '0') + '\0';
}

function paxRecord(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), typeof value === 'string' ? Buffer.from(value) : value, Buffer.from('\n')]);
  // The length prefix counts its own digits.
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

interface HeaderFields {
  name: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  linkname: Buffer;
  devmajor: number;
  devminor: number;
}

function ustarHeader(h: HeaderFields): Buffer {
  const b = Buffer.alloc(BLOCK);
  h.name.copy(b, 0, 0, Math.min(h.name.length, 100));
  b.write(octal(h.mode & 0o7777777, 8) ?? '0000000\0', 100, 'latin1');
  b.write(octal(h.uid, 8) ?? '0000000\0', 108, 'latin1');
  b.write(octal(h.gid, 8) ?? '0000000\0', 116, 'latin1');
  b.write(octal(h.size, 12) ?? '00000000000\0', 124, 'latin1');
  b.write(octal(h.mtime, 12) ?? '00000000000\0', 136, 'latin1');
  b.write(h.typeflag, 156, 'latin1');
  h.linkname.copy(b, 157, 0, Math.min(h.linkname.length, 100));
  b.write('ustar\0' + '00', 257, 'latin1');
  b.write(octal(h.devmajor, 8) ?? '0000000\0', 329, 'latin1');
  b.write(octal(h.devminor, 8) ?? '0000000\0', 337, 'latin1');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return b;
}

function pad(n: number): Buffer {
  return Buffer.alloc((BLOCK - (n % BLOCK)) % BLOCK);
}

function entryBlocks(e: Entry, index: number): Buffer[] {
  const content = e.type === 'file' ? (typeof e.content === 'string' ? Buffer.from(e.content) : (e.content ?? Buffer.alloc(0))) : Buffer.alloc(0);
  if (e.type !== 'file' && e.content !== undefined) throw new Error(`tar entry ${e.name}: content is only for files`);
  const name = Buffer.from(e.name);
  const linkname = Buffer.from(e.linkname ?? '');
  const h: HeaderFields = {
    name,
    mode: e.mode ?? defaultMode(e.type),
    uid: e.uid ?? 0,
    gid: e.gid ?? 0,
    size: content.length,
    mtime: Math.floor((e.mtime ?? FIXED_MTIME).getTime() / 1000),
    typeflag: TYPEFLAG[e.type],
    linkname,
    devmajor: e.devmajor ?? 0,
    devminor: e.devminor ?? 0,
  };

  // PAX only where the ustar header cannot say it.
  const records: Buffer[] = [];
  if (name.length > 100) records.push(paxRecord('path', name));
  if (linkname.length > 100) records.push(paxRecord('linkpath', linkname));
  if (octal(h.uid, 8) === undefined) records.push(paxRecord('uid', String(h.uid)));
  if (octal(h.gid, 8) === undefined) records.push(paxRecord('gid', String(h.gid)));
  if (octal(h.size, 12) === undefined) records.push(paxRecord('size', String(h.size)));
  if (octal(h.mtime, 12) === undefined) records.push(paxRecord('mtime', String(h.mtime)));
  for (const [k, v] of Object.entries(e.xattrs ?? {})) records.push(paxRecord(`SCHILY.xattr.${k}`, v));
  for (const [k, v] of Object.entries(e.pax ?? {})) records.push(paxRecord(k, v));

  const out: Buffer[] = [];
  if (records.length > 0) {
    const body = Buffer.concat(records);
    const base = e.name.split('/').filter((s) => s !== '').pop() ?? 'entry';
    out.push(
      ustarHeader({
        name: Buffer.from(`PaxHeaders.${index}/${base}`.slice(0, 100)),
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: body.length,
        mtime: 0,
        typeflag: 'x',
        linkname: Buffer.alloc(0),
        devmajor: 0,
        devminor: 0,
      }),
      body,
      pad(body.length),
    );
  }
  out.push(ustarHeader(h), content, pad(content.length));
  return out;
}

/** An uncompressed tar (ustar, PAX records where needed) holding exactly `entries`, in order. */
export function layerTar(entries: Entry[]): Buffer {
  const blocks = entries.flatMap((e, i) => entryBlocks(e, i));
  blocks.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(blocks);
}

export function gzip(buf: Buffer): Buffer {
  return gzipSync(buf);
}

export function sha256(buf: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}

export const BUSYBOX = '/bin/busybox';
export const BUSYBOX_APPLETS = [
  'sh', 'ls', 'id', 'cat', 'stat', 'echo', 'sleep', 'test', 'find', 'readlink', 'touch', 'nc',
  'env', 'mkdir', 'rm', 'pwd', 'true', 'false', 'wc', 'head', 'grep', 'whoami', 'hostname', 'ps', 'kill', 'sha256sum',
] as const;

export const PASSWD =
  'root:x:0:0:root:/root:/bin/sh\n' +
  'alice:x:1000:1000:alice:/home/alice:/bin/sh\n' +
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n';
export const GROUP = 'root:x:0:\nalice:x:1000:\nnobody:x:65534:\n';

/** A minimal root: static busybox, applet symlinks, root/alice(1000)/nobody(65534). */
export function busyboxLayerEntries(): Entry[] {
  const dirs: Entry[] = [
    { name: 'bin/', type: 'dir' },
    { name: 'dev/', type: 'dir' },
    { name: 'etc/', type: 'dir' },
    { name: 'home/', type: 'dir' },
    { name: 'home/alice/', type: 'dir', uid: 1000, gid: 1000 },
    { name: 'proc/', type: 'dir', mode: 0o555 },
    { name: 'root/', type: 'dir', mode: 0o700 },
    { name: 'sys/', type: 'dir', mode: 0o555 },
    { name: 'tmp/', type: 'dir', mode: 0o1777 },
  ];
  return [
    ...dirs,
    { name: 'bin/busybox', type: 'file', mode: 0o755, content: readFileSync(BUSYBOX) },
    ...BUSYBOX_APPLETS.map((a): Entry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
    { name: 'etc/passwd', type: 'file', content: PASSWD },
    { name: 'etc/group', type: 'file', content: GROUP },
  ];
}

// ---------------------------------------------------------------------------
// OCI image layout

export const MEDIA = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;

export const REF_NAME = 'org.opencontainers.image.ref.name';

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface ImageSpec {
  /** Goes into index.json's `org.opencontainers.image.ref.name` annotation. */
  tag?: string;
  /** Layer blobs as stored: gzip is recognised by its magic, anything else is taken as a plain tar. */
  layers: Buffer[];
  /** Per layer; default from the content (tar or tar+gzip). */
  layerMediaTypes?: string[];
  /** Override rootfs.diff_ids (needed for zstd layers; or to lie on purpose). */
  diffIds?: string[];
  config?: { Env?: string[]; User?: string; WorkingDir?: string; Entrypoint?: string[]; Cmd?: string[] };
  /** Default: this host's (linux, amd64/arm64). */
  platform?: Platform;
}

export interface LayoutOptions {
  /** Put all images under one nested image index (a manifest list) that index.json names. */
  index?: boolean;
  /** The nested index's ref name (default: the first image's tag, else 'latest'). */
  tag?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

export interface WrittenImage {
  tag?: string;
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
  diffIds: string[];
  /** The exact bytes of the manifest and config blobs. */
  manifestBytes: Buffer;
  configBytes: Buffer;
}

export interface WrittenLayout {
  dir: string;
  images: WrittenImage[];
  /** The nested index (when `index: true`). */
  index?: Descriptor & { tag: string; bytes: Buffer };
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

export function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x' };
  return { architecture: arch[process.arch] ?? process.arch, os: 'linux' };
}

function diffIdOf(layer: Buffer, i: number): string {
  if (layer.subarray(0, 2).equals(GZIP_MAGIC)) return sha256(gunzipSync(layer));
  if (layer.subarray(0, 4).equals(ZSTD_MAGIC)) {
    throw new Error(`layer ${i} is zstd: Node cannot decompress it here, pass diffIds`);
  }
  return sha256(layer);
}

function layerMediaType(layer: Buffer): string {
  if (layer.subarray(0, 2).equals(GZIP_MAGIC)) return MEDIA.layerGzip;
  if (layer.subarray(0, 4).equals(ZSTD_MAGIC)) return MEDIA.layerZstd;
  return MEDIA.layer;
}

async function putBlob(dir: string, mediaType: string, bytes: Buffer): Promise<Descriptor> {
  const digest = sha256(bytes);
  const path = join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  await writeFile(path, bytes);
  return { mediaType, digest, size: bytes.length };
}

const json = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));

/**
 * Write an OCI image layout (oci-layout, index.json, blobs/sha256/*) for
 * `images`. index.json is rewritten; blobs already there are kept.
 */
export async function writeOciLayout(dir: string, images: ImageSpec[], opts: LayoutOptions = {}): Promise<WrittenLayout> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));

  const written: WrittenImage[] = [];
  for (const image of images) {
    const platform = image.platform ?? hostPlatform();
    const layers: Descriptor[] = [];
    for (const [i, layer] of image.layers.entries()) {
      layers.push(await putBlob(dir, image.layerMediaTypes?.[i] ?? layerMediaType(layer), layer));
    }
    const diffIds = image.diffIds ?? image.layers.map((l, i) => diffIdOf(l, i));
    const configBytes = json({
      created: FIXED_MTIME.toISOString(),
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant === undefined ? {} : { variant: platform.variant }),
      config: image.config ?? {},
      rootfs: { type: 'layers', diff_ids: diffIds },
    });
    const config = await putBlob(dir, MEDIA.config, configBytes);
    const manifestBytes = json({ schemaVersion: 2, mediaType: MEDIA.manifest, config, layers });
    const manifest = { ...(await putBlob(dir, MEDIA.manifest, manifestBytes)), platform };
    written.push({ tag: image.tag, manifest, config, layers, diffIds, manifestBytes, configBytes });
  }

  const named = (d: Descriptor, tag: string | undefined): Descriptor => (tag === undefined ? d : { ...d, annotations: { [REF_NAME]: tag } });
  let index: WrittenLayout['index'];
  let top: Descriptor[];
  if (opts.index) {
    const tag = opts.tag ?? images[0]?.tag ?? 'latest';
    const bytes = json({ schemaVersion: 2, mediaType: MEDIA.index, manifests: written.map((w) => w.manifest) });
    const d = await putBlob(dir, MEDIA.index, bytes);
    index = { ...d, tag, bytes };
    top = [named(d, tag)];
  } else {
    top = written.map((w) => named(w.manifest, w.tag));
  }
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: top }));
  return { dir, images: written, index };
}

/** A plain rootfs tarball (the `tar` image source), gzipped when asked. */
export async function rootfsTarball(path: string, entries: Entry[], opts: { gzip?: boolean } = {}): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tar = layerTar(entries);
  await writeFile(path, opts.gzip ? gzip(tar) : tar);
}

/** The test user's /etc/subuid start: container uid N (N >= 1) is host uid start+N-1. */
export function subuidStart(): number {
  const names = [userInfo().username, String(process.getuid?.())];
  for (const line of readFileSync('/etc/subuid', 'utf8').split('\n')) {
    const [name, start] = line.split(':');
    if (name !== undefined && names.includes(name)) return Number(start);
  }
  throw new Error(`no /etc/subuid entry for ${names.join('/')}`);
}

/** cli.md §6.5: layer 0 is its diff id's hex; layer n is sha256 hex of "<chain id n-1> <diff id n hex>". */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const hex = d.replace(/^sha256:/, '');
    const prev = out[out.length - 1];
    out.push(prev === undefined ? hex : createHash('sha256').update(`${prev} ${hex}`).digest('hex'));
  }
  return out;
}
