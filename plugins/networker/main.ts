#!/usr/bin/env node
// The `networker` executable: Garden's external-networker contract (spec/plugins.md
// §3.1) over the same library gdn calls in-process.
//   networker [--configFile=F] --action up|down|net-in|net-out|bulk-net-out --handle H
// stdin: the action's JSON; stdout: its JSON result; logs: JSON lines on stderr;
// errors: one line on stderr, exit 1.
import { readFileSync } from 'node:fs';
import { destination, pino } from 'pino';
import { errorMessage, InvalidArgument } from '../../src/errors.js';
import { loadNetworkerConfig, networkerFor } from './wiring.js';

function flag(argv: string[], name: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === `--${name}`) value = argv[++i];
    else if (a.startsWith(`--${name}=`)) value = a.slice(name.length + 3);
  }
  return value;
}

async function main(argv: string[]): Promise<void> {
  const known = new Set(['--action', '--handle', '--configFile', '--config']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const name = a.includes('=') ? a.slice(0, a.indexOf('=')) : a;
    if (!known.has(name)) throw new InvalidArgument(`unknown argument ${a}: usage: networker [--configFile=F] --action ACTION --handle HANDLE`);
    if (!a.includes('=')) i++;
  }
  const action = flag(argv, 'action');
  const handle = flag(argv, 'handle');
  if (!action || !handle) throw new InvalidArgument('usage: networker [--configFile=F] --action up|down|net-in|net-out|bulk-net-out --handle HANDLE');
  const log = pino({ level: 'info', base: { source: 'networker' } }, destination({ fd: 2, sync: true }));
  const cfg = loadNetworkerConfig(flag(argv, 'configFile') ?? flag(argv, 'config'), log);
  const networker = networkerFor(process.getuid?.() ?? 0, cfg, log);
  const text = readFileSync(0, 'utf8');
  let input: unknown;
  try {
    input = text.trim() === '' ? null : JSON.parse(text);
  } catch (err) {
    throw new InvalidArgument(`stdin is not JSON: ${(err as Error).message}`);
  }
  const obj = (input ?? {}) as Record<string, unknown>;
  switch (action) {
    case 'up': {
      const out = await networker.up(handle, input as Parameters<typeof networker.up>[1]);
      process.stdout.write(`${JSON.stringify(out)}\n`);
      return;
    }
    case 'down':
      await networker.down(handle);
      return;
    case 'net-in': {
      const out = await networker.netIn(handle, { HostPort: obj.HostPort as number, ContainerPort: obj.ContainerPort as number });
      process.stdout.write(`${JSON.stringify(out)}\n`);
      return;
    }
    case 'net-out':
      await networker.netOut(handle, [obj.netout_rule]);
      return;
    case 'bulk-net-out':
      if (!Array.isArray(obj.netout_rules)) throw new InvalidArgument('bulk-net-out needs netout_rules');
      await networker.netOut(handle, obj.netout_rules);
      return;
    default:
      throw new InvalidArgument(`unrecognized action: ${action}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`networker: ${errorMessage(err).replace(/\s*\n\s*/g, ' ')}\n`);
  process.exitCode = 1;
});
