// Image URLs (cli.md §6.6): which source each one names, and how it resolves.
//   /abs/dir, file:///abs/dir   a local directory used as the image (Trellis)
//   /abs/rootfs.tar[.gz]        a rootfs tarball: one layer
//   oci:///abs/layout[:ref]     an OCI image layout
//   docker://host[:port]/repo[:tag|@digest], docker:///repo[:tag]   a registry
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { isAbsolute, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FailedPrecondition, InvalidArgument } from '../../src/errors.js';
import { MEDIA_TYPES, type ResolvedImage } from './image.js';

/** Characters the overlay mount option string cannot carry unescaped. */
export const OVERLAY_UNSAFE = /[,:\\]/;

export type ImageUrl =
  | { kind: 'path'; path: string }
  | { kind: 'oci'; url: string }
  | { kind: 'docker'; url: string };

export type ResolvedSource = { kind: 'directory'; path: string; mtimeNs: bigint } | { kind: 'layers'; image: ResolvedImage };

/** Parses the URL without touching the disk. */
export function parseImageUrl(url: string): ImageUrl {
  if (url === '') throw new InvalidArgument('image was not specified');
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  let path: string;
  if (scheme === undefined) {
    path = url;
  } else if (scheme === 'file') {
    try {
      path = fileURLToPath(url);
    } catch (err) {
      throw new InvalidArgument(`invalid image URL \`${url}\`: ${(err as Error).message}`);
    }
  } else if (scheme === 'docker') {
    return { kind: 'docker', url };
  } else if (scheme === 'oci') {
    return { kind: 'oci', url };
  } else {
    throw new InvalidArgument(`unsupported image URL scheme \`${scheme}\`: use docker://, oci://, or an absolute path to a directory or a tarball`);
  }
  if (!isAbsolute(path)) throw new InvalidArgument(`image \`${url}\` is not an absolute path`);
  path = normalize(path);
  if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  return { kind: 'path', path };
}

/** cli.md §6.6: a tarball's volume is named by sha256 of "<path>-<mtime in ns>". */
export function tarballChainID(path: string, mtimeNs: bigint): string {
  return createHash('sha256').update(`${path}-${mtimeNs}`).digest('hex');
}

/** A local path: a directory is the image as-is, a file is a rootfs tarball (optionally gzipped). */
export async function resolvePath(path: string): Promise<ResolvedSource> {
  let st;
  try {
    st = await stat(path, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new FailedPrecondition('ERR_TRELLIS_IMAGE_SOURCE', `Image source doesn't exist: \`${path}\``);
    throw new FailedPrecondition('ERR_TRELLIS_IMAGE_SOURCE', `image source \`${path}\`: ${(err as Error).message}`);
  }
  if (st.isDirectory()) {
    if (OVERLAY_UNSAFE.test(path)) {
      throw new InvalidArgument(`image path \`${path}\` contains \`,\`, \`:\` or \`\\\`, which an overlay mount cannot take`);
    }
    return { kind: 'directory', path, mtimeNs: st.mtimeNs };
  }
  if (!st.isFile()) throw new InvalidArgument(`invalid base image: \`${path}\` is neither a directory nor a tar file`);
  const image: ResolvedImage = {
    name: path,
    chainIDOverride: tarballChainID(path, st.mtimeNs),
    layers: [
      {
        mediaType: MEDIA_TYPES.ociLayer,
        baseDirectory: '',
        fetch: async () => ({ path, release: async () => undefined }),
      },
    ],
    config: { env: [], user: '', workingDir: '', diffIDs: [] },
  };
  return { kind: 'layers', image };
}
