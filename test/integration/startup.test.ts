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
});
