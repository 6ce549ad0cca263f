// Small line charts on a canvas, drawn by hand: a rolling window of
// samples per series, a y axis from 0 to a rounded maximum.

export interface Series {
  name: string;
  color: string;
}

/** Samples kept per series: a minute at one every 500 ms. */
export const SAMPLES_MAX = 120;

export class LineChart {
  private readonly data: (number | null)[][];
  private readonly canvas: HTMLCanvasElement;
  private readonly now: HTMLElement;

  constructor(
    parent: HTMLElement,
    readonly id: string,
    title: string,
    private readonly series: Series[],
    private readonly format: (v: number) => string,
  ) {
    this.data = series.map(() => []);
    const card = el("div", "card");
    card.dataset.chart = id;
    const h = el("h3");
    h.append(text(title));
    this.now = el("span", "now");
    this.now.dataset.figure = id;
    this.now.textContent = "–";
    h.append(this.now);
    card.append(h);
    const legend = el("div", "legend");
    for (const s of series) {
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = s.color;
      item.append(swatch, text(s.name));
      legend.append(item);
    }
    card.append(legend);
    this.canvas = document.createElement("canvas");
    card.append(this.canvas);
    parent.append(card);
  }

  /** One sample per series (null: no value in this interval). */
  push(values: (number | null)[]): void {
    values.forEach((v, i) => {
      const d = this.data[i];
      if (d === undefined) return;
      d.push(v !== null && Number.isFinite(v) ? v : null);
      if (d.length > SAMPLES_MAX) d.shift();
    });
    this.now.textContent = values.map((v) => (v === null || !Number.isFinite(v) ? "–" : this.format(v))).join(" / ");
    this.draw();
  }

  draw(): void {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (w === 0 || h === 0) return;
    if (c.width !== Math.round(w * ratio) || c.height !== Math.round(h * ratio)) {
      c.width = Math.round(w * ratio);
      c.height = Math.round(h * ratio);
    }
    const g = c.getContext("2d");
    if (g === null) return;
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    let max = 0;
    for (const d of this.data) for (const v of d) if (v !== null && v > max) max = v;
    const top = niceCeiling(max);
    const left = 44;
    const plotW = w - left - 4;
    const plotH = h - 16;
    g.font = "10px system-ui, sans-serif";
    g.fillStyle = "#8a97a6";
    g.strokeStyle = "#2a3440";
    g.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = 4 + (plotH * i) / 2;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(w - 4, y);
      g.stroke();
      g.fillText(this.format((top * (2 - i)) / 2), 2, y + 3);
    }
    g.fillText("−60 s", left, h - 2);
    g.fillText("now", w - 24, h - 2);
    this.series.forEach((s, i) => {
      const d = this.data[i] ?? [];
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      let pen = false;
      d.forEach((v, j) => {
        const x = left + (plotW * (SAMPLES_MAX - d.length + j)) / (SAMPLES_MAX - 1);
        if (v === null) {
          pen = false;
          return;
        }
        const y = 4 + plotH - (top > 0 ? (plotH * v) / top : 0);
        if (pen) g.lineTo(x, y);
        else g.moveTo(x, y);
        pen = true;
      });
      g.stroke();
    });
  }
}

/** 1, 2 or 5 times a power of ten, at or above `v` (1 for 0). */
export function niceCeiling(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (className !== undefined) e.className = className;
  return e;
}

export function text(s: string): Text {
  return document.createTextNode(s);
}

/** 1234567 -> "1.23M", 0.5 -> "0.5". */
export function short(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  if (a === 0) return "0";
  return v.toFixed(2);
}

/** Microseconds, in the unit that reads best. */
export function micros(us: number): string {
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  if (us >= 1e3) return `${(us / 1e3).toFixed(us >= 1e4 ? 0 : 1)} ms`;
  return `${us.toFixed(us >= 10 || us === 0 ? 0 : 1)} µs`;
}
