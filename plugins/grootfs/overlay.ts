// The overlay driver without mounting: grootfs's `create.without_mount` mode. The
// image dir holds the upper and work dirs; the runtime mounts the overlay inside
// the container's user namespace, where an ordinary user may.
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { OciMount } from './store.js';

export interface OverlayDirs {
  imageDir: string;
  upperDir: string;
  workDir: string;
  rootfs: string;
}

export function overlayDirs(imageDir: string): OverlayDirs {
  return { imageDir, upperDir: join(imageDir, 'diff'), workDir: join(imageDir, 'workdir'), rootfs: join(imageDir, 'rootfs') };
}

/**
 * `lowerdir=<top>:...:<base>,upperdir=..,workdir=..,userxattr` — lower dirs top
 * first. `userxattr`: inside a user namespace overlay reads `user.overlay.*`
 * (opaque dirs from unpacked layers) since `trusted.*` is out of reach there.
 */
export function overlayMountOptions(lowerDirs: string[], upperDir: string, workDir: string): string {
  if (lowerDirs.length === 0) throw new Error('overlay needs at least one lower dir');
  return `lowerdir=${lowerDirs.join(':')},upperdir=${upperDir},workdir=${workDir},userxattr`;
}

export function overlayMount(lowerDirs: string[], dirs: OverlayDirs): OciMount {
  return {
    destination: '/',
    type: 'overlay',
    source: 'overlay',
    options: [overlayMountOptions(lowerDirs, dirs.upperDir, dirs.workDir)],
  };
}

/**
 * Makes the image dir (0700) and its diff/workdir/rootfs (0755). Fails with EEXIST
 * when the image dir is already there, which is how an existing id is detected.
 */
export async function makeOverlayDirs(dirs: OverlayDirs): Promise<void> {
  await mkdir(dirs.imageDir, { mode: 0o700 });
  await Promise.all([
    mkdir(dirs.upperDir, { mode: 0o755 }),
    mkdir(dirs.workDir, { mode: 0o755 }),
    mkdir(dirs.rootfs, { mode: 0o755 }),
  ]);
  // The overlay's root takes the upper dir's mode: whatever the umask, `/` must be 0755.
  await chmod(dirs.upperDir, 0o755);
}

/**
 * The kernel leaves `workdir/work` mode 0000 after a mount; it is the user's own, so
 * opening it up lets a plain `rm` finish without a user namespace when nothing
 * else in the image belongs to subordinate ids.
 */
export async function openWorkDir(dirs: OverlayDirs): Promise<void> {
  await chmod(join(dirs.workDir, 'work'), 0o700).catch(() => undefined);
}
