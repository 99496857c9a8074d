// What makes a host survive a reboot: every `gdn setup` records its options in
// /etc/trellis/setup, and `gdn setup --systemd` installs the root unit that replays
// them at boot (`gdn setup --boot`) and the user unit gdn.service, and lets the user's
// manager run without a login (lingering). The unit files are the ones in units/.
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, symlinkSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execaSync } from 'execa';
import { FailedPrecondition } from '../errors.js';
import { readTextOrEmpty, writeFileAtomic } from './host-files.js';
import type { SetupOptions } from './setup.js';

export const RECORD_DIR = '/etc/trellis/setup';
export const BOOT_UNIT = 'trellis-setup.service';
export const USER_UNIT = 'gdn.service';
const SHIPPED_GDN = '/usr/local/bin/gdn';

/** What `gdn setup` was asked, kept so that `gdn setup --boot` can ask it again. */
export type SetupRecord = Pick<SetupOptions, 'uid' | 'gid' | 'storeDriver' | 'store' | 'storeSizeBytes' | 'networkSubnet' | 'hostPorts' | 'networkPool'>;

/** One record per user and store: the default store's is UID.json. */
export function recordName(r: SetupRecord): string {
  return r.store === undefined ? `${r.uid}.json` : `${r.uid}-${r.store.split('/').filter(Boolean).join('_').replace(/[^A-Za-z0-9_.-]/g, '-')}.json`;
}

export function writeRecord(r: SetupRecord, dir = RECORD_DIR, owner = { uid: 0, gid: 0 }): 'created' | 'updated' | 'already present' {
  const path = join(dir, recordName(r));
  const text = `${JSON.stringify(r, null, 2)}\n`;
  const before = readTextOrEmpty(path);
  if (before === text) return 'already present';
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileAtomic(path, text, { mode: 0o644, ...owner });
  return before === '' ? 'created' : 'updated';
}

/** The records, the default stores first (a btrfs store of a user after its default one). */
export function readRecords(dir = RECORD_DIR): SetupRecord[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => n.endsWith('.json'))
    .sort((a, b) => Number(a.includes('-')) - Number(b.includes('-')) || a.localeCompare(b))
    .map((n) => JSON.parse(readFileSync(join(dir, n), 'utf8')) as SetupRecord);
}

/** The units shipped in the repo (units/), with ExecStart pointing at this gdn. */
export function unitTexts(gdnPath: string): { boot: string; user: string } {
  const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'units');
  const read = (name: string) => {
    const p = join(dir, name);
    if (!existsSync(p)) throw new FailedPrecondition('ERR_TRELLIS_UNITS_MISSING', `the unit file ${p} is missing from this installation`, 'reinstall Trellis (scripts/install copies units/)');
    return readFileSync(p, 'utf8').replaceAll(SHIPPED_GDN, gdnPath);
  };
  return { boot: read(BOOT_UNIT), user: read(USER_UNIT) };
}

/** /usr/local/bin/gdn when that is this gdn, else this gdn's own path. */
export function thisGdn(argv1 = process.argv[1] ?? ''): string {
  const self = realpathSync(argv1);
  try {
    if (realpathSync(SHIPPED_GDN) === self) return SHIPPED_GDN;
  } catch {
    // not installed there
  }
  return self;
}

const systemdRunning = () => existsSync('/run/systemd/system');

function writeUnit(path: string, text: string): string {
  if (readTextOrEmpty(path) === text) return 'already present';
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const existed = existsSync(path);
  writeFileAtomic(path, text, { mode: 0o644, uid: 0, gid: 0 });
  return existed ? 'updated' : 'installed';
}

function ensureLink(link: string, target: string): string {
  try {
    const st = lstatSync(link);
    if (st.isSymbolicLink() && readlinkSync(link) === target) return 'already present';
    unlinkSync(link);
  } catch {
    // absent
  }
  mkdirSync(dirname(link), { recursive: true, mode: 0o755 });
  symlinkSync(target, link);
  return 'created';
}

/** Installs both units, enables the boot unit and lingering for `user`. One line per step. */
export function installSystemd(user: { name: string; uid: number }, gdnPath: string, info: (line: string) => void): void {
  const units = unitTexts(gdnPath);
  const bootPath = join('/etc/systemd/system', BOOT_UNIT);
  const userPath = join('/etc/systemd/user', USER_UNIT);
  info(`systemd unit ${bootPath} (${writeUnit(bootPath, units.boot)})`);
  info(`systemd user unit ${userPath} (${writeUnit(userPath, units.user)})`);
  info(`boot unit enabled (${ensureLink(join('/etc/systemd/system/multi-user.target.wants', BOOT_UNIT), bootPath)})`);
  const lingerFile = join('/var/lib/systemd/linger', user.name);
  const lingered = existsSync(lingerFile);
  if (systemdRunning()) {
    execaSync('systemctl', ['daemon-reload']);
    if (!lingered) execaSync('loginctl', ['enable-linger', user.name]);
  } else if (!lingered) {
    mkdirSync(dirname(lingerFile), { recursive: true, mode: 0o755 });
    writeFileAtomic(lingerFile, '', { mode: 0o644, uid: 0, gid: 0 });
  }
  info(`lingering for ${user.name}: its systemd starts at boot (${lingered ? 'already present' : 'enabled'})`);
  info(`then, as ${user.name}: systemctl --user enable --now gdn`);
}
