// Where Trellis keeps things on the host. `gdn setup` (root) creates these for a
// user; `gdn server` and the plugins (that user) find them by the same rules.
import { join } from 'node:path';

/** Root-owned, built by scripts/make-rootfs: the busybox tree every user's default image is made from. */
export const ROOTFS_SOURCE = '/var/lib/trellis/rootfs';

export interface UserPaths {
  /** Per-user runtime dir (tmpfs): what XDG_RUNTIME_DIR would be. */
  runtimeDir: string;
  /** Containers' on-disk state, the source of truth. */
  depot: string;
  /** Per-user persistent state. */
  stateDir: string;
  /** The image store (grootfs layout). */
  store: string;
  /** The default rootfs: ROOTFS_SOURCE with its owners mapped into the user's ranges. */
  defaultRootfs: string;
  /** cgroup (v1: below each controller's mount; v2: below the unified mount) delegated to the user. */
  cgroupParent: string;
}

export function userPaths(uid: number, env: NodeJS.ProcessEnv = process.env): UserPaths {
  const xdg = env.XDG_RUNTIME_DIR && env.XDG_RUNTIME_DIR !== '' ? env.XDG_RUNTIME_DIR : `/run/user/${uid}`;
  const runtimeDir = join(xdg, 'gdn');
  const stateDir = `/var/lib/trellis/${uid}`;
  return {
    runtimeDir,
    depot: join(runtimeDir, 'depot'),
    stateDir,
    store: join(stateDir, 'store'),
    defaultRootfs: join(stateDir, 'rootfs'),
    cgroupParent: `garden/${uid}`,
  };
}

/** Setup runs as root on behalf of a user, so it must not take XDG_RUNTIME_DIR from its own env. */
export function userPathsForSetup(uid: number): UserPaths {
  return userPaths(uid, {});
}
