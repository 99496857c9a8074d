// Issue #10: a created container starts by reading runc's exec fifo in gdn, without a
// `runc start` process (src/runtime/execfifo.ts, Runc.start). A shell stands in for the init:
// it opens the fifo for writing, writes a byte and goes on, as runc's init does before exec.
import { expect } from 'chai';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExternalFailure } from '../../src/errors.js';
import { ExecFifoAbsent, ExecFifoFailure, startThroughFifo } from '../../src/runtime/execfifo.js';
import { Runc } from '../../src/runtime/runc.js';
import type { RunResult, Spawner } from '../../src/runtime/spawner/spawner.js';

/** A spawner that runs nothing and records what it was asked to run. */
function recordingSpawner(calls: string[][]): Spawner {
  return {
    run: async (file: string, args: string[]): Promise<RunResult> => {
      calls.push([file, ...args]);
      return { exitCode: 0, signal: null, stdout: '', stderr: '' };
    },
  } as unknown as Spawner;
}

describe('exec fifo start (issue 10)', function () {
  let dir: string;
  let fifo: string;
  const children: ChildProcess[] = [];

  /** A stand-in init: `script` runs in sh with $F the fifo's path. */
  const init = (script: string): ChildProcess => {
    const c = spawn('sh', ['-c', script], { env: { F: fifo, PATH: process.env.PATH }, stdio: 'ignore' });
    children.push(c);
    return c;
  };

  beforeEach(async function () {
    dir = await mkdtemp(join(tmpdir(), 'execfifo-'));
    fifo = join(dir, 'exec.fifo');
    execFileSync('mkfifo', ['-m', '0622', fifo]);
  });

  afterEach(async function () {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the byte the init writes, and removes the fifo (runc then says "running")', async function () {
    const c = init('sleep 0.1; printf 0 > "$F"; exec sleep 5');
    await startThroughFifo(dir, c.pid!, 5000);
    expect(existsSync(fifo)).to.equal(false);
  });

  it('an init that dies before it opens the fifo fails the start at once, with runc\'s words', async function () {
    const c = init('sleep 0.05; exit 1');
    const t0 = Date.now();
    const err = await startThroughFifo(dir, c.pid!, 10_000).then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(ExecFifoFailure);
    expect((err as Error).message).to.equal('container process is already dead');
    expect(Date.now() - t0).to.be.below(2000);
  });

  it('an init that writes its byte and dies at once has started (its process ran, as runc counts it)', async function () {
    const c = init('printf 0 > "$F"; exit 0');
    await startThroughFifo(dir, c.pid!, 5000);
    expect(existsSync(fifo)).to.equal(false);
  });

  it('an init that stays alive and never opens the fifo is given up after the timeout', async function () {
    const c = init('exec sleep 30');
    const t0 = Date.now();
    const err = await startThroughFifo(dir, c.pid!, 300).then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(ExecFifoFailure);
    expect((err as Error).message).to.match(/did not start within 0.3s/);
    expect(Date.now() - t0).to.be.within(250, 3000);
    expect(existsSync(fifo), 'a failed start leaves the fifo (runc state stays "created")').to.equal(true);
  });

  it('a writer that closes without a byte is runc\'s "already running" failure', async function () {
    const c = init('sleep 0.05; : > "$F"; exec sleep 5');
    const err = await startThroughFifo(dir, c.pid!, 5000).then(() => undefined, (e: unknown) => e);
    expect((err as Error).message).to.equal('cannot start an already running container');
  });

  it('no fifo, or something else at its path: nothing is done and the caller falls back', async function () {
    await rm(fifo);
    expect(await startThroughFifo(dir, process.pid, 1000).then(() => undefined, (e: unknown) => e)).to.be.instanceOf(ExecFifoAbsent);
    await writeFile(fifo, '0');
    expect(await startThroughFifo(dir, process.pid, 1000).then(() => undefined, (e: unknown) => e)).to.be.instanceOf(ExecFifoAbsent);
    expect(existsSync(fifo)).to.equal(true);
  });

  describe('Runc.start', function () {
    it('starts through the fifo when runc\'s state names the init, with no runc process', async function () {
      const root = dir;
      const state = join(root, 'c1');
      await mkdir(state);
      execFileSync('mkfifo', ['-m', '0622', join(state, 'exec.fifo')]);
      fifo = join(state, 'exec.fifo');
      const c = init('printf 0 > "$F"; exec sleep 5');
      await writeFile(join(state, 'state.json'), JSON.stringify({ id: 'c1', init_process_pid: c.pid }));
      const calls: string[][] = [];
      await new Runc('/usr/sbin/runc', [], recordingSpawner(calls)).start(root, 'c1');
      expect(calls).to.deep.equal([]);
      expect(existsSync(join(state, 'exec.fifo'))).to.equal(false);
    });

    it('runs `runc start` where there is no runc 1.1 state or no fifo', async function () {
      const calls: string[][] = [];
      const runc = new Runc('/usr/sbin/runc', [], recordingSpawner(calls));
      await runc.start(dir, 'nostate');
      await mkdir(join(dir, 'nofifo'));
      await writeFile(join(dir, 'nofifo', 'state.json'), JSON.stringify({ id: 'nofifo', init_process_pid: process.pid }));
      await runc.start(dir, 'nofifo');
      expect(calls.map((c) => c.slice(-2))).to.deep.equal([['start', 'nostate'], ['start', 'nofifo']]);
    });

    it('a dead init fails the start as runc does, without `runc start`', async function () {
      const state = join(dir, 'c2');
      await mkdir(state);
      fifo = join(state, 'exec.fifo');
      execFileSync('mkfifo', ['-m', '0622', fifo]);
      const c = init('exit 0');
      await new Promise((r) => c.on('exit', r));
      await writeFile(join(state, 'state.json'), JSON.stringify({ id: 'c2', init_process_pid: c.pid }));
      const calls: string[][] = [];
      const err = await new Runc('/usr/sbin/runc', [], recordingSpawner(calls)).start(dir, 'c2').then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(ExternalFailure);
      expect((err as Error).message).to.equal('runc start: container process is already dead');
      expect(calls).to.deep.equal([]);
    });
  });
});
