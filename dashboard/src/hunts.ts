// The hunts page: every hunt in the feed (the first 100 by id), with its
// players and events/s as bars.

import { el, short, text } from "./chart.js";
import type { Feed, Snapshot } from "./feed.js";

export class HuntsPage {
  readonly root: HTMLElement;
  private list: HTMLElement;
  private more: HTMLElement;

  constructor(feed: Feed) {
    this.root = el("section");
    this.root.dataset.page = "hunts";
    const h = el("h2");
    h.textContent = "Hunts";
    this.list = el("div", "hunts");
    this.list.dataset.list = "hunts";
    this.more = el("p", "note");
    this.root.append(h, this.list, this.more);
    feed.onSnapshot((s) => this.snapshot(s));
  }

  private snapshot(s: Snapshot): void {
    if (this.root.hidden) return;
    const hunts = s.hunts;
    const rateMax = Math.max(1, ...hunts.map((x) => x.events_per_s));
    const playersMax = Math.max(1, ...hunts.map((x) => x.players));
    const rows = hunts.map((x) => {
      const row = el("div", "hunt-row");
      row.dataset.hunt = String(x.id);
      const link = el("a");
      link.href = `#/hunts/${x.id}`;
      link.textContent = `hunt ${x.id}`;
      row.append(
        link,
        bar("players", x.players / playersMax, `${x.players} players`),
        bar("rate", x.events_per_s / rateMax, `${short(x.events_per_s)} events/s`),
        text(`round ${x.round} · ${x.treasures_left} left`),
      );
      return row;
    });
    if (rows.length === 0) {
      const p = el("p", "note");
      p.textContent = "No hunts yet: create one with POST /hunts or a producer.";
      rows.push(p);
    }
    this.list.replaceChildren(...rows);
    this.more.textContent = s.hunts_more ? "More hunts exist: the feed carries the first 100 by id." : "";
  }
}

function bar(kind: string, share: number, label: string): HTMLElement {
  const wrap = el("div");
  const b = el("div", `bar ${kind}`);
  const fill = el("span");
  fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  b.append(fill);
  const l = el("div", "bar-label");
  l.dataset.figure = kind;
  l.textContent = label;
  wrap.append(b, l);
  return wrap;
}
