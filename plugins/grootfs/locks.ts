// Cross-process locks in `<store>/locks`: gdn's in-process store and any grootfs
// commands it (or a user) runs share one store. proper-lockfile's locks are
// directories refreshed while held, so a lock left by a killed process goes stale
// and is taken over instead of blocking the store forever.
import { lock } from 'proper-lockfile';
import { join } from 'node:path';

const STALE_MS = 20_000;

export async function withLock<T>(locksDir: string, name: string, fn: () => Promise<T>, waitMs = 15 * 60_000): Promise<T> {
  let compromised: Error | undefined;
  const release = await lock(join(locksDir, name), {
    realpath: false,
    // The default throws from a timer, which would take gdn down; the holder finds out when it releases.
    onCompromised: (err) => {
      compromised = err;
    },
    stale: STALE_MS,
    update: STALE_MS / 4,
    retries: { retries: Math.ceil(waitMs / 250), minTimeout: 20, maxTimeout: 250, factor: 1.5 },
  });
  try {
    const out = await fn();
    if (compromised) throw new Error(`lock ${name} was taken over while held: ${compromised.message}`);
    return out;
  } finally {
    await release().catch(() => undefined);
  }
}
