#!/usr/bin/env node
// gaol: a CLI for Garden, compatible with contraband/gaol (2018) in flags,
// output and exit codes, and with the Go client on the wire (src/client).

import { realpathSync } from 'node:fs';
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import yargs, { type Argv } from 'yargs';
import { GardenClient } from '../src/client/client.js';
import { parseGoDuration } from '../src/client/duration.js';
import { splitHostPort } from '../src/client/http.js';
import { shellWords } from '../src/client/shellwords.js';
import { BindMountMode, BindMountOrigin, Protocol, type BindMount, type ContainerSpec } from '../src/client/types.js';

export interface GaolIO {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  env: NodeJS.ProcessEnv;
}

/** A failure that ends the command with `error: <message>` and status 1. */
class UsageError extends Error {}

interface Context {
  client: GardenClient;
  target: string;
  io: GaolIO;
}

type Args = Record<string, unknown>;

/** A gaol command: name, flags, help, handler returning the exit status. */
interface Command {
  name: string;
  describe: string;
  flags: (y: Argv) => Argv;
  run: (ctx: Context, args: Args) => Promise<number>;
}

const DEFAULT_TARGET = '127.0.0.1:7777';

// ---------------------------------------------------------------------------
// flag helpers

const str = (a: Args, k: string): string => {
  const v = a[k];
  if (Array.isArray(v)) return String(v[v.length - 1] ?? '');
  return v === undefined ? '' : String(v);
};
const strs = (a: Args, k: string): string[] => {
  const v = a[k];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(String);
};
const bool = (a: Args, k: string): boolean => a[k] === true;

function handleArg(a: Args): string {
  const h = a.handle;
  if (h === undefined || h === '') throw new UsageError('must provide container handle');
  return String(h);
}

function duration(a: Args, k: string, flag: string): bigint {
  try {
    return parseGoDuration(str(a, k));
  } catch (err) {
    throw new UsageError(`invalid argument for flag \`${flag}' (expected time.Duration): ${(err as Error).message}`);
  }
}

function uint16(a: Args, k: string, flag: string): number {
  const v = str(a, k);
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) {
    throw new UsageError(`invalid argument for flag \`${flag}' (expected uint16): strconv.ParseUint: parsing ${JSON.stringify(v)}: ${/^\d+$/.test(v) ? 'value out of range' : 'invalid syntax'}`);
  }
  return n;
}

/** host:ctr[:ro|rw]; gaol's default is RW, the opposite of Garden's. */
export function parseBindMount(s: string): BindMount {
  const parts = s.split(':');
  let mode: BindMountMode = BindMountMode.RW;
  if (parts.length === 3 && (parts[2] === 'ro' || parts[2] === 'rw')) {
    mode = parts[2] === 'ro' ? BindMountMode.RO : BindMountMode.RW;
    parts.pop();
  }
  if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
    throw new UsageError(`invalid bind-mount segment (must be host-path:container-path[:ro|rw]): ${s}`);
  }
  return { src_path: parts[0], dst_path: parts[1], mode, origin: BindMountOrigin.Host };
}

/** An IP as Go's net.IP marshals it: dotted IPv4 (also for v4-mapped), compressed IPv6. */
export function goIP(s: string): string {
  if (net.isIPv4(s)) return s;
  if (!net.isIPv6(s)) throw new UsageError(`invalid IP: '${s}'`);
  const canonical = new URL(`http://[${s}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    return [hi >> 8, hi & 0xff, lo >> 8, lo & 0xff].join('.');
  }
  return canonical;
}

/** Go's json.MarshalIndent(map, "", "  ") for a string map: keys sorted, HTML-escaped. */
function indentJson(m: Record<string, string>): string {
  const keys = Object.keys(m).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  if (keys.length === 0) return '{}';
  const esc = (s: string): string =>
    JSON.stringify(s)
      .replace(/</g, '\\u003c')
      .replace(/>/g, '\\u003e')
      .replace(/&/g, '\\u0026')
      .replace(/\u2028/g, '\\u2028')
      .replace(/\u2029/g, '\\u2029');
  return '{\n' + keys.map((k) => `  ${esc(k)}: ${esc(m[k]!)}`).join(',\n') + '\n}';
}

function write(w: Writable, s: string): Promise<void> {
  return new Promise((resolve) => w.write(s, () => resolve()));
}

// ---------------------------------------------------------------------------
// commands

const commands: Command[] = [
  {
    name: 'ping',
    describe: 'check if the server is running',
    flags: (y) => y,
    async run({ client }) {
      await client.ping();
      return 0;
    },
  },
  {
    name: 'create',
    describe: 'create a container',
    flags: (y) =>
      y.options({
        handle: { alias: 'n', type: 'string', describe: 'name to give container' },
        rootfs: { alias: 'r', type: 'string', describe: 'rootfs image with which to create the container' },
        username: { type: 'string', describe: 'username for the rootfs registry' },
        password: { type: 'string', describe: 'password for the rootfs registry' },
        env: { alias: 'e', type: 'string', describe: 'set environment variables (repeatable)' },
        grace: { alias: 'g', type: 'string', describe: 'grace time (resetting ttl) of container, e.g. 10m' },
        privileged: { alias: 'p', type: 'boolean', describe: 'privileged user in the container is privileged in the host' },
        network: { type: 'string', describe: 'the subnet of the container' },
        'bind-mount': { alias: 'm', type: 'string', describe: 'bind mount host-path:container-path[:ro|rw] (repeatable)' },
      }),
    async run({ client, io }, a) {
      const spec: ContainerSpec = {
        handle: str(a, 'handle'),
        grace_time: a.grace === undefined ? undefined : duration(a, 'grace', '-g, --grace'),
        image: { uri: str(a, 'rootfs'), username: str(a, 'username'), password: str(a, 'password') },
        bind_mounts: strs(a, 'bind-mount').map(parseBindMount),
        network: str(a, 'network'),
        env: strs(a, 'env'),
        privileged: bool(a, 'privileged'),
      };
      const handle = await client.create(spec);
      await write(io.stdout, handle + '\n');
      return 0;
    },
  },
  {
    name: 'destroy',
    describe: 'destroy containers',
    flags: (y) => y.positional('handles', { type: 'string', array: true }),
    async run({ client }, a) {
      for (const h of strs(a, 'handles')) await client.destroy(h);
      return 0;
    },
  },
  {
    name: 'list',
    describe: 'get a list of running containers',
    flags: (y) =>
      y.options({
        properties: { alias: 'p', type: 'string', describe: 'filter by properties (name=value, repeatable)' },
        verbose: { alias: 'v', type: 'boolean', describe: 'print additional details about each container' },
        separator: { type: 'string', describe: 'separator to print between containers in verbose mode' },
      }),
    async run({ client, io }, a) {
      const filter: Record<string, string> = {};
      for (const pair of strs(a, 'properties')) {
        const eq = pair.indexOf('=');
        if (eq < 0) throw new UsageError('malformed property pair (must be name=value)');
        filter[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      const handles = await client.list(filter);
      for (const h of handles) {
        await write(io.stdout, h + '\n');
        if (bool(a, 'verbose')) {
          const props = await client.properties(h).catch(() => ({}) as Record<string, string>);
          for (const k of Object.keys(props).sort()) await write(io.stdout, `  ${k}=${props[k]}\n`);
          await write(io.stdout, str(a, 'separator'));
        }
      }
      return 0;
    },
  },
  {
    name: 'run',
    describe: 'run a command in a container',
    flags: (y) =>
      y.options({
        attach: { alias: 'a', type: 'boolean', describe: 'attach to the process after it has started' },
        dir: { alias: 'd', type: 'string', describe: 'current working directory of process' },
        user: { alias: 'u', type: 'string', default: 'root', describe: 'user to run the process as' },
        command: { alias: 'c', type: 'string', describe: 'command to run in container' },
        env: { alias: 'e', type: 'string', describe: 'set environment variables (repeatable)' },
        image: { alias: 'i', type: 'string', describe: 'root filesystem for the process' },
      }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      await client.lookup(handle);
      const words = shellWords(str(a, 'command'));
      if (words.length === 0) throw new UsageError('a command is required (-c/--command)');
      const attach = bool(a, 'attach');
      const proc = await client.run(
        handle,
        {
          path: words[0]!,
          args: words.slice(1),
          dir: str(a, 'dir'),
          user: str(a, 'user'),
          env: strs(a, 'env'),
          image: { uri: str(a, 'image') },
        },
        attach ? { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr } : {},
      );
      if (!attach) {
        await write(io.stdout, proc.id + '\n');
        proc.detach();
        return 0;
      }
      return await proc.wait();
    },
  },
  {
    name: 'attach',
    describe: 'attach to a process running in the container',
    flags: (y) => y.options({ pid: { alias: 'p', type: 'string', demandOption: true, describe: 'process id to connect to' } }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      await client.lookup(handle);
      const proc = await client.attach(handle, str(a, 'pid'), { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr });
      // gaol reports protocol failures but not the process's own status.
      await proc.wait();
      return 0;
    },
  },
  {
    name: 'shell',
    describe: 'open a shell inside the running container',
    flags: (y) => y.options({ user: { alias: 'u', type: 'string', default: 'root', describe: 'user to open shell as' } }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      await client.lookup(handle);
      const stdin = io.stdin as Readable & { isTTY?: boolean; setRawMode?: (raw: boolean) => void };
      if (!stdin.isTTY || !stdin.setRawMode) throw new UsageError('stdin is not a terminal: shell needs a tty');
      const size = (): { columns: number; rows: number } => {
        const out = io.stdout as Writable & { isTTY?: boolean; columns?: number; rows?: number };
        return out.isTTY && out.columns && out.rows ? { columns: out.columns, rows: out.rows } : { columns: 80, rows: 24 };
      };
      stdin.setRawMode(true);
      const restore = (): void => stdin.setRawMode!(false);
      try {
        const proc = await client.run(
          handle,
          {
            path: '/bin/sh',
            args: ['-l'],
            env: [`TERM=${io.env.TERM ?? ''}`],
            user: str(a, 'user'),
            tty: { window_size: size() },
          },
          { stdin: io.stdin, stdout: io.stdout, stderr: io.stdout },
        );
        const onResize = (): void => void proc.setTTY({ window_size: size() }).catch(() => {});
        io.stdout.on('resize', onResize);
        try {
          await proc.wait().catch(() => 0);
        } finally {
          io.stdout.off('resize', onResize);
        }
      } finally {
        restore();
      }
      return 0;
    },
  },
  {
    name: 'stream-in',
    describe: 'stream a tar archive from stdin into the container',
    flags: (y) =>
      y.options({
        destination: { alias: 'd', type: 'string', demandOption: true, describe: 'destination path in the container' },
        user: { alias: 'u', type: 'string', describe: 'user to extract the archive as' },
      }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      await client.lookup(handle);
      await client.streamIn(handle, { path: str(a, 'destination'), user: str(a, 'user'), tarStream: io.stdin });
      return 0;
    },
  },
  {
    name: 'stream-out',
    describe: 'stream a tar archive of a path in the container to stdout',
    flags: (y) =>
      y.options({
        source: { alias: 's', type: 'string', demandOption: true, describe: 'source path in the container' },
        user: { alias: 'u', type: 'string', describe: 'user to read the files as' },
      }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      await client.lookup(handle);
      const tar = await client.streamOut(handle, { path: str(a, 'source'), user: str(a, 'user') });
      await new Promise<void>((resolve, reject) => {
        tar.on('error', reject);
        tar.on('end', resolve);
        tar.pipe(io.stdout, { end: false });
      });
      return 0;
    },
  },
  {
    name: 'net-in',
    describe: 'map a port on the host to a port in the container',
    flags: (y) => y.options({ port: { alias: 'p', type: 'string', demandOption: true, describe: 'container port' } }),
    async run({ client, target, io }, a) {
      const handle = handleArg(a);
      const port = uint16(a, 'port', '-p, --port');
      await client.lookup(handle);
      const { host_port } = await client.netIn(handle, 0, port);
      // gaol prints the target's host; over a unix socket there is none.
      const host = client.target.network === 'unix' ? '127.0.0.1' : splitHostPort(target).host;
      await write(io.stdout, `${host.includes(':') ? `[${host}]` : host}:${host_port}\n`);
      return 0;
    },
  },
  {
    name: 'net-out',
    describe: 'whitelist outbound traffic from the container',
    flags: (y) =>
      y.options({
        protocol: { alias: 'p', type: 'string', demandOption: true, describe: 'protocol to whitelist: tcp or udp' },
        'ip-start': { type: 'string', demandOption: true, describe: 'start of IP range to whitelist, inclusive' },
        'ip-end': { type: 'string', demandOption: true, describe: 'end of IP range to whitelist, inclusive' },
        'port-start': { type: 'string', demandOption: true, describe: 'start of port range to whitelist, inclusive' },
        'port-end': { type: 'string', demandOption: true, describe: 'end of port range to whitelist, inclusive' },
      }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      const proto = str(a, 'protocol');
      if (proto !== 'tcp' && proto !== 'udp') {
        throw new UsageError(`Invalid value \`${proto}' for option \`-p, --protocol'. Allowed values are: tcp or udp`);
      }
      const rule = {
        protocol: proto === 'tcp' ? Protocol.TCP : Protocol.UDP,
        networks: [{ start: goIP(str(a, 'ip-start')), end: goIP(str(a, 'ip-end')) }],
        ports: [{ start: uint16(a, 'port-start', '--port-start'), end: uint16(a, 'port-end', '--port-end') }],
      };
      await client.lookup(handle);
      await client.netOut(handle, rule);
      await write(io.stdout, 'applied\n');
      return 0;
    },
  },
  {
    name: 'properties',
    describe: "list a container's properties",
    flags: (y) => y.options({ json: { alias: 'j', type: 'boolean', describe: 'format output as json' } }),
    async run({ client, io }, a) {
      const handle = handleArg(a);
      await client.lookup(handle);
      const props = await client.properties(handle);
      if (bool(a, 'json')) {
        await write(io.stdout, indentJson(props));
      } else {
        for (const k of Object.keys(props).sort()) await write(io.stdout, `${k}\t${props[k]}\n`);
      }
      return 0;
    },
  },
  {
    name: 'set-gracetime',
    describe: 'set the grace time of a container',
    flags: (y) => y.options({ grace: { alias: 'g', type: 'string', demandOption: true, describe: 'grace time, e.g. 10m' } }),
    async run({ client }, a) {
      const handle = handleArg(a);
      const grace = duration(a, 'grace', '-g, --grace');
      await client.lookup(handle);
      await client.setGraceTime(handle, grace);
      return 0;
    },
  },
];

// ---------------------------------------------------------------------------

/** Run gaol with these arguments; resolves to the exit status. Never throws. */
export async function runGaol(argv: string[], io: GaolIO): Promise<number> {
  let status: number | undefined;
  const fail = async (message: string): Promise<number> => {
    await write(io.stderr, `error: ${message}\n`);
    return 1;
  };

  let parser = yargs(argv)
    .scriptName('gaol')
    .usage('gaol [-t ADDR] <command> [options]')
    .parserConfiguration({
      'parse-numbers': false,
      'parse-positional-numbers': false,
      'boolean-negation': false,
      'dot-notation': false,
    })
    .option('target', {
      alias: 't',
      type: 'string',
      global: true,
      default: io.env.GAOL_TARGET || DEFAULT_TARGET,
      describe: 'garden endpoint: host:port, or the path of a unix socket',
    })
    .demandCommand(1, 'Please specify one command of: ' + commands.map((c) => c.name).join(', '))
    .strictCommands()
    .strictOptions()
    .version(false)
    .help()
    .exitProcess(false)
    .fail((msg, err) => {
      throw new UsageError(msg ?? err?.message ?? 'invalid arguments');
    });

  for (const cmd of commands) {
    const takesHandle = !['ping', 'create', 'list', 'destroy'].includes(cmd.name);
    const usage = cmd.name === 'destroy' ? 'destroy [handles..]' : takesHandle ? `${cmd.name} [handle]` : cmd.name;
    parser = parser.command(
      usage,
      cmd.describe,
      (y) => cmd.flags(takesHandle ? y.positional('handle', { type: 'string', describe: 'container handle' }) : y),
      async (args) => {
        const target = str(args as Args, 'target');
        const ctx: Context = { client: new GardenClient(target), target, io };
        status = await cmd.run(ctx, args as Args);
      },
    );
  }

  try {
    let helpShown = false;
    await parser.parseAsync(argv, {}, (_err, _argv, output) => {
      if (output) {
        helpShown = true;
        io.stdout.write(output + '\n');
      }
    });
    if (status === undefined) return helpShown ? 0 : fail('no command given');
    return status;
  } catch (err) {
    return fail(err instanceof Error ? err.message : String(err));
  }
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  const io: GaolIO = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env };
  const status = await runGaol(process.argv.slice(2), io);
  // Exit explicitly: stdin may still be open (a terminal), and a detached
  // process's sockets are already gone.
  await write(process.stdout, '');
  process.exit(status);
}
