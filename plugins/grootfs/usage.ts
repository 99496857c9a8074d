// Apparent disk usage of a tree (like `du -sb` without the top dir): lstat sizes,
// hard links counted once, whatever cannot be read skipped.
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

export async function treeBytes(root: string, seen: Set<string> = new Set()): Promise<number> {
  let total = 0;
  const pending = [root];
  while (pending.length > 0) {
    const dir = pending.pop() as string;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      continue;
    }
    const stats = await Promise.all(
      names.map(async (name) => {
        const path = join(dir, name);
        try {
          return { path, st: await lstat(path, { bigint: false }) };
        } catch {
          return undefined;
        }
      }),
    );
    for (const e of stats) {
      if (e === undefined) continue;
      const { st, path } = e;
      if (st.isDirectory()) pending.push(path);
      if (st.nlink > 1 && !st.isDirectory()) {
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
      }
      total += st.size;
    }
  }
  return total;
}
