// Issue 8: Garden's "large id" specs, on a server of a user whose `gdn setup` granted a
// large subordinate range (scripts/test: --subid-count 1000000001 for the test user).
// A process runs as 1000000000:1000000000, a user added with uid and gid 700000 runs as
// itself, and what they write lands on the host ids the user's range gives them.
import { expect } from 'chai';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseNamespaceFile } from '../../plugins/grootfs/store.js';
import { toHost, type IdMapping } from '../../src/idmap/subid.js';
import { cleanupServer, dumpLogsIfFailed, leftovers, runAndWait, type Server, sh, spec, startServer, STORE } from './harness.js';

const BIG = 1_000_000_000;

/** Every path under `dir` whose name is `name` (the container's upper layer lives somewhere under the store). */
async function findNamed(dir: string, name: string, depth = 8): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.name === name) out.push(p);
    if (e.isDirectory() && depth > 0) out.push(...(await findNamed(p, name, depth - 1)));
  }
  return out;
}

describe('issue 8: large uids and gids (integration)', function () {
  let server: Server;
  let maps: { uidMappings: IdMapping[]; gidMappings: IdMapping[] };
  const h = 'large-ids';
  const run = (script: string, extra: Parameters<typeof sh>[1] = {}) => runAndWait(server.client, h, sh(script, extra));

  before(async function () {
    this.timeout(120_000);
    maps = parseNamespaceFile(await readFile(join(STORE, 'meta', 'namespace.json'), 'utf8'));
    // Not a skip: without the range this suite is about, it must fail and say why.
    if (toHost(maps.uidMappings, BIG) === undefined || toHost(maps.gidMappings, BIG) === undefined) {
      throw new Error(`the store ${STORE} maps no container id ${BIG} (${JSON.stringify(maps)}): run gdn setup --subid-count 1000000001 for this user, as scripts/test does`);
    }
    server = await startServer();
    await server.client.create(spec({ handle: h }));
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  after(async function () {
    this.timeout(60_000);
    await cleanupServer(server);
  });

  it('runs a process as 1000000000:1000000000 (Garden: has a sufficiently large UID/GID range)', async function () {
    this.timeout(60_000);
    const r = await runAndWait(server.client, h, { path: 'id', args: [], user: `${BIG}:${BIG}` });
    expect(r.stderr).to.equal('');
    expect(r.stdout).to.equal(`uid=${BIG} gid=${BIG}\n`);
    expect(r.code).to.equal(0);
    // What it writes is owned, on the host, by the id the user's range gives container id 1000000000.
    const w = await runAndWait(server.client, h, sh('touch /tmp/large-ids-marker && stat -c "%u %g" /tmp/large-ids-marker', { user: `${BIG}:${BIG}` }));
    expect(w.stdout).to.equal(`${BIG} ${BIG}\n`);
    const found = await findNamed(STORE, 'large-ids-marker');
    expect(found).to.have.length.greaterThan(0);
    const st = await stat(found[0]!);
    expect([st.uid, st.gid]).to.deep.equal([toHost(maps.uidMappings, BIG), toHost(maps.gidMappings, BIG)]);
  });

  it('adds a user with uid and gid 700000 and runs as it (Garden: creates a user with a large uid and gid)', async function () {
    this.timeout(60_000);
    const made = await run('addgroup -g 700000 bob && adduser -u 700000 -G bob -D bob && echo made');
    expect(made.stdout, made.stderr).to.equal('made\n');
    const r = await runAndWait(server.client, h, { path: 'sh', args: ['-c', 'id; echo Hello Baldrick > ~/hello; stat -c "%u %g" ~ ~/hello'], user: 'bob' });
    expect(r.stderr).to.equal('');
    expect(r.stdout).to.equal('uid=700000(bob) gid=700000(bob)\n700000 700000\n700000 700000\n');
    expect(r.code).to.equal(0);
  });

  it('still refuses an id beyond the range, with nothing left behind', async function () {
    this.timeout(60_000);
    const beyond = maps.uidMappings.reduce((m, x) => Math.max(m, x.containerID + x.size), 0);
    let err: Error | undefined;
    let r: Awaited<ReturnType<typeof runAndWait>> | undefined;
    try {
      r = await runAndWait(server.client, h, { path: 'id', args: [], user: `${beyond}:${beyond}` });
    } catch (e) {
      err = e as Error;
    }
    // Either the run is refused or the process fails: never does it run as an unmapped id.
    if (err === undefined) expect(r!.code).to.not.equal(0);
    await server.client.destroy(h);
    expect(await leftovers(h, { depot: server.depot, store: STORE })).to.deep.equal([]);
  });
});
