// A subscriber: watches hunts and yields their updates as typed items,
// in order, with the gaps where entries were lost; after a lost
// connection it reconnects and subscribes to its hunts again.

import { CallbackError, ClosedError, ConfigError, ProtocolError, ReconnectFailedError, ServerError, type TroveError, fatal } from "./errors.js";
import { type HuntBroadcast, type HuntEvent, type HuntOutcome, decodeBroadcast, decodeEvent, decodeOutcome } from "./game.js";
import { type Obj, arr, obj, parseJson, str, u64, uint } from "./json.js";
import { canInflate, inflateRawText } from "./inflate.js";
import { Link } from "./link.js";
import { Backoff, type ConnectionOptions, type ResolvedConnectionOptions, checkCount, helloText, resolveConnection, unref } from "./options.js";

/** Most entries in one `update` message (docs/protocol.md). */
export const UPDATE_ENTRIES_MAX = 256;

/**
 * Compressed messages waiting for their turn to be inflated, past which a
 * subscriber that can (Node, with `ws`) stops reading until they are done.
 */
export const INFLATE_WAITING_MAX = 256;

/** One item of a subscriber's stream. Sequence numbers are exact (`bigint`). */
export type SubscriberItem =
  /** An event the engine applied (any producer's), its engine time and outcome. */
  | { kind: "applied"; hunt: number; seq: bigint; timeUs: bigint; event: HuntEvent; outcome: HuntOutcome }
  /** A broadcast the event before it caused (treasure_found, leaderboard_changed, round_finished). */
  | { kind: "broadcast"; hunt: number; seq: bigint; body: HuntBroadcast }
  /**
   * Entries of `hunt` this subscriber will never see, from `firstMissed`:
   * - `server`: the server dropped `missed` of them because this subscriber
   *   fell behind (a `gap` message, or an update past the next expected);
   * - `local`: this subscriber's queue was full and it could not pause
   *   reading (a browser), so it dropped `missed` itself;
   * - `reconnect`: the connection was lost; whatever the hunt did until
   *   the new `subscribed` is unknown (`missed` is null: a restarted
   *   server numbers from 1 again, so the numbers do not say).
   */
  | { kind: "gap"; hunt: number; firstMissed: bigint; missed: bigint | null; reason: "server" | "local" | "reconnect" }
  /**
   * The server ended the subscription to `hunt` unasked: `deleted` (its
   * last entry, a `hunt_deleted` broadcast, came before), or `revoked` (a
   * reload of the server's tokens no longer allows it). Nothing more of
   * it comes, and it is not subscribed again on a reconnect: subscribe
   * again to follow a hunt created again under the id.
   */
  | { kind: "ended"; hunt: number; reason: "deleted" | "revoked" }
  /** The server confirmed a subscription (also after every reconnect): entries follow from `nextSeq`. */
  | { kind: "subscribed"; hunt: number; nextSeq: bigint }
  /** The connection was lost (it reconnects by itself, unless `error.fatal`). */
  | { kind: "disconnected"; error: TroveError };

export interface SubscriberOptions extends ConnectionOptions {
  /**
   * Items queued for `next()` at most. Past it the subscriber stops
   * reading from the socket where it can (Node, with `ws`), so that the
   * server drops entries for it and says so with a gap, or else (a
   * browser) drops whole messages itself and yields a `local` gap.
   * Default 65536.
   */
  queueMax?: number;
  /**
   * Watch the hunts' broadcasts alone (finds, top-10 changes, round ends),
   * not every event: far fewer entries for a spectator that shows the
   * news. They are numbered consecutively by themselves, so gaps keep
   * their meaning. Needs a server that knows the mode. Default false.
   */
  broadcastsOnly?: boolean;
  /**
   * "deflate": ask the server for compressed updates (binary messages, the
   * raw DEFLATE of each update's JSON text), inflated here with the
   * platform's `DecompressionStream('deflate-raw')` (browsers, Node 18 and
   * later): a fraction of the bytes on the wire for a little CPU on both
   * ends. Where the platform cannot inflate 'deflate-raw', it is not asked
   * for (see `compressed`). It sends a `hello` first; a server that does
   * not know the option answers it and sends text. Default: none.
   */
  compression?: "deflate";
  /**
   * Called with each item instead of queueing it for `next()`. An exception
   * it throws never escapes: it ends the connection, is reported as the
   * next `disconnected` item's error (a `CallbackError`), and the
   * connection is made again (a callback that keeps throwing counts as
   * failed attempts, so `reconnectAttemptsMax` stops it).
   */
  onItem?: (item: SubscriberItem) => void;
}

interface HuntState {
  /** The next entry number expected, once subscribed on the current connection. */
  expected: bigint | null;
  /** The number after the last entry seen on any connection (for the reconnect gap). */
  seen: bigint | null;
  waiters: { resolve: (next: bigint) => void; reject: (e: TroveError) => void }[];
}

type Op = { op: "subscribe" | "unsubscribe"; hunt: number; done?: () => void };

export class Subscriber {
  private readonly o: ResolvedConnectionOptions;
  private readonly queueMax: number;
  private readonly onItem: ((item: SubscriberItem) => void) | undefined;
  private readonly broadcastsOnly: boolean;
  private readonly deflate: boolean;
  private link: Link | undefined;
  /**
   * Messages behind a compressed one still inflating wait here, in order
   * (the message handler's turn comes after the ones before it): the
   * chain's tail, and how many wait on it.
   */
  private behind: Promise<void> | null = null;
  private waiting = 0;
  /** Whether the current link finished its handshake. */
  private ready = false;
  private readonly hunts = new Map<number, HuntState>();
  /** Hunts unsubscribed whose `unsubscribed` has not come yet (their updates are dropped). */
  private readonly leaving = new Map<number, number>();
  private ops: Op[] = [];
  private readonly queue: SubscriberItem[] = [];
  /**
   * Per hunt, its `local` gap still in the queue and the last item queued
   * for that hunt: a further drop merges into it, so that a full queue
   * holds at most one local gap per hunt however the hunts' messages
   * interleave.
   */
  private readonly localGaps = new Map<number, Extract<SubscriberItem, { kind: "gap" }>>();
  private queueHead = 0;
  private waiter: { resolve: (i: SubscriberItem | null) => void; reject: (e: TroveError) => void } | undefined;
  private error: TroveError | undefined;
  private closed = false;
  private readonly backoff: Backoff;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private nonce = 0;
  private answeredSinceConnect = false;

  private constructor(o: SubscriberOptions) {
    this.o = resolveConnection(o);
    this.queueMax = checkCount(o.queueMax ?? 65536, "queueMax", 1, 1 << 24);
    this.onItem = o.onItem;
    this.broadcastsOnly = o.broadcastsOnly === true;
    if (o.compression !== undefined && o.compression !== "deflate") {
      throw new ConfigError(`option \`compression\` must be "deflate" or absent, got ${JSON.stringify(o.compression)?.slice(0, 64)}`);
    }
    // An optimization, not a change of meaning: where the platform cannot
    // inflate, it is not asked for.
    this.deflate = o.compression === "deflate" && canInflate();
    this.backoff = new Backoff(this.o);
  }

  /** Connects (retrying as the options say); rejects if no connection could be made. */
  static async connect(options: SubscriberOptions): Promise<Subscriber> {
    const s = new Subscriber(options);
    await new Promise<void>((resolve, reject) => {
      s.connectLoop(resolve, reject);
    });
    s.pingTimer = setInterval(() => {
      if (s.ready) s.link?.send(`{"type":"ping","nonce":${s.nonce++}}`);
    }, s.o.pingIntervalMs);
    unref(s.pingTimer);
    return s;
  }

  /** Watches `hunt` (one that does not exist yet too); resolves with the `next_seq` the server gave. */
  subscribe(hunt: number): Promise<bigint> {
    if (!Number.isInteger(hunt) || hunt < 0 || hunt > 0xffff_ffff) throw new ConfigError(`hunt must be a u32, got ${hunt}`);
    if (this.error !== undefined) return Promise.reject(this.error);
    if (this.closed) return Promise.reject(new ClosedError());
    let st = this.hunts.get(hunt);
    if (st === undefined) {
      st = { expected: null, seen: null, waiters: [] };
      this.hunts.set(hunt, st);
      if (this.ready) this.sendOp({ op: "subscribe", hunt });
    } else if (st.expected !== null) {
      return Promise.resolve(st.expected);
    }
    const s = st;
    return new Promise((resolve, reject) => s.waiters.push({ resolve, reject }));
  }

  /** Stops watching `hunt`; resolves once the server confirmed (at once when disconnected). Nothing of it is yielded after. */
  unsubscribe(hunt: number): Promise<void> {
    const st = this.hunts.get(hunt);
    if (st === undefined) return Promise.resolve();
    this.hunts.delete(hunt);
    for (const w of st.waiters) w.reject(new ClosedError());
    if (!this.ready) return Promise.resolve();
    this.leaving.set(hunt, (this.leaving.get(hunt) ?? 0) + 1);
    return new Promise((resolve) => this.sendOp({ op: "unsubscribe", hunt, done: resolve }));
  }

  /** The hunts watched. */
  get watching(): number[] {
    return [...this.hunts.keys()];
  }

  /** Whether this subscriber asks for compressed updates (`compression` given, and the platform can inflate them). */
  get compressed(): boolean {
    return this.deflate;
  }

  /** Whether a connection is up and past its handshake. */
  get connected(): boolean {
    return this.ready;
  }

  /** The next item; `null` once closed. Rejects with the fatal error that stopped the subscriber, after the items before it. */
  next(): Promise<SubscriberItem | null> {
    if (this.queueHead < this.queue.length) {
      const item = this.queue[this.queueHead]!;
      this.queue[this.queueHead++] = undefined as unknown as SubscriberItem;
      if (item.kind === "gap" && this.localGaps.get(item.hunt) === item) this.localGaps.delete(item.hunt);
      if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
        this.queue.splice(0, this.queueHead);
        this.queueHead = 0;
      }
      if (this.queued() <= this.queueMax / 2) this.link?.resume();
      return Promise.resolve(item);
    }
    if (this.error !== undefined) return Promise.reject(this.error);
    if (this.closed) return Promise.resolve(null);
    if (this.waiter !== undefined) return Promise.reject(new ConfigError("next() called again before the previous one resolved"));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<SubscriberItem> {
    for (;;) {
      const item = await this.next();
      if (item === null) return;
      yield item;
    }
  }

  /** Closes the connection; `next()` yields what was queued, then `null`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopTimers();
    for (const st of this.hunts.values()) for (const w of st.waiters) w.reject(new ClosedError());
    this.hunts.clear();
    const link = this.link;
    this.link = undefined;
    this.ready = false;
    link?.close();
    if (this.waiter !== undefined && this.queued() === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(null);
    }
  }

  // ---- internals ----

  private queued(): number {
    return this.queue.length - this.queueHead;
  }

  private stopTimers(): void {
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.pingTimer = this.retryTimer = undefined;
  }

  private sendOp(op: Op): void {
    this.ops.push(op);
    const only = op.op === "subscribe" && this.broadcastsOnly ? `,"broadcasts_only":true` : "";
    this.link?.send(`{"type":"${op.op}","hunt":${op.hunt}${only}}`);
  }

  /**
   * Hands one item out: to `onItem`, a waiting `next()`, or the queue.
   * Throws `CallbackError` if `onItem` threw (from a message handler, the
   * link then fails with it and the connection is made again; the
   * attempt does not count as answered, so the backoff grows).
   */
  private emit(item: SubscriberItem): void {
    if (this.onItem !== undefined) {
      try {
        this.onItem(item);
      } catch (e) {
        this.answeredSinceConnect = false;
        throw new CallbackError(e);
      }
      return;
    }
    if (this.waiter !== undefined) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(item);
      return;
    }
    if ("hunt" in item) this.localGaps.delete(item.hunt);
    this.queue.push(item);
  }

  /** Whether the items of one more message may be queued (else they are dropped, and a local gap says so). */
  private room(): boolean {
    if (this.onItem !== undefined || this.queued() < this.queueMax) return true;
    if (this.link?.canPause) {
      // Stop reading: the server drops entries for us and says so (gap).
      this.link.pause();
      return true;
    }
    return false;
  }

  private connectLoop(first?: () => void, firstFailed?: (e: TroveError) => void): void {
    if (this.closed) return;
    const attempt = async (): Promise<void> => {
      let link: Link | undefined;
      try {
        link = await Link.open(this.o.url, this.o);
      } catch (e) {
        this.retry(e as TroveError, first, firstFailed);
        return;
      }
      if (this.closed) {
        link.close();
        return;
      }
      this.link = link;
      this.answeredSinceConnect = false;
      const handshake = this.o.token !== undefined || this.deflate;
      let timer: ReturnType<typeof setTimeout> | undefined;
      link.onClose = (why) => {
        if (timer !== undefined) clearTimeout(timer);
        this.lost(link, why, first, firstFailed);
      };
      const handle = (text: string): void => {
        this.message(text);
        if (this.ready && timer !== undefined) {
          clearTimeout(timer);
          timer = undefined;
          first?.();
          first = firstFailed = undefined;
        }
      };
      link.onMessage = (text) => this.receive(link, text, handle);
      if (this.deflate) {
        const bytesMax = this.o.messageBytesMax;
        link.onBinary = (packed) => this.receive(link, () => inflateRawText(packed, bytesMax), handle);
      }
      if (handshake) {
        // Only servers with tokens, or compression, need it: both travel in `hello`.
        link.send(helloText(undefined, false, this.o.token, this.deflate));
        timer = setTimeout(() => link.fail(new ProtocolError("no welcome within connectTimeoutMs")), this.o.connectTimeoutMs);
      } else {
        this.started();
        first?.();
        first = firstFailed = undefined;
      }
    };
    void attempt();
  }

  /**
   * Hands a message to `handle` in the order it came: at once, unless
   * compressed ones before it are still inflating (`input` a function:
   * inflated in its turn, one at a time).
   */
  private receive(link: Link, input: string | (() => Promise<string>), handle: (text: string) => void): void {
    if (this.behind === null && typeof input === "string") {
      handle(input);
      return;
    }
    this.waiting++;
    if (this.waiting > INFLATE_WAITING_MAX) link.pause();
    const mine: Promise<void> = (this.behind ?? Promise.resolve())
      .then(async () => {
        const text = typeof input === "string" ? input : await input();
        if (this.link === link && link.isOpen) link.handle(() => handle(text));
      })
      .catch((e: unknown) => {
        link.fail(e instanceof Error && "fatal" in e ? (e as TroveError) : new ProtocolError(`inflating an update: ${String(e)}`));
      })
      .finally(() => {
        this.waiting--;
        if (this.behind !== mine) return;
        this.behind = null;
        if (this.queued() <= this.queueMax / 2) link.resume();
      });
    this.behind = mine;
  }

  /** The handshake is done: subscribe to every hunt watched. */
  private started(): void {
    this.ready = true;
    for (const hunt of this.hunts.keys()) this.sendOp({ op: "subscribe", hunt });
  }

  private retry(why: TroveError, first?: () => void, firstFailed?: (e: TroveError) => void): void {
    if (this.closed) return;
    const fatalError = why.fatal || (why instanceof ServerError && why.closes && !why.retryable);
    const wait = fatalError ? null : this.backoff.fail();
    if (wait === null) {
      const e = fatalError ? fatal(why) : new ReconnectFailedError(this.backoff.failures, why);
      if (firstFailed) {
        this.closed = true;
        this.stopTimers();
        firstFailed(e);
        return;
      }
      this.fail(e);
      return;
    }
    this.retryTimer = setTimeout(() => this.connectLoop(first, firstFailed), wait);
  }

  private lost(link: Link, why: TroveError, first?: () => void, firstFailed?: (e: TroveError) => void): void {
    if (this.link !== link) return;
    this.link = undefined;
    const wasReady = this.ready;
    this.ready = false;
    this.ops = [];
    this.leaving.clear();
    if (this.closed) return;
    for (const st of this.hunts.values()) {
      // What follows `expected` until the next `subscribed` is lost: a gap then.
      if (st.expected !== null) st.seen = st.expected;
      st.expected = null;
    }
    if (this.answeredSinceConnect) this.backoff.reset();
    if (wasReady && !first) {
      try {
        this.emit({ kind: "disconnected", error: why });
      } catch {
        // onItem threw on the news: it is reconnecting anyway
      }
    }
    this.retry(why, first, firstFailed);
  }

  private fail(e: TroveError): void {
    if (this.error !== undefined) return;
    this.error = fatal(e);
    this.closed = true;
    this.stopTimers();
    for (const st of this.hunts.values()) for (const w of st.waiters) w.reject(e);
    this.hunts.clear();
    this.link?.close();
    this.link = undefined;
    if (this.onItem !== undefined) {
      try {
        this.onItem({ kind: "disconnected", error: e });
      } catch {
        // the subscriber has stopped either way
      }
    }
    if (this.waiter !== undefined && this.queued() === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w.reject(e);
    }
  }

  private message(text: string): void {
    const m = obj(parseJson(text), "message");
    const type = str(m, "type", "message");
    switch (type) {
      case "welcome":
        if (this.ready || (this.o.token === undefined && !this.deflate)) throw new ProtocolError("welcome that was not asked for");
        uint(m, "version", 16, "welcome");
        this.started();
        return;
      case "subscribed": {
        const hunt = uint(m, "hunt", 32, "subscribed");
        const next = u64(m, "next_seq", "subscribed");
        const op = this.ops.shift();
        if (op === undefined || op.op !== "subscribe" || op.hunt !== hunt) {
          throw new ProtocolError(`subscribed for hunt ${hunt} answers no subscribe`);
        }
        this.answered();
        const st = this.hunts.get(hunt);
        if (st === undefined) return; // unsubscribed meanwhile
        const seen = st.seen;
        st.expected = next;
        const waiters = st.waiters;
        st.waiters = [];
        for (const w of waiters) w.resolve(next);
        if (seen !== null) this.emit({ kind: "gap", hunt, firstMissed: seen, missed: null, reason: "reconnect" });
        this.emit({ kind: "subscribed", hunt, nextSeq: next });
        return;
      }
      case "unsubscribed": {
        const hunt = uint(m, "hunt", 32, "unsubscribed");
        const head = this.ops[0];
        const asked = head !== undefined && head.op === "unsubscribe" && head.hunt === hunt && !("reason" in m);
        if (!asked) {
          // Ended by the server: a deleted hunt (with its reason), or a
          // token reload. Not an answer to anything sent.
          const st = this.hunts.get(hunt);
          if (st === undefined || st.expected === null) {
            if ("reason" in m || this.leaving.has(hunt)) return; // already leaving, or not yet subscribed here
            throw new ProtocolError(`unsubscribed for hunt ${hunt} answers no unsubscribe`);
          }
          this.hunts.delete(hunt);
          for (const w of st.waiters) w.reject(new ProtocolError(`hunt ${hunt} ended`));
          this.emit({ kind: "ended", hunt, reason: "reason" in m && str(m, "reason", "unsubscribed") === "deleted" ? "deleted" : "revoked" });
          return;
        }
        const op = this.ops.shift()!;
        const n = (this.leaving.get(hunt) ?? 1) - 1;
        if (n > 0) this.leaving.set(hunt, n);
        else this.leaving.delete(hunt);
        op.done?.();
        return;
      }
      case "update":
        this.update(m);
        return;
      case "gap": {
        const hunt = uint(m, "hunt", 32, "gap");
        const firstMissed = u64(m, "first_missed", "gap");
        const missed = u64(m, "missed", "gap");
        const st = this.stream(hunt, "gap");
        if (st === undefined) return;
        if (firstMissed < st.expected!) throw new ProtocolError(`gap for hunt ${hunt} from ${firstMissed}, below the next expected ${st.expected}`);
        const end = firstMissed + missed;
        this.emit({ kind: "gap", hunt, firstMissed: st.expected!, missed: end - st.expected!, reason: "server" });
        st.expected = st.seen = end;
        return;
      }
      case "pong":
        return;
      case "error": {
        const e = new ServerError(str(m, "code", "error"), str(m, "message", "error"));
        if (e.code === "too_many_subscriptions") {
          const i = this.ops.findIndex((op) => op.op === "subscribe");
          const op = i >= 0 ? this.ops.splice(i, 1)[0] : undefined;
          if (op === undefined) throw new ProtocolError("too_many_subscriptions answers no subscribe");
          const st = this.hunts.get(op.hunt);
          this.hunts.delete(op.hunt);
          for (const w of st?.waiters ?? []) w.reject(e);
          return;
        }
        if (!e.closes) throw new ProtocolError(`error ${e.code} answers nothing a subscriber sent`);
        // It closes: reconnect if it may help, else stop.
        this.link?.fail(e.retryable ? e : fatal(e));
        return;
      }
      default:
        throw new ProtocolError(`unexpected message type ${JSON.stringify(type).slice(0, 64)} for a subscriber`);
    }
  }

  private answered(): void {
    this.answeredSinceConnect = true;
  }

  /** The hunt's stream state if its entries are wanted; undefined if it is being left; an error if never asked for. */
  private stream(hunt: number, what: string): HuntState | undefined {
    const st = this.hunts.get(hunt);
    if (st !== undefined && st.expected !== null) return st;
    // Left, or asked for and not confirmed yet: dropped, not an error.
    if (this.leaving.has(hunt) || this.ops.some((op) => op.hunt === hunt)) return undefined;
    throw new ProtocolError(`${what} for hunt ${hunt}, which this connection did not subscribe to`);
  }

  private update(m: Obj): void {
    const hunt = uint(m, "hunt", 32, "update");
    const first = u64(m, "first_seq", "update");
    const entries = arr(m, "entries", "update");
    if (entries.length === 0 || entries.length > UPDATE_ENTRIES_MAX) {
      throw new ProtocolError(`update with ${entries.length} entries (1..=${UPDATE_ENTRIES_MAX})`);
    }
    const st = this.stream(hunt, "update");
    if (st === undefined) return;
    const expected = st.expected!;
    if (first < expected) throw new ProtocolError(`update for hunt ${hunt} from ${first}, below the next expected ${expected}`);
    // Decode all before yielding any: a malformed entry fails the whole message.
    const items: SubscriberItem[] = entries.map((raw, i) => {
      const what = `update.entries[${i}]`;
      const e = obj(raw, what);
      const seq = first + BigInt(i);
      const kind = str(e, "kind", what);
      if (kind === "applied") {
        return {
          kind: "applied",
          hunt,
          seq,
          timeUs: u64(e, "time_us", what),
          event: decodeEvent(e["event"], `${what}.event`),
          outcome: decodeOutcome(e["outcome"], `${what}.outcome`),
        };
      }
      if (kind === "broadcast") return { kind: "broadcast", hunt, seq, body: decodeBroadcast(e["body"], `${what}.body`) };
      throw new ProtocolError(`${what}: unknown kind ${JSON.stringify(kind).slice(0, 64)}`);
    });
    this.answered();
    const end = first + BigInt(entries.length);
    if (!this.room()) {
      // A browser cannot stop reading: drop the message, say so, in the
      // hunt's local gap still queued if it ends where this one starts.
      const pending = this.localGaps.get(hunt);
      if (pending !== undefined && pending.missed !== null && pending.firstMissed + pending.missed === expected) {
        pending.missed = end - pending.firstMissed;
      } else {
        const item: Extract<SubscriberItem, { kind: "gap" }> = { kind: "gap", hunt, firstMissed: expected, missed: end - expected, reason: "local" };
        this.queue.push(item);
        this.localGaps.set(hunt, item);
      }
      st.expected = st.seen = end;
      return;
    }
    if (first > expected) this.emit({ kind: "gap", hunt, firstMissed: expected, missed: first - expected, reason: "server" });
    st.expected = st.seen = end;
    for (const item of items) this.emit(item);
  }
}
