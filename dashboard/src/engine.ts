// The engine page: the live feed's figures as line charts over the last
// minute. Its history is kept while another page is shown.

import { LineChart, el, micros, short } from "./chart.js";
import type { Feed, Snapshot } from "./feed.js";

const COLORS = ["#2f81f7", "#3fb950", "#d29922", "#a371f7", "#f85149", "#39c5cf", "#db61a2", "#8a97a6"];
/** Shards drawn one line each; past it, the rest are summed in one line. */
const SHARD_LINES_MAX = 8;

export class EnginePage {
  readonly root: HTMLElement;
  private charts: { chart: LineChart; values: (s: Snapshot) => (number | null)[] }[] = [];
  private grid: HTMLElement;
  private shards = -1;
  private gap = false;

  constructor(feed: Feed) {
    this.root = el("section");
    this.root.dataset.page = "engine";
    const h = el("h2");
    h.textContent = "Engine";
    this.grid = el("div", "grid");
    this.root.append(h, this.grid);
    feed.onSnapshot((s) => this.snapshot(s));
    // A break in every line where the server was away.
    feed.onState((s) => {
      if (s.kind === "disconnected") this.gap = true;
    });
  }

  private build(shards: number): void {
    this.grid.replaceChildren();
    this.shards = shards;
    const lines = Math.min(shards, SHARD_LINES_MAX);
    const shardSeries = Array.from({ length: lines }, (_, i) => ({
      name: i + 1 === lines && shards > lines ? `shards ${i}-${shards - 1}` : `shard ${i}`,
      color: COLORS[i % COLORS.length]!,
    }));
    const perShard = (s: Snapshot, f: (x: Snapshot["shards"][number]) => number, mean: boolean) =>
      shardSeries.map((_, i) => {
        const group = i + 1 === lines ? s.shards.slice(i) : s.shards.slice(i, i + 1);
        if (group.length === 0) return null;
        const sum = group.reduce((a, x) => a + f(x), 0);
        return mean ? sum / group.length : sum;
      });
    const add = (id: string, title: string, series: { name: string; color: string }[], format: (v: number) => string, values: (s: Snapshot) => (number | null)[]) => {
      this.charts.push({ chart: new LineChart(this.grid, id, title, series, format), values });
    };
    this.charts = [];
    add(
      "events",
      "Events/s in / acknowledged",
      [
        { name: "in", color: COLORS[0]! },
        { name: "acknowledged", color: COLORS[1]! },
      ],
      short,
      (s) => [s.events_in_per_s, s.events_acknowledged_per_s],
    );
    add(
      "ack_latency",
      "To acknowledgement p50 / p99",
      [
        { name: "p50", color: COLORS[1]! },
        { name: "p99", color: COLORS[4]! },
      ],
      micros,
      (s) => [s.ack_latency_us?.p50 ?? null, s.ack_latency_us?.p99 ?? null],
    );
    add("queues", "Queue depth (events waiting)", shardSeries, short, (s) => perShard(s, (x) => x.queue_events, false));
    add("busy", "Shard busy", shardSeries, (v) => `${(v * 100).toFixed(0)}%`, (s) => perShard(s, (x) => x.busy_ratio, true));
    add(
      "journal_sync",
      "Journal sync p50 / p99",
      [
        { name: "p50", color: COLORS[2]! },
        { name: "p99", color: COLORS[4]! },
      ],
      micros,
      (s) => [s.journal_sync_us?.p50 ?? null, s.journal_sync_us?.p99 ?? null],
    );
    add(
      "io",
      "I/O runtime per event: polls / wakeups",
      [
        { name: "polls", color: COLORS[5]! },
        { name: "wakeups", color: COLORS[6]! },
      ],
      (v) => v.toFixed(v >= 10 ? 0 : 2),
      (s) => [s.io.polls_per_event, s.io.wakeups_per_event],
    );
  }

  private snapshot(s: Snapshot): void {
    if (s.shards.length !== this.shards) this.build(s.shards.length);
    for (const c of this.charts) {
      if (this.gap) c.chart.push(c.values(s).map(() => null));
      c.chart.push(c.values(s));
    }
    this.gap = false;
  }

  /** Redraws (after the page was hidden: a hidden canvas has no size). */
  show(): void {
    for (const c of this.charts) c.chart.draw();
  }
}
