// A hunt's page: its map (players where they were last seen moving,
// treasures claimed this round), the top 10 and the round, live through
// the SDK's Subscriber over the WebSocket endpoint. The hunt's detail
// (GET /hunts/{id}) gives the field's size, the round and the top to
// start from; the subscription gives everything after.

import { Subscriber, type SubscriberItem, type TopEntry } from "../../sdk/typescript/src/index.js";
import { el, short, text } from "./chart.js";
import type { Feed } from "./feed.js";
import { getJson } from "./http.js";

/** Players drawn at most (the first seen); a hunt may hold a million. */
const PLAYERS_DRAWN_MAX = 20_000;

interface Detail {
  id: number;
  round: number;
  players: number;
  treasures_left: number;
  config: { width: number; height: number; treasures_per_round: number };
  leaderboard: TopEntry[];
}

export class HuntPage {
  readonly root: HTMLElement;
  private sub: Subscriber | null = null;
  private closed = false;
  private unfeed: (() => void) | null = null;
  private detail: Detail | null = null;
  private players = new Map<number, { x: number; y: number }>();
  private claimed: { x: number; y: number }[] = [];
  private top: TopEntry[] = [];
  private round = 0;
  private treasuresLeft = 0;
  private found = 0;
  private rate = 0;
  private subState = "connecting";
  private drawPending = false;
  private canvas = document.createElement("canvas");
  private facts = el("div", "facts");
  private topList = el("ol", "top");

  constructor(
    readonly id: string,
    private readonly feed: Feed,
  ) {
    this.root = el("section");
    this.root.dataset.page = "hunt";
    this.root.append(note("Loading the hunt…"));
    void this.start();
  }

  close(): void {
    this.closed = true;
    this.sub?.close();
    this.unfeed?.();
  }

  private async start(): Promise<void> {
    let answer;
    try {
      answer = await getJson(`/hunts/${encodeURIComponent(this.id)}`);
    } catch (e) {
      this.fail("The server cannot be reached", `${e instanceof Error ? e.message : String(e)}. The page retries when the server is back.`);
      const off = this.feed.onState((s) => {
        if (s.kind === "live" && !this.closed) {
          off();
          this.root.replaceChildren(note("Loading the hunt…"));
          void this.start();
        }
      });
      return;
    }
    if (this.closed) return;
    if (!answer.ok) {
      if (answer.code === "unknown_hunt") this.fail(`Hunt ${this.id} does not exist`, "No hunt has this id on this server.", true);
      else this.fail(`Hunt ${this.id} cannot be shown`, `${answer.status} ${answer.code}: ${answer.message}`, true);
      return;
    }
    this.detail = answer.body as Detail;
    this.round = this.detail.round;
    this.treasuresLeft = this.detail.treasures_left;
    this.top = this.detail.leaderboard ?? [];
    this.layout();
    this.unfeed = this.feed.onSnapshot((s) => {
      const me = s.hunts.find((h) => String(h.id) === this.id);
      if (me !== undefined) this.rate = me.events_per_s;
      this.schedule();
    });
    const status = await getJson("/status").catch(() => null);
    const ws = status !== null && status.ok ? (status.body as { ws_addr?: string | null }).ws_addr : null;
    if (typeof ws !== "string") {
      this.subState = "off: the server's WebSocket endpoint is disabled";
      this.schedule();
      return;
    }
    await this.subscribe(wsUrl(ws));
  }

  private async subscribe(url: string): Promise<void> {
    const token = sessionStorage.getItem("trove.token") ?? undefined;
    try {
      this.sub = await Subscriber.connect({ url, token, compression: "deflate", reconnectAttemptsMax: null, onItem: (i) => this.item(i) });
    } catch (e) {
      this.subState = `failed: ${e instanceof Error ? e.message : String(e)}`;
      this.schedule();
      return;
    }
    if (this.closed) {
      this.sub.close();
      return;
    }
    await this.sub.subscribe(Number(this.id)).catch((e: unknown) => {
      this.subState = `failed: ${e instanceof Error ? e.message : String(e)}`;
    });
    this.schedule();
  }

  private item(i: SubscriberItem): void {
    switch (i.kind) {
      case "subscribed":
        this.subState = "live";
        break;
      case "disconnected":
        this.subState = "disconnected: reconnecting";
        break;
      case "ended":
        // A deleted hunt (or a token reload): nothing more comes on this
        // subscription; the page shows what it last saw.
        this.subState = i.reason === "deleted" ? "ended: the hunt was deleted" : "ended: no longer allowed";
        break;
      case "gap":
        // Positions and claims in the gap are unknown: the detail's top and
        // round are fetched again, the map keeps what it saw.
        void this.refreshDetail();
        break;
      case "applied": {
        const o = i.outcome;
        const e = i.event;
        if (o.outcome === "joined" || o.outcome === "moved") {
          if ("player" in e && (this.players.has(e.player) || this.players.size < PLAYERS_DRAWN_MAX)) {
            this.players.set(e.player, { x: o.x, y: o.y });
          }
        } else if (o.outcome === "left" && "player" in e) {
          this.players.delete(e.player);
        }
        break;
      }
      case "broadcast": {
        const b = i.body;
        if (b.broadcast === "treasure_found") {
          this.claimed.push({ x: b.x, y: b.y });
          this.treasuresLeft = b.treasures_left;
          this.round = b.round;
          this.found++;
        } else if (b.broadcast === "leaderboard_changed") {
          this.top = b.top;
          this.round = b.round;
        } else if (b.broadcast === "round_finished") {
          this.round = b.round + 1;
          this.claimed = [];
          this.top = [];
          this.treasuresLeft = this.detail?.config.treasures_per_round ?? 0;
        }
        break;
      }
    }
    this.schedule();
  }

  private async refreshDetail(): Promise<void> {
    const a = await getJson(`/hunts/${encodeURIComponent(this.id)}`).catch(() => null);
    if (a === null || !a.ok || this.closed) return;
    const d = a.body as Detail;
    this.round = d.round;
    this.treasuresLeft = d.treasures_left;
    this.top = d.leaderboard ?? [];
    this.schedule();
  }

  private fail(title: string, why: string, back = false): void {
    const m = el("div", "message");
    m.dataset.message = "hunt";
    const h = el("h2");
    h.textContent = title;
    const p = el("p");
    p.textContent = why;
    m.append(h, p);
    if (back) {
      const a = el("a");
      a.href = "#/hunts";
      a.textContent = "← all hunts";
      m.append(a);
    }
    this.root.replaceChildren(m);
  }

  private layout(): void {
    const d = this.detail!;
    const h = el("h2");
    h.textContent = `Hunt ${d.id} · ${d.config.width}×${d.config.height}`;
    const page = el("div", "hunt-page");
    this.canvas.className = "map";
    this.canvas.dataset.map = String(d.id);
    const side = el("div");
    const topTitle = el("h2");
    topTitle.textContent = "Top 10 this round";
    this.topList.dataset.list = "top";
    side.append(this.facts, topTitle, this.topList);
    page.append(this.canvas, side);
    this.root.replaceChildren(h, page);
    this.schedule();
  }

  private schedule(): void {
    if (this.drawPending || this.detail === null) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      if (!this.closed) this.render();
    });
  }

  private render(): void {
    const facts: [string, string, string][] = [
      ["round", String(this.round), "round"],
      ["treasures left", String(this.treasuresLeft), "treasures_left"],
      ["players seen", String(this.players.size), "players_seen"],
      ["events/s", short(this.rate), "hunt_rate"],
      ["updates", this.subState, "subscription"],
    ];
    this.facts.replaceChildren(
      ...facts.map(([label, value, key]) => {
        const f = el("div", "fact");
        const b = el("b");
        b.dataset.figure = key;
        b.textContent = value;
        if (key === "subscription") b.style.fontSize = "14px";
        const s = el("span");
        s.textContent = label;
        f.append(b, s);
        return f;
      }),
    );
    const scoreMax = Math.max(1, ...this.top.map((t) => t.score));
    this.topList.replaceChildren(
      ...this.top.map((t, rank) => {
        const li = el("li");
        li.dataset.player = String(t.player);
        li.dataset.score = String(t.score);
        const r = el("span", "note");
        r.textContent = `${rank + 1}.`;
        const wrap = el("div");
        const b = el("div", "bar");
        const fill = el("span");
        fill.style.width = `${(t.score / scoreMax) * 100}%`;
        b.append(fill);
        const l = el("div", "bar-label");
        l.append(text(`player ${t.player} · ${t.score}`));
        wrap.append(b, l);
        li.append(r, wrap);
        return li;
      }),
    );
    if (this.top.length === 0) this.topList.append(note("No treasure found yet this round."));
    this.drawMap();
  }

  private drawMap(): void {
    const d = this.detail!;
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const size = c.clientWidth || 640;
    c.width = Math.round(size * ratio);
    c.height = Math.round(size * ratio);
    const g = c.getContext("2d");
    if (g === null) return;
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, size, size);
    const sx = size / d.config.width;
    const sy = size / d.config.height;
    const dot = Math.max(2, Math.min(sx, sy));
    g.fillStyle = "#a371f7";
    for (const p of this.players.values()) g.fillRect(p.x * sx, p.y * sy, dot, dot);
    g.fillStyle = "#d29922";
    for (const t of this.claimed) {
      g.beginPath();
      g.arc(t.x * sx + dot / 2, t.y * sy + dot / 2, Math.max(3, dot), 0, 2 * Math.PI);
      g.fill();
    }
  }
}

/** `ws://` to the server's WebSocket endpoint: an unspecified host (0.0.0.0, ::) is this page's. */
export function wsUrl(addr: string): string {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(addr);
  let host = m?.[1] ?? location.hostname;
  const port = m?.[2] ?? "7401";
  if (host === "0.0.0.0" || host === "[::]") host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${host}:${port}/`;
}

function note(s: string): HTMLElement {
  const p = el("p", "note");
  p.textContent = s;
  return p;
}
