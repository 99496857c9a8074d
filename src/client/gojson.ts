// JSON exactly as Go's encoding/json writes it (the bytes a Go Garden client
// sends), and decoding that tolerates what Go's decoder tolerates: keys matched
// case-insensitively, null or missing meaning the zero value, uint64 beyond 2^53.

import { parse as losslessParse } from 'lossless-json';

const MAX_UINT64 = (1n << 64n) - 1n;
const MIN_INT64 = -(1n << 63n);
const MAX_INT64 = (1n << 63n) - 1n;

const HEX = '0123456789abcdef';

function escapeCodePoint(cp: number): string {
  switch (cp) {
    case 0x22: return '\\"';
    case 0x5c: return '\\\\';
    case 0x0a: return '\\n';
    case 0x0d: return '\\r';
    case 0x09: return '\\t';
    // Go's HTML-safe escaping, on by default in json.Marshal/Encoder.
    case 0x3c: return '\\u003c';
    case 0x3e: return '\\u003e';
    case 0x26: return '\\u0026';
    case 0x2028: return '\\u2028';
    case 0x2029: return '\\u2029';
  }
  if (cp < 0x20) return '\\u00' + HEX[cp >> 4] + HEX[cp & 0xf];
  if (cp >= 0xd800 && cp <= 0xdfff) return '\\ufffd'; // lone surrogate: not valid UTF-8
  return String.fromCodePoint(cp);
}

/** A JS string as a Go JSON string literal. */
export function goString(s: string): string {
  let out = '"';
  for (const ch of s) out += escapeCodePoint(ch.codePointAt(0)!);
  return out + '"';
}

/**
 * Raw bytes as the JSON string Go produces from `string(bytes)`: every byte of
 * an invalid UTF-8 sequence becomes U+FFFD, one per byte, as utf8.DecodeRune
 * consumes them.
 */
export function goBytesString(b: Uint8Array): string {
  let out = '"';
  let i = 0;
  while (i < b.length) {
    const [cp, size] = decodeRune(b, i);
    out += cp < 0 ? '\\ufffd' : escapeCodePoint(cp);
    i += size;
  }
  return out + '"';
}

// Go's utf8.DecodeRune: returns [-1, 1] for an invalid or truncated sequence.
function decodeRune(b: Uint8Array, i: number): [number, number] {
  const c0 = b[i]!;
  if (c0 < 0x80) return [c0, 1];
  const need = c0 >= 0xc2 && c0 <= 0xdf ? 1 : c0 >= 0xe0 && c0 <= 0xef ? 2 : c0 >= 0xf0 && c0 <= 0xf4 ? 3 : -1;
  if (need < 0 || i + need >= b.length) return [-1, 1];
  let lo = 0x80;
  let hi = 0xbf;
  if (c0 === 0xe0) lo = 0xa0;
  else if (c0 === 0xed) hi = 0x9f;
  else if (c0 === 0xf0) lo = 0x90;
  else if (c0 === 0xf4) hi = 0x8f;
  const c1 = b[i + 1]!;
  if (c1 < lo || c1 > hi) return [-1, 1];
  if (need === 1) return [((c0 & 0x1f) << 6) | (c1 & 0x3f), 2];
  const c2 = b[i + 2]!;
  if (c2 < 0x80 || c2 > 0xbf) return [-1, 1];
  if (need === 2) return [((c0 & 0x0f) << 12) | ((c1 & 0x3f) << 6) | (c2 & 0x3f), 3];
  const c3 = b[i + 3]!;
  if (c3 < 0x80 || c3 > 0xbf) return [-1, 1];
  return [((c0 & 0x07) << 18) | ((c1 & 0x3f) << 12) | ((c2 & 0x3f) << 6) | (c3 & 0x3f), 4];
}

function integer(v: number | bigint, min: bigint, max: bigint, what: string): string {
  if (typeof v === 'number' && !Number.isInteger(v)) throw new RangeError(`${what}: ${v} is not an integer`);
  const big = BigInt(v);
  if (big < min || big > max) throw new RangeError(`${what}: ${big} is out of range`);
  return big.toString();
}

export const goUint64 = (v: number | bigint): string => integer(v, 0n, MAX_UINT64, 'uint64');
export const goInt64 = (v: number | bigint): string => integer(v, MIN_INT64, MAX_INT64, 'int64');
export const goUint = (v: number, bits: 8 | 16 | 32): string =>
  integer(v, 0n, (1n << BigInt(bits)) - 1n, `uint${bits}`);
export const goInt = (v: number): string => integer(v, MIN_INT64, MAX_INT64, 'int');

/** Go's map encoding: keys sorted by their UTF-8 bytes. */
export function goStringMap(m: Record<string, string>): string {
  const keys = Object.keys(m).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return '{' + keys.map((k) => goString(k) + ':' + goString(m[k]!)).join(',') + '}';
}

export function goStringArray(a: readonly string[]): string {
  return '[' + a.map(goString).join(',') + ']';
}

/**
 * An object from [key, encoded value] pairs in struct order; a pair whose
 * value is undefined is left out (that is how callers express omitempty).
 */
export function goObject(fields: ReadonlyArray<readonly [string, string | undefined]>): string {
  const parts: string[] = [];
  for (const [k, v] of fields) if (v !== undefined) parts.push(goString(k) + ':' + v);
  return '{' + parts.join(',') + '}';
}

// omitempty helpers: undefined means "leave the key out".
export const omitString = (s: string | undefined): string | undefined => (s ? goString(s) : undefined);
export const omitBool = (b: boolean | undefined): string | undefined => (b ? 'true' : undefined);
export const omitUint64 = (v: number | bigint | undefined): string | undefined =>
  v === undefined || BigInt(v) === 0n ? undefined : goUint64(v);
export const omitInt64 = (v: number | bigint | undefined): string | undefined =>
  v === undefined || BigInt(v) === 0n ? undefined : goInt64(v);
export const omitUint = (v: number | undefined, bits: 8 | 16 | 32): string | undefined =>
  v ? goUint(v, bits) : undefined;
export function omitArray<T>(a: readonly T[] | undefined, enc: (x: T) => string): string | undefined {
  return a && a.length > 0 ? '[' + a.map(enc).join(',') + ']' : undefined;
}
export function omitStringMap(m: Record<string, string> | undefined): string | undefined {
  return m && Object.keys(m).length > 0 ? goStringMap(m) : undefined;
}
/** A pointer field: omitted only when absent, so 0 is still sent. */
export function ptr<T>(v: T | undefined | null, enc: (x: T) => string): string | undefined {
  return v === undefined || v === null ? undefined : enc(v);
}

// ---------------------------------------------------------------------------
// Decoding

/** JSON text → JS value; integers beyond 2^53 become bigint, never rounded. */
export function parseJson(text: string): unknown {
  return losslessParse(text, null, (s: string) => {
    if (/^-?\d+$/.test(s)) {
      const n = Number(s);
      return Number.isSafeInteger(n) ? n : BigInt(s);
    }
    return Number(s);
  });
}

export type Decoder<T> = (v: unknown, where: string) => T;

class DecodeError extends Error {}

function kindOf(v: unknown): string {
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'bigint') return 'number';
  if (v === null) return 'null';
  return typeof v;
}

function mismatch(v: unknown, goType: string, where: string): never {
  throw new DecodeError(`json: cannot unmarshal ${kindOf(v)} into Go value of type ${goType}${where ? ` (${where})` : ''}`);
}

export const dString: Decoder<string> = (v, w) => (v === null || v === undefined ? '' : typeof v === 'string' ? v : mismatch(v, 'string', w));
export const dBool: Decoder<boolean> = (v, w) => (v === null || v === undefined ? false : typeof v === 'boolean' ? v : mismatch(v, 'bool', w));

function dInteger(min: bigint, max: bigint, goType: string): Decoder<number | bigint> {
  return (v, w) => {
    if (v === null || v === undefined) return 0;
    if (typeof v === 'number' && Number.isInteger(v)) {
      if (BigInt(v) < min || BigInt(v) > max) mismatch(v, goType, w);
      return v;
    }
    if (typeof v === 'bigint') {
      if (v < min || v > max) mismatch(v, goType, w);
      return v;
    }
    return mismatch(v, goType, w);
  };
}
export const dUint64 = dInteger(0n, MAX_UINT64, 'uint64');
export const dInt64 = dInteger(MIN_INT64, MAX_INT64, 'int64');
function small(d: Decoder<number | bigint>): Decoder<number> {
  return (v, w) => Number(d(v, w));
}
export const dUint32 = small(dInteger(0n, 0xffffffffn, 'uint32'));
export const dUint16 = small(dInteger(0n, 0xffffn, 'uint16'));
export const dUint8 = small(dInteger(0n, 0xffn, 'uint8'));
export const dInt = small(dInteger(MIN_INT64, MAX_INT64, 'int'));

/** A Go slice: null or missing decodes to null (a nil slice). */
export function dNullableArray<T>(of: Decoder<T>): Decoder<T[] | null> {
  return (v, w) => {
    if (v === null || v === undefined) return null;
    if (!Array.isArray(v)) return mismatch(v, 'slice', w);
    return v.map((x, i) => of(x, `${w}[${i}]`));
  };
}
export function dArray<T>(of: Decoder<T>): Decoder<T[]> {
  const d = dNullableArray(of);
  return (v, w) => d(v, w) ?? [];
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function dNullableMap<T>(of: Decoder<T>): Decoder<Record<string, T> | null> {
  return (v, w) => {
    if (v === null || v === undefined) return null;
    if (!isPlainObject(v)) return mismatch(v, 'map', w);
    // A null prototype, so "__proto__" is a key like any other.
    const out: Record<string, T> = Object.create(null) as Record<string, T>;
    for (const [k, x] of Object.entries(v)) out[k] = of(x, `${w}.${k}`);
    return out;
  };
}
export function dMap<T>(of: Decoder<T>): Decoder<Record<string, T>> {
  const d = dNullableMap(of);
  return (v, w) => d(v, w) ?? {};
}

/**
 * A Go struct: each input key goes to the field with that exact name, else to
 * one matching case-insensitively; a later key overwrites an earlier one;
 * missing fields get their zero value; unknown keys are ignored.
 */
export function dStruct<T extends object>(fields: { [K in keyof T]: Decoder<T[K]> }, goType: string): Decoder<T> {
  const names = Object.keys(fields) as Array<keyof T & string>;
  const folded = new Map(names.map((n) => [n.toLowerCase(), n]));
  return (v, w) => {
    const raw: Partial<Record<keyof T, unknown>> = {};
    if (v !== null && v !== undefined) {
      if (!isPlainObject(v)) return mismatch(v, goType, w);
      for (const [k, x] of Object.entries(v)) {
        const name = (names as string[]).includes(k) ? (k as keyof T & string) : folded.get(k.toLowerCase());
        if (name !== undefined) raw[name] = x;
      }
    }
    const out = {} as T;
    for (const n of names) out[n] = fields[n](raw[n], w ? `${w}.${n}` : n);
    return out;
  };
}

/** A Go pointer: null or missing stays null. */
export function dPointer<T>(of: Decoder<T>): Decoder<T | null> {
  return (v, w) => (v === null || v === undefined ? null : of(v, w));
}

/**
 * Where the JSON value starting at or after `from` ends (exclusive), or -1 if
 * the bytes so far hold no complete value. Only ASCII bytes matter for the
 * structure, so this works on UTF-8 directly. A scalar at the very end of the
 * input counts as incomplete: more digits might follow.
 */
export function scanJsonValue(b: Uint8Array, from: number): number {
  let i = from;
  while (i < b.length && isSpace(b[i]!)) i++;
  if (i >= b.length) return -1;
  const c = b[i]!;
  if (c === 0x7b || c === 0x5b) {
    let depth = 0;
    let inString = false;
    for (; i < b.length; i++) {
      const x = b[i]!;
      if (inString) {
        if (x === 0x5c) i++;
        else if (x === 0x22) inString = false;
      } else if (x === 0x22) inString = true;
      else if (x === 0x7b || x === 0x5b) depth++;
      else if (x === 0x7d || x === 0x5d) {
        if (--depth === 0) return i + 1;
      }
    }
    return -1;
  }
  if (c === 0x22) {
    for (i++; i < b.length; i++) {
      if (b[i] === 0x5c) i++;
      else if (b[i] === 0x22) return i + 1;
    }
    return -1;
  }
  for (i++; i < b.length; i++) {
    const x = b[i]!;
    if (isSpace(x) || x === 0x2c || x === 0x5d || x === 0x7d || x === 0x7b || x === 0x5b || x === 0x22) return i;
  }
  return -1;
}

function isSpace(x: number): boolean {
  return x === 0x20 || x === 0x0a || x === 0x0d || x === 0x09;
}

/**
 * Decode the first JSON value of a body into `d`, as json.Decoder.Decode
 * does: anything after that value is not looked at; an empty body is `EOF`.
 */
export function decodeJson<T>(body: Buffer, d: Decoder<T>): T {
  let end = scanJsonValue(body, 0);
  if (end < 0) {
    if (body.toString('latin1').trim() === '') throw new Error('EOF');
    end = body.length; // a bare scalar or a truncated value: let the parser judge
  }
  return d(parseJson(body.subarray(0, end).toString('utf8')), '');
}
