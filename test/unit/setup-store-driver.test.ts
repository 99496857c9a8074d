// Issue #11: which driver `gdn setup` gives a store when --store-driver is not given.
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultStoreDriver } from '../../src/setup/setup.js';

describe('gdn setup: the default store driver (issue 11)', function () {
  let dir: string;
  before(function () {
    dir = mkdtempSync(join(tmpdir(), 'setup-driver-'));
  });
  after(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  it('a new store is btrfs (quotas); an existing one keeps its driver, never converted under its containers', function () {
    expect(defaultStoreDriver(join(dir, 'new'), () => true)).to.equal('btrfs');
    const old = join(dir, 'old');
    mkdirSync(join(old, 'meta'), { recursive: true });
    writeFileSync(join(old, 'meta', 'namespace.json'), '{}');
    expect(defaultStoreDriver(old, () => true), 'made before drivers were recorded').to.equal('overlay');
    writeFileSync(join(old, 'meta', 'driver'), 'btrfs\n');
    expect(defaultStoreDriver(old, () => false)).to.equal('btrfs');
    writeFileSync(join(old, 'meta', 'driver'), 'overlay\n');
    expect(defaultStoreDriver(old, () => true)).to.equal('overlay');
  });

  it('a new store where the kernel has neither btrfs nor XFS quota: a clear refusal naming --store-driver overlay', function () {
    expect(() => defaultStoreDriver(join(dir, 'none'), () => false, () => false))
      .to.throw(/neither btrfs nor XFS quota/)
      .with.property('hint')
      .that.includes('--store-driver overlay');
  });

  it('no btrfs but XFS quota: a new store is xfs; btrfs wins where both are', function () {
    expect(defaultStoreDriver(join(dir, 'x1'), () => false, () => true)).to.equal('xfs');
    expect(defaultStoreDriver(join(dir, 'x2'), () => true, () => true)).to.equal('btrfs');
  });

  it('an XFS store keeps being xfs: recorded (meta/quota), or unmounted after a reboot (its backing file is there)', function () {
    const s = join(dir, 'xs');
    mkdirSync(join(s, 'meta'), { recursive: true });
    writeFileSync(join(s, 'meta', 'namespace.json'), '{}');
    writeFileSync(join(s, 'meta', 'driver'), 'overlay\n');
    writeFileSync(join(s, 'meta', 'quota'), 'xfs\n');
    expect(defaultStoreDriver(s, () => true, () => true)).to.equal('xfs');
    const backing = join(dir, 'xs.xfs');
    writeFileSync(backing, '');
    expect(defaultStoreDriver(join(dir, 'unmounted'), () => true, () => false, backing)).to.equal('xfs');
  });
});
