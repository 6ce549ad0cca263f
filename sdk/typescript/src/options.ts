// Options shared by the producer and the subscriber, with their defaults,
// and the reconnect backoff.

import { ConfigError } from "./errors.js";

export interface ConnectionOptions {
  /** `ws://host:port/` or `wss://host:port/` of the server's WebSocket endpoint (default port 7401). */
  url: string;
  /**
   * Sent as `hello.token` when set: what a server with authentication on
   * expects (64 hex characters, from `trove auth add`), unless the
   * upgrade carried it as `Authorization: Bearer` (docs/protocol.md).
   */
  token?: string;
  /** Opening the socket plus the handshake, per attempt. Default 5000. */
  connectTimeoutMs?: number;
  /** A `ping` goes out this often, so that the server's idle timeout (60 s) keeps the connection. Default 20000. */
  pingIntervalMs?: number;
  /** After a lost connection the first attempt goes at once; a failed one waits this long before the next, doubling. Default 50. */
  reconnectBackoffInitialMs?: number;
  /** Longest wait between attempts. Default 2000. */
  reconnectBackoffMaxMs?: number;
  /**
   * Failed attempts in a row (a connection that ends before anything was
   * answered counts as one) before giving up with `ReconnectFailedError`;
   * `null` never gives up. Default 20 (about 30 s with the default backoff).
   */
  reconnectAttemptsMax?: number | null;
  /** Longest message taken from the server, in characters. Default 16 MiB. */
  messageBytesMax?: number;
  /**
   * Node without a global WebSocket only (the `ws` package): more options
   * for its constructor, e.g. `{ ca }` to trust a private CA for `wss://`.
   * Ignored where the platform's WebSocket is used (browsers: the
   * browser's own trust store applies).
   */
  nodeWebSocketOptions?: Record<string, unknown>;
}

export interface ResolvedConnectionOptions {
  url: string;
  token: string | undefined;
  connectTimeoutMs: number;
  pingIntervalMs: number;
  reconnectBackoffInitialMs: number;
  reconnectBackoffMaxMs: number;
  reconnectAttemptsMax: number | null;
  messageBytesMax: number;
  nodeWebSocketOptions: Record<string, unknown>;
}

/** Largest timer this SDK sets (setTimeout's own limit is 2^31 - 1 ms). */
export const TIMER_MS_MAX = 3_600_000;

export function checkMs(v: number, field: string, min: number): number {
  if (!Number.isFinite(v) || v < min || v > TIMER_MS_MAX) {
    throw new ConfigError(`option \`${field}\` must be a number of milliseconds in ${min}..=${TIMER_MS_MAX}, got ${String(v)}`);
  }
  return v;
}

export function checkCount(v: number, field: string, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`option \`${field}\` must be an integer in ${min}..=${max}, got ${String(v)}`);
  }
  return v;
}

export function resolveConnection(o: ConnectionOptions): ResolvedConnectionOptions {
  if (typeof o !== "object" || o === null) throw new ConfigError("options must be an object");
  if (typeof o.url !== "string" || !/^wss?:\/\//i.test(o.url)) {
    throw new ConfigError(`option \`url\` must start with ws:// or wss://, got ${String(o.url).slice(0, 100)}`);
  }
  if (o.token !== undefined && typeof o.token !== "string") throw new ConfigError("option `token` must be a string");
  const r: ResolvedConnectionOptions = {
    url: o.url,
    token: o.token,
    connectTimeoutMs: checkMs(o.connectTimeoutMs ?? 5000, "connectTimeoutMs", 1),
    pingIntervalMs: checkMs(o.pingIntervalMs ?? 20_000, "pingIntervalMs", 1),
    reconnectBackoffInitialMs: checkMs(o.reconnectBackoffInitialMs ?? 50, "reconnectBackoffInitialMs", 0),
    reconnectBackoffMaxMs: checkMs(o.reconnectBackoffMaxMs ?? 2000, "reconnectBackoffMaxMs", 0),
    reconnectAttemptsMax:
      o.reconnectAttemptsMax === null ? null : checkCount(o.reconnectAttemptsMax ?? 20, "reconnectAttemptsMax", 0, 1_000_000),
    messageBytesMax: checkCount(o.messageBytesMax ?? 16 << 20, "messageBytesMax", 1024, 1 << 30),
    nodeWebSocketOptions: o.nodeWebSocketOptions ?? {},
  };
  if (r.reconnectBackoffMaxMs < r.reconnectBackoffInitialMs) {
    throw new ConfigError("option `reconnectBackoffMaxMs` is below `reconnectBackoffInitialMs`");
  }
  return r;
}

/** Failed attempts in a row and the wait before the next. */
export class Backoff {
  failures = 0;
  private delay: number;
  constructor(private readonly o: ResolvedConnectionOptions) {
    this.delay = o.reconnectBackoffInitialMs;
  }
  /** Something was answered: the next loss starts afresh. */
  reset(): void {
    this.failures = 0;
    this.delay = this.o.reconnectBackoffInitialMs;
  }
  /** Counts a failure; the wait before the next attempt, or `null` to give up. */
  fail(): number | null {
    this.failures++;
    if (this.o.reconnectAttemptsMax !== null && this.failures > this.o.reconnectAttemptsMax) return null;
    const d = this.delay;
    this.delay = Math.min(this.o.reconnectBackoffMaxMs, Math.max(1, this.delay * 2));
    return d;
  }
}

/** `hello` as sent: the producer id as an exact integer literal; `deflate` asks for compressed updates. */
export function helloText(producerId: bigint | undefined, outcomes: boolean, token: string | undefined, deflate = false): string {
  let t = `{"type":"hello","outcomes":${outcomes}`;
  if (producerId !== undefined) t += `,"producer_id":${producerId.toString()}`;
  if (token !== undefined) t += `,"token":${JSON.stringify(token)}`;
  if (deflate) t += `,"compression":"deflate"`;
  return `${t}}`;
}

/** Lets Node exit while only this timer is pending (a no-op in browsers). */
export function unref(t: unknown): void {
  (t as { unref?: () => void }).unref?.();
}
