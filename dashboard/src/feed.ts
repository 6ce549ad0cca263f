// The live feed: `GET /live` (server-sent events, one JSON snapshot every
// 500 ms), read with fetch() and a ReadableStream rather than EventSource,
// so that an `Authorization` header can go with it. A lost stream (a
// server restart, say) is reported and opened again, with a backoff.

import { headers } from "./http.js";

/** One snapshot, as docs/control.md describes it (the fields used here). */
export interface Snapshot {
  uptime_ms: number;
  interval_s: number;
  events_in_per_s: number;
  events_acknowledged_per_s: number;
  events_applied_per_s: number;
  ack_latency_us: { p50: number; p99: number } | null;
  journal_sync_us: { p50: number; p99: number } | null;
  queue_events: number;
  shards: { shard: number; events_per_s: number; queue_events: number; busy_ratio: number }[];
  io: { polls_per_event: number | null; wakeups_per_event: number | null };
  connections_open: number;
  subscribers: number;
  hunts: HuntFigures[];
  hunts_more: boolean;
}

export interface HuntFigures {
  id: number;
  round: number;
  players: number;
  treasures_left: number;
  events_per_s: number;
}

export type FeedState =
  | { kind: "connecting" }
  | { kind: "live"; since: number; wasDownMs: number | null }
  | { kind: "disconnected"; since: number; why: string };

/** A snapshot event longer than this is refused (a few KiB is usual). */
const EVENT_CHARS_MAX = 4 << 20;
const BACKOFF_INITIAL_MS = 250;
const BACKOFF_MAX_MS = 4000;

export class Feed {
  private listeners = new Set<(s: Snapshot) => void>();
  private stateListeners = new Set<(s: FeedState) => void>();
  state: FeedState = { kind: "connecting" };
  last: Snapshot | null = null;

  constructor(private readonly path = "/live") {
    void this.run();
  }

  onSnapshot(f: (s: Snapshot) => void): () => void {
    this.listeners.add(f);
    if (this.last !== null) f(this.last);
    return () => this.listeners.delete(f);
  }

  onState(f: (s: FeedState) => void): () => void {
    this.stateListeners.add(f);
    f(this.state);
    return () => this.stateListeners.delete(f);
  }

  private setState(s: FeedState): void {
    this.state = s;
    for (const f of this.stateListeners) f(s);
  }

  private async run(): Promise<void> {
    let backoff = BACKOFF_INITIAL_MS;
    let downSince: number | null = null;
    for (;;) {
      let why = "the stream ended";
      try {
        const r = await fetch(this.path, { headers: { ...headers(), Accept: "text/event-stream" }, cache: "no-store" });
        if (!r.ok || r.body === null) {
          why = `the server answered ${r.status}`;
        } else {
          let first = true;
          for await (const data of events(r.body)) {
            let snap: Snapshot;
            try {
              snap = JSON.parse(data) as Snapshot;
            } catch {
              why = "the server sent a snapshot that is not JSON";
              break;
            }
            if (first) {
              first = false;
              backoff = BACKOFF_INITIAL_MS;
              this.setState({ kind: "live", since: Date.now(), wasDownMs: downSince === null ? null : Date.now() - downSince });
              downSince = null;
            }
            this.last = snap;
            for (const f of this.listeners) f(snap);
          }
        }
      } catch (e) {
        why = e instanceof Error ? e.message : String(e);
      }
      if (downSince === null) downSince = Date.now();
      this.setState({ kind: "disconnected", since: downSince, why });
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }
}

/** The `data:` of each server-sent event in `body`, as text. */
async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = event
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (data !== "") yield data;
      }
      if (buf.length > EVENT_CHARS_MAX) throw new Error("a server-sent event past 4 MiB");
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
