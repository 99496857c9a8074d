#!/usr/bin/env node
// Entry point of the unpack helper: run by the store inside a user namespace that
// carries the store's mappings (`unshare --map-root-user --map-users ...`). Takes
// a JSON list of jobs as its argument, unpacks them in order, prints the results
// as one JSON line; on failure prints one line to stderr and exits 1.
import { errorMessage } from '../../src/errors.js';
import { unpackLayer, type UnpackJob, type UnpackResult } from './unpack.js';

async function main(): Promise<void> {
  const jobs = JSON.parse(process.argv[2] ?? '[]') as UnpackJob[];
  // overlay layers are separate directories: unpack them side by side (zlib runs on
  // libuv's threads); btrfs layers build on each other and come one at a time anyway.
  const results: UnpackResult[] = await Promise.all(jobs.map((job) => unpackLayer(job)));
  process.stdout.write(`${JSON.stringify(results)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${errorMessage(err).replace(/\s*\n\s*/g, ' ')}\n`);
  process.exitCode = 1;
});
