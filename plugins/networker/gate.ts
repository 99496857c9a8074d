// The setuid CNI gate (plugins/networker/gate/cni-gate.c), one method per
// subcommand. The gate trusts nothing it is given: these calls only ask.
import { execa } from 'execa';
import { ExternalFailure, InvalidArgument } from '../../src/errors.js';
import type { Spawner } from '../../src/runtime/spawner/spawner.js';

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol: 'tcp' | 'udp';
}

/** The part of a CNI result the networker reads. */
export interface CniResult {
  ips?: { address?: string; gateway?: string }[];
}

export class Gate {
  constructor(
    readonly path: string,
    /** gdn's spawner (issue 10: no fork of the large daemon per call); the CLI spawns directly. */
    private readonly spawner?: Spawner,
  ) {}

  private async run(args: string[]): Promise<string> {
    const r = this.spawner
      ? await this.spawner.run(this.path, args, { env: {} }).then((x) => ({ ...x, message: x.failure?.message ?? (x.signal ? `cni-gate killed by ${x.signal}` : '') }))
      : await execa(this.path, args, { reject: false, stdin: 'ignore', extendEnv: false, env: {} });
    if (r.exitCode !== 0) {
      const line = r.stderr.trim().split('\n').pop() || r.message || `cni-gate exited ${r.exitCode ?? '?'}`;
      const err = r.exitCode === 2 ? new InvalidArgument(line) : new ExternalFailure('cni-gate', line);
      throw err;
    }
    return r.stdout;
  }

  async add(id: string, pid: number, request?: { ip?: string; range?: string; net?: string }): Promise<CniResult> {
    const args = ['add', id, String(pid)];
    if (request?.net) args.push(`net=${request.net}`);
    else if (request?.ip) args.push(`ip=${request.ip}`);
    else if (request?.range) args.push(`range=${request.range}`);
    const out = await this.run(args);
    try {
      return JSON.parse(out) as CniResult;
    } catch {
      throw new ExternalFailure('cni-gate', `unreadable result from the CNI gate: ${out.slice(0, 200)}`);
    }
  }

  async del(id: string, pid?: number): Promise<void> {
    await this.run(pid === undefined ? ['del', id] : ['del', id, String(pid)]);
  }

  async check(id: string, pid: number): Promise<void> {
    await this.run(['check', id, String(pid)]);
  }

  async ports(id: string, pid: number, mappings: PortMapping[]): Promise<void> {
    await this.run(['ports', id, String(pid), ...mappings.map((m) => `${m.hostPort}:${m.containerPort}/${m.protocol}`)]);
  }
}
