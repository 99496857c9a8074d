// The container seccomp filter: a Docker-format profile (Debian's containers-common
// ships the default one) turned into the OCI form for this machine's architecture
// and the capabilities containers get. Pure apart from reading the file.
import { readFileSync } from 'node:fs';
import { release } from 'node:os';

export const DEFAULT_PROFILE = '/usr/share/containers/seccomp.json';

interface ProfileArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}

interface ProfileRule {
  names?: string[];
  name?: string;
  action: string;
  errnoRet?: number;
  args?: ProfileArg[] | null;
  includes?: { arches?: string[]; caps?: string[]; minKernel?: string };
  excludes?: { arches?: string[]; caps?: string[]; minKernel?: string };
}

export interface DockerProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap?: { architecture: string; subArchitectures?: string[] }[];
  architectures?: string[];
  syscalls: ProfileRule[];
}

export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: { names: string[]; action: string; errnoRet?: number; args?: ProfileArg[] }[];
}

const ARCH: Record<string, { docker: string; scmp: string }> = {
  x64: { docker: 'amd64', scmp: 'SCMP_ARCH_X86_64' },
  arm64: { docker: 'arm64', scmp: 'SCMP_ARCH_AARCH64' },
};

function kernelAtLeast(min: string, running: string): boolean {
  const parse = (v: string) => v.split(/[.-]/).slice(0, 2).map((n) => Number.parseInt(n, 10) || 0);
  const [a1, a2] = parse(running);
  const [b1, b2] = parse(min);
  return a1! > b1! || (a1 === b1 && a2! >= b2!);
}

/**
 * Packet sockets (AF_PACKET, and the old SOCK_PACKET type) send and see frames below
 * netfilter: with CAP_NET_RAW (Garden's set has it, for ping) a container's root could
 * step around the egress rules in its netns and forge ARP for its neighbours. libseccomp
 * lets an unconditional allow of `socket` win over any conditional errno, so the allow
 * itself is narrowed: any family but AF_PACKET (17), with a real socket type (stream,
 * dgram, raw, rdm, seqpacket, dccp), never SOCK_PACKET (10). Raw IP sockets stay: they
 * pass through the netns's OUTPUT chain.
 */
export function narrowSocket(syscalls: OciSeccomp['syscalls']): OciSeccomp['syscalls'] {
  let allowed = false;
  const out: OciSeccomp['syscalls'] = [];
  for (const r of syscalls) {
    if (r.action === 'SCMP_ACT_ALLOW' && !r.args?.length && r.names.includes('socket')) {
      allowed = true;
      const names = r.names.filter((n) => n !== 'socket');
      if (names.length > 0) out.push({ ...r, names });
      continue;
    }
    out.push(r);
  }
  if (!allowed) return syscalls;
  for (const type of [1, 2, 3, 4, 5, 6]) {
    out.push({
      names: ['socket'],
      action: 'SCMP_ACT_ALLOW',
      args: [
        { index: 0, value: 17, valueTwo: 0, op: 'SCMP_CMP_NE' },
        { index: 1, value: 0xf, valueTwo: type, op: 'SCMP_CMP_MASKED_EQ' },
      ],
    });
  }
  return out;
}

/** CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET, as Docker's profile masks them. */
export const CLONE_NAMESPACE_FLAGS = 0x7e020000;
const CLONE_NEWTIME = 0x80;
const EPERM = 1;
const ENOSYS = 38;

/**
 * No new namespaces from inside a container (Garden's profile refuses them too): a nested
 * user namespace would hand an unprivileged process a full set of capabilities over kernel
 * code that is otherwise out of its reach. clone and unshare stay allowed without namespace
 * flags and get EPERM with any; clone3 gets ENOSYS (its flags are in memory seccomp cannot
 * read), so libc falls back to clone.
 */
export function refuseNamespaces(syscalls: OciSeccomp['syscalls']): OciSeccomp['syscalls'] {
  const guarded = new Set(['clone', 'clone3', 'unshare']);
  const out: OciSeccomp['syscalls'] = [];
  for (const r of syscalls) {
    const names = r.names.filter((n) => !guarded.has(n));
    if (names.length === r.names.length) out.push(r);
    else if (names.length > 0) out.push({ ...r, names });
  }
  const masks: Record<string, number> = { clone: CLONE_NAMESPACE_FLAGS, unshare: CLONE_NAMESPACE_FLAGS | CLONE_NEWTIME };
  for (const [name, mask] of Object.entries(masks)) {
    out.push({ names: [name], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: mask, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }] });
    for (let bit = 1; bit <= mask; bit *= 2) {
      if ((mask & bit) === 0) continue;
      out.push({ names: [name], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM, args: [{ index: 0, value: bit, valueTwo: bit, op: 'SCMP_CMP_MASKED_EQ' }] });
    }
  }
  out.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  return out;
}

/**
 * The btrfs ioctls that make a subvolume or snapshot (issue #11): a subvolume made inside a
 * container's rootfs gets a qgroup of its own, outside the container's limit, so what is
 * written into it would escape the disk limit. Matched on type and number (the low 16 bits
 * of the request), whatever the size and direction bits say.
 */
export const BTRFS_SUBVOLUME_IOCTLS = [0x9401 /* SNAP_CREATE */, 0x940e /* SUBVOL_CREATE */, 0x9417 /* SNAP_CREATE_V2 */, 0x9418 /* SUBVOL_CREATE_V2 */];

/**
 * Masked-equal patterns on the low 16 bits covering every request but `denied`: an
 * unconditional allow would win over any conditional errno (as with socket), so the allow
 * itself is cut into the subtrees of the 16-bit request space that hold no denied value.
 */
export function allowedPatterns(denied: number[]): { mask: number; value: number }[] {
  const out: { mask: number; value: number }[] = [];
  const walk = (bit: number, prefix: number, mask: number): void => {
    const inside = denied.filter((d) => (d & mask) === prefix);
    if (inside.length === 0) {
      out.push({ mask, value: prefix });
      return;
    }
    if (bit < 0) return;
    const b = 1 << bit;
    walk(bit - 1, prefix, mask | b);
    walk(bit - 1, prefix | b, mask | b);
  };
  walk(15, 0, 0);
  return out;
}

export function refuseSubvolumeIoctls(syscalls: OciSeccomp['syscalls']): OciSeccomp['syscalls'] {
  let allowed = false;
  const out: OciSeccomp['syscalls'] = [];
  for (const r of syscalls) {
    if (r.action === 'SCMP_ACT_ALLOW' && !r.args?.length && r.names.includes('ioctl')) {
      allowed = true;
      const names = r.names.filter((n) => n !== 'ioctl');
      if (names.length > 0) out.push({ ...r, names });
      continue;
    }
    out.push(r);
  }
  if (!allowed) return syscalls;
  for (const p of allowedPatterns(BTRFS_SUBVOLUME_IOCTLS)) {
    out.push({ names: ['ioctl'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, value: p.mask, valueTwo: p.value, op: 'SCMP_CMP_MASKED_EQ' }] });
  }
  for (const d of BTRFS_SUBVOLUME_IOCTLS) {
    out.push({ names: ['ioctl'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM, args: [{ index: 1, value: 0xffff, valueTwo: d, op: 'SCMP_CMP_MASKED_EQ' }] });
  }
  return out;
}

export function toOci(profile: DockerProfile, caps: string[], nodeArch = process.arch, kernel = release()): OciSeccomp {
  const arch = ARCH[nodeArch] ?? { docker: nodeArch, scmp: '' };
  const map = profile.archMap?.find((m) => m.architecture === arch.scmp);
  const architectures = map ? [map.architecture, ...(map.subArchitectures ?? [])] : (profile.architectures ?? []);
  const have = new Set(caps);
  const syscalls: OciSeccomp['syscalls'] = [];
  for (const r of profile.syscalls) {
    const inc = r.includes ?? {};
    const exc = r.excludes ?? {};
    if (inc.arches?.length && !inc.arches.includes(arch.docker)) continue;
    if (inc.caps?.length && !inc.caps.every((c) => have.has(c))) continue;
    if (inc.minKernel && !kernelAtLeast(inc.minKernel, kernel)) continue;
    if (exc.arches?.length && exc.arches.includes(arch.docker)) continue;
    if (exc.caps?.length && exc.caps.some((c) => have.has(c))) continue;
    const names = r.names ?? (r.name ? [r.name] : []);
    if (names.length === 0) continue;
    const rule: OciSeccomp['syscalls'][number] = { names, action: r.action };
    if (r.errnoRet !== undefined) rule.errnoRet = r.errnoRet;
    if (r.args && r.args.length > 0) rule.args = r.args;
    syscalls.push(rule);
  }
  const out: OciSeccomp = { defaultAction: profile.defaultAction, architectures, syscalls: refuseSubvolumeIoctls(refuseNamespaces(narrowSocket(syscalls))) };
  if (profile.defaultErrnoRet !== undefined) out.defaultErrnoRet = profile.defaultErrnoRet;
  return out;
}

export function loadProfile(path: string, caps: string[]): OciSeccomp {
  return toOci(JSON.parse(readFileSync(path, 'utf8')) as DockerProfile, caps);
}
