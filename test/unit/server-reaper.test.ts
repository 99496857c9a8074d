// The idle reaper (src/gardener/reaper.ts, spec §5.7), on real short timers.

import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import { Reaper } from '../../src/gardener/reaper.js';

const MS = 1_000_000n;

describe('Reaper', function () {
  this.timeout(5000);
  let expired: string[];
  let reaper: Reaper;

  beforeEach(() => {
    expired = [];
    reaper = new Reaper((h) => expired.push(h));
  });
  afterEach(() => reaper.stop());

  it('expires a tracked container after its grace time, once', async () => {
    reaper.track('c1', 40n * MS);
    await sleep(15);
    expect(expired).to.deep.equal([]);
    await sleep(80);
    expect(expired).to.deep.equal(['c1']);
    await sleep(60);
    expect(expired).to.deep.equal(['c1']);
  });

  it('expires each container on its own timer', async () => {
    reaper.track('slow', 150n * MS);
    reaper.track('fast', 30n * MS);
    await sleep(80);
    expect(expired).to.deep.equal(['fast']);
    await sleep(120);
    expect(expired).to.deep.equal(['fast', 'slow']);
  });

  it('never expires with grace 0', async () => {
    reaper.track('c1', 0n);
    await sleep(60);
    expect(expired).to.deep.equal([]);
  });

  it('pauses while a request is in flight', async () => {
    reaper.track('c1', 30n * MS);
    const end = reaper.begin('c1');
    await sleep(90);
    expect(expired).to.deep.equal([]);
    end();
  });

  it('re-arms the full duration when the request ends', async () => {
    reaper.track('c1', 60n * MS);
    await sleep(40); // most of the grace used up
    const end = reaper.begin('c1');
    await sleep(10);
    end();
    await sleep(35); // 85 ms after track: past the first deadline, inside the new one
    expect(expired).to.deep.equal([]);
    await sleep(70);
    expect(expired).to.deep.equal(['c1']);
  });

  it('stays paused until the last of several requests ends', async () => {
    reaper.track('c1', 20n * MS);
    const a = reaper.begin('c1');
    const b = reaper.begin('c1');
    a();
    a(); // ending twice counts once
    await sleep(60);
    expect(expired).to.deep.equal([]);
    b();
    await sleep(60);
    expect(expired).to.deep.equal(['c1']);
  });

  it('untrack cancels the timer', async () => {
    reaper.track('c1', 20n * MS);
    reaper.untrack('c1');
    await sleep(60);
    expect(expired).to.deep.equal([]);
  });

  it('a request that ends after untrack does not re-arm', async () => {
    reaper.track('c1', 20n * MS);
    const end = reaper.begin('c1');
    reaper.untrack('c1');
    end();
    await sleep(60);
    expect(expired).to.deep.equal([]);
  });

  it('begin on an untracked handle is harmless', async () => {
    const end = reaper.begin('nosuch');
    end();
    await sleep(30);
    expect(expired).to.deep.equal([]);
  });

  it('tracking again restarts the timer with the new value', async () => {
    reaper.track('c1', 40n * MS);
    await sleep(25);
    reaper.track('c1', 60n * MS);
    await sleep(40); // 65 ms after the first track
    expect(expired).to.deep.equal([]);
    await sleep(60);
    expect(expired).to.deep.equal(['c1']);
  });

  it('setting grace 0 cancels a pending expiry', async () => {
    reaper.track('c1', 30n * MS);
    reaper.track('c1', 0n);
    await sleep(70);
    expect(expired).to.deep.equal([]);
  });

  it('a new grace set during a request applies when it ends', async () => {
    reaper.track('c1', 20n * MS);
    const end = reaper.begin('c1');
    reaper.track('c1', 80n * MS);
    await sleep(40);
    expect(expired).to.deep.equal([]);
    end();
    await sleep(40);
    expect(expired).to.deep.equal([]);
    await sleep(80);
    expect(expired).to.deep.equal(['c1']);
  });

  it('stop cancels every timer', async () => {
    reaper.track('a', 20n * MS);
    reaper.track('b', 20n * MS);
    reaper.stop();
    await sleep(50);
    expect(expired).to.deep.equal([]);
  });
});
