// trellis-spawner, the real binary (issue 10): what its children get (exactly their env, only
// their own fds), that it reaps them, and that it goes when gdn goes while what it started stays.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { SpawnFailed, Spawner } from '../../src/runtime/spawner/spawner.js';
import { eventually } from './harness.js';

const alive = (pid: number): boolean => {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\S+ \(.*\) [ZX] /.test(st);
  } catch {
    return false;
  }
};
const childrenOf = (ppid: number): number[] =>
  readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => {
    try {
      const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]) === ppid;
    } catch {
      return false;
    }
  });

describe('trellis-spawner (integration, issue 10)', function () {
  let s: Spawner;
  beforeEach(() => (s = new Spawner()));
  afterEach(() => s.close());

  it('gives a child exactly the env asked for, its cwd, stdin, and no fd but 0-2 (and 3 when asked)', async function () {
    const r = await s.run('sh', ['-c', 'env | sort; pwd; cat; ls /proc/self/fd'], { env: { PATH: '/usr/bin:/bin', A: 'x y', DROPPED: undefined }, cwd: '/tmp', input: 'in\n' });
    expect(r.exitCode).to.equal(0);
    // (sh itself adds PWD; ls's own directory fd is the 3)
    expect(r.stdout).to.equal('A=x y\nPATH=/usr/bin:/bin\nPWD=/tmp\n/tmp\nin\n0\n1\n2\n3');
    const withSync = s.spawn('sh', ['-c', 'echo sync >&3; ls /proc/self/fd >&3'], { env: { PATH: '/usr/bin:/bin' }, fd3: 'pipe' });
    let got = '';
    withSync.fd3!.on('data', (b: Buffer) => (got += b.toString()));
    await new Promise((r) => withSync.on('close', r));
    expect(got).to.equal('sync\n0\n1\n2\n3\n4\n');
  });

  it('reports a missing binary, an exit status and a signal', async function () {
    const missing = await s.run('trellis-no-such-binary', [], { env: { PATH: '/usr/bin:/bin' } });
    expect(missing.failure).to.be.instanceOf(SpawnFailed);
    expect((missing.failure as SpawnFailed).code).to.equal('ENOENT');
    expect((await s.run('sh', ['-c', 'exit 42'], { env: {} })).exitCode).to.equal(42);
    const killed = await s.run('sh', ['-c', 'kill -9 $$'], { env: {} });
    expect([killed.exitCode, killed.signal]).to.deep.equal([undefined, 'SIGKILL']);
  });

  it('reaps every child (no zombie), also many at once', async function () {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => s.run('sh', ['-c', `exit ${i % 7}`], { env: {} })));
    expect(results.map((r) => r.exitCode)).to.deep.equal(Array.from({ length: 50 }, (_, i) => i % 7));
    const spawner = s.pid()!;
    expect(await eventually(() => childrenOf(spawner).length === 0, 2000), 'children left under the spawner').to.equal(true);
  });

  it('kills a child\'s process group by id (the start timeout of a monitor)', async function () {
    const c = s.spawn('sh', ['-c', 'sleep 60 & echo $! >&3; wait'], { env: { PATH: '/usr/bin:/bin' }, fd3: 'pipe', detached: true });
    const grandchild = Number(await new Promise<string>((r) => c.fd3!.once('data', (b: Buffer) => r(b.toString()))));
    expect(alive(grandchild)).to.equal(true);
    c.kill('SIGKILL', true);
    await new Promise((r) => c.on('exit', r));
    expect(await eventually(() => !alive(grandchild), 2000), 'sleep in the killed group').to.equal(true);
  });

  it('goes when its parent is killed -9, and leaves what it started running', async function () {
    this.timeout(20_000);
    // A stand-in for gdn: starts the spawner, has it start a detached sleep, says both pids.
    const url = new URL('../../src/runtime/spawner/spawner.js', import.meta.url).href;
    const script = `import { Spawner } from '${url}';
const s = new Spawner();
const c = s.spawn('sleep', ['60'], { env: { PATH: '/usr/bin:/bin' }, detached: true });
c.on('spawn', () => console.log(JSON.stringify({ spawner: s.pid(), sleep: c.pid })));
setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((r) => parent.stdout!.once('data', (b: Buffer) => r(b.toString())));
    const { spawner, sleep } = JSON.parse(line) as { spawner: number; sleep: number };
    expect(alive(spawner) && alive(sleep)).to.equal(true);
    parent.kill('SIGKILL');
    expect(await eventually(() => !alive(spawner), 5000), 'spawner gone after its parent was killed').to.equal(true);
    expect(alive(sleep), 'what the spawner started lives on').to.equal(true);
    process.kill(sleep, 'SIGKILL');
  });

  it('a killed spawner fails the calls in flight clearly; the next call starts a new one', async function () {
    const first = s.pid()!;
    const inFlight = s.run('sleep', ['5'], { env: { PATH: '/usr/bin:/bin' } });
    await eventually(() => childrenOf(first).length === 1, 2000);
    const orphan = childrenOf(first)[0]!;
    process.kill(first, 'SIGKILL');
    const r = await inFlight;
    expect(r.failure?.name).to.equal('SpawnerGone');
    expect(r.failure?.message).to.match(/^trellis-spawner went away while it watched pid \d+ \(sleep\)/);
    expect((await s.run('sh', ['-c', 'echo again'], { env: { PATH: '/usr/bin:/bin' } })).stdout).to.equal('again');
    expect(s.pid()).to.not.equal(first);
    process.kill(orphan, 'SIGKILL');
  });

  it('exits when its channel closes (gdn stopped), and a new call starts a new one', async function () {
    const first = s.pid()!;
    s.close();
    expect(await eventually(() => !alive(first), 3000), 'spawner gone after EOF').to.equal(true);
    expect((await s.run('true', [], { env: { PATH: '/usr/bin:/bin' } })).exitCode).to.equal(0);
    expect(s.pid()).to.not.equal(first);
  });
});
