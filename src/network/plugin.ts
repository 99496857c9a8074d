// The network plugin seam (spec/plugins.md §3): Trellis's networker in-process, any
// external networker by --network-plugin, or loopback only when setup gave the user
// no network.
import { execa } from 'execa';
import type { Spawner } from '../runtime/spawner/spawner.js';
import type { Logger } from 'pino';
import { ExternalFailure, NotImplemented } from '../errors.js';
import type { Networker } from '../../plugins/networker/networker.js';

export interface UpResult {
  properties: Record<string, string>;
  dnsServers?: string[];
  searchDomains?: string[];
}

export interface UpExtra {
  netoutRules?: unknown[];
  netin?: unknown[];
  /** The create spec's `network` (Trellis passes it to plugins as `network` in up's input). */
  network?: string;
}

export interface NetworkPlugin {
  readonly name: string;
  up(handle: string, pid: number, properties: Record<string, string>, extra: UpExtra): Promise<UpResult>;
  down(handle: string): Promise<void>;
  netIn(handle: string, input: { HostIP: string; HostPort: number; ContainerIP: string; ContainerPort: number }): Promise<{ host_port: number; container_port: number }>;
  netOut(handle: string, input: { container_ip: string; netout_rule: unknown }): Promise<void>;
  bulkNetOut(handle: string, input: { container_ip: string; netout_rules: unknown[] }): Promise<void>;
}

export class LoopbackOnly implements NetworkPlugin {
  readonly name = 'loopback';
  async up(_handle: string, _pid: number, _props: Record<string, string>, extra: UpExtra): Promise<UpResult> {
    if ((extra.netin?.length ?? 0) > 0) throw this.unsupported();
    return { properties: {} };
  }
  async down(): Promise<void> {}
  async netIn(): Promise<never> {
    throw this.unsupported();
  }
  // With loopback only there is no egress to allow: rules are accepted and have nothing to open.
  async netOut(): Promise<void> {}
  async bulkNetOut(): Promise<void> {}
  private unsupported(): NotImplemented {
    return new NotImplemented('net-in needs a network plugin: this server gives containers loopback only (start gdn with --network-plugin)');
  }
}

/** Properties handed to `up`: the `network.` ones without the prefix, and log_config. */
export function upProperties(props: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith('network.')) out[k.slice('network.'.length)] = v;
    else if (k === 'log_config') out[k] = v;
  }
  return out;
}

export class ExecNetworkPlugin implements NetworkPlugin {
  readonly name: string;
  constructor(
    private readonly binary: string,
    private readonly extraArgs: string[],
    private readonly log: Logger,
    /** gdn's spawner (issue 10: no fork of the large daemon per create). */
    private readonly spawner?: Spawner,
  ) {
    this.name = binary;
  }

  private async exec(action: string, handle: string, input: unknown): Promise<string> {
    const argv = [...this.extraArgs, '--action', action, '--handle', handle];
    const res = this.spawner
      ? await this.spawner.run(this.binary, argv, { env: process.env, input: JSON.stringify(input) })
      : await execa(this.binary, argv, { input: JSON.stringify(input), reject: false });
    if (res.stderr.trim() !== '') this.log.info({ plugin: this.binary, action, stderr: res.stderr }, 'network-plugin.stderr');
    if (res.exitCode !== 0) {
      throw new ExternalFailure('network-plugin', `external networker encountered an error running '${action}' action: exit status ${res.exitCode}`);
    }
    return res.stdout;
  }

  private parse<T>(stdout: string): T | undefined {
    if (stdout.trim() === '') return undefined;
    try {
      return JSON.parse(stdout) as T;
    } catch (err) {
      throw new ExternalFailure('network-plugin', `unmarshaling result from external networker: ${(err as Error).message}`);
    }
  }

  async up(handle: string, pid: number, properties: Record<string, string>, extra: UpExtra): Promise<UpResult> {
    const input: Record<string, unknown> = { Pid: pid, Properties: upProperties(properties) };
    if (extra.netoutRules?.length) input.netout_rules = extra.netoutRules;
    if (extra.netin?.length) input.netin = extra.netin;
    if (extra.network) input.network = extra.network;
    const out = this.parse<{ properties?: Record<string, string>; dns_servers?: string[]; search_domains?: string[] }>(await this.exec('up', handle, input));
    return { properties: out?.properties ?? {}, dnsServers: out?.dns_servers, searchDomains: out?.search_domains };
  }

  async down(handle: string): Promise<void> {
    await this.exec('down', handle, null);
  }

  async netIn(handle: string, input: { HostIP: string; HostPort: number; ContainerIP: string; ContainerPort: number }) {
    const out = this.parse<{ host_port?: number; container_port?: number }>(await this.exec('net-in', handle, input));
    return { host_port: out?.host_port ?? input.HostPort, container_port: out?.container_port ?? input.ContainerPort };
  }

  async netOut(handle: string, input: { container_ip: string; netout_rule: unknown }): Promise<void> {
    await this.exec('net-out', handle, input);
  }

  async bulkNetOut(handle: string, input: { container_ip: string; netout_rules: unknown[] }): Promise<void> {
    await this.exec('bulk-net-out', handle, input);
  }
}

/** Trellis's own networker, called in-process (no Node spawn per create): the default when setup gave the user a network. */
export class InProcessNetwork implements NetworkPlugin {
  readonly name = 'trellis-networker';
  constructor(private readonly networker: Networker) {}

  /** After restore: the networker takes up its sockets on the mapped ports again. */
  async resume(): Promise<void> {
    await this.networker.resume();
  }

  async up(handle: string, pid: number, properties: Record<string, string>, extra: UpExtra): Promise<UpResult> {
    const out = await this.networker.up(handle, {
      Pid: pid,
      Properties: upProperties(properties),
      netout_rules: extra.netoutRules,
      netin: extra.netin as { host_port?: number; container_port?: number }[] | undefined,
      network: extra.network,
    });
    return { properties: out.properties, dnsServers: out.dns_servers };
  }

  async down(handle: string): Promise<void> {
    await this.networker.down(handle);
  }

  async netIn(handle: string, input: { HostIP: string; HostPort: number; ContainerIP: string; ContainerPort: number }) {
    return this.networker.netIn(handle, input);
  }

  async netOut(handle: string, input: { container_ip: string; netout_rule: unknown }): Promise<void> {
    await this.networker.netOut(handle, [input.netout_rule]);
  }

  async bulkNetOut(handle: string, input: { container_ip: string; netout_rules: unknown[] }): Promise<void> {
    await this.networker.netOut(handle, input.netout_rules);
  }
}
