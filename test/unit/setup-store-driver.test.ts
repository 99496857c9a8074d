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

  it('a new store where the kernel has no btrfs: a clear refusal naming --store-driver overlay', function () {
    expect(() => defaultStoreDriver(join(dir, 'none'), () => false))
      .to.throw(/no btrfs/)
      .with.property('hint')
      .that.includes('--store-driver overlay');
  });
});
