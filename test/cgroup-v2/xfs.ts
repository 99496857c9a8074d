// Disk limits on the XFS store (issue #11), in the Debian 12 guest: Debian's kernel has
// XFS quota (this project's CI host's does not). scripts/guest/guest-main made the store
// with `gdn setup --store-driver xfs` and runs this as the ordinary user; it starts its
// own gdn on that store (a transient user service, KillMode=process as gdn.service), so
// the default store's gdn.service is left alone. Root prepares, and checks afterwards,
// what the user cannot see: another owner's dir in the store, a foreign project's limit,
// the gate's records. Prints "ok - name" / "not ok - name: why", ends "N passed, M failed".
//
// Environment: XFS_STORE (the store), XFS_FOREIGN_PROJECT (a project id root limited, not
// the user's), XFS_ROOT_DIR (an image dir root made in the store, root-owned).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { GardenClient } from '../../src/client/client.js';
import { DiskLimitScope, type ContainerSpec } from '../../src/client/types.js';
import { runAndWait, sh, spec } from '../integration/harness.js';
import { assert, eq, eventually } from './checks.js';

const STORE = process.env.XFS_STORE ?? '';
const FOREIGN = process.env.XFS_FOREIGN_PROJECT ?? '';
const ROOT_DIR = process.env.XFS_ROOT_DIR ?? '';
const GDN = process.env.GDN_BIN ?? '/usr/local/bin/gdn';
const GATE = '/usr/local/libexec/trellis/cni-gate';
const uid = process.getuid!();
const MiB = 1024 * 1024;
const QUOTA_ERROR = /Disk quota exceeded|No space left on device/;
/** The image's bytes (metrics' total less exclusive), from the first limited container. */
let imageBytes = 0;


const dir = mkdtempSync('/tmp/gdn-xfs-');
const sock = join(dir, 'sock');
let unitN = 0;
let client = new GardenClient(sock);

/** gdn on the XFS store as a transient user service; a new unit each start (the old one's conmons stay in it). */
async function startGdn(): Promise<void> {
  unitN++;
  const r = spawnSync(
    'systemd-run',
    ['--user', '--quiet', `--unit=trellis-xfs-${unitN}`, '-p', 'Delegate=yes', '-p', 'KillMode=process', GDN, 'server', '--bind-socket', sock, '--depot', join(dir, 'depot'), '--store', STORE],
    { encoding: 'utf8' },
  );
  eq(r.status, 0, `systemd-run gdn (${r.stderr})`);
  // The client takes a path for a unix socket only once it exists: a new one each try.
  assert(await eventually(async () => { client = new GardenClient(sock); await client.ping(); return true; }, 120_000, 500), 'the XFS gdn answers');
}
function stopGdn(): void {
  spawnSync('systemctl', ['--user', 'stop', `trellis-xfs-${unitN}`], { stdio: 'ignore' });
  spawnSync('rm', ['-f', sock]);
}
function gdnLog(): string {
  return spawnSync('journalctl', ['--user', '-u', `trellis-xfs-${unitN}`, '--no-pager', '-n', '30'], { encoding: 'utf8' }).stdout;
}

const limited = (limits: { bytes?: number; inodes?: number; scope: DiskLimitScope }, extra: ContainerSpec = {}): ContainerSpec =>
  spec({ ...extra, limits: { disk_limits: { byte_soft: limits.bytes, byte_hard: limits.bytes, inode_hard: limits.inodes, scope: limits.scope } } });
const write = (handle: string, path: string, mib: number, user = 'root') =>
  runAndWait(client, handle, sh(`dd if=/dev/zero of=${path} bs=1M count=${mib} 2>&1; r=$?; sync; exit $r`, { user }));
const projectOf = (handle: string): number | undefined =>
  (JSON.parse(readFileSync(join(STORE, 'images', handle, 'image.json'), 'utf8')) as { quota?: { project?: number } }).quota?.project;

/** Destroy, then its end: the reply comes at the journal (issue #10); the depot entry goes last. */
async function destroy(h: string): Promise<void> {
  await client.destroy(h);
  const depot = join(dir, 'depot');
  const over = () => !existsSync(join(depot, h)) && !readdirSync(depot).some((e) => e.startsWith(`.gone-${h}-`));
  assert(await eventually(over, 30_000), `the teardown of ${h} ended`);
}

function gate(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(GATE, ['quota', ...args], { env: {}, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
function refused(args: string[], why: RegExp): void {
  const r = gate(args);
  eq(r.code, 2, `exit status of quota ${args.join(' ')} (${r.stderr.trim()})`);
  assert(why.test(r.stderr), `quota ${args.join(' ')}: ${r.stderr.trim()} does not match ${why}`);
  eq(r.stdout, '', 'nothing on stdout');
}
/** A dir's project id, as xfs_io reads it (FS_IOC_FSGETXATTR). */
const projid = (path: string): number => Number(/projid = (\d+)/.exec(execFileSync('xfs_io', ['-r', '-c', 'lsproj', path], { encoding: 'utf8' }))?.[1] ?? NaN);

// ---------------------------------------------------------------------------

const tests: Array<[string, () => Promise<void>]> = [];
const test = (name: string, f: () => Promise<void>) => tests.push([name, f]);

test('the XFS store: gdn says the limits are enforced, the store is mounted prjquota,nodev,nosuid', async () => {
  await startGdn();
  const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === STORE);
  assert(line !== undefined && line.includes(' - xfs '), `${STORE} is a mounted XFS: ${line}`);
  for (const o of ['nodev', 'nosuid', 'prjquota']) assert(line.includes(o), `${o} in ${line}`);
  assert(await eventually(() => gdnLog().includes('disk-limits.enforced'), 10_000), `gdn logs disk-limits.enforced: ${gdnLog()}`);
});

test('exclusive 24 MiB, a non-root writer: just under fits, just over fails (EDQUOT); metrics from the quota', async () => {
  const h = await client.create(limited({ bytes: 24 * MiB, scope: DiskLimitScope.Exclusive }));
  eq((await runAndWait(client, h, sh('mkdir -m 1777 /w'))).code, 0, 'mkdir /w');
  const under = await write(h, '/w/a', 20, 'alice');
  eq(under.code, 0, `20 MiB in 24 (${under.stdout})`);
  const m = (await client.metrics(h)).DiskStat;
  assert(Math.abs(Number(m.ExclusiveBytesUsed) - 20 * MiB) < MiB, `ExclusiveBytesUsed ${m.ExclusiveBytesUsed} ~ 20 MiB`);
  assert(Number(m.TotalBytesUsed) > Number(m.ExclusiveBytesUsed), `TotalBytesUsed ${m.TotalBytesUsed} counts the image too`);
  imageBytes = Number(m.TotalBytesUsed) - Number(m.ExclusiveBytesUsed);
  assert(Number(m.ExclusiveInodesUsed) >= 2 && Number(m.ExclusiveInodesUsed) < 50, `ExclusiveInodesUsed ${m.ExclusiveInodesUsed}`);
  const over = await write(h, '/w/b', 8, 'alice');
  assert(over.code !== 0 && QUOTA_ERROR.test(over.stdout), `8 more MiB: exit ${over.code}, ${over.stdout}`);
  await destroy(h);
});

test('total: the image counts; image + 12 MiB takes 8 MiB and not 16 more; a total below the image is refused at create', async () => {
  assert(imageBytes > 512 * 1024, `image bytes ${imageBytes}`);
  const h = await client.create(limited({ bytes: imageBytes + 12 * MiB, scope: DiskLimitScope.Total }));
  eq((await write(h, '/a', 8)).code, 0, '8 MiB above the image');
  const over = await write(h, '/b', 16);
  assert(over.code !== 0 && QUOTA_ERROR.test(over.stdout), `16 more: exit ${over.code}, ${over.stdout}`);
  await destroy(h);
  let err: Error | undefined;
  try {
    await client.create(limited({ bytes: 64 * 1024, scope: DiskLimitScope.Total }));
  } catch (e) {
    err = e as Error;
  }
  assert(err !== undefined && /exceed disk quota/.test(err.message), `create below the image: ${err?.message}`);
});

test('inode_hard 100: the 100-odd-th file fails (EDQUOT), metrics count the inodes; inodes alone, no byte limit', async () => {
  const h = await client.create(limited({ inodes: 100, scope: DiskLimitScope.Exclusive }));
  const r = await runAndWait(client, h, sh('mkdir /many && i=0; while [ $i -lt 300 ]; do touch /many/f$i 2>/tmp/err || break; i=$((i+1)); done; echo $i; cat /tmp/err'));
  const made = Number(r.stdout.split('\n')[0]);
  // the image's own dirs and files (diff, workdir, its work dir, image.json, /many, ...) count too
  assert(made >= 80 && made < 100, `files made before the limit: ${made} (${r.stdout})`);
  assert(QUOTA_ERROR.test(r.stdout), `the error: ${r.stdout}`);
  const m = (await client.metrics(h)).DiskStat;
  assert(Number(m.ExclusiveInodesUsed) >= made && Number(m.ExclusiveInodesUsed) <= 100, `ExclusiveInodesUsed ${m.ExclusiveInodesUsed}`);
  eq((await write(h, '/many/f0', 64)).code, 0, 'bytes are not limited');
  await destroy(h);
});

test('destroy releases: the project id is reusable, nothing of the image is left, the gate knows it no more', async () => {
  const a = await client.create(limited({ bytes: 16 * MiB, scope: DiskLimitScope.Exclusive }));
  const pa = projectOf(a);
  assert(pa !== undefined && pa > 0, `project of ${a}: ${pa}`);
  eq(projid(join(STORE, 'images', a, 'diff')), pa, 'the diff dir carries the project');
  eq((await write(a, '/x', 8)).code, 0, 'a write');
  await destroy(a);
  // destroy replies at the journal (issue #10): the image and its project go with the teardown
  assert(await eventually(() => !existsSync(join(STORE, 'images', a)), 30_000), 'the image dir is gone');
  refused(['usage', STORE, a], /has no XFS quota/);
  const b = await client.create(limited({ bytes: 16 * MiB, scope: DiskLimitScope.Exclusive }));
  eq(projectOf(b), pa, 'the next limited container gets the freed id');
  const m = (await client.metrics(b)).DiskStat;
  assert(Number(m.ExclusiveBytesUsed) < MiB, `it starts empty: ${m.ExclusiveBytesUsed}`);
  const over = await write(b, '/x', 24);
  assert(over.code !== 0 && QUOTA_ERROR.test(over.stdout), `its own limit holds: ${over.stdout}`);
  await destroy(b);
});

test('a restarted gdn keeps enforcing: a limited container made before the restart is held after it', async () => {
  const h = await client.create(limited({ bytes: 20 * MiB, scope: DiskLimitScope.Exclusive }));
  stopGdn();
  await startGdn();
  eq((await client.list()).includes(h), true, 'the container is listed after the restart');
  const r = await write(h, '/big', 40);
  assert(r.code !== 0 && QUOTA_ERROR.test(r.stdout), `40 MiB in 20: exit ${r.code}, ${r.stdout}`);
  const m = (await client.metrics(h)).DiskStat;
  assert(Number(m.ExclusiveBytesUsed) > 16 * MiB && Number(m.ExclusiveBytesUsed) <= 21 * MiB, `ExclusiveBytesUsed ${m.ExclusiveBytesUsed}`);
  await destroy(h);
});

test('gate attacks on XFS: root\'s dir in my store, links, paths, the store root, foreign projects, huge limits', async () => {
  const images = join(STORE, 'images');
  // a dir of another owner (root made it) inside my own store
  assert(ROOT_DIR !== '' && existsSync(join(images, ROOT_DIR)), `root's image dir ${ROOT_DIR}`);
  refused(['limit', STORE, ROOT_DIR, 'exclusive', '1048576'], /is not yours/);
  // a store root did not list for me (another user's, root's)
  refused(['limit', '/var/lib/trellis/0/store', 'x', 'exclusive', '1048576'], /is not a quota store of uid/);
  // paths and the store root itself as ids
  for (const id of ['.', '..', '../..', 'a/b', '/', '']) refused(['limit', STORE, id, 'exclusive', '1048576'], /bad id/);
  // a link in place of the image dir, or of its diff
  const outside = mkdtempSync(join(dir, 'outside-'));
  for (const d of ['diff', 'workdir', 'rootfs']) mkdirSync(join(outside, d));
  symlinkSync(outside, join(images, 'lnk'));
  refused(['limit', STORE, 'lnk', 'exclusive', '1048576'], /a symlink or not a directory/);
  mkdirSync(join(images, 'half'));
  for (const d of ['workdir', 'rootfs']) mkdirSync(join(images, 'half', d));
  symlinkSync(join(outside, 'diff'), join(images, 'half', 'diff'));
  refused(['limit', STORE, 'half', 'exclusive', '1048576'], /a symlink or not a directory/);
  eq(projid(outside), 0, 'the link target was not tagged');
  // huge or malformed limits; a total scope (XFS counts writes only)
  refused(['limit', STORE, 'half', 'exclusive', String(2 ** 50 + 1)], /bad limit/);
  refused(['limit', STORE, 'half', 'exclusive', '1048576', String(2 ** 32 + 1)], /bad inode limit/);
  refused(['limit', STORE, 'half', 'exclusive', '0'], /bad limit/);
  // a foreign project id set on my own dir first: the gate gives it one of mine, the foreign one is untouched
  mkdirSync(join(images, 'forged'));
  for (const d of ['diff', 'workdir', 'rootfs']) mkdirSync(join(images, 'forged', d));
  execFileSync('xfs_io', ['-r', '-c', `chproj ${FOREIGN}`, join(images, 'forged', 'diff')]);
  eq(projid(join(images, 'forged', 'diff')), Number(FOREIGN), 'the owner may set a project id on its own dir (the kernel allows it)');
  refused(['usage', STORE, 'forged'], /has no XFS quota/);
  eq(gate(['release', STORE, 'forged']).code, 0, 'release of an id never limited: nothing to do');
  const r = gate(['limit', STORE, 'forged', 'exclusive', '1048576']);
  eq(r.code, 0, `limit forged (${r.stderr})`);
  const mine = Number(/^xfs (\d+)$/.exec(r.stdout.trim())?.[1]);
  assert(mine !== Number(FOREIGN) && mine > 0, `the gate's project ${r.stdout}`);
  eq(projid(join(images, 'forged', 'diff')), mine, 'the dir now carries the gate\'s project');
  eq(gate(['release', STORE, 'forged']).code, 0, 'release forged');
  for (const n of ['lnk', 'half/diff']) spawnSync('rm', [join(images, n)]);
  for (const n of ['half', 'forged']) spawnSync('rm', ['-rf', join(images, n)]);
});

// ---------------------------------------------------------------------------

let passed = 0;
let failed = 0;
try {
  for (const [name, f] of tests) {
    const t0 = Date.now();
    try {
      await f();
      passed++;
      console.log(`ok - xfs: ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    } catch (err) {
      failed++;
      console.log(`not ok - xfs: ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${(err as Error).stack ?? err}`);
      console.log(gdnLog().split('\n').map((l) => `    ${l}`).join('\n'));
    }
  }
} finally {
  for (const h of await client.list().catch(() => [] as string[])) await client.destroy(h).catch(() => undefined);
  stopGdn();
}
void uid;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
