// The gate's `quota` subcommand (issue #11) attacked by a second ordinary user. scripts/test
// runs this suite as `trellis-intruder`, whose default store is a btrfs quota store of its
// own, after it gave the victim (`trellis-test`) a limited image `qvictim` in its quota
// store: root compares that qgroup's limit and the gate's record of it before and after.
//
// Every attack must be refused (exit 2, one `cni-gate: ` line, nothing on stdout) and
// change nothing this user can see: the limits of its own qgroups. A positive control
// (a limit on the intruder's own image, held by the kernel, then released) shows that the
// refusals are not just a broken gate.

import { expect } from 'chai';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { link, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_GATE } from '../../plugins/networker/config.js';

const GATE = process.env.TRELLIS_GATE_UNDER_TEST || DEFAULT_GATE;
const me = process.getuid?.() ?? 0;
const victimUid = (): string => {
  const v = process.env.TRELLIS_VICTIM_UID;
  if (v === undefined || v === '') throw new Error('TRELLIS_VICTIM_UID is not set: scripts/test passes it to this suite');
  return v;
};
const MiB = 1024 * 1024;

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function gate(args: string[]): Ran {
  const r = spawnSync(GATE, ['quota', ...args], { env: {}, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const btrfs = (...args: string[]) => execFileSync('btrfs', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** My own quota store: the first one root listed for me. */
function myStore(): string {
  const text = readFileSync(`/etc/trellis/quota/${me}.conf`, 'utf8');
  const store = text.split('\n').find((l) => l.startsWith('store='))?.slice(6);
  if (!store) throw new Error(`/etc/trellis/quota/${me}.conf lists no store: gdn setup gives every user a quota store`);
  return store;
}

/** Every qgroup limit of my store's filesystem, from sysfs: what a successful attack on my side would change. */
function myLimits(store: string): Record<string, string> {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === store && l.includes(' - btrfs '));
  const dev = line?.split(' - ')[1]?.split(' ')[1]?.split('/').pop();
  const uuid = readdirSync('/sys/fs/btrfs').find((u) => dev !== undefined && existsSync(`/sys/fs/btrfs/${u}/devices/${dev}`));
  if (uuid === undefined) throw new Error(`${store} is not a mounted btrfs`);
  const out: Record<string, string> = {};
  for (const q of readdirSync(`/sys/fs/btrfs/${uuid}/qgroups`).filter((n) => /^\d+_\d+$/.test(n))) {
    const d = `/sys/fs/btrfs/${uuid}/qgroups/${q}`;
    out[q] = ['max_exclusive', 'max_referenced', 'limit_flags'].map((f) => readFileSync(`${d}/${f}`, 'utf8').trim()).join(' ');
  }
  return out;
}

/** images/<id>/rootfs as a fresh subvolume of my store. */
async function ownImage(store: string, id: string): Promise<string> {
  await mkdir(join(store, 'images', id), { recursive: true });
  btrfs('subvolume', 'create', join(store, 'images', id, 'rootfs'));
  return join(store, 'images', id, 'rootfs');
}

async function removeImage(store: string, id: string): Promise<void> {
  const rootfs = join(store, 'images', id, 'rootfs');
  try {
    btrfs('subvolume', 'delete', rootfs);
  } catch {
    // not a subvolume (an attack's link or file)
  }
  await rm(join(store, 'images', id), { recursive: true, force: true });
}

/** Swaps two names in a loop (renameat2 RENAME_EXCHANGE) until killed. */
const SWAP_C = String.raw`#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
  (void)argc;
  for (;;) renameat2(AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
}
`;

describe('cni-gate quota attacks (issue #11): another user cannot limit, or release, what is not its own', function () {
  this.timeout(120_000);
  let store: string;
  let work: string;
  const victimStore = (): string => `/var/lib/trellis/${victimUid()}/quota-store`;

  before(async function () {
    store = myStore();
    work = await mkdtemp(join(tmpdir(), 'quota-attacks-'));
  });

  after(async function () {
    await rm(work, { recursive: true, force: true });
  });

  function refused(args: string[], why: RegExp): void {
    const before = myLimits(store);
    const r = gate(args);
    const what = `cni-gate quota ${JSON.stringify(args)}`;
    expect(r.code, `${what}: exit status (stderr ${JSON.stringify(r.stderr)})`).to.equal(2);
    expect(r.stdout, `${what}: stdout`).to.equal('');
    expect(r.stderr, `${what}: stderr`).to.match(/^cni-gate: [^\n]*\n$/);
    expect(r.stderr, `${what}: the reason`).to.match(why);
    expect(myLimits(store), `${what}: my qgroups' limits`).to.deep.equal(before);
  }

  it('the control: a limit on my own image holds (EDQUOT), and release lifts it', async function () {
    const rootfs = await ownImage(store, 'qcontrol');
    try {
      const r = gate(['limit', store, 'qcontrol', 'exclusive', String(8 * MiB)]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/^[0-9a-f]{32} \d+\n$/);
      const dd = spawnSync('dd', ['if=/dev/zero', `of=${join(rootfs, 'f')}`, 'bs=1M', 'count=16'], { encoding: 'utf8' });
      expect(dd.status).to.not.equal(0);
      expect(dd.stderr).to.match(/Disk quota exceeded/);
      expect(gate(['release', store, 'qcontrol']).code).to.equal(0);
      const again = spawnSync('dd', ['if=/dev/zero', `of=${join(rootfs, 'f')}`, 'bs=1M', 'count=16'], { encoding: 'utf8' });
      expect(again.status, again.stderr).to.equal(0);
      expect(gate(['release', store, 'qcontrol']).code, 'release twice').to.equal(0);
    } finally {
      await removeImage(store, 'qcontrol');
    }
  });

  it("another user's store, or any path root did not list for me, is refused", function () {
    refused(['limit', victimStore(), 'qvictim', 'exclusive', '1048576'], /is not a quota store of uid/);
    refused(['release', victimStore(), 'qvictim'], /is not a quota store of uid/);
    refused(['limit', `${store}/images`, 'qvictim', 'exclusive', '1048576'], /is not a quota store of uid/);
    // the directory above my store (root's), and so the store's own subvolume through it
    refused(['limit', `/var/lib/trellis/${me}`, 'store', 'exclusive', '1048576'], /is not a quota store of uid/);
    refused(['limit', `${store}/`, 'x', 'exclusive', '1048576'], /bad store/);
    refused(['limit', `${store}/../../${victimUid()}/quota-store`, 'qvictim', 'exclusive', '1048576'], /bad store/);
    refused(['limit', 'quota-store', 'x', 'exclusive', '1048576'], /bad store/);
  });

  it('ids that are paths, or qgroup ids, are refused', function () {
    for (const id of ['..', '.', '../x', `../../../${victimUid()}/quota-store/images/qvictim`, 'a/b', '0/256', '/', '', 'x'.repeat(256), 'a\nb', 'a\u0001b']) {
      refused(['limit', store, id, 'exclusive', '1048576'], /bad id/);
      refused(['release', store, id], /bad id/);
    }
    // any other name is a name: only an image of my own store can be found under it
    for (const id of ['-x', 'x'.repeat(255), '5', 'qvictim']) refused(['limit', store, id, 'exclusive', '1048576'], /no image/);
    refused(['limit', store, 'x', 'exclusive', '1048576', '0/5'], /bad inode limit/);
    refused(['limit', store, 'x', 'exclusive', '1048576', '100', '0/5'], /wrong number of arguments/);
    refused(['release', store, 'x', '256'], /wrong number of arguments/);
  });

  it('huge, negative, zero or malformed limits, and unknown scopes, are refused', function () {
    for (const bytes of ['-1', '0', '-0', '007', '1e9', '0x100000', ' 1048576', '1048576 ', '18446744073709551615', '18446744073709551616', String(2 ** 50 + 1), '99999999999999999999999', '']) {
      refused(['limit', store, 'x', 'exclusive', bytes], /bad limit/);
    }
    for (const inodes of ['0', '-1', '007', '4294967297', '1e3', ' 5', '']) refused(['limit', store, 'x', 'exclusive', '1048576', inodes], /bad inode limit/);
    // an inode limit on btrfs (qgroups count bytes) is refused by the gate, whatever the image
    refused(['limit', store, 'x', 'exclusive', '1048576', '100'], /inode limits need an XFS store|no image/);
    refused(['usage', store, 'x'], /quota usage is for XFS stores/);
    refused(['limit', store, 'x', 'referenced', '1048576'], /bad scope/);
    refused(['limit', store, 'x', '', '1048576'], /bad scope/);
    refused(['set', store, 'x'], /unknown quota command/);
    refused([], /usage/);
  });

  it("a link to the victim's image, in place of an image dir or its rootfs, is refused", async function () {
    const victimImage = `${victimStore()}/images/qvictim`;
    await symlink(victimImage, join(store, 'images', 'qlink'));
    await mkdir(join(store, 'images', 'qlink2'));
    await symlink(`${victimImage}/rootfs`, join(store, 'images', 'qlink2', 'rootfs'));
    try {
      refused(['limit', store, 'qlink', 'exclusive', '1048576'], /a symlink or not a directory/);
      refused(['limit', store, 'qlink2', 'exclusive', '1048576'], /a symlink or not a directory/);
    } finally {
      await rm(join(store, 'images', 'qlink'), { force: true });
      await rm(join(store, 'images', 'qlink2'), { recursive: true, force: true });
    }
  });

  it('a hard link or a plain directory as rootfs is refused', async function () {
    await mkdir(join(store, 'images', 'qhard'));
    // a hard link across filesystems fails, so the file is made in the store first
    await writeFile(join(store, 'tmp', `qfile-${process.pid}`), 'x');
    await link(join(store, 'tmp', `qfile-${process.pid}`), join(store, 'images', 'qhard', 'rootfs'));
    await mkdir(join(store, 'images', 'qplain', 'rootfs'), { recursive: true });
    try {
      refused(['limit', store, 'qhard', 'exclusive', '1048576'], /a symlink or not a directory/);
      refused(['limit', store, 'qplain', 'exclusive', '1048576'], /not a btrfs subvolume/);
    } finally {
      await rm(join(store, 'images', 'qhard'), { recursive: true, force: true });
      await rm(join(store, 'images', 'qplain'), { recursive: true, force: true });
      await rm(join(store, 'tmp', `qfile-${process.pid}`), { force: true });
    }
  });

  it("the store's images dir swapped for a link to the victim's is refused", async function () {
    const images = join(store, 'images');
    const aside = join(store, `images.aside-${process.pid}`);
    execFileSync('mv', ['-T', images, aside]);
    try {
      await symlink(`${victimStore()}/images`, images);
      refused(['limit', store, 'qvictim', 'exclusive', '1048576'], /a symlink or not a directory/);
      // release acts only on what the gate recorded for me: nothing here, so nothing is done
      const before = myLimits(store);
      const r = gate(['release', store, 'qvictim']);
      expect([r.code, r.stdout, r.stderr]).to.deep.equal([0, '', '']);
      expect(myLimits(store)).to.deep.equal(before);
    } finally {
      await rm(images, { force: true });
      execFileSync('mv', ['-T', aside, images]);
    }
  });

  it("a rootfs swapped mid-call, back and forth with a link to the victim's: only my own subvolume is ever limited", async function () {
    const rootfs = await ownImage(store, 'qrace');
    const mine = Number(btrfs('inspect-internal', 'rootid', rootfs).trim());
    const other = join(store, 'images', 'qrace', 'other');
    await symlink(`${victimStore()}/images/qvictim/rootfs`, other);
    execFileSync('gcc', ['-O2', '-o', join(work, 'swap'), '-x', 'c', '-'], { input: SWAP_C });
    let swapper: ChildProcess | undefined;
    try {
      swapper = spawn(join(work, 'swap'), [rootfs, other], { stdio: 'ignore' });
      let limitedMine = 0;
      let refusedLink = 0;
      for (let i = 0; i < 150; i++) {
        const r = gate(['limit', store, 'qrace', 'exclusive', String(4 * MiB + i)]);
        if (r.code === 0) {
          expect(Number(r.stdout.trim().split(' ')[1]), 'the subvolume limited').to.equal(mine);
          limitedMine++;
        } else {
          expect(r.code, r.stderr).to.equal(2);
          expect(r.stderr).to.match(/^cni-gate: [^\n]*(symlink|no image)[^\n]*\n$/);
          refusedLink++;
        }
      }
      expect(limitedMine + refusedLink).to.equal(150);
    } finally {
      swapper?.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 100));
      // the swapper left the subvolume under one name and the link under the other
      for (const p of [rootfs, other]) {
        if (lstatSync(p).isSymbolicLink()) await rm(p, { force: true });
        else btrfs('subvolume', 'delete', p);
      }
      gate(['release', store, 'qrace']);
      await rm(join(store, 'images', 'qrace'), { recursive: true, force: true });
    }
  });
});
