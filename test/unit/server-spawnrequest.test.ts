// The request gdn writes for trellis-exec and garden-init's spawn server (src/runtime/spawnrequest.ts,
// buildSpawnRequest in src/runtime/bundle.ts): the byte layout parse_spawn_request reads.

import { expect } from 'chai';
import fc from 'fast-check';
import { Conmon } from '../../src/runtime/conmon.js';
import { DEFAULT_PATH_ROOT, buildBundle, buildProcess, buildSpawnRequest, type ProcessInput } from '../../src/runtime/bundle.js';
import {
  EXEC_MAGIC, SPAWN_MAGIC, SPAWN_REQUEST_MAX, encodeExecRequest, encodeSpawnRequest, type SpawnRequest,
} from '../../src/runtime/spawnrequest.js';

const fields = (b: Buffer): string[] => {
  const s = b.toString('utf8');
  expect(s.endsWith('\0'), 'every field ends with a NUL').to.equal(true);
  return s.slice(0, -1).split('\0');
};

const base: SpawnRequest = {
  uid: 0, gid: 0, setgroups: false, groups: [], tty: false, rows: 0, columns: 0, rlimits: {}, cwd: '/', args: ['true'], env: ['PATH=/bin'],
};

/** Reads a body back the way parse_spawn_request does (for the property test). */
function decode(b: Buffer): SpawnRequest & { limits: Array<[number, string, string]> } {
  const f = fields(b);
  let i = 0;
  const next = () => f[i++]!;
  expect(next()).to.equal(SPAWN_MAGIC);
  const uid = Number(next());
  const gid = Number(next());
  const setgroups = next() === '1';
  const groups = Array.from({ length: Number(next()) }, () => Number(next()));
  const tty = next() === '1';
  const rows = Number(next());
  const columns = Number(next());
  const limits = Array.from({ length: Number(next()) }, () => [Number(next()), next(), next()] as [number, string, string]);
  const cwd = next();
  const args = Array.from({ length: Number(next()) }, () => next());
  const env = Array.from({ length: Number(next()) }, () => next());
  expect(i, 'nothing after the environment').to.equal(f.length);
  return { uid, gid, setgroups, groups, tty, rows, columns, rlimits: {}, cwd, args, env, limits };
}

describe('spawn request (issue 10: run without runc exec)', function () {
  it('lays out the fields in parse_spawn_request\'s order, numbers in decimal, each NUL-terminated', function () {
    const b = encodeSpawnRequest({
      ...base, uid: 1000, gid: 1001, setgroups: true, groups: [3000, 3000, 3001], tty: true, rows: 30, columns: 100,
      rlimits: { nofile: 4321, core: 0, bogus: 7 }, cwd: '/home/a', args: ['sh', '-c', 'echo hi'], env: ['A=1', 'B=x=y'],
    });
    expect(fields(b)).to.deep.equal([
      SPAWN_MAGIC, '1000', '1001', '1', '2', '3000', '3001', '1', '30', '100',
      '2', '7', '4321', '4321', '4', '0', '0',
      '/home/a', '3', 'sh', '-c', 'echo hi', '2', 'A=1', 'B=x=y',
    ]);
  });

  it('sends no groups when it does not set them (root keeps init\'s, as rootless runc leaves them)', function () {
    expect(fields(encodeSpawnRequest({ ...base, groups: [5, 6] })).slice(3, 5)).to.deep.equal(['0', '0']);
  });

  it('clamps an rlimit past 2^64-1 to infinity and keeps large values exact', function () {
    const f = fields(encodeSpawnRequest({ ...base, rlimits: { fsize: 2 ** 70, as: 2 ** 53 } }));
    expect(f.slice(8, 15)).to.deep.equal(['2', '1', '18446744073709551615', '18446744073709551615', '9', '9007199254740992', '9007199254740992']);
  });

  it('refuses what garden-init would: NUL bytes, no program, relative cwd, env without =, ids out of range', function () {
    expect(() => encodeSpawnRequest({ ...base, args: ['a\0b'] })).to.throw(RangeError, /NUL/);
    expect(() => encodeSpawnRequest({ ...base, args: [] })).to.throw(RangeError, /no program/);
    expect(() => encodeSpawnRequest({ ...base, args: [''] })).to.throw(RangeError, /no program/);
    expect(() => encodeSpawnRequest({ ...base, cwd: 'tmp' })).to.throw(RangeError, /not absolute/);
    expect(() => encodeSpawnRequest({ ...base, env: ['NOEQUALS'] })).to.throw(RangeError, /no '='/);
    expect(() => encodeSpawnRequest({ ...base, uid: 4294967295 })).to.throw(RangeError, /uid/);
    expect(() => encodeSpawnRequest({ ...base, gid: -1 })).to.throw(RangeError, /gid/);
  });

  it('refuses a body larger than the spawn server takes, so gdn can use runc exec for it', function () {
    expect(() => encodeSpawnRequest({ ...base, env: [`BIG=${'x'.repeat(SPAWN_REQUEST_MAX)}`] })).to.throw(RangeError, /more than the spawn server takes/);
  });

  it('round-trips any arguments and environment', function () {
    const text = fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0'));
    fc.assert(
      fc.property(
        fc.array(text, { minLength: 1, maxLength: 8 }).filter((a) => a[0] !== ''),
        fc.array(fc.tuple(text.filter((k) => !k.includes('=')), text), { maxLength: 8 }),
        fc.nat(0xfffffffe),
        (args, envPairs, uid) => {
          const env = envPairs.map(([k, v]) => `${k}=${v}`);
          const d = decode(encodeSpawnRequest({ ...base, args, env, uid }));
          expect(d.args).to.deep.equal(args);
          expect(d.env).to.deep.equal(env);
          expect(d.uid).to.equal(uid);
        },
      ),
    );
  });

  it('puts the init pid and the namespace identities before the body in exec-request', function () {
    const body = encodeSpawnRequest(base);
    const b = encodeExecRequest(4242, { dev: 4n, ino: 4026531837n }, { dev: 4n, ino: 4026532000n }, body);
    const head = Buffer.from(`${EXEC_MAGIC}\x004242\x004\x004026531837\x004\x004026532000\x00`);
    expect(b.subarray(0, head.length).equals(head)).to.equal(true);
    expect(b.subarray(head.length).equals(body)).to.equal(true);
    expect(() => encodeExecRequest(1, { dev: 1n, ino: 1n }, { dev: 1n, ino: 1n }, body)).to.throw(RangeError);
  });
});

describe('buildSpawnRequest: the process runc exec would start', function () {
  const proc = (over: Partial<ProcessInput> = {}): ProcessInput => ({
    args: ['id'], containerEnv: ['FROM_IMAGE=1'], env: ['FROM_RUN=2'], uid: 0, gid: 0, username: 'root', home: '/root', cwd: '/', rlimits: {}, terminal: false,
    launcher: true, ...over,
  });

  it('gives root the environment runc would: PATH, USER, and HOME from the user (runc fills it in)', function () {
    const r = buildSpawnRequest(proc());
    expect(r.env).to.deep.equal(['FROM_IMAGE=1', 'FROM_RUN=2', DEFAULT_PATH_ROOT, 'USER=root', 'HOME=/root']);
    // buildProcess leaves root's HOME to runc: the same set once runc has added it
    expect([...buildProcess(proc()).env, 'HOME=/root']).to.deep.equal(r.env);
    expect(r).to.include({ uid: 0, gid: 0, setgroups: false, tty: false, rows: 0, columns: 0 });
  });

  it('gives a user exactly its groups, its ids and the environment of the launcher path', function () {
    const input = proc({ uid: 1000, gid: 1001, additionalGids: [3000], username: 'alice', home: '/home/alice', cwd: '/home/alice' });
    const r = buildSpawnRequest(input);
    expect(r).to.include({ uid: 1000, gid: 1001, setgroups: true, cwd: '/home/alice' });
    expect(r.groups).to.deep.equal([3000]);
    expect(r.env).to.deep.equal(buildProcess(input).env);
    expect(r.args).to.deep.equal(['id']);
  });

  it('gives a name once, where it first appears, with its last value, as runc does (Garden: "should apply the merged environment variables")', function () {
    const r = buildSpawnRequest(proc({ containerEnv: ['CONTAINER_ENV=1', 'TEST=hi'], env: ['TEST=hello', 'FRUIT=banana', 'CONTAINER_ENV=2'] }));
    expect(r.env.slice(0, 3)).to.deep.equal(['CONTAINER_ENV=2', 'TEST=hello', 'FRUIT=banana']);
    expect(r.env.filter((e) => e.startsWith('TEST='))).to.have.length(1);
  });

  it('keeps an explicit HOME and defaults a terminal to 80x24', function () {
    const r = buildSpawnRequest(proc({ env: ['HOME=/elsewhere'], terminal: true }));
    expect(r.env.filter((e) => e.startsWith('HOME='))).to.deep.equal(['HOME=/elsewhere']);
    expect(r).to.include({ tty: true, rows: 24, columns: 80 });
  });

  it('starts garden-init with its spawn server only when asked', function () {
    const bundle = (spawnServer?: boolean) => buildBundle({
      handle: 'c', rootfsPath: '/r', imageMounts: [], env: [], uidMappings: [], gidMappings: [], initBinary: '/i', initLockedFlags: [], bindMounts: [], limits: {}, spawnServer,
    }).process.args;
    expect(bundle(true)).to.deep.equal(['/tmp/garden-init', '--spawn-server']);
    expect(bundle(undefined)).to.deep.equal(['/tmp/garden-init']);
  });
});

describe('conmon runs trellis-exec as the runtime of a spawn-server exec', function () {
  const common = {
    containerId: 'c', monitorId: 'm', dir: '/d', runtimeRoot: '/d/runc', pidFile: '/d/pidfile', conmonPidFile: '/d/conmon.pid',
    exitDir: '/d/exit', logPath: '/d/output.log', stdin: true,
  };
  const runtimeOf = (argv: string[]) => argv[argv.indexOf('-r') + 1];

  it('passes -r <trellis-exec> for that monitor only, and keeps --root for it to ignore', function () {
    const conmon = new Conmon('/usr/bin/conmon', '/usr/sbin/runc');
    expect(runtimeOf(conmon.argv({ ...common, runtime: '/x/trellis-exec' }))).to.equal('/x/trellis-exec');
    expect(runtimeOf(conmon.argv(common))).to.equal('/usr/sbin/runc');
    expect(conmon.argv({ ...common, runtime: '/x/trellis-exec' })).to.include.members(['--runtime-arg', '/d/runc']);
  });
});
