// The trove dashboard, served by the control plane at `/`: pages by the
// address's fragment (`#/`, `#/hunts`, `#/hunts/7`), one live feed for all.

import { Feed, type FeedState } from "./feed.js";
import { EnginePage } from "./engine.js";
import { HuntPage } from "./hunt.js";
import { HuntsPage } from "./hunts.js";
import { getJson, token } from "./http.js";

token();
const feed = new Feed();
const view = document.getElementById("view")!;
const engine = new EnginePage(feed);
const hunts = new HuntsPage(feed);
let hunt: HuntPage | null = null;

function route(): void {
  const path = location.hash.replace(/^#/, "") || "/";
  hunt?.close();
  hunt = null;
  const m = /^\/hunts\/([^/]+)$/.exec(path);
  let page: HTMLElement;
  let nav = "";
  if (m !== null) {
    hunt = new HuntPage(decodeURIComponent(m[1]!), feed);
    page = hunt.root;
    nav = "hunts";
  } else if (path === "/hunts") {
    page = hunts.root;
    nav = "hunts";
  } else {
    page = engine.root;
    nav = "engine";
  }
  for (const p of [engine.root, hunts.root]) p.hidden = p !== page;
  view.replaceChildren(engine.root, hunts.root);
  if (hunt !== null) view.append(hunt.root);
  if (page === engine.root) engine.show();
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) a.classList.toggle("active", a.dataset.nav === nav);
  document.body.dataset.route = nav === "engine" ? "engine" : m !== null ? "hunt" : "hunts";
}

const conn = document.getElementById("conn")!;
const connNote = document.getElementById("conn-note")!;
const time = (ms: number) => new Date(ms).toLocaleTimeString();
feed.onState((s: FeedState) => {
  conn.dataset.state = s.kind;
  if (s.kind === "live") {
    conn.textContent = "live";
    connNote.textContent = s.wasDownMs === null ? "" : `reconnected at ${time(s.since)} after ${(s.wasDownMs / 1000).toFixed(1)} s disconnected`;
    void serverLine();
  } else if (s.kind === "disconnected") {
    conn.textContent = "disconnected";
    connNote.textContent = `since ${time(s.since)} (${s.why}); reconnecting…`;
  } else {
    conn.textContent = "connecting…";
  }
});

async function serverLine(): Promise<void> {
  const s = await getJson("/status").catch(() => null);
  const server = document.getElementById("server")!;
  if (s === null || !s.ok) return;
  const b = s.body as { version?: string; mode?: string; shards?: number; fsync?: string };
  server.textContent = `trove ${b.version ?? "?"} · ${b.mode ?? "?"} · ${b.shards ?? "?"} shards · fsync ${b.fsync ?? "?"}`;
}

window.addEventListener("hashchange", route);
route();
