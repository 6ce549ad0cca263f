// A producer: sends a game's events in batches and answers each `send`
// with that event's outcome, exactly once across BUSY, lost connections
// and server restarts (docs/protocol.md, "Sequence numbers and
// exactly-once", "BUSY"; the Rust SDK's `Producer` is the model).
//
// Batches: `send` adds the event to the open batch, which closes when it
// holds `batchEventsMax` events or `batchBytesMax` characters of JSON,
// after `lingerMs`, or on `flush`. A closed batch takes the next
// sequence numbers and keeps them: its text, with its explicit
// `first_seq`, is what every (re)send writes. Up to `windowBatches`
// batches are in flight; answers match the oldest unanswered batch.
//
// BUSY: the refused batch and those behind it (the server refuses them
// too) wait `retry_after_ms` and the answers to every batch already sent,
// then go again in sequence order; the window halves (at least one
// batch) and grows back by one batch per window of ACKs.
//
// A lost connection (or no answer within `answerTimeoutMs`): every
// unanswered batch goes again, in order, with its original numbers, under
// the same producer id on a new connection; the server applies each event
// once and answers a retry with the original outcome.
//
// The producer id: a random nonzero 63-bit one by default, chosen once
// per producer (as the Rust SDK does), so that no restarted server can
// have handed it to anyone else. Server-assigned ids are an opt-in
// (`producerId: 0n`); a batch is never sent under a second id once it may
// have been applied under the first (decision 0044).

import {
  BatchRefusedError,
  ClosedError,
  ConfigError,
  FullError,
  ProducerIdRefusedError,
  ProtocolError,
  ReconnectFailedError,
  ServerError,
  TimeoutError,
  type TroveError,
  fatal,
} from "./errors.js";
import { type HuntEvent, type HuntOutcome, decodeOutcome, encodeEvent } from "./game.js";
import { type Json, type Obj, arr, bool, obj, parseJson, str, u64, uint } from "./json.js";
import { Link } from "./link.js";
import {
  Backoff,
  type ConnectionOptions,
  type ResolvedConnectionOptions,
  checkCount,
  checkMs,
  helloText,
  resolveConnection,
  unref,
} from "./options.js";

/** Ids from here up are the server's to assign (docs/protocol.md). */
export const ASSIGNED_PRODUCER_IDS = 1n << 63n;
const U64_MAX = (1n << 64n) - 1n;
/** Default `answerTimeoutMs`: a server that keeps the socket open (and answers pings) but never answers a batch is left after this long. */
export const ANSWER_TIMEOUT_MS_DEFAULT = 30_000;
/** Default `closeTimeoutMs`: the longest `close()` waits for answers before it closes anyway. */
export const CLOSE_TIMEOUT_MS_DEFAULT = 30_000;

/**
 * A random nonzero producer id below 2^63 (the ids a client may name),
 * from `crypto.getRandomValues` (Node 20 and browsers): the default id of
 * a `Producer`, the Rust SDK's `random_producer_id`.
 */
export function randomProducerId(): bigint {
  const c = (globalThis as { crypto?: { getRandomValues?: <T extends ArrayBufferView>(a: T) => T } }).crypto;
  if (c?.getRandomValues === undefined) throw new ConfigError("no crypto.getRandomValues for a random producer id: pass `producerId`");
  const a = c.getRandomValues(new BigUint64Array(1));
  const id = a[0]! >> 1n;
  return id === 0n ? 1n : id;
}

export interface ProducerOptions extends ConnectionOptions {
  /**
   * The producer id to present. Absent (the default): a random nonzero id
   * below 2^63 (`randomProducerId()`), chosen once, which every connection
   * presents. `0n`: the server assigns one in the first `welcome` (at least
   * 2^63) and reconnects present it; a restarted server that does not know
   * it any more refuses it, and then, if any batch may have been applied
   * under it, the producer stops with `ProducerIdRefusedError` (prefer the
   * random id). Any other id: below 2^63, and `firstSeq` must be above
   * every number the id used before.
   */
  producerId?: bigint;
  /** Sequence number of the first event. Default 1n. */
  firstSeq?: bigint;
  /** Ask for one outcome per event (`send` resolves to it); false: `send` resolves to null. Default true. */
  outcomes?: boolean;
  /** Most events in a batch (the server's `welcome.batch_events_max` may lower it). Default 4096. */
  batchEventsMax?: number;
  /** Most characters of JSON in a batch's message: the server closes the connection past its `ws_message_max` (1 MiB). Default 1000000. */
  batchBytesMax?: number;
  /** How long an open batch waits for more events before it closes. Default 1. */
  lingerMs?: number;
  /** Batches in flight (sent, unanswered) at most. Default 32. */
  windowBatches?: number;
  /**
   * Events held (open, waiting, in flight) at most: past it `send` throws
   * `FullError` until `ready()` resolves. At most the server's
   * deduplication window (65536), so that resends are answered with their
   * original outcomes. Default 65536.
   */
  unackedEventsMax?: number;
  /**
   * A batch unanswered this long ends the connection, which is made again
   * and everything unanswered resent (so that a server that keeps the
   * socket open but never answers does not hold `drain()` forever: the
   * reconnects count towards `reconnectAttemptsMax`). Default 30000;
   * null: wait as long as the connection is open.
   */
  answerTimeoutMs?: number | null;
  /** The longest `close()` waits for answers before it closes anyway (rejecting what is unanswered with `ClosedError`). Default 30000. */
  closeTimeoutMs?: number;
  /** Longest wait a BUSY's `retry_after_ms` may ask for. Default 10000. */
  retryAfterMsMax?: number;
  /** Told of every lost connection (the producer reconnects by itself unless `error.fatal`). */
  onDisconnect?: (error: TroveError) => void;
}

export interface ProducerStats {
  /** Events acknowledged. */
  eventsAcked: number;
  batchesAcked: number;
  /** BUSY answers. */
  busy: number;
  /** Batches written again (after BUSY or a reconnect). */
  resent: number;
  /** Connections made after the first. */
  reconnects: number;
  /** Events held now: open, waiting, in flight. */
  held: number;
  /** Batches in flight allowed now (halved on BUSY). */
  windowAllowed: number;
}

interface Batch {
  firstSeq: bigint;
  count: number;
  text: string;
  resolves: ((o: HuntOutcome | null) => void)[];
  rejects: ((e: TroveError) => void)[];
  sentAt: number;
  sends: number;
}

interface OpenBatch {
  parts: string[];
  bytes: number;
  resolves: ((o: HuntOutcome | null) => void)[];
  rejects: ((e: TroveError) => void)[];
}

/** `{"type":"events","first_seq":` and `,"events":[` ... `]}` with a 20-digit number. */
const BATCH_OVERHEAD = 64;

const now = (): number => performance.now();

/** The last promise's resolving functions: one executor for every `send`, no closure per event. */
const captured: { resolve: (o: HuntOutcome | null) => void; reject: (e: TroveError) => void } = {
  resolve: () => {},
  reject: () => {},
};
function capture(resolve: (o: HuntOutcome | null) => void, reject: (e: TroveError) => void): void {
  captured.resolve = resolve;
  captured.reject = reject;
}

export class Producer {
  private readonly o: ResolvedConnectionOptions;
  private id: bigint | undefined;
  private nextSeq_: bigint;
  private readonly outcomes: boolean;
  private batchEventsMax: number;
  private readonly batchBytesMax: number;
  private readonly lingerMs: number;
  private readonly windowBatches: number;
  private readonly unackedEventsMax: number;
  private readonly answerTimeoutMs: number | null;
  private readonly closeTimeoutMs: number;
  /** Whether the server assigns the id (`producerId: 0n`). */
  private readonly assigned: boolean;
  private readonly retryAfterMsMax: number;
  private readonly onDisconnect: ((e: TroveError) => void) | undefined;

  private open: OpenBatch = { parts: [], bytes: 0, resolves: [], rejects: [] };
  private toSend: Batch[] = [];
  private inflight: Batch[] = [];
  private busy: { refused: Batch[]; timer: ReturnType<typeof setTimeout> | undefined } | undefined;
  private held = 0;
  private allowed: number;
  private acksSinceGrow = 0;

  private link: Link | undefined;
  private ready_ = false;
  private connecting = false;
  private everConnected = false;
  private answeredSinceConnect = false;
  private readonly backoff: Backoff;
  private error: TroveError | undefined;
  private closed = false;

  private lingerTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private answerTimer: ReturnType<typeof setInterval> | undefined;
  private lastWrite = 0;
  private nonce = 0;
  private readyWaiters: { n: number; resolve: () => void; reject: (e: TroveError) => void }[] = [];
  private drainWaiters: { resolve: () => void; reject: (e: TroveError) => void }[] = [];
  private firstConnect: { resolve: () => void; reject: (e: TroveError) => void } | undefined;
  private readonly s: ProducerStats;

  private constructor(options: ProducerOptions) {
    const o = options;
    this.o = resolveConnection(o);
    if (o.producerId !== undefined) {
      if (typeof o.producerId !== "bigint" || o.producerId < 0n || o.producerId >= ASSIGNED_PRODUCER_IDS) {
        throw new ConfigError("option `producerId` must be a bigint in 0..2^63 (0n: the server assigns one; omit it for a random one)");
      }
    }
    this.assigned = o.producerId === 0n;
    this.id = o.producerId === undefined ? randomProducerId() : this.assigned ? undefined : o.producerId;
    const first = o.firstSeq ?? 1n;
    if (typeof first !== "bigint" || first < 1n || first > 1n << 62n) throw new ConfigError("option `firstSeq` must be a bigint in 1..=2^62");
    this.nextSeq_ = first;
    this.outcomes = o.outcomes ?? true;
    if (typeof this.outcomes !== "boolean") throw new ConfigError("option `outcomes` must be a boolean");
    this.batchEventsMax = checkCount(o.batchEventsMax ?? 4096, "batchEventsMax", 1, 1 << 20);
    this.batchBytesMax = checkCount(o.batchBytesMax ?? 1_000_000, "batchBytesMax", 1024, 1 << 30);
    this.lingerMs = checkMs(o.lingerMs ?? 1, "lingerMs", 0);
    this.windowBatches = checkCount(o.windowBatches ?? 32, "windowBatches", 1, 4096);
    this.unackedEventsMax = checkCount(o.unackedEventsMax ?? 65536, "unackedEventsMax", 1, 1 << 24);
    this.answerTimeoutMs =
      o.answerTimeoutMs === null ? null : checkMs(o.answerTimeoutMs ?? ANSWER_TIMEOUT_MS_DEFAULT, "answerTimeoutMs", 1);
    this.closeTimeoutMs = checkMs(o.closeTimeoutMs ?? CLOSE_TIMEOUT_MS_DEFAULT, "closeTimeoutMs", 0);
    this.retryAfterMsMax = checkMs(o.retryAfterMsMax ?? 10_000, "retryAfterMsMax", 0);
    this.onDisconnect = o.onDisconnect;
    this.allowed = this.windowBatches;
    this.backoff = new Backoff(this.o);
    this.s = { eventsAcked: 0, batchesAcked: 0, busy: 0, resent: 0, reconnects: 0, held: 0, windowAllowed: this.allowed };
  }

  /** Connects and waits for the server's `welcome` (retrying as the options say). */
  static async connect(options: ProducerOptions): Promise<Producer> {
    const p = new Producer(options);
    await new Promise<void>((resolve, reject) => {
      p.firstConnect = { resolve, reject };
      p.connect();
    });
    p.pingTimer = setInterval(() => {
      if (p.ready_ && now() - p.lastWrite >= p.o.pingIntervalMs / 2) p.write(`{"type":"ping","nonce":${p.nonce++}}`);
    }, p.o.pingIntervalMs / 2);
    unref(p.pingTimer);
    if (p.answerTimeoutMs !== null) {
      const limit = p.answerTimeoutMs;
      p.answerTimer = setInterval(() => {
        const oldest = p.inflight[0];
        if (p.ready_ && oldest !== undefined && now() - oldest.sentAt > limit) {
          p.link?.fail(new TimeoutError(`the answer to the batch from sequence ${oldest.firstSeq}`));
        }
      }, Math.max(10, limit / 4));
      unref(p.answerTimer);
    }
    return p;
  }

  /** The producer id (with `producerId: 0n`, the server's once assigned; 0n before). */
  get producerId(): bigint {
    return this.id ?? 0n;
  }

  /** The sequence number the next batch closed takes. */
  get nextSeq(): bigint {
    return this.nextSeq_;
  }

  /** Whether `send` would take an event now (false: `FullError`, or the producer stopped). */
  get canSend(): boolean {
    return this.error === undefined && !this.closed && this.held < this.unackedEventsMax;
  }

  /**
   * Takes one event; resolves with its outcome once the server acknowledged
   * it (durable under its fsync policy), or `null` without `outcomes`.
   * Rejects with `BatchRefusedError` if the server refused its batch (the
   * producer goes on), or with the fatal error that stopped the producer.
   * Throws, and takes nothing, with `FullError` (await `ready()`),
   * `ConfigError` (an event out of range) or the error that stopped the
   * producer. Attach a handler to every promise it returns.
   */
  send(event: HuntEvent): Promise<HuntOutcome | null> {
    this.check(1);
    const text = encodeEvent(event);
    const p = new Promise<HuntOutcome | null>(capture);
    this.append(text, captured.resolve, captured.reject);
    return p;
  }

  /**
   * Takes several events at once (all or none: throws as `send` does,
   * `FullError` if they do not all fit now) and resolves with their
   * outcomes in order, once all are acknowledged: one promise for many
   * events, the cheaper way to send in bulk. They may span batches; if
   * the server refuses one of those, the promise rejects with its
   * `BatchRefusedError` (the other batches' events were handled as
   * usual).
   */
  sendAll(events: readonly HuntEvent[]): Promise<(HuntOutcome | null)[]> {
    if (events.length > this.unackedEventsMax) {
      throw new ConfigError(`sendAll: ${events.length} events, more than unackedEventsMax ${this.unackedEventsMax}`);
    }
    this.check(events.length);
    const texts = events.map(encodeEvent);
    if (texts.length === 0) return Promise.resolve([]);
    const results: (HuntOutcome | null)[] = [];
    let failed = false;
    return new Promise((resolve, reject) => {
      // Batches are answered in sequence order, so outcomes arrive in order.
      const put = (o: HuntOutcome | null) => {
        results.push(o);
        if (results.length === texts.length) resolve(results);
      };
      const fail = (e: TroveError) => {
        if (!failed) {
          failed = true;
          reject(e);
        }
      };
      for (const t of texts) this.append(t, put, fail);
    });
  }

  /** Throws what `send` throws before taking `n` events. */
  private check(n: number): void {
    if (this.error !== undefined) throw new ClosedError(this.error);
    if (this.closed) throw new ClosedError();
    if (this.held + n > this.unackedEventsMax) throw new FullError();
  }

  private append(text: string, resolve: (o: HuntOutcome | null) => void, reject: (e: TroveError) => void): void {
    if (this.open.parts.length > 0 && this.open.bytes + text.length + 1 > this.batchBytesMax - BATCH_OVERHEAD) this.closeBatch();
    const o = this.open;
    o.parts.push(text);
    o.bytes += text.length + 1;
    o.resolves.push(resolve);
    o.rejects.push(reject);
    this.held++;
    if (o.parts.length >= this.batchEventsMax) this.closeBatch();
    else if (o.parts.length === 1) this.lingerTimer = setTimeout(() => this.closeBatch(), this.lingerMs);
  }

  /**
   * Resolves when the producer can take `n` more events (default 1: when
   * `send` can take one; `sendAll` of n), at once if it can; rejects if
   * the producer stopped, or at once if `n` could never fit.
   */
  ready(n = 1): Promise<void> {
    if (this.error !== undefined) return Promise.reject(new ClosedError(this.error));
    if (this.closed) return Promise.reject(new ClosedError());
    if (!Number.isInteger(n) || n < 1 || n > this.unackedEventsMax) {
      return Promise.reject(new ConfigError(`ready(${n}): n must be in 1..=unackedEventsMax ${this.unackedEventsMax}`));
    }
    if (this.held + n <= this.unackedEventsMax) return Promise.resolve();
    return new Promise((resolve, reject) => this.readyWaiters.push({ n, resolve, reject }));
  }

  /** `ready()`, then `send(event)`: resolves with the outcome's promise, wrapped so that it is not awaited along. */
  async sendWait(event: HuntEvent): Promise<{ outcome: Promise<HuntOutcome | null> }> {
    while (!this.canSend) await this.ready();
    return { outcome: this.send(event) };
  }

  /** Closes the open batch now. */
  flush(): void {
    this.closeBatch();
  }

  /**
   * Flushes, then resolves when every event sent so far was answered;
   * rejects if the producer stopped first (a server that never answers
   * stops it after `answerTimeoutMs` times `reconnectAttemptsMax` or so),
   * or with `TimeoutError` after `timeoutMs` if given (the producer goes
   * on).
   */
  drain(timeoutMs?: number): Promise<void> {
    this.flush();
    if (this.error !== undefined) return Promise.reject(new ClosedError(this.error));
    if (this.closed) return Promise.reject(new ClosedError());
    if (this.held === 0) return Promise.resolve();
    const limit = timeoutMs === undefined ? undefined : checkMs(timeoutMs, "drain timeoutMs", 0);
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      this.drainWaiters.push(w);
      if (limit === undefined) return;
      const timer = setTimeout(() => {
        const i = this.drainWaiters.indexOf(w);
        if (i < 0) return;
        this.drainWaiters.splice(i, 1);
        reject(new TimeoutError(`drain: ${this.held} events unanswered`));
      }, limit);
      w.resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      w.reject = (e) => {
        clearTimeout(timer);
        reject(e);
      };
    });
  }

  /**
   * Drains (as long as the producer can, and at most `closeTimeoutMs`),
   * then closes the connection: what is still unanswered is rejected with
   * `ClosedError` (it may or may not have been applied). Rejects with the
   * drain's error (`TimeoutError`, or the one that stopped the producer)
   * after closing. Sends after it throw `ClosedError`.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.drain(this.closeTimeoutMs);
    } finally {
      this.shutdown(new ClosedError());
    }
  }

  /** Closes at once: everything unanswered is rejected with `ClosedError` (it may or may not have been applied). */
  destroy(): void {
    this.flush();
    this.shutdown(new ClosedError());
  }

  stats(): ProducerStats {
    return { ...this.s, held: this.held, windowAllowed: this.allowed };
  }

  // ---- batches ----

  private closeBatch(): void {
    if (this.lingerTimer !== undefined) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
    const o = this.open;
    if (o.parts.length === 0) return;
    this.open = { parts: [], bytes: 0, resolves: [], rejects: [] };
    const firstSeq = this.nextSeq_;
    const count = o.parts.length;
    this.nextSeq_ += BigInt(count);
    this.toSend.push({
      firstSeq,
      count,
      text: `{"type":"events","first_seq":${firstSeq},"events":[${o.parts.join(",")}]}`,
      resolves: o.resolves,
      rejects: o.rejects,
      sentAt: 0,
      sends: 0,
    });
    if (this.link === undefined && !this.connecting && this.retryTimer === undefined && this.everConnected) this.connect();
    this.pump();
  }

  private pump(): void {
    if (!this.ready_ || this.busy !== undefined || this.link === undefined) return;
    while (this.toSend.length > 0 && this.inflight.length < this.allowed) {
      const b = this.toSend.shift()!;
      b.sentAt = now();
      if (b.sends++ > 0) this.s.resent++;
      this.inflight.push(b);
      this.write(b.text);
    }
  }

  private write(text: string): void {
    this.lastWrite = now();
    this.link?.send(text);
  }

  /** A batch was answered: its events are no longer held. */
  private released(b: Batch): void {
    this.held -= b.count;
    this.answeredSinceConnect = true;
    this.backoff.reset();
    if (this.readyWaiters.length > 0) {
      const room = this.unackedEventsMax - this.held;
      const w = this.readyWaiters;
      this.readyWaiters = w.filter((x) => x.n > room);
      for (const x of w) if (x.n <= room) x.resolve();
    }
    if (this.held === 0 && this.drainWaiters.length > 0) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const x of w) x.resolve();
    }
  }

  /** The oldest unanswered batch, which an answer naming `first_seq` and `count` must match. */
  private head(m: Obj, what: string): Batch {
    const b = this.inflight[0];
    const first = u64(m, "first_seq", what);
    const count = uint(m, "count", 32, what);
    if (b === undefined) throw new ProtocolError(`${what} for sequence ${first} with no batch unanswered`);
    if (b.firstSeq !== first || b.count !== count) {
      throw new ProtocolError(`${what} names ${count} events from ${first}; the oldest batch unanswered has ${b.count} from ${b.firstSeq}`);
    }
    return b;
  }

  // ---- messages ----

  private message(text: string): void {
    const m = obj(parseJson(text), "message");
    const type = str(m, "type", "message");
    switch (type) {
      case "welcome":
        this.welcome(m);
        return;
      case "ack": {
        const b = this.head(m, "ack");
        let outcomes: HuntOutcome[] | undefined;
        if (this.outcomes) {
          const list = arr(m, "outcomes", "ack");
          if (list.length !== b.count) throw new ProtocolError(`ack with ${list.length} outcomes for ${b.count} events`);
          // All checked before any is handed out (in place: no copy).
          for (let i = 0; i < list.length; i++) list[i] = decodeOutcome(list[i], "ack.outcomes[i]") as unknown as Json;
          outcomes = list as unknown as HuntOutcome[];
        }
        this.inflight.shift();
        this.s.eventsAcked += b.count;
        this.s.batchesAcked++;
        if (++this.acksSinceGrow >= this.allowed && this.allowed < this.windowBatches) {
          this.allowed++;
          this.acksSinceGrow = 0;
        }
        this.released(b);
        for (let i = 0; i < b.count; i++) b.resolves[i]!(outcomes === undefined ? null : outcomes[i]!);
        this.resumeAfterBusy();
        this.pump();
        return;
      }
      case "busy": {
        const b = this.head(m, "busy");
        const retry = uint(m, "retry_after_ms", 32, "busy");
        this.inflight.shift();
        this.s.busy++;
        this.answeredSinceConnect = true;
        if (this.busy === undefined) {
          this.allowed = Math.max(1, Math.floor(this.allowed / 2));
          this.acksSinceGrow = 0;
          const busy: { refused: Batch[]; timer: ReturnType<typeof setTimeout> | undefined } = { refused: [], timer: undefined };
          busy.timer = setTimeout(() => {
            busy.timer = undefined;
            this.resumeAfterBusy();
          }, Math.min(retry, this.retryAfterMsMax));
          this.busy = busy;
        }
        this.busy.refused.push(b);
        this.resumeAfterBusy();
        return;
      }
      case "error": {
        const e = new ServerError(str(m, "code", "error"), str(m, "message", "error"));
        if (e.code === "bad_batch" || e.code === "bad_sequence" || e.code === "sequence_reused") {
          const b = this.inflight.shift();
          if (b === undefined) throw new ProtocolError(`error ${e.code} with no batch unanswered`);
          this.released(b);
          const refused = new BatchRefusedError(b.firstSeq, b.count, e);
          for (const r of b.rejects) r(refused);
          this.resumeAfterBusy();
          this.pump();
          return;
        }
        if (!e.closes) throw new ProtocolError(`error ${e.code} answers nothing a producer sends`);
        if (!this.ready_ && e.code === "malformed" && this.assigned && this.id !== undefined && this.id >= ASSIGNED_PRODUCER_IDS) {
          // The server refuses the id it assigned (a restarted server whose
          // journal never held it). A new id is safe only if no batch was
          // ever written under this one: a batch written may have been
          // applied (in cluster mode, or by a server that restarts on its
          // data), and sent again under another id it would be applied
          // twice. Otherwise the producer stops.
          const written = this.inflight.length > 0 || (this.busy?.refused.length ?? 0) > 0 || this.toSend.some((b) => b.sends > 0);
          const refused = new ProducerIdRefusedError(this.id, e, written);
          if (!written) this.id = undefined;
          this.link?.fail(refused);
          return;
        }
        this.link?.fail(e.retryable ? e : fatal(e));
        return;
      }
      case "pong":
        return;
      default:
        throw new ProtocolError(`unexpected message type ${JSON.stringify(type).slice(0, 64)} for a producer`);
    }
  }

  private welcome(m: Obj): void {
    if (this.ready_) throw new ProtocolError("welcome twice on one connection");
    uint(m, "version", 16, "welcome");
    const id = u64(m, "producer_id", "welcome");
    const max = uint(m, "batch_events_max", 32, "welcome");
    const outcomes = bool(m, "outcomes", "welcome");
    if (id === 0n || id > U64_MAX) throw new ProtocolError("welcome: producer_id 0");
    if (max < 1) throw new ProtocolError("welcome: batch_events_max 0");
    if (outcomes !== this.outcomes) throw fatal(new ProtocolError(`welcome: outcomes ${outcomes}, asked ${this.outcomes}`));
    if (this.id === undefined) this.id = id;
    else if (id !== this.id) throw fatal(new ProtocolError(`welcome names producer ${id}, not ${this.id}: resends would not be recognised`));
    this.batchEventsMax = Math.min(this.batchEventsMax, max);
    this.ready_ = true;
    if (this.everConnected) this.s.reconnects++;
    this.everConnected = true;
    const first = this.firstConnect;
    this.firstConnect = undefined;
    first?.resolve();
    this.pump();
  }

  /** After BUSY: once its wait is over and every batch sent before was answered, the refused batches go again, first. */
  private resumeAfterBusy(): void {
    const busy = this.busy;
    if (busy === undefined || busy.timer !== undefined || this.inflight.length > 0) return;
    this.busy = undefined;
    this.toSend.unshift(...busy.refused);
    this.pump();
  }

  // ---- connections ----

  private connect(): void {
    if (this.closed || this.connecting) return;
    this.connecting = true;
    this.retryTimer = undefined;
    void (async () => {
      let link: Link;
      try {
        link = await Link.open(this.o.url, this.o);
      } catch (e) {
        this.connecting = false;
        this.retry(e as TroveError);
        return;
      }
      this.connecting = false;
      if (this.closed) {
        link.close();
        return;
      }
      this.link = link;
      this.answeredSinceConnect = false;
      const handshake = setTimeout(() => link.fail(new TimeoutError("the server's welcome")), this.o.connectTimeoutMs);
      link.onMessage = (text) => {
        this.message(text);
        if (this.ready_) clearTimeout(handshake);
      };
      link.onClose = (why) => {
        clearTimeout(handshake);
        this.lost(link, why);
      };
      this.write(helloText(this.id, this.outcomes, this.o.token));
    })();
  }

  private retry(why: TroveError): void {
    if (this.closed) return;
    const isFatal = why.fatal || (why instanceof ServerError && why.closes && !why.retryable);
    const wait = isFatal ? null : this.backoff.fail();
    if (wait === null) {
      this.fail(isFatal ? fatal(why) : new ReconnectFailedError(this.backoff.failures, why));
      return;
    }
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  private lost(link: Link, why: TroveError): void {
    if (this.link !== link) return;
    const welcomed = this.ready_;
    this.link = undefined;
    this.ready_ = false;
    // Everything unanswered goes again, in sequence order, on the next connection.
    if (this.busy !== undefined) {
      if (this.busy.timer !== undefined) clearTimeout(this.busy.timer);
      this.toSend = [...this.busy.refused, ...this.inflight, ...this.toSend];
      this.busy = undefined;
    } else {
      this.toSend = [...this.inflight, ...this.toSend];
    }
    this.inflight = [];
    if (this.closed) return;
    if (this.everConnected) {
      try {
        this.onDisconnect?.(why);
      } catch {
        // the caller's callback does not stop the producer
      }
    }
    const isFatal = why.fatal || (why instanceof ServerError && why.closes && !why.retryable);
    if (isFatal) {
      this.fail(fatal(why));
      return;
    }
    if (this.answeredSinceConnect || (welcomed && this.held === 0 && this.firstConnect === undefined)) {
      // It worked: the first attempt goes at once, or, idle, when the
      // next batch closes.
      if (this.held > 0) this.connect();
      return;
    }
    // Ended before anything was answered: a failed attempt.
    this.retry(why);
  }

  private fail(e: TroveError): void {
    if (this.error !== undefined) return;
    this.error = fatal(e);
    this.shutdown(e);
  }

  private shutdown(e: TroveError): void {
    this.closed = true;
    for (const t of [this.lingerTimer, this.retryTimer, this.busy?.timer]) if (t !== undefined) clearTimeout(t);
    for (const t of [this.pingTimer, this.answerTimer]) if (t !== undefined) clearInterval(t);
    this.lingerTimer = this.retryTimer = this.pingTimer = this.answerTimer = undefined;
    const link = this.link;
    this.link = undefined;
    this.ready_ = false;
    link?.close();
    const err = e instanceof ClosedError ? e : new ClosedError(e);
    const all = [...(this.busy?.refused ?? []), ...this.inflight, ...this.toSend];
    this.busy = undefined;
    this.inflight = [];
    this.toSend = [];
    for (const b of all) for (const r of b.rejects) r(err);
    for (const r of this.open.rejects) r(err);
    this.open = { parts: [], bytes: 0, resolves: [], rejects: [] };
    this.held = 0;
    for (const w of [...this.readyWaiters, ...this.drainWaiters]) w.reject(err);
    this.readyWaiters = [];
    this.drainWaiters = [];
    const first = this.firstConnect;
    this.firstConnect = undefined;
    first?.reject(this.error ?? err);
  }
}
