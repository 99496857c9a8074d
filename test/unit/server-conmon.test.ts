import { expect } from 'chai';
import { cleanRuntimeMessage, SyncReader, type SyncMessage } from '../../src/runtime/conmon.js';

describe('conmon sync pipe and runtime messages', function () {
  it('reads the pid and then the exit code, however the bytes are split', function () {
    const got: SyncMessage[] = [];
    const r = new SyncReader((m) => got.push(m));
    for (const piece of ['{"data": 12', '345}\n{"da', 'ta": 3}\n']) r.push(piece);
    expect(got).to.deep.equal([{ data: 12345 }, { data: 3 }]);
  });

  it('reads a failure with its message', function () {
    const got: SyncMessage[] = [];
    new SyncReader((m) => got.push(m)).push('{"data": -1, "message": "exec failed: executable file not found in $PATH"}\n');
    expect(got).to.deep.equal([{ data: -1, message: 'exec failed: executable file not found in $PATH' }]);
  });

  it("keeps runc's msg fields from its log lines", function () {
    const text = 'time="2026-11-25T17:27:47Z" level=error msg="runc run failed: unable to apply cgroup configuration: mkdir /sys/fs/cgroup/cpuset/x: permission denied"\n';
    expect(cleanRuntimeMessage(text)).to.equal('runc run failed: unable to apply cgroup configuration: mkdir /sys/fs/cgroup/cpuset/x: permission denied');
  });

  it('cuts a Go runtime dump down to its first line and runc\'s last words', function () {
    const dump = 'runtime/cgo: pthread_create failed: Resource temporarily unavailable\n' + 'goroutine 1 [running]:\n'.repeat(500) +
      'exec failed: unable to start container process: read init-p: connection reset by peer\n';
    const msg = cleanRuntimeMessage(dump);
    expect(msg.length).to.be.lessThan(1300);
    expect(msg).to.match(/^runtime\/cgo: pthread_create failed/);
    expect(msg).to.match(/exec failed: unable to start container process: read init-p: connection reset by peer$/);
  });
});
