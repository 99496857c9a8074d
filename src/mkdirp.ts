// Creating a directory and its missing parents.
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/**
 * mkdir -p without `recursive: true`: Node's recursive mkdirSync never returns for some
 * paths (under /proc, for one), and a mistyped --depot must give an error, not a hang.
 */
export function ensureDir(dir: string, mode = 0o700): void {
  const missing: string[] = [];
  let p = resolve(dir);
  while (!existsSync(p)) {
    missing.unshift(p);
    const parent = dirname(p);
    if (parent === p) break;
    p = parent;
  }
  for (const m of missing) {
    try {
      mkdirSync(m, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}
