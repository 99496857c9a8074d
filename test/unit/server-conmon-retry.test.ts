import { expect } from 'chai';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Conmon, isTransientRuntimeFailure } from '../../src/runtime/conmon.js';
import { ExternalFailure } from '../../src/errors.js';

// A stand-in for conmon: fails the way runc does under load for the first FAILS starts
// (counted in a file), then reports a pid and, in exec mode, an exit code on the sync pipe.
function fakeConmon(dir: string, fails: number, message: string): string {
  const p = join(dir, 'conmon');
  writeFileSync(p, `#!/bin/sh
n=$(cat ${dir}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${dir}/count
if [ $n -le ${fails} ]; then
  echo "left by try $n" > ${dir}/exit/left
  printf '{"data": -1, "message": "%s"}\\n' '${message}' >&3; exit 1
fi
printf '{"data": 4242}\\n' >&3; printf '{"data": 0}\\n' >&3
`);
  chmodSync(p, 0o755);
  return p;
}

describe('conmon: transient runc failures are retried (issue 10)', function () {
  let dir: string;
  const CLONED = 'nsexec[1]: could not ensure we are a cloned binary: Device or resource busy';
  beforeEach(function () {
    dir = mkdtempSync(join(tmpdir(), 'conmon-retry-'));
    mkdirSync(join(dir, 'exit'));
  });
  afterEach(function () {
    rmSync(dir, { recursive: true, force: true });
  });
  const opts = () => ({
    containerId: 'c', monitorId: 'm', dir, runtimeRoot: join(dir, 'root'), pidFile: join(dir, 'pid'),
    conmonPidFile: join(dir, 'conmon.pid'), exitDir: join(dir, 'exit'), logPath: join(dir, 'log'), stdin: false,
    processSpecPath: join(dir, 'spec.json'),
  });

  it('knows the transient failures and nothing else', function () {
    expect(isTransientRuntimeFailure(CLONED)).to.equal(true);
    expect(isTransientRuntimeFailure('runtime/cgo: pthread_create failed: Resource temporarily unavailable')).to.equal(true);
    expect(isTransientRuntimeFailure('exec failed: unable to start container process: exec: "nope": executable file not found in $PATH')).to.equal(false);
  });

  it('an exec that hits "could not ensure we are a cloned binary" twice starts on the third try, with no exit file of the failed ones', async function () {
    const conmon = new Conmon(fakeConmon(dir, 2, CLONED), '/bin/true');
    const started = await conmon.exec(opts());
    expect(started.pid).to.equal(4242);
    expect(await started.exited).to.equal(0);
    expect(readFileSync(join(dir, 'count'), 'utf8').trim()).to.equal('3');
    expect(existsSync(join(dir, 'exit', 'left'))).to.equal(false);
  });

  it('a create is retried likewise', async function () {
    const conmon = new Conmon(fakeConmon(dir, 1, CLONED), '/bin/true');
    expect((await conmon.create(opts())).pid).to.equal(4242);
    expect(readFileSync(join(dir, 'count'), 'utf8').trim()).to.equal('2');
  });

  it('gives up after a bounded number of tries, with runc\'s message', async function () {
    this.timeout(10_000); // the backoff alone is ~1.9 s
    const conmon = new Conmon(fakeConmon(dir, 100, CLONED), '/bin/true');
    const err = await conmon.exec(opts()).then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(ExternalFailure);
    expect((err as Error).message).to.contain('could not ensure we are a cloned binary');
    expect(readFileSync(join(dir, 'count'), 'utf8').trim()).to.equal('6');
  });

  it('does not retry a failure of the process itself', async function () {
    const conmon = new Conmon(fakeConmon(dir, 1, 'exec failed: executable file not found in $PATH'), '/bin/true');
    const err = await conmon.exec(opts()).then(() => null, (e: unknown) => e);
    expect((err as Error).message).to.contain('executable file not found');
    expect(readFileSync(join(dir, 'count'), 'utf8').trim()).to.equal('1');
  });
});
