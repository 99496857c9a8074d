// The launcher's complaint, read back from a process's log (src/runtime/launch.ts).
import { expect } from 'chai';
import { launcherError } from '../../src/runtime/launch.js';

const rec = (stream: string, text: string) => `2026-01-01T00:00:00.000000000Z ${stream} F ${text}\n`;

describe('launcherError', () => {
  it('takes the launcher\'s first line, without its prefix, from stderr or a terminal', () => {
    expect(launcherError(Buffer.from(rec('stderr', 'garden-init: exec: "x": executable file not found in $PATH')))).to.equal('exec: "x": executable file not found in $PATH');
    expect(launcherError(Buffer.from(rec('stdout', 'garden-init: exec "/x": Permission denied\r')))).to.equal('exec "/x": Permission denied');
  });

  it('ignores a program\'s own output, and a complaint that is not the first thing logged', () => {
    expect(launcherError(Buffer.from(rec('stderr', 'boom')))).to.equal(undefined);
    expect(launcherError(Buffer.from(rec('stdout', 'hi') + rec('stderr', 'garden-init: exec: "x": nope')))).to.equal(undefined);
    expect(launcherError(Buffer.alloc(0))).to.equal(undefined);
  });
});
