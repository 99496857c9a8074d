// Resolving a Garden process user ("", a name, "uid" or "uid:gid") against the
// container's own /etc/passwd and /etc/group, as runc's user lookup does.
import { InvalidArgument } from '../errors.js';
import { parseGroup, parsePasswd, type PasswdEntry } from '../idmap/passwd.js';

export interface ResolvedUser {
  uid: number;
  gid: number;
  name: string;
  home: string;
  /** Supplementary groups: every /etc/group entry that lists the user by name, as initgroups reads it. */
  groups: number[];
}

export { parseGroup, parsePasswd };

export function resolveUser(spec: string, passwdText: string | undefined, groupText: string | undefined): ResolvedUser {
  const passwd = passwdText === undefined ? [] : parsePasswd(passwdText);
  const groups = groupText === undefined ? [] : parseGroup(groupText);
  const user = spec === '' ? 'root' : spec;
  const [u, g] = user.split(':', 2) as [string, string | undefined];
  let entry: PasswdEntry | undefined;
  let uid: number;
  if (/^\d+$/.test(u)) {
    uid = Number(u);
    entry = passwd.find((p) => p.uid === uid);
  } else {
    entry = passwd.find((p) => p.name === u);
    if (entry === undefined) {
      if (u === 'root') entry = { name: 'root', uid: 0, gid: 0, home: '/root' };
      else throw new InvalidArgument(`unable to find user ${u}: no matching entries in passwd file`);
    }
    uid = entry.uid;
  }
  let gid = entry?.gid ?? 0;
  if (g !== undefined && g !== '') {
    if (/^\d+$/.test(g)) gid = Number(g);
    else {
      const grp = groups.find((x) => x.name === g);
      if (grp === undefined) throw new InvalidArgument(`unable to find group ${g}: no matching entries in group file`);
      gid = grp.gid;
    }
  }
  const name = entry?.name;
  const supplementary = name === undefined ? [] : [...new Set(groups.filter((x) => x.members.includes(name)).map((x) => x.gid))];
  return { uid, gid, name: entry?.name ?? user, home: entry?.home ?? '/', groups: supplementary };
}
