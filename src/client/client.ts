// A Garden client that is indistinguishable on the wire from the Go one
// (code.cloudfoundry.org/garden/client), so tests and tools written against
// it exercise a server exactly as gaol and Diego would.

import type net from 'node:net';
import { Readable } from 'node:stream';
import { ContainerNotFound } from '../errors.js';
import { BadResponse, ConnectionFailed, errorFromWire } from './errors.js';
import { decodeJson, type Decoder, goObject, goString } from './gojson.js';
import {
  dial, encodeQuery, parseTarget, pathEscape, readAll, readResponseHead, requestHead, responseBody, type Target,
} from './http.js';
import { hijack, type Process, type ProcessIO, streamProcess } from './process.js';
import type {
  BandwidthLimits, CPULimits, Capacity, ContainerInfo, ContainerInfoEntry, ContainerMetricsEntry, ContainerSpec,
  DiskLimits, Int64, MemoryLimits, Metrics, NetInResponse, NetOutRule, ProcessSpec, Properties, StreamInSpec,
  StreamOutSpec,
} from './types.js';
import {
  decodeBandwidthLimits, decodeBulkInfo, decodeBulkMetrics, decodeCapacity, decodeCPULimits, decodeContainerInfo,
  decodeDiskLimits, decodeEmpty, decodeErrorObject, decodeHandle, decodeHandles, decodeMemoryLimits, decodeMetrics,
  decodeNetInResponse, decodeProperties, decodeValue, encodeContainerSpec, encodeGraceTime, encodeNetInRequest,
  encodeNetOutRule, encodeProcessSpec,
} from './wire.js';

export { Process, type ProcessIO } from './process.js';

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

interface RequestBody {
  contentType: string;
  data?: Buffer;
  stream?: NodeJS.ReadableStream;
}

export interface GardenClientOptions {
  /** Go's client uses 2 s. */
  dialTimeoutMs?: number;
}

// Go's url.Error prefix: "Get http://api/ping: ...".
const goMethod = (m: Method): string => m[0] + m.slice(1).toLowerCase();

export class GardenClient {
  readonly target: Target;
  private readonly dialTimeoutMs: number;

  constructor(target: string, opts: GardenClientOptions = {}) {
    this.target = parseTarget(target);
    this.dialTimeoutMs = opts.dialTimeoutMs ?? 2000;
  }

  // ---- plain routes -------------------------------------------------------

  async ping(): Promise<void> {
    await this.json('GET', '/ping', decodeEmpty);
  }

  capacity(): Promise<Capacity> {
    return this.json('GET', '/capacity', decodeCapacity);
  }

  /** Handles of the containers whose properties match every filter (none: all). */
  async list(filter: Properties = {}): Promise<string[]> {
    return (await this.json('GET', '/containers', decodeHandles, { query: filter })).Handles;
  }

  /** Go's Lookup: an unfiltered List searched here. */
  async lookup(handle: string): Promise<void> {
    const handles = await this.list();
    if (!handles.includes(handle)) throw new ContainerNotFound(handle);
  }

  async create(spec: ContainerSpec): Promise<string> {
    return (await this.json('POST', '/containers', decodeHandle, { body: encodeContainerSpec(spec) })).handle;
  }

  async destroy(handle: string): Promise<void> {
    await this.json('DELETE', `/containers/${pathEscape(handle)}`, decodeEmpty);
  }

  async stop(handle: string, kill: boolean): Promise<void> {
    await this.json('PUT', this.path(handle, 'stop'), decodeEmpty, { body: goObject([['kill', String(kill)]]) });
  }

  info(handle: string): Promise<ContainerInfo> {
    return this.json('GET', this.path(handle, 'info'), decodeContainerInfo);
  }

  bulkInfo(handles: string[]): Promise<Record<string, ContainerInfoEntry>> {
    return this.json('GET', '/containers/bulk_info', decodeBulkInfo, { query: { handles: handles.join(',') } });
  }

  bulkMetrics(handles: string[]): Promise<Record<string, ContainerMetricsEntry>> {
    return this.json('GET', '/containers/bulk_metrics', decodeBulkMetrics, { query: { handles: handles.join(',') } });
  }

  async streamIn(handle: string, spec: StreamInSpec): Promise<void> {
    const body = await this.request('PUT', this.path(handle, 'files'), {
      query: { user: spec.user ?? '', destination: spec.path },
      body: { contentType: 'application/x-tar', stream: spec.tarStream },
    });
    body.resume();
    await new Promise<void>((resolve, reject) => body.once('end', resolve).once('error', reject));
  }

  /** The raw tar stream (not decompressed, not parsed). */
  streamOut(handle: string, spec: StreamOutSpec): Promise<Readable> {
    return this.request('GET', this.path(handle, 'files'), { query: { user: spec.user ?? '', source: spec.path } });
  }

  currentBandwidthLimits(handle: string): Promise<Required<BandwidthLimits>> {
    return this.json('GET', this.path(handle, 'limits/bandwidth'), decodeBandwidthLimits);
  }

  currentCPULimits(handle: string): Promise<Required<CPULimits>> {
    return this.json('GET', this.path(handle, 'limits/cpu'), decodeCPULimits);
  }

  currentDiskLimits(handle: string): Promise<Required<DiskLimits>> {
    return this.json('GET', this.path(handle, 'limits/disk'), decodeDiskLimits);
  }

  currentMemoryLimits(handle: string): Promise<Required<MemoryLimits>> {
    return this.json('GET', this.path(handle, 'limits/memory'), decodeMemoryLimits);
  }

  /** Map host_port (0: the server picks) to container_port (0: same as host). */
  netIn(handle: string, hostPort = 0, containerPort = 0): Promise<NetInResponse> {
    const body = encodeNetInRequest({ handle, host_port: hostPort, container_port: containerPort });
    return this.json('POST', this.path(handle, 'net/in'), decodeNetInResponse, { body });
  }

  async netOut(handle: string, rule: NetOutRule): Promise<void> {
    await this.json('POST', this.path(handle, 'net/out'), decodeEmpty, { body: encodeNetOutRule(rule) });
  }

  async bulkNetOut(handle: string, rules: NetOutRule[]): Promise<void> {
    // A nil slice would encode as null; Go callers pass a slice, so [] here.
    const body = '[' + rules.map(encodeNetOutRule).join(',') + ']';
    await this.json('POST', this.path(handle, 'net/out/bulk'), decodeEmpty, { body });
  }

  /** Nanoseconds, as a bare JSON integer. */
  async setGraceTime(handle: string, graceTimeNs: Int64): Promise<void> {
    await this.json('PUT', this.path(handle, 'grace_time'), decodeEmpty, { body: encodeGraceTime(graceTimeNs) });
  }

  properties(handle: string): Promise<Properties> {
    return this.json('GET', this.path(handle, 'properties'), decodeProperties);
  }

  async property(handle: string, key: string): Promise<string> {
    return (await this.json('GET', this.path(handle, 'properties', key), decodeValue)).value;
  }

  async setProperty(handle: string, key: string, value: string): Promise<void> {
    const body = goObject([['value', goString(value)]]);
    await this.json('PUT', this.path(handle, 'properties', key), decodeEmpty, { body });
  }

  async removeProperty(handle: string, key: string): Promise<void> {
    await this.json('DELETE', this.path(handle, 'properties', key), decodeEmpty);
  }

  metrics(handle: string): Promise<Metrics> {
    return this.json('GET', this.path(handle, 'metrics'), decodeMetrics);
  }

  // ---- processes ----------------------------------------------------------

  /**
   * Start a process. Output streams are opened only for the sinks given;
   * without stdin no EOF is ever sent (the process sees EOF when the client
   * detaches), exactly as with Go's ProcessIO.
   */
  async run(handle: string, spec: ProcessSpec, io: ProcessIO = {}): Promise<Process> {
    const base = `/containers/${pathEscape(handle)}`;
    const body = Buffer.from(encodeProcessSpec(spec) + '\n');
    const { socket, rest } = await hijack(
      this.target,
      { method: 'POST', path: `${base}/processes`, body, contentType: 'application/json' },
      this.dialTimeoutMs,
    );
    return this.stream(base, socket, rest, io);
  }

  async attach(handle: string, processId: string, io: ProcessIO = {}): Promise<Process> {
    const base = `/containers/${pathEscape(handle)}`;
    const { socket, rest } = await hijack(
      this.target,
      { method: 'GET', path: `${base}/processes/${pathEscape(processId)}` },
      this.dialTimeoutMs,
    );
    return this.stream(base, socket, rest, io);
  }

  private stream(handlePath: string, control: net.Socket, rest: Buffer, io: ProcessIO): Promise<Process> {
    return streamProcess({
      target: this.target,
      dialTimeoutMs: this.dialTimeoutMs,
      handlePath,
      control,
      rest,
      io,
      escape: pathEscape,
    });
  }

  // ---- plumbing -----------------------------------------------------------

  private path(handle: string, route: string, key?: string): string {
    const p = `/containers/${pathEscape(handle)}/${route}`;
    return key === undefined ? p : `${p}/${pathEscape(key)}`;
  }

  private async json<T>(
    method: Method,
    path: string,
    decoder: Decoder<T>,
    opts: { query?: Record<string, string>; body?: string } = {},
  ): Promise<T> {
    const body = opts.body === undefined
      ? undefined
      : { contentType: 'application/json', data: Buffer.from(opts.body + '\n') };
    const stream = await this.request(method, path, { query: opts.query, body });
    const bytes = await readAll(stream);
    try {
      return decodeJson(bytes, decoder);
    } catch (err) {
      throw new BadResponse((err as Error).message);
    }
  }

  /**
   * One request on its own connection with `Connection: close`, headers in
   * the order Go's Transport writes them. Non-2xx becomes the decoded Garden
   * error; a 2xx yields the body stream.
   */
  private async request(
    method: Method,
    path: string,
    opts: { query?: Record<string, string>; body?: RequestBody } = {},
  ): Promise<Readable> {
    const query = opts.query && Object.keys(opts.query).length > 0 ? encodeQuery(opts.query) : '';
    const pathAndQuery = query ? `${path}?${query}` : path;
    const fail = (err: unknown): never => {
      const msg = err instanceof Error ? err.message : String(err);
      throw new ConnectionFailed(`${goMethod(method)} http://api${pathAndQuery}: ${msg}`, err);
    };

    let socket: net.Socket;
    try {
      socket = await dial(this.target, this.dialTimeoutMs);
    } catch (err) {
      return fail(err);
    }

    const extra: Array<[string, string]> = [['Accept-Encoding', 'gzip'], ['Connection', 'close']];
    const body = opts.body;
    let pumping: Promise<void> = Promise.resolve();
    if (body?.stream) {
      pumping = this.pumpChunked(socket, method, pathAndQuery, body.contentType, body.stream, extra);
    } else {
      const headers: Array<[string, string]> = [];
      if (body?.data) headers.push(['Content-Length', String(body.data.length)]);
      else if (method === 'POST' || method === 'PUT') headers.push(['Content-Length', '0']);
      if (body) headers.push(['Content-Type', body.contentType]);
      const head = requestHead(method, pathAndQuery, [...headers, ...extra]);
      socket.write(body?.data ? Buffer.concat([head, body.data]) : head);
    }
    pumping.catch(() => socket.destroy());

    let response: Awaited<ReturnType<typeof readResponseHead>>;
    try {
      response = await readResponseHead(socket);
    } catch (err) {
      socket.destroy();
      return fail(err);
    }
    const stream = responseBody(response.head, response.rest, socket);
    const status = response.head.status;
    if (status >= 200 && status <= 299) return stream;

    let bytes: Buffer;
    try {
      bytes = await readAll(stream);
    } catch (err) {
      throw new BadResponse(`bad response: ${(err as Error).message}`);
    }
    let wire;
    try {
      wire = decodeJson(bytes, decodeErrorObject);
    } catch (err) {
      throw new BadResponse(`bad response: ${(err as Error).message}`);
    }
    throw errorFromWire(wire);
  }

  /**
   * A body of unknown length, as Go's Transport sends it: chunked, one chunk
   * per read, unless the reader is empty, which becomes Content-Length: 0.
   */
  private pumpChunked(
    socket: net.Socket,
    method: Method,
    pathAndQuery: string,
    contentType: string,
    source: NodeJS.ReadableStream,
    extra: Array<[string, string]>,
  ): Promise<void> {
    const readable = source instanceof Readable ? source : Readable.from(source as AsyncIterable<Buffer>);
    return (async () => {
      let headSent = false;
      const sendHead = (framing: [string, string]): void => {
        socket.write(requestHead(method, pathAndQuery, [framing, ['Content-Type', contentType], ...extra]));
        headSent = true;
      };
      for await (const chunk of readable) {
        const data = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
        if (data.length === 0) continue;
        if (!headSent) sendHead(['Transfer-Encoding', 'chunked']);
        if (socket.destroyed) return;
        const ok = socket.write(Buffer.concat([Buffer.from(data.length.toString(16) + '\r\n'), data, Buffer.from('\r\n')]));
        if (!ok) await new Promise<void>((resolve) => { socket.once('drain', resolve); socket.once('close', resolve); });
      }
      if (!headSent) sendHead(['Content-Length', '0']);
      else socket.write('0\r\n\r\n');
    })();
  }
}
