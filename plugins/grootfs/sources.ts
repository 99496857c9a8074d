// Image URLs: which sources this version takes, and where they are on disk.
import { stat } from 'node:fs/promises';
import { isAbsolute, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FailedPrecondition, InvalidArgument, NotImplemented } from '../../src/errors.js';

/** A local directory used as-is as the image's only (read-only) layer. */
export interface DirectorySource {
  kind: 'directory';
  path: string;
}

export type ImageSource = DirectorySource;

const SUPPORTED = 'this version of grootfs takes local directories only (an absolute path or file:///path)';

/** Characters the overlay mount option string cannot carry unescaped. */
export const OVERLAY_UNSAFE = /[,:\\]/;

/** Parses the URL without touching the disk. */
export function parseImageUrl(url: string): ImageSource {
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
  } else if (scheme === 'docker' || scheme === 'oci') {
    throw new NotImplemented(`${scheme}:// images are not supported yet: ${SUPPORTED}`);
  } else {
    throw new NotImplemented(`unsupported image URL scheme \`${scheme}\`: ${SUPPORTED}`);
  }
  if (!isAbsolute(path)) throw new InvalidArgument(`image \`${url}\` is not an absolute path: ${SUPPORTED}`);
  path = normalize(path);
  if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  if (OVERLAY_UNSAFE.test(path)) {
    throw new InvalidArgument(`image path \`${path}\` contains \`,\`, \`:\` or \`\\\`, which an overlay mount cannot take`);
  }
  return { kind: 'directory', path };
}

/** Parses the URL and checks that the source exists and is a directory. */
export async function resolveImageSource(url: string): Promise<ImageSource> {
  const source = parseImageUrl(url);
  let st;
  try {
    st = await stat(source.path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new FailedPrecondition('ERR_TRELLIS_IMAGE_SOURCE', `image source \`${source.path}\` does not exist`);
    }
    throw new FailedPrecondition('ERR_TRELLIS_IMAGE_SOURCE', `image source \`${source.path}\`: ${(err as Error).message}`);
  }
  if (!st.isDirectory()) {
    throw new NotImplemented(`image source \`${source.path}\` is not a directory: tarball images are not supported yet; ${SUPPORTED}`);
  }
  return source;
}
