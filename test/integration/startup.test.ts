// gdn server refuses to start, with one line naming the missing piece and its fix,
// and leaves nothing behind (no socket, no depot).
import { expect } from 'chai';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { GDN, runtimeDir } from './harness.js';

describe('gdn server start-up refusals (integration)', function () {
  let dir: string;
  beforeEach(async function () {
    dir = await mkdtemp(join(runtimeDir(), 'gdn-start-'));
  });
  afterEach(async function () {
    await rm(dir, { recursive: true, force: true });
  });

  const start = (...extra: string[]) =>
    execa('node', [GDN, 'server', '--bind-socket', join(dir, 'gdn.sock'), '--depot', join(dir, 'depot'), ...extra], {
      reject: false,
      timeout: 20_000,
    });

  const cases: Array<[string, string[], RegExp]> = [
    ['a missing runtime', ['--runtime-plugin', '/nonexistent/runc'], /^error: \/nonexistent\/runc not found in PATH \(install it: 'apt-get install runc'\)$/],
    ['a missing conmon', ['--conmon-bin', 'no-such-conmon'], /^error: no-such-conmon not found in PATH \(install it: 'apt-get install conmon'\)$/],
    ['a missing init', ['--init-bin', '/nope/catatonit'], /^error: \/nope\/catatonit not found in PATH/],
    ['a depot it cannot write', ['--depot', '/proc/trellis-depot'], /^error: depot \/proc\/trellis-depot is not writable: .*\(run 'sudo gdn setup --rootless-uid \d+ --rootless-gid \d+'\)$/],
    ['an unreadable seccomp profile', ['--seccomp-profile', '/nope.json'], /^error: cannot read the seccomp profile \/nope\.json: .*golang-github-containers-common/],
    ['an unknown flag', ['--bogus-flag'], /^error: Unknown argument: bogus-flag$/],
    ['a bad grace time', ['--default-grace-time', 'soon'], /^error: .*soon/],
  ];

  for (const [what, args, message] of cases) {
    it(`refuses ${what}: one line, exit 1, nothing left`, async function () {
      const r = await start(...args);
      expect(r.exitCode, r.all ?? r.stderr).to.equal(1);
      const lines = r.stderr.split('\n').filter((l) => l !== '');
      expect(lines, r.stderr).to.have.length(1);
      expect(lines[0]).to.match(message);
      expect(existsSync(join(dir, 'gdn.sock'))).to.equal(false);
    });
  }

  it('serves its own user on loopback TCP, and its unix socket is owner-only', async function () {
    const { createServer } = await import('node:net');
    const { stat } = await import('node:fs/promises');
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const p = (probe.address() as { port: number }).port;
        probe.close(() => resolve(p));
      });
    });
    const { GardenClient } = await import('../../src/client/client.js');
    const tcp = execa('node', [GDN, 'server', '--bind-ip', '127.0.0.1', '--bind-port', String(port), '--depot', join(dir, 'depot-tcp')], { reject: false });
    const unix = execa('node', [GDN, 'server', '--bind-socket', join(dir, 'gdn.sock'), '--depot', join(dir, 'depot-unix')], { reject: false });
    try {
      const ping = async (target: string) => {
        for (let i = 0; i < 100; i++) {
          try {
            await new GardenClient(target).ping();
            return true;
          } catch {
            await new Promise((r) => setTimeout(r, 100));
          }
        }
        return false;
      };
      expect(await ping(`127.0.0.1:${port}`)).to.equal(true);
      expect(await ping(join(dir, 'gdn.sock'))).to.equal(true);
      expect((await stat(join(dir, 'gdn.sock'))).mode & 0o777).to.equal(0o600);
    } finally {
      tcp.kill('SIGTERM');
      unix.kill('SIGTERM');
      await Promise.all([tcp, unix]);
    }
  });
});

describe('gdn server as a program (integration, issue 10: flat memory)', function () {
  it('runs with a small young generation, two malloc arenas and a fixed mmap threshold, from its own #! line', async function () {
    const { readFile } = await import('node:fs/promises');
    const { startServer, cleanupServer } = await import('./harness.js');
    const server = await startServer();
    try {
      const pid = server.proc.pid!;
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
      const env = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
      expect(argv, argv.join(' ')).to.include('--max-semi-space-size=2');
      expect(argv, argv.join(' ')).to.include('--optimize-for-size');
      // (the installed package's /usr/bin/gdn in CI, dist/cmd/gdn.js in a checkout)
      expect(argv, argv.join(' ')).to.include(GDN);
      expect(env).to.include('MALLOC_ARENA_MAX=2');
      expect(env).to.include('MALLOC_MMAP_THRESHOLD_=131072');
    } finally {
      await cleanupServer(server);
    }
  });
});
