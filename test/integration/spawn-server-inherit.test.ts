// Issue 10, security review of the spawn server: root in a container can change its pid 1's
// nice value, OOM score and CPU set. A process that `run` starts must not inherit them (a
// `runc exec` process took its settings from the host, not from pid 1): garden-init gives each
// child what it had itself at start, and where it cannot (a lower nice value or OOM score needs
// privilege the container lacks), the run fails saying so instead of starting the process with them.
import { expect } from 'chai';
import { cleanupServer, dumpLogsIfFailed, runAndWait, type Server, sh, spec, startServer } from './harness.js';

// The shell's own: nice is field 19 of its stat.
const SETTINGS = 'set -- $(cat /proc/$$/stat); echo "nice=${19} oom=$(cat /proc/$$/oom_score_adj) cpus=$(grep ^Cpus_allowed_list: /proc/$$/status | cut -f2)"';

describe('issue 10: what root in the container does to pid 1 does not reach the processes run after (integration)', function () {
  let server: Server;

  before(async function () {
    this.timeout(60_000);
    server = await startServer();
  });
  after(async function () {
    await cleanupServer(server);
  });
  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  for (const [what, change, check] of [
    ['CPU affinity narrowed', 'taskset -p 1 1 >/dev/null', 'grep ^Cpus_allowed_list: /proc/1/status | cut -f2'],
    ['a higher OOM score', 'echo 900 > /proc/1/oom_score_adj', 'cat /proc/1/oom_score_adj'],
  ] as const) {
    it(`${what} on pid 1: the next process (root or not) has what init started with`, async function () {
      const h = await server.client.create(spec({ handle: `inherit-${what.split(' ').pop()}` }));
      await runAndWait(server.client, h, sh('adduser -D -u 3001 bob && echo ok'));
      const before = await runAndWait(server.client, h, sh(SETTINGS, { user: 'bob' }));
      expect(before.code, before.stderr).to.equal(0);
      const changed = await runAndWait(server.client, h, sh(`${change} && ${check}`));
      expect(changed.code, changed.stderr).to.equal(0);
      expect(changed.stdout, 'pid 1 changed').to.match(/^(0|900)\n$/);
      for (const user of ['bob', 'root']) {
        const after = await runAndWait(server.client, h, sh(SETTINGS, { user }));
        expect(after.stdout, `as ${user}`).to.equal(before.stdout);
      }
      await server.client.destroy(h);
    });
  }

  for (const [what, change] of [
    ['a higher nice value', 'renice -n 15 -p 1 >/dev/null'],
  ] as const) {
    it(`${what} on pid 1: the next run fails, saying why, and starts nothing`, async function () {
      const h = await server.client.create(spec({ handle: `inherit-${what.split(' ').pop()}` }));
      await runAndWait(server.client, h, sh('adduser -D -u 3001 bob && echo ok'));
      const changed = await runAndWait(server.client, h, sh(change));
      expect(changed.code, changed.stderr).to.equal(0);
      for (const user of ['bob', 'root']) {
        const err = await runAndWait(server.client, h, sh('touch /tmp/ran; echo ran', { user })).then(
          (r) => new Error(`ran: ${JSON.stringify(r)}`),
          (e: Error) => e,
        );
        expect(err.message, `as ${user}`).to.match(/no longer has the priority, CPUs or OOM score it started with/);
      }
      await server.client.destroy(h);
    });
  }
});
