// Typed errors. Every error this SDK rejects a promise with, or reports,
// is a `TroveError`; `fatal` says whether the producer or subscriber that
// raised it has stopped for good.

/** The error codes of docs/protocol.md ("Error codes"), by name, with their numbers. */
export const ERROR_CODES = {
  bad_magic: 1,
  unsupported_version: 2,
  frame_too_large: 3,
  unknown_frame_kind: 4,
  malformed: 5,
  handshake_required: 6,
  handshake_timeout: 7,
  idle_timeout: 8,
  too_many_connections: 9,
  bad_batch: 10,
  shutting_down: 11,
  too_many_subscriptions: 12,
  bad_sequence: 13,
  internal: 14,
  producer_in_use: 15,
  sequence_reused: 16,
  not_owner: 17,
  unavailable: 18,
  unauthorized: 19,
  forbidden: 20,
} as const;

export type ErrorCodeName = keyof typeof ERROR_CODES;

/** Codes that answer one request and leave the connection open. */
const NOT_CLOSING: ReadonlySet<string> = new Set(["bad_batch", "bad_sequence", "sequence_reused", "too_many_subscriptions"]);

/**
 * Closing codes after which a new connection to the same server may
 * succeed (the server went idle, busy, away or briefly wrong, not the
 * client): the producer reconnects and resends. Every other closing code,
 * and every code this SDK does not know, is fatal. `not_owner` is fatal
 * here: this SDK does not follow a cluster's partitions (the Rust SDK's
 * `ClusterProducer` does).
 */
const RETRYABLE: ReadonlySet<string> = new Set([
  "handshake_timeout",
  "idle_timeout",
  "too_many_connections",
  "shutting_down",
  "internal",
  "producer_in_use",
  "unavailable",
]);

export class TroveError extends Error {
  /** Whether the producer or subscriber stopped for good. */
  fatal = false;
}

/** An `error` message from the server. */
export class ServerError extends TroveError {
  override name = "ServerError";
  constructor(
    /** The code's name as sent (maybe one newer than this SDK: see `known`). */
    readonly code: string,
    readonly serverMessage: string,
  ) {
    super(`${code}: ${serverMessage}`);
  }
  /** Whether this SDK knows the code. */
  get known(): boolean {
    return Object.prototype.hasOwnProperty.call(ERROR_CODES, this.code);
  }
  /** Whether the server closes the connection after it (unknown codes do). */
  get closes(): boolean {
    return !NOT_CLOSING.has(this.code);
  }
  /** Whether reconnecting to the same server may succeed. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

/** The server refused one batch (`bad_batch`, `bad_sequence` or `sequence_reused`); the producer goes on with the next. */
export class BatchRefusedError extends TroveError {
  override name = "BatchRefusedError";
  constructor(
    readonly firstSeq: bigint,
    readonly count: number,
    readonly error: ServerError,
  ) {
    super(
      error.code === "sequence_reused"
        ? `batch of ${count} events from sequence ${firstSeq} reuses sequence numbers already applied with other events (those were not applied; the others were handled as usual): ${error.serverMessage}`
        : `batch of ${count} events from sequence ${firstSeq} refused, nothing applied: ${error.message}`,
    );
  }
}

/** The server broke the protocol: a malformed message, an answer that matches no request. */
export class ProtocolError extends TroveError {
  override name = "ProtocolError";
}

/** Connecting, or the connection, failed (the socket's own error). */
export class ConnectionError extends TroveError {
  override name = "ConnectionError";
}

/** Something waited past its bound (`during` says what). */
export class TimeoutError extends TroveError {
  override name = "TimeoutError";
  constructor(readonly during: string) {
    super(`${during}: timed out`);
  }
}

/** A producer or subscriber lost its connection and could not make a new one. */
export class ReconnectFailedError extends TroveError {
  override name = "ReconnectFailedError";
  constructor(
    readonly attempts: number,
    readonly last: TroveError,
  ) {
    super(`gave up reconnecting after ${attempts} attempts; last error: ${last.message}`);
    this.fatal = true;
  }
}

/** The producer holds `unackedEventsMax` events: await `ready()`, then send again. The event was not taken. */
export class FullError extends TroveError {
  override name = "FullError";
  constructor() {
    super("the producer holds as many unacknowledged events as it may (await ready())");
  }
}

/** An argument or option is out of range; names it. Thrown synchronously, nothing was sent. */
export class ConfigError extends TroveError {
  override name = "ConfigError";
}

/** The producer or subscriber was closed first. */
export class ClosedError extends TroveError {
  override name = "ClosedError";
  constructor(readonly cause_?: TroveError) {
    super(cause_ ? `closed: ${cause_.message}` : "closed");
    this.fatal = true;
  }
}

/**
 * The server refused the producer id it had assigned (`producerId: 0n`;
 * a restarted server that no longer knows it). Fatal when a batch may
 * have been applied under that id: sending it again under a new id could
 * apply it twice. Not fatal (the producer takes a new id) when nothing
 * was ever written under it.
 */
export class ProducerIdRefusedError extends TroveError {
  override name = "ProducerIdRefusedError";
  constructor(
    readonly producerId: bigint,
    readonly error: ServerError,
    /** Whether a batch may have been applied under the id (then the error is fatal). */
    readonly written: boolean,
  ) {
    super(
      `the server refused producer id ${producerId}, which it had assigned (${error.serverMessage}); ` +
        (written
          ? "batches written under it may have been applied, so they are not sent again under another id: the producer stops"
          : "nothing was written under it: taking a new one"),
    );
    if (written) this.fatal = true;
  }
}

/** A callback of the caller's (a subscriber's `onItem`) threw; `thrown` is what it threw. The connection is made again. */
export class CallbackError extends TroveError {
  override name = "CallbackError";
  constructor(readonly thrown: unknown) {
    super(`a callback threw: ${thrown instanceof Error ? thrown.message : String(thrown)}`);
  }
}

/** Marks an error fatal and returns it. */
export function fatal<E extends TroveError>(e: E): E {
  e.fatal = true;
  return e;
}
