// Reading a small file of a running container from the host. The container controls
// its files: a symlink there must not lead into the host's tree, and a FIFO or a device
// must not block or flood the daemon. So: no '..', no symlink followed at any step,
// each directory opened through the previous one's fd, regular files only, size capped.
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const FILE_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** `root` is the container's root as the host sees it (`/proc/<pid>/root`); `path` is absolute inside it. */
export async function readContainerFile(root: string, path: string, maxBytes = 1024 * 1024): Promise<string | undefined> {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0 || parts.includes('..')) return undefined;
  let dir: FileHandle | undefined;
  try {
    dir = await open(root, constants.O_RDONLY | constants.O_DIRECTORY);
    for (const part of parts.slice(0, -1)) {
      const next = await open(`/proc/self/fd/${dir.fd}/${part}`, DIR_FLAGS);
      await dir.close();
      dir = next;
    }
    const file = await open(`/proc/self/fd/${dir.fd}/${parts[parts.length - 1]}`, FILE_FLAGS);
    try {
      const st = await file.stat();
      if (!st.isFile() || st.size > maxBytes) return undefined;
      const buf = Buffer.alloc(st.size);
      const { bytesRead } = await file.read(buf, 0, st.size, 0);
      return buf.subarray(0, bytesRead).toString('utf8');
    } finally {
      await file.close();
    }
  } catch {
    return undefined;
  } finally {
    await dir?.close().catch(() => {});
  }
}
