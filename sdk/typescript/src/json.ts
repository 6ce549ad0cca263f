// Lossless JSON for the server's messages: integers above 2^53 - 1 come
// back as `bigint`, never rounded (a server-assigned producer id is at
// least 2^63; see docs/decisions/0044-typescript-sdk.md).
//
// A message whose text has no run of 17 digits and no 16-digit run
// starting with 9 cannot hold an integer above 2^53 - 1
// (9007199254740991 has 16 digits), so it goes to the engine's
// `JSON.parse`; any other goes to the small parser below, which returns
// `bigint` for each integer literal outside the safe range. Both give the
// same values for every other literal.

import { ProtocolError } from "./errors.js";

/** A parsed JSON value; integers above 2^53 - 1 are `bigint`. */
export type Json = null | boolean | number | bigint | string | Json[] | { [key: string]: Json };

/** Deepest nesting the slow path accepts (a hostile server's deep nest is an error, not a stack overflow). */
export const JSON_DEPTH_MAX = 64;

const MAYBE_UNSAFE = /\d{17}|9\d{15}/;
const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
const U64_MAX = (1n << 64n) - 1n;

/** Parses one message; a text that is not JSON is a `ProtocolError`. */
export function parseJson(text: string): Json {
  try {
    if (!MAYBE_UNSAFE.test(text)) return JSON.parse(text) as Json;
    const p = new Parser(text);
    const v = p.value(0);
    p.ws();
    if (p.i !== text.length) p.fail("trailing characters");
    return v;
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    throw new ProtocolError(`not JSON: ${(e as Error).message}`);
  }
}

class Parser {
  i = 0;
  constructor(readonly s: string) {}

  fail(why: string): never {
    throw new ProtocolError(`not JSON: ${why} at ${this.i}`);
  }

  ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.i++;
      else break;
    }
  }

  value(depth: number): Json {
    if (depth > JSON_DEPTH_MAX) this.fail("nested too deep");
    this.ws();
    const s = this.s;
    const c = s[this.i];
    if (c === "{") {
      this.i++;
      const o: { [key: string]: Json } = {};
      this.ws();
      if (s[this.i] === "}") {
        this.i++;
        return o;
      }
      for (;;) {
        this.ws();
        if (s[this.i] !== '"') this.fail("expected a key");
        const k = this.string();
        this.ws();
        if (s[this.i] !== ":") this.fail("expected ':'");
        this.i++;
        // defineProperty: a key "__proto__" is data, as with JSON.parse.
        Object.defineProperty(o, k, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
        this.ws();
        if (s[this.i] === ",") {
          this.i++;
          continue;
        }
        if (s[this.i] === "}") {
          this.i++;
          return o;
        }
        this.fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      this.i++;
      const a: Json[] = [];
      this.ws();
      if (s[this.i] === "]") {
        this.i++;
        return a;
      }
      for (;;) {
        a.push(this.value(depth + 1));
        this.ws();
        if (s[this.i] === ",") {
          this.i++;
          continue;
        }
        if (s[this.i] === "]") {
          this.i++;
          return a;
        }
        this.fail("expected ',' or ']'");
      }
    }
    if (c === '"') return this.string();
    for (const [word, v] of [
      ["true", true],
      ["false", false],
      ["null", null],
    ] as const) {
      if (s.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(s);
    if (m === null) this.fail("unexpected character");
    this.i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  }

  string(): string {
    const s = this.s;
    const start = this.i;
    let j = start + 1;
    for (;;) {
      const k = s.indexOf('"', j);
      if (k < 0) this.fail("unterminated string");
      let backslashes = 0;
      for (let b = k - 1; b > start && s[b] === "\\"; b--) backslashes++;
      if (backslashes % 2 === 0) {
        this.i = k + 1;
        // The engine decodes escapes and refuses control characters.
        return JSON.parse(s.slice(start, k + 1)) as string;
      }
      j = k + 1;
    }
  }
}

// ---- field readers: each names the field it refuses ----

export type Obj = { [key: string]: Json };

export function isObject(v: Json | undefined): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** An unsigned 64-bit field, exactly. */
export function u64(o: Obj, field: string, what: string): bigint {
  const v = o[field];
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v === "bigint" && v >= 0n && v <= U64_MAX) return v;
  throw new ProtocolError(`${what}: \`${field}\` must be an integer in 0..=2^64-1, got ${describe(v)}`);
}

/** An unsigned field below 2^bits (bits <= 32), as a number. */
export function uint(o: Obj, field: string, bits: number, what: string): number {
  const v = o[field];
  if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** bits) return v;
  throw new ProtocolError(`${what}: \`${field}\` must be an integer in 0..=${2 ** bits - 1}, got ${describe(v)}`);
}

/** A signed 16-bit field. */
export function int16(o: Obj, field: string, what: string): number {
  const v = o[field];
  if (typeof v === "number" && Number.isInteger(v) && v >= -32768 && v <= 32767) return v;
  throw new ProtocolError(`${what}: \`${field}\` must be an integer in -32768..=32767, got ${describe(v)}`);
}

export function str(o: Obj, field: string, what: string): string {
  const v = o[field];
  if (typeof v === "string") return v;
  throw new ProtocolError(`${what}: \`${field}\` must be a string, got ${describe(v)}`);
}

export function bool(o: Obj, field: string, what: string): boolean {
  const v = o[field];
  if (typeof v === "boolean") return v;
  throw new ProtocolError(`${what}: \`${field}\` must be a boolean, got ${describe(v)}`);
}

export function arr(o: Obj, field: string, what: string): Json[] {
  const v = o[field];
  if (Array.isArray(v)) return v;
  throw new ProtocolError(`${what}: \`${field}\` must be an array, got ${describe(v)}`);
}

export function obj(v: Json | undefined, what: string): Obj {
  if (isObject(v)) return v;
  throw new ProtocolError(`${what} must be an object, got ${describe(v)}`);
}

/** A short description of a value for an error message (bounded). */
export function describe(v: Json | undefined): string {
  if (v === undefined) return "nothing";
  if (typeof v === "bigint") return v.toString();
  const text = typeof v === "string" ? JSON.stringify(v) : Array.isArray(v) ? "an array" : v === null ? "null" : typeof v === "object" ? "an object" : String(v);
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}
