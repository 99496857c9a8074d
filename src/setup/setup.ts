// `gdn setup`: everything root must do once (per boot) so that a user can run
// `gdn server` rootless. Every step checks before it acts, so running it again
// changes nothing and says so.
import { readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { FailedPrecondition, InvalidArgument } from '../errors.js';
import { buildMappings, formatMapping, nextFreeStart, parseSubIds, primaryRange, type IdMapping } from '../idmap/subid.js';
import { ROOTFS_SOURCE, userPathsForSetup } from '../paths.js';
import { ImageStore } from '../../plugins/grootfs/store.js';
import { enableQuota, kernelHasBtrfs } from '../../plugins/grootfs/btrfs.js';
import { nextProjectRange, parseProjectRange, parseQuotaConf, QUOTA_CONF_DIR, quotaConf, type ProjectRange } from '../../plugins/grootfs/quota.js';
import { kernelHasXfsQuota } from '../../plugins/grootfs/xfs.js';
import { readdirSync } from 'node:fs';
import { delegateCgroups, hierarchyLabel, parseMountinfo, planCgroups } from './cgroups.js';
import { ensureRootDir, ensureUserDir, lstatOrUndefined, readTextOrEmpty, writeFileAtomic, type Owner } from './host-files.js';
import { importRootfs } from './rootfs.js';
import { ensureNetwork } from './network.js';
import { checkSubIdCount, MAX_SUBID, planSubIds, RANGE_SIZE, subIdFloor, userName, type SubIdPlan } from './subids.js';
import { installSystemd, readRecords, RECORD_DIR, recordName, thisGdn, writeRecord } from './systemd.js';

export type LogLevel = 'debug' | 'info' | 'error' | 'fatal';

export interface SetupOptions {
  uid: number;
  gid: number;
  /** xfs: an overlay store on an XFS loopback filesystem with project quotas (issue #11). */
  storeDriver?: 'overlay' | 'btrfs' | 'xfs';
  /** The image store to initialise (default: the user's, /var/lib/trellis/UID/store). */
  store?: string;
  /** btrfs, xfs: size of the loopback filesystem made when the store is not on one already. */
  storeSizeBytes?: number;
  /** The user's container subnet and net-in host ports (default: the next free ones). */
  networkSubnet?: string;
  hostPorts?: string;
  /** Issue #8: the user's address pool (CIDR) for creates that ask for their own subnet. */
  networkPool?: string;
  /** Issue #8: how many subordinate uids and gids the user's range holds at least (default 65536). */
  subidCount?: number;
  /** info: one line per step; debug: also details; error, fatal: nothing on success. */
  logLevel?: LogLevel;
  /** Also install the systemd units (boot replay, the user's gdn.service) and lingering. */
  systemd?: boolean;
}

const SUBUID = '/etc/subuid';
const SUBGID = '/etc/subgid';
const ROOT: Owner = { uid: 0, gid: 0 };

export function notRootError(uid: number | string, gid: number | string): FailedPrecondition {
  return new FailedPrecondition(
    'ERR_TRELLIS_SETUP_NOT_ROOT',
    `gdn setup must run as root: sudo gdn setup --rootless-uid ${uid} --rootless-gid ${gid}`,
  );
}

export async function runSetup(opts: SetupOptions, print: (line: string) => void): Promise<void> {
  const level = opts.logLevel ?? 'info';
  const info = (line: string): void => {
    if (level === 'info' || level === 'debug') print(`setup: ${line}`);
  };
  const debug = (line: string): void => {
    if (level === 'debug') print(`setup: ${line}`);
  };

  if (process.geteuid?.() !== 0) throw notRootError(opts.uid, opts.gid);
  for (const [flag, v] of [['--rootless-uid', opts.uid], ['--rootless-gid', opts.gid]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 4294967294) throw new InvalidArgument(`${flag} must be an id between 0 and 4294967294, got ${v}`);
  }
  if (opts.uid === 0) {
    throw new InvalidArgument('gdn setup prepares an ordinary user, not root: pass --rootless-uid <uid> of the user who will run gdn server');
  }
  if (opts.storeDriver !== undefined && opts.storeDriver !== 'overlay' && opts.storeDriver !== 'btrfs' && opts.storeDriver !== 'xfs') {
    throw new InvalidArgument(`unsupported store driver '${String(opts.storeDriver)}': want overlay, btrfs or xfs`);
  }
  if (opts.store !== undefined && (!opts.store.startsWith('/') || opts.store.split('/').includes('..'))) {
    throw new InvalidArgument(`--store must be an absolute path without '..', got '${opts.store}'`);
  }
  const subidCount = opts.subidCount === undefined ? RANGE_SIZE : checkSubIdCount(opts.subidCount);
  const owner: Owner = { uid: opts.uid, gid: opts.gid };
  const name = userName(opts.uid);
  const who = name ?? `uid ${opts.uid}`;
  const paths = userPathsForSetup(opts.uid);

  // a. subordinate ids
  const { uidMappings, gidMappings } = ensureSubIds({ name, id: opts.uid }, opts.gid, who, subidCount, info);
  debug(`uid mappings ${uidMappings.map(formatMapping).join(' ')}, gid mappings ${gidMappings.map(formatMapping).join(' ')}`);

  // b. directories
  // /run/user/UID: the XDG runtime dir that logind would have made.
  const runUser = dirname(paths.runtimeDir);
  const stateParent = dirname(paths.stateDir);
  const dirs: Array<[string, DirKind, number, Owner]> = [
    [dirname(runUser), 'root', 0o755, ROOT],
    [runUser, 'root', 0o700, owner],
    [paths.runtimeDir, 'user', 0o700, owner],
    [paths.depot, 'user', 0o700, owner],
    [stateParent, 'root', 0o755, ROOT],
    // Root's: root prepares the store and the default rootfs inside it, so the user must not be able to swap them for links.
    [paths.stateDir, 'root', 0o755, ROOT],
  ];
  for (const [path, kind, mode, o] of dirs) {
    const outcome = kind === 'root' ? ensureRootDir(path, o, mode) : ensureUserDir(path, o, mode);
    // /run/user itself is only reported when setup had to make it.
    if (path === dirname(runUser) && outcome === 'already present') continue;
    info(`directory ${path} ${o.uid}:${o.gid} ${mode.toString(8).padStart(4, '0')} (${outcome})`);
  }

  // c. cgroups
  const plan = planCgroups(parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8')));
  debug(`cgroup ${plan.mode}: ${plan.hierarchies.map((h) => h.mountPoint).join(' ')}`);
  for (const r of delegateCgroups(plan, owner)) {
    const label = plan.mode === 'v2' ? 'cgroup v2' : r.hierarchy.version === 2 ? 'cgroup v2 (hybrid)' : `cgroup v1 ${hierarchyLabel(r.hierarchy)}`;
    if (r.gardenCreated) debug(`created ${dirname(r.userDir)} (root, 0755)`);
    info(`${label}: ${r.userDir} delegated to ${opts.uid}:${opts.gid} (${r.outcome})`);
  }

  // c2. network: bridge, subnet, host ports, forwarding, the setuid CNI gate
  ensureNetwork({ uid: opts.uid, subnet: opts.networkSubnet, hostPorts: opts.hostPorts, pool: opts.networkPool }, info);

  // d. image store
  const storePath = opts.store ?? paths.store;
  const storeExisted = lstatOrUndefined(join(storePath, 'meta', 'namespace.json')) !== undefined;
  // A backing file lives in a root-owned dir: root mounts it, so the user must not be able to swap it.
  const backingBase = join(stateParent, `${opts.uid}-${storePath.split('/').filter(Boolean).join('_')}`);
  const driver = opts.storeDriver ?? defaultStoreDriver(storePath, kernelHasBtrfs, kernelHasXfsQuota, `${backingBase}.xfs`);
  const backingFile = `${backingBase}.${driver === 'xfs' ? 'xfs' : 'btrfs'}`;
  await new ImageStore({ storePath, driver: driver === 'xfs' ? 'overlay' : driver }).initStore({
    uidMappings,
    gidMappings,
    storeSizeBytes: opts.storeSizeBytes,
    backingFile,
    // Issue #8: a range that grew in place maps every old id the same way: the store is re-recorded, not refused.
    growMappings: true,
    xfs: driver === 'xfs',
  });
  info(
    `image store ${storePath} (${driver === 'xfs' ? 'overlay on XFS' : driver}${driver !== 'overlay' ? ` on ${backingFile}` : ''}, owner ${opts.uid}, mappings ${uidMappings.map(formatMapping).join(' ')}) (${storeExisted ? 'already present' : 'created'})`,
  );
  if (driver === 'btrfs') {
    info(`disk limits on ${storePath}: btrfs qgroups (${await enableQuota(storePath)}), ${QUOTA_CONF_DIR}/${opts.uid}.conf (${ensureQuotaConf(opts.uid, storePath, false)})`);
  } else if (driver === 'xfs') {
    info(`disk limits on ${storePath}: XFS project quotas (mounted prjquota), ${QUOTA_CONF_DIR}/${opts.uid}.conf (${ensureQuotaConf(opts.uid, storePath, true)})`);
  } else {
    info(`disk limits on ${storePath}: NOT enforced (overlay store: limits are recorded and reported only; the default btrfs store enforces them)`);
  }

  // e. default rootfs
  const imported = importRootfs({
    source: ROOTFS_SOURCE,
    dest: paths.defaultRootfs,
    stampPath: join(paths.stateDir, 'rootfs.stamp'),
    scratchParent: stateParent,
    uidMappings,
    gidMappings,
  });
  info(`default rootfs ${paths.defaultRootfs} from ${ROOTFS_SOURCE} (${imported.outcome})`);
  if (imported.previous !== undefined) {
    info(`previous rootfs kept at ${imported.previous}: containers made before may still use it; remove it once they are gone`);
  }
  for (const s of imported.skipped) debug(`rootfs: skipped ${s.kind} ${s.path}`);

  // f. host checks
  for (const bin of ['newuidmap', 'newgidmap']) info(checkSetuidHelper(bin));
  // g. what a reboot undoes is redone from this record at boot (gdn setup --boot, run by the unit)
  const record = { uid: opts.uid, gid: opts.gid, storeDriver: opts.storeDriver, store: opts.store, storeSizeBytes: opts.storeSizeBytes, networkSubnet: opts.networkSubnet, hostPorts: opts.hostPorts, networkPool: opts.networkPool };
  info(`setup record ${join(RECORD_DIR, recordName(record))} for the boot unit (${writeRecord(record)})`);
  if (opts.systemd === true) {
    if (name === undefined) throw new InvalidArgument(`--systemd needs a user with a name in /etc/passwd; uid ${opts.uid} has none`);
    installSystemd({ name, uid: opts.uid }, thisGdn(), info);
  }
  info(`done: ${who} can now run 'gdn server' (XDG_RUNTIME_DIR=/run/user/${opts.uid})`);
}

/** `gdn setup --boot`: setup again for every recorded user (the boot unit); false when one failed. */
export async function replaySetup(print: (line: string) => void, logLevel: LogLevel = 'info'): Promise<boolean> {
  let ok = true;
  const records = readRecords();
  if (records.length === 0) print('setup: no users recorded in /etc/trellis/setup: nothing to do');
  for (const r of records) {
    try {
      await runSetup({ ...r, logLevel }, print);
    } catch (err) {
      ok = false;
      print(`setup: uid ${r.uid}${r.store === undefined ? '' : ` store ${r.store}`} failed: ${(err as Error).message}`);
    }
  }
  return ok;
}

type DirKind = 'root' | 'user';

/**
 * Without --store-driver: a store that exists keeps the driver it was made with (an
 * overlay store is never converted under its containers); a new one is btrfs, the
 * store that enforces disk limits (issue #11), where this kernel has btrfs.
 */
export function defaultStoreDriver(
  storePath: string,
  hasBtrfs = kernelHasBtrfs,
  hasXfsQuota = kernelHasXfsQuota,
  xfsBacking?: string,
): 'overlay' | 'btrfs' | 'xfs' {
  const recorded = readTextOrEmpty(join(storePath, 'meta', 'driver')).trim();
  if (recorded === 'overlay' && readTextOrEmpty(join(storePath, 'meta', 'quota')).trim() === 'xfs') return 'xfs';
  if (recorded === 'btrfs' || recorded === 'overlay') return recorded;
  if (lstatOrUndefined(join(storePath, 'meta', 'namespace.json')) !== undefined) return 'overlay';
  // An XFS store not mounted (after a reboot): its backing file says what it is.
  if (xfsBacking !== undefined && lstatOrUndefined(xfsBacking) !== undefined) return 'xfs';
  if (hasBtrfs()) return 'btrfs';
  if (hasXfsQuota()) return 'xfs';
  throw new FailedPrecondition(
    'ERR_TRELLIS_NO_QUOTA_STORE',
    'this kernel has neither btrfs nor XFS quota support, so gdn setup cannot make a store that enforces disk limits',
    'modprobe btrfs (or xfs, on a kernel built with XFS quota) and run setup again, or pass --store-driver overlay for a store whose disk limits are recorded but not enforced',
  );
}

/**
 * /etc/trellis/quota/<uid>.conf lists every quota store of the user (btrfs or XFS): the
 * gate limits containers of those only. A user with an XFS store also gets a block of
 * project ids no other user's conf holds (projects=FIRST-LAST), from which the gate allocates.
 */
function ensureQuotaConf(uid: number, storePath: string, xfsStore: boolean): 'created' | 'updated' | 'already present' {
  const path = join(QUOTA_CONF_DIR, `${uid}.conf`);
  const before = readTextOrEmpty(path);
  const stores = parseQuotaConf(before);
  let projects = parseProjectRange(before);
  if (stores.includes(storePath) && (projects !== undefined || !xfsStore)) return 'already present';
  ensureRootDir(QUOTA_CONF_DIR, ROOT, 0o755);
  if (projects === undefined && xfsStore) {
    const taken: ProjectRange[] = [];
    for (const f of readdirSync(QUOTA_CONF_DIR, { withFileTypes: true }).filter((e) => e.isFile() && e.name.endsWith('.conf'))) {
      const r = parseProjectRange(readTextOrEmpty(join(QUOTA_CONF_DIR, f.name)));
      if (r !== undefined) taken.push(r);
    }
    projects = nextProjectRange(taken);
  }
  writeFileAtomic(path, quotaConf(stores.includes(storePath) ? stores : [...stores, storePath], projects), { mode: 0o644, uid: 0, gid: 0 });
  return before === '' ? 'created' : 'updated';
}

function ensureSubIds(
  user: { name?: string; id: number },
  gid: number,
  who: string,
  count: number,
  info: (line: string) => void,
): { uidMappings: IdMapping[]; gidMappings: IdMapping[] } {
  const uidText = readTextOrEmpty(SUBUID);
  const gidText = readTextOrEmpty(SUBGID);
  const uidRanges = parseSubIds(uidText);
  const gidRanges = parseSubIds(gidText);
  // When both files need a line, pick one start free in both so the ranges match.
  const haveUid = primaryRange(uidRanges, user);
  const haveGid = primaryRange(gidRanges, user);
  // A large range goes above useradd's window when it fits there (subIdFloor), else at the first free place.
  const all = [...uidRanges, ...gidRanges];
  const high = nextFreeStart(all, count, subIdFloor(count, readTextOrEmpty('/etc/login.defs')));
  const fresh = high + count - 1 <= MAX_SUBID ? high : nextFreeStart(all, count);
  const preferred = haveUid === undefined && haveGid === undefined ? fresh : undefined;
  // Both are planned (and either may refuse) before either file is written.
  const uidPlan = planSubIds(uidText, user, count, preferred ?? haveGid?.start, SUBUID);
  const gidPlan = planSubIds(gidText, user, count, preferred ?? haveUid?.start, SUBGID);
  for (const [file, plan] of [[SUBUID, uidPlan], [SUBGID, gidPlan]] as Array<[string, SubIdPlan]>) {
    if (!plan.present) writeFileAtomic(file, plan.text, { mode: 0o644, uid: 0, gid: 0 });
    const kind = file === SUBUID ? 'subuid' : 'subgid';
    const outcome = plan.present ? 'already present' : plan.grownFrom !== undefined ? `grown in place from ${plan.grownFrom.count} ids in ${file}` : `added to ${file}`;
    info(`${kind} range ${plan.range.start}:${plan.range.count} for ${who} (${outcome})`);
  }
  return {
    uidMappings: buildMappings(user.id, uidPlan.range),
    gidMappings: buildMappings(gid, gidPlan.range),
  };
}

const HELPER_DIRS = ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin'];

/** runc maps a container's full range only through setuid newuidmap/newgidmap. */
function checkSetuidHelper(bin: string): string {
  const path = HELPER_DIRS.map((d) => join(d, bin)).find((p) => lstatOrUndefined(p) !== undefined);
  if (path === undefined) {
    throw new FailedPrecondition('ERR_TRELLIS_UIDMAP_MISSING', `${bin} is not installed: apt-get install uidmap`, 'apt-get install uidmap');
  }
  const st = statSync(path);
  if (st.uid !== 0 || (st.mode & 0o4000) === 0) {
    throw new FailedPrecondition(
      'ERR_TRELLIS_UIDMAP_NOT_SETUID',
      `${path} is not setuid root (owner ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): apt-get install --reinstall uidmap`,
      'apt-get install --reinstall uidmap',
    );
  }
  return `${path} is setuid root (ok)`;
}
