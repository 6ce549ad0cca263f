// Built by dashboard/build.mjs from dashboard/src and sdk/typescript/src: do not edit.
"use strict";
(() => {
  // src/http.ts
  var TOKEN_KEY = "trove.token";
  function token() {
    const params = new URLSearchParams(location.search);
    const given = params.get("token");
    if (given !== null) {
      sessionStorage.setItem(TOKEN_KEY, given);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }
  function headers() {
    const t = token();
    return t === null ? {} : { Authorization: `Bearer ${t}` };
  }
  var ANSWER_CHARS_MAX = 4 << 20;
  async function getJson(path, signal) {
    const r = await fetch(path, { headers: headers(), signal, cache: "no-store" });
    const text2 = await r.text();
    let body = null;
    if (text2.length <= ANSWER_CHARS_MAX) {
      try {
        body = JSON.parse(text2);
      } catch {
        body = null;
      }
    }
    if (r.ok) return { ok: true, body };
    const b = body ?? {};
    return {
      ok: false,
      status: r.status,
      code: typeof b.error === "string" ? b.error : `http_${r.status}`,
      message: typeof b.message === "string" ? b.message : r.statusText
    };
  }

  // src/feed.ts
  var EVENT_CHARS_MAX = 4 << 20;
  var BACKOFF_INITIAL_MS = 250;
  var BACKOFF_MAX_MS = 4e3;
  var Feed = class {
    constructor(path = "/live") {
      this.path = path;
      void this.run();
    }
    path;
    listeners = /* @__PURE__ */ new Set();
    stateListeners = /* @__PURE__ */ new Set();
    state = { kind: "connecting" };
    last = null;
    onSnapshot(f) {
      this.listeners.add(f);
      if (this.last !== null) f(this.last);
      return () => this.listeners.delete(f);
    }
    onState(f) {
      this.stateListeners.add(f);
      f(this.state);
      return () => this.stateListeners.delete(f);
    }
    setState(s) {
      this.state = s;
      for (const f of this.stateListeners) f(s);
    }
    async run() {
      let backoff = BACKOFF_INITIAL_MS;
      let downSince = null;
      for (; ; ) {
        let why = "the stream ended";
        try {
          const r = await fetch(this.path, { headers: { ...headers(), Accept: "text/event-stream" }, cache: "no-store" });
          if (!r.ok || r.body === null) {
            why = `the server answered ${r.status}`;
          } else {
            let first = true;
            for await (const data of events(r.body)) {
              let snap;
              try {
                snap = JSON.parse(data);
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
  };
  async function* events(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (; ; ) {
        const { done, value } = await reader.read();
        if (done) return;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (data !== "") yield data;
        }
        if (buf.length > EVENT_CHARS_MAX) throw new Error("a server-sent event past 4 MiB");
      }
    } finally {
      reader.cancel().catch(() => {
      });
    }
  }

  // src/chart.ts
  var SAMPLES_MAX = 120;
  var LineChart = class {
    constructor(parent, id, title, series, format) {
      this.id = id;
      this.series = series;
      this.format = format;
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
    id;
    series;
    format;
    data;
    canvas;
    now;
    /** One sample per series (null: no value in this interval). */
    push(values) {
      values.forEach((v, i) => {
        const d = this.data[i];
        if (d === void 0) return;
        d.push(v !== null && Number.isFinite(v) ? v : null);
        if (d.length > SAMPLES_MAX) d.shift();
      });
      this.now.textContent = values.map((v) => v === null || !Number.isFinite(v) ? "–" : this.format(v)).join(" / ");
      this.draw();
    }
    draw() {
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
        const y = 4 + plotH * i / 2;
        g.beginPath();
        g.moveTo(left, y);
        g.lineTo(w - 4, y);
        g.stroke();
        g.fillText(this.format(top * (2 - i) / 2), 2, y + 3);
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
          const x = left + plotW * (SAMPLES_MAX - d.length + j) / (SAMPLES_MAX - 1);
          if (v === null) {
            pen = false;
            return;
          }
          const y = 4 + plotH - (top > 0 ? plotH * v / top : 0);
          if (pen) g.lineTo(x, y);
          else g.moveTo(x, y);
          pen = true;
        });
        g.stroke();
      });
    }
  };
  function niceCeiling(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function el(tag, className) {
    const e = document.createElement(tag);
    if (className !== void 0) e.className = className;
    return e;
  }
  function text(s) {
    return document.createTextNode(s);
  }
  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return `${(v / 1e9).toFixed(2)}G`;
    if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(1);
    if (a === 0) return "0";
    return v.toFixed(2);
  }
  function micros(us) {
    if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
    if (us >= 1e3) return `${(us / 1e3).toFixed(us >= 1e4 ? 0 : 1)} ms`;
    return `${us.toFixed(us >= 10 || us === 0 ? 0 : 1)} µs`;
  }

  // src/engine.ts
  var COLORS = ["#2f81f7", "#3fb950", "#d29922", "#a371f7", "#f85149", "#39c5cf", "#db61a2", "#8a97a6"];
  var SHARD_LINES_MAX = 8;
  var EnginePage = class {
    root;
    charts = [];
    grid;
    shards = -1;
    gap = false;
    constructor(feed2) {
      this.root = el("section");
      this.root.dataset.page = "engine";
      const h = el("h2");
      h.textContent = "Engine";
      this.grid = el("div", "grid");
      this.root.append(h, this.grid);
      feed2.onSnapshot((s) => this.snapshot(s));
      feed2.onState((s) => {
        if (s.kind === "disconnected") this.gap = true;
      });
    }
    build(shards) {
      this.grid.replaceChildren();
      this.shards = shards;
      const lines = Math.min(shards, SHARD_LINES_MAX);
      const shardSeries = Array.from({ length: lines }, (_, i) => ({
        name: i + 1 === lines && shards > lines ? `shards ${i}-${shards - 1}` : `shard ${i}`,
        color: COLORS[i % COLORS.length]
      }));
      const perShard = (s, f, mean) => shardSeries.map((_, i) => {
        const group = i + 1 === lines ? s.shards.slice(i) : s.shards.slice(i, i + 1);
        if (group.length === 0) return null;
        const sum = group.reduce((a, x) => a + f(x), 0);
        return mean ? sum / group.length : sum;
      });
      const add = (id, title, series, format, values) => {
        this.charts.push({ chart: new LineChart(this.grid, id, title, series, format), values });
      };
      this.charts = [];
      add(
        "events",
        "Events/s in / acknowledged",
        [
          { name: "in", color: COLORS[0] },
          { name: "acknowledged", color: COLORS[1] }
        ],
        short,
        (s) => [s.events_in_per_s, s.events_acknowledged_per_s]
      );
      add(
        "ack_latency",
        "To acknowledgement p50 / p99",
        [
          { name: "p50", color: COLORS[1] },
          { name: "p99", color: COLORS[4] }
        ],
        micros,
        (s) => [s.ack_latency_us?.p50 ?? null, s.ack_latency_us?.p99 ?? null]
      );
      add("queues", "Queue depth (events waiting)", shardSeries, short, (s) => perShard(s, (x) => x.queue_events, false));
      add("busy", "Shard busy", shardSeries, (v) => `${(v * 100).toFixed(0)}%`, (s) => perShard(s, (x) => x.busy_ratio, true));
      add(
        "journal_sync",
        "Journal sync p50 / p99",
        [
          { name: "p50", color: COLORS[2] },
          { name: "p99", color: COLORS[4] }
        ],
        micros,
        (s) => [s.journal_sync_us?.p50 ?? null, s.journal_sync_us?.p99 ?? null]
      );
      add(
        "io",
        "I/O runtime per event: polls / wakeups",
        [
          { name: "polls", color: COLORS[5] },
          { name: "wakeups", color: COLORS[6] }
        ],
        (v) => v.toFixed(v >= 10 ? 0 : 2),
        (s) => [s.io.polls_per_event, s.io.wakeups_per_event]
      );
    }
    snapshot(s) {
      if (s.shards.length !== this.shards) this.build(s.shards.length);
      for (const c of this.charts) {
        if (this.gap) c.chart.push(c.values(s).map(() => null));
        c.chart.push(c.values(s));
      }
      this.gap = false;
    }
    /** Redraws (after the page was hidden: a hidden canvas has no size). */
    show() {
      for (const c of this.charts) c.chart.draw();
    }
  };

  // ../sdk/typescript/src/errors.ts
  var ERROR_CODES = {
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
    forbidden: 20
  };
  var NOT_CLOSING = /* @__PURE__ */ new Set(["bad_batch", "bad_sequence", "sequence_reused", "too_many_subscriptions"]);
  var RETRYABLE = /* @__PURE__ */ new Set([
    "handshake_timeout",
    "idle_timeout",
    "too_many_connections",
    "shutting_down",
    "internal",
    "producer_in_use",
    "unavailable"
  ]);
  var TroveError = class extends Error {
    /** Whether the producer or subscriber stopped for good. */
    fatal = false;
  };
  var ServerError = class extends TroveError {
    constructor(code, serverMessage) {
      super(`${code}: ${serverMessage}`);
      this.code = code;
      this.serverMessage = serverMessage;
    }
    code;
    serverMessage;
    name = "ServerError";
    /** Whether this SDK knows the code. */
    get known() {
      return Object.prototype.hasOwnProperty.call(ERROR_CODES, this.code);
    }
    /** Whether the server closes the connection after it (unknown codes do). */
    get closes() {
      return !NOT_CLOSING.has(this.code);
    }
    /** Whether reconnecting to the same server may succeed. */
    get retryable() {
      return RETRYABLE.has(this.code);
    }
  };
  var ProtocolError = class extends TroveError {
    name = "ProtocolError";
  };
  var ConnectionError = class extends TroveError {
    name = "ConnectionError";
  };
  var TimeoutError = class extends TroveError {
    constructor(during) {
      super(`${during}: timed out`);
      this.during = during;
    }
    during;
    name = "TimeoutError";
  };
  var ReconnectFailedError = class extends TroveError {
    constructor(attempts, last) {
      super(`gave up reconnecting after ${attempts} attempts; last error: ${last.message}`);
      this.attempts = attempts;
      this.last = last;
      this.fatal = true;
    }
    attempts;
    last;
    name = "ReconnectFailedError";
  };
  var ConfigError = class extends TroveError {
    name = "ConfigError";
  };
  var ClosedError = class extends TroveError {
    constructor(cause_) {
      super(cause_ ? `closed: ${cause_.message}` : "closed");
      this.cause_ = cause_;
      this.fatal = true;
    }
    cause_;
    name = "ClosedError";
  };
  var CallbackError = class extends TroveError {
    constructor(thrown) {
      super(`a callback threw: ${thrown instanceof Error ? thrown.message : String(thrown)}`);
      this.thrown = thrown;
    }
    thrown;
    name = "CallbackError";
  };
  function fatal(e) {
    e.fatal = true;
    return e;
  }

  // ../sdk/typescript/src/json.ts
  var JSON_DEPTH_MAX = 64;
  var MAYBE_UNSAFE = /\d{17}|9\d{15}/;
  var NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  var U64_MAX = (1n << 64n) - 1n;
  function parseJson(text2) {
    try {
      if (!MAYBE_UNSAFE.test(text2)) return JSON.parse(text2);
      const p = new Parser(text2);
      const v = p.value(0);
      p.ws();
      if (p.i !== text2.length) p.fail("trailing characters");
      return v;
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      throw new ProtocolError(`not JSON: ${e.message}`);
    }
  }
  var Parser = class {
    constructor(s) {
      this.s = s;
    }
    s;
    i = 0;
    fail(why) {
      throw new ProtocolError(`not JSON: ${why} at ${this.i}`);
    }
    ws() {
      const s = this.s;
      while (this.i < s.length) {
        const c = s.charCodeAt(this.i);
        if (c === 32 || c === 10 || c === 13 || c === 9) this.i++;
        else break;
      }
    }
    value(depth) {
      if (depth > JSON_DEPTH_MAX) this.fail("nested too deep");
      this.ws();
      const s = this.s;
      const c = s[this.i];
      if (c === "{") {
        this.i++;
        const o = {};
        this.ws();
        if (s[this.i] === "}") {
          this.i++;
          return o;
        }
        for (; ; ) {
          this.ws();
          if (s[this.i] !== '"') this.fail("expected a key");
          const k = this.string();
          this.ws();
          if (s[this.i] !== ":") this.fail("expected ':'");
          this.i++;
          Object.defineProperty(o, k, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
          this.ws();
          if (s[this.i] === ",") {
            this.i++;
            continue;
          }
          if (s[this.i] === "}") {
            this.i++;
            return o;
          }
          this.fail("expected ',' or '}'");
        }
      }
      if (c === "[") {
        this.i++;
        const a = [];
        this.ws();
        if (s[this.i] === "]") {
          this.i++;
          return a;
        }
        for (; ; ) {
          a.push(this.value(depth + 1));
          this.ws();
          if (s[this.i] === ",") {
            this.i++;
            continue;
          }
          if (s[this.i] === "]") {
            this.i++;
            return a;
          }
          this.fail("expected ',' or ']'");
        }
      }
      if (c === '"') return this.string();
      for (const [word, v] of [
        ["true", true],
        ["false", false],
        ["null", null]
      ]) {
        if (s.startsWith(word, this.i)) {
          this.i += word.length;
          return v;
        }
      }
      NUMBER.lastIndex = this.i;
      const m = NUMBER.exec(s);
      if (m === null) this.fail("unexpected character");
      this.i += m[0].length;
      if (m[1] === void 0 && m[2] === void 0) {
        const n = Number(m[0]);
        return Number.isSafeInteger(n) ? n : BigInt(m[0]);
      }
      return Number(m[0]);
    }
    string() {
      const s = this.s;
      const start = this.i;
      let j = start + 1;
      for (; ; ) {
        const k = s.indexOf('"', j);
        if (k < 0) this.fail("unterminated string");
        let backslashes = 0;
        for (let b = k - 1; b > start && s[b] === "\\"; b--) backslashes++;
        if (backslashes % 2 === 0) {
          this.i = k + 1;
          return JSON.parse(s.slice(start, k + 1));
        }
        j = k + 1;
      }
    }
  };
  function isObject(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v);
  }
  function u64(o, field, what) {
    const v = o[field];
    if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
    if (typeof v === "bigint" && v >= 0n && v <= U64_MAX) return v;
    throw new ProtocolError(`${what}: \`${field}\` must be an integer in 0..=2^64-1, got ${describe(v)}`);
  }
  function uint(o, field, bits, what) {
    const v = o[field];
    if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** bits) return v;
    throw new ProtocolError(`${what}: \`${field}\` must be an integer in 0..=${2 ** bits - 1}, got ${describe(v)}`);
  }
  function int16(o, field, what) {
    const v = o[field];
    if (typeof v === "number" && Number.isInteger(v) && v >= -32768 && v <= 32767) return v;
    throw new ProtocolError(`${what}: \`${field}\` must be an integer in -32768..=32767, got ${describe(v)}`);
  }
  function str(o, field, what) {
    const v = o[field];
    if (typeof v === "string") return v;
    throw new ProtocolError(`${what}: \`${field}\` must be a string, got ${describe(v)}`);
  }
  function arr(o, field, what) {
    const v = o[field];
    if (Array.isArray(v)) return v;
    throw new ProtocolError(`${what}: \`${field}\` must be an array, got ${describe(v)}`);
  }
  function obj(v, what) {
    if (isObject(v)) return v;
    throw new ProtocolError(`${what} must be an object, got ${describe(v)}`);
  }
  function describe(v) {
    if (v === void 0) return "nothing";
    if (typeof v === "bigint") return v.toString();
    const text2 = typeof v === "string" ? JSON.stringify(v) : Array.isArray(v) ? "an array" : v === null ? "null" : typeof v === "object" ? "an object" : String(v);
    return text2.length > 64 ? `${text2.slice(0, 61)}...` : text2;
  }

  // ../sdk/typescript/src/game.ts
  var REJECT_REASONS = [
    "unknown_hunt",
    "not_joined",
    "already_joined",
    "on_cooldown",
    "step_too_large",
    "hunt_exists",
    "invalid_config",
    "too_many_hunts",
    "player_out_of_range",
    "invalid_event",
    "duplicate"
  ];
  var TOP_MAX = 10;
  var BANDS = /* @__PURE__ */ new Set(["hot", "warm", "cold"]);
  var REASONS = new Set(REJECT_REASONS);
  function decodeOutcome(v, what = "outcome") {
    const o = obj(v, what);
    const kind = str(o, "outcome", what);
    let fields;
    switch (kind) {
      case "created":
      case "deleted":
        uint(o, "round", 32, what);
        fields = 2;
        break;
      case "joined":
        uint(o, "x", 16, what);
        uint(o, "y", 16, what);
        uint(o, "score", 32, what);
        fields = 4;
        break;
      case "left":
      case "dig_nothing":
        fields = 1;
        break;
      case "moved":
        uint(o, "x", 16, what);
        uint(o, "y", 16, what);
        fields = 3;
        break;
      case "dig_found":
        uint(o, "value", 16, what);
        uint(o, "score", 32, what);
        fields = 3;
        break;
      case "hint": {
        const band = str(o, "band", what);
        if (!BANDS.has(band)) throw new ProtocolError(`${what}: unknown band ${JSON.stringify(band).slice(0, 64)}`);
        fields = 2;
        break;
      }
      case "rejected": {
        const reason = str(o, "reason", what);
        if (!REASONS.has(reason)) throw new ProtocolError(`${what}: unknown rejection ${JSON.stringify(reason).slice(0, 64)}`);
        fields = 2;
        break;
      }
      default:
        throw new ProtocolError(`${what}: unknown outcome ${JSON.stringify(kind).slice(0, 64)}`);
    }
    if (Object.keys(o).length === fields) return o;
    return copyOutcome(o);
  }
  function copyOutcome(o) {
    const out = { outcome: o["outcome"] };
    for (const k of ["round", "x", "y", "score", "value", "band", "reason"]) if (k in o) out[k] = o[k];
    return out;
  }
  function decodeEvent(v, what = "event") {
    const o = obj(v, what);
    const hunt2 = uint(o, "hunt", 32, what);
    const action = str(o, "action", what);
    switch (action) {
      case "create": {
        const c = obj(o["config"], `${what}.config`);
        const w = `${what}.config`;
        return {
          hunt: hunt2,
          action,
          config: {
            width: uint(c, "width", 16, w),
            height: uint(c, "height", 16, w),
            seed: uint(c, "seed", 32, w),
            treasures_per_round: uint(c, "treasures_per_round", 32, w),
            value_min: uint(c, "value_min", 16, w),
            value_max: uint(c, "value_max", 16, w),
            dig_cooldown_ms: uint(c, "dig_cooldown_ms", 16, w),
            step_max: uint(c, "step_max", 8, w),
            players_max: uint(c, "players_max", 32, w)
          }
        };
      }
      case "join":
      case "leave":
      case "dig":
      case "scan":
      case "invalid":
        return { hunt: hunt2, player: uint(o, "player", 32, what), action };
      case "delete":
        return { hunt: hunt2, action };
      case "move":
        return { hunt: hunt2, player: uint(o, "player", 32, what), action, dx: int16(o, "dx", what), dy: int16(o, "dy", what) };
      default:
        throw new ProtocolError(`${what}: unknown action ${JSON.stringify(action).slice(0, 64)}`);
    }
  }
  function decodeTop(o, what) {
    const top = arr(o, "top", what);
    if (top.length > TOP_MAX) throw new ProtocolError(`${what}: \`top\` has ${top.length} lines, more than ${TOP_MAX}`);
    return top.map((l, i) => {
      const line = obj(l, `${what}.top[${i}]`);
      return { player: uint(line, "player", 32, `${what}.top[${i}]`), score: uint(line, "score", 32, `${what}.top[${i}]`) };
    });
  }
  function decodeBroadcast(v, what = "broadcast") {
    const o = obj(v, what);
    const kind = str(o, "broadcast", what);
    switch (kind) {
      case "treasure_found":
        return {
          broadcast: kind,
          round: uint(o, "round", 32, what),
          player: uint(o, "player", 32, what),
          x: uint(o, "x", 16, what),
          y: uint(o, "y", 16, what),
          value: uint(o, "value", 16, what),
          score: uint(o, "score", 32, what),
          treasures_left: uint(o, "treasures_left", 32, what)
        };
      case "leaderboard_changed":
      case "round_finished":
      case "hunt_deleted":
        return { broadcast: kind, round: uint(o, "round", 32, what), top: decodeTop(o, what) };
      default:
        throw new ProtocolError(`${what}: unknown broadcast ${JSON.stringify(kind).slice(0, 64)}`);
    }
  }

  // ../sdk/typescript/src/link.ts
  var wsClass;
  function webSocketClass() {
    const global = globalThis.WebSocket;
    if (global !== void 0) return Promise.resolve({ ctor: global, isWs: false });
    if (wsClass === void 0) {
      const name = "ws";
      wsClass = import(
        /* @vite-ignore */
        /* webpackIgnore: true */
        name
      ).then(
        (m) => {
          const ctor = m.WebSocket ?? m.default;
          if (ctor === void 0) throw new ConnectionError("the `ws` package has no WebSocket class");
          return { ctor, isWs: true };
        },
        (e) => {
          wsClass = void 0;
          throw new ConnectionError(
            `no global WebSocket and the \`ws\` package could not be loaded (npm install ws): ${e.message}`
          );
        }
      );
    }
    return wsClass;
  }
  var Link = class _Link {
    constructor(ws, messageBytesMax) {
      this.ws = ws;
      this.messageBytesMax = messageBytesMax;
    }
    ws;
    messageBytesMax;
    onMessage = () => {
    };
    /** Binary messages, if the owner asked for them (compressed updates); unset, one ends the link. */
    onBinary = void 0;
    onClose = () => {
    };
    closed = false;
    /** The first error that ended the link (what `onClose` gets). */
    why;
    paused = false;
    static async open(url, o) {
      if (!/^wss?:\/\//i.test(url)) throw new ConnectionError(`url must start with ws:// or wss://, got ${url.slice(0, 100)}`);
      const { ctor, isWs } = await webSocketClass();
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = isWs ? new ctor(url, { ...o.nodeWebSocketOptions, maxPayload: o.messageBytesMax, perMessageDeflate: false }) : new ctor(url);
        } catch (e) {
          reject(new ConnectionError(`connecting to ${url}: ${e.message}`));
          return;
        }
        ws.binaryType = "arraybuffer";
        const link = new _Link(ws, o.messageBytesMax);
        let settled = false;
        const timer = setTimeout(() => {
          if (settled) return;
          settled = true;
          ws.onopen = ws.onclose = ws.onmessage = null;
          ws.onerror = () => {
          };
          try {
            ws.close();
          } catch {
          }
          reject(new TimeoutError(`connecting to ${url}`));
        }, o.connectTimeoutMs);
        ws.onopen = () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          link.attach();
          resolve(link);
        };
        ws.onerror = (ev) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          reject(new ConnectionError(`connecting to ${url}: ${errorText(ev)}`));
        };
        ws.onclose = (ev) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          reject(new ConnectionError(`connecting to ${url}: closed (${ev.code} ${ev.reason})`));
        };
      });
    }
    attach() {
      this.ws.onmessage = (ev) => {
        if (this.closed) return;
        const data = ev.data;
        if (typeof data !== "string") {
          const onBinary = this.onBinary;
          if (onBinary === void 0 || !(data instanceof ArrayBuffer)) {
            this.fail(new ProtocolError("the server sent a binary message"));
            return;
          }
          if (data.byteLength > this.messageBytesMax) {
            this.fail(new ProtocolError(`the server sent a message of ${data.byteLength} bytes, above messageBytesMax ${this.messageBytesMax}`));
            return;
          }
          this.handle(() => onBinary(new Uint8Array(data)));
          return;
        }
        if (data.length > this.messageBytesMax) {
          this.fail(new ProtocolError(`the server sent a message of ${data.length} characters, above messageBytesMax ${this.messageBytesMax}`));
          return;
        }
        this.handle(() => this.onMessage(data));
      };
      this.ws.onerror = (ev) => {
        this.fail(new ConnectionError(`connection error: ${errorText(ev)}`));
      };
      this.ws.onclose = (ev) => {
        this.finish(this.why ?? new ConnectionError(`the server closed the connection (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`));
      };
    }
    /**
     * Runs the owner's handler. The owner turns what it cannot read into a
     * typed error; anything else still ends the link, never escapes as an
     * uncaught exception.
     */
    handle(run) {
      try {
        run();
      } catch (e) {
        this.fail(e instanceof Error && "fatal" in e ? e : new ProtocolError(`handling a message: ${String(e)}`));
      }
    }
    get isOpen() {
      return !this.closed;
    }
    get bufferedAmount() {
      return this.ws.bufferedAmount;
    }
    send(text2) {
      if (this.closed) return;
      try {
        this.ws.send(text2);
      } catch (e) {
        this.fail(new ConnectionError(`send: ${e.message}`));
      }
    }
    /** Whether reading can be paused (Node with `ws`); a browser cannot. */
    get canPause() {
      return typeof this.ws.pause === "function";
    }
    pause() {
      if (!this.paused && this.ws.pause) {
        this.paused = true;
        this.ws.pause();
      }
    }
    resume() {
      if (this.paused && this.ws.resume) {
        this.paused = false;
        this.ws.resume();
      }
    }
    /** Ends the link with `why` (reported once through `onClose`). */
    fail(why) {
      if (this.why === void 0) this.why = why;
      this.close(1e3);
    }
    close(code = 1e3, reason = "") {
      if (this.closed) return;
      try {
        this.resume();
        this.ws.close(code, reason);
      } catch {
      }
      this.finish(this.why ?? new ConnectionError("closed by the client"));
    }
    finish(why) {
      if (this.closed) return;
      this.closed = true;
      this.ws.onmessage = null;
      this.onClose(why);
    }
  };
  function errorText(ev) {
    const e = ev;
    const m = e?.message ?? e?.error?.message;
    return typeof m === "string" && m !== "" ? m : "the WebSocket failed";
  }

  // ../sdk/typescript/src/options.ts
  var TIMER_MS_MAX = 36e5;
  function checkMs(v, field, min) {
    if (!Number.isFinite(v) || v < min || v > TIMER_MS_MAX) {
      throw new ConfigError(`option \`${field}\` must be a number of milliseconds in ${min}..=${TIMER_MS_MAX}, got ${String(v)}`);
    }
    return v;
  }
  function checkCount(v, field, min, max) {
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new ConfigError(`option \`${field}\` must be an integer in ${min}..=${max}, got ${String(v)}`);
    }
    return v;
  }
  function resolveConnection(o) {
    if (typeof o !== "object" || o === null) throw new ConfigError("options must be an object");
    if (typeof o.url !== "string" || !/^wss?:\/\//i.test(o.url)) {
      throw new ConfigError(`option \`url\` must start with ws:// or wss://, got ${String(o.url).slice(0, 100)}`);
    }
    if (o.token !== void 0 && typeof o.token !== "string") throw new ConfigError("option `token` must be a string");
    const r = {
      url: o.url,
      token: o.token,
      connectTimeoutMs: checkMs(o.connectTimeoutMs ?? 5e3, "connectTimeoutMs", 1),
      pingIntervalMs: checkMs(o.pingIntervalMs ?? 2e4, "pingIntervalMs", 1),
      reconnectBackoffInitialMs: checkMs(o.reconnectBackoffInitialMs ?? 50, "reconnectBackoffInitialMs", 0),
      reconnectBackoffMaxMs: checkMs(o.reconnectBackoffMaxMs ?? 2e3, "reconnectBackoffMaxMs", 0),
      reconnectAttemptsMax: o.reconnectAttemptsMax === null ? null : checkCount(o.reconnectAttemptsMax ?? 20, "reconnectAttemptsMax", 0, 1e6),
      messageBytesMax: checkCount(o.messageBytesMax ?? 16 << 20, "messageBytesMax", 1024, 1 << 30),
      nodeWebSocketOptions: o.nodeWebSocketOptions ?? {}
    };
    if (r.reconnectBackoffMaxMs < r.reconnectBackoffInitialMs) {
      throw new ConfigError("option `reconnectBackoffMaxMs` is below `reconnectBackoffInitialMs`");
    }
    return r;
  }
  var Backoff = class {
    constructor(o) {
      this.o = o;
      this.delay = o.reconnectBackoffInitialMs;
    }
    o;
    failures = 0;
    delay;
    /** Something was answered: the next loss starts afresh. */
    reset() {
      this.failures = 0;
      this.delay = this.o.reconnectBackoffInitialMs;
    }
    /** Counts a failure; the wait before the next attempt, or `null` to give up. */
    fail() {
      this.failures++;
      if (this.o.reconnectAttemptsMax !== null && this.failures > this.o.reconnectAttemptsMax) return null;
      const d = this.delay;
      this.delay = Math.min(this.o.reconnectBackoffMaxMs, Math.max(1, this.delay * 2));
      return d;
    }
  };
  function helloText(producerId, outcomes, token2, deflate = false) {
    let t = `{"type":"hello","outcomes":${outcomes}`;
    if (producerId !== void 0) t += `,"producer_id":${producerId.toString()}`;
    if (token2 !== void 0) t += `,"token":${JSON.stringify(token2)}`;
    if (deflate) t += `,"compression":"deflate"`;
    return `${t}}`;
  }
  function unref(t) {
    t.unref?.();
  }

  // ../sdk/typescript/src/producer.ts
  var ASSIGNED_PRODUCER_IDS = 1n << 63n;
  var U64_MAX2 = (1n << 64n) - 1n;

  // ../sdk/typescript/src/inflate.ts
  function canInflate() {
    const ctor = globalThis.DecompressionStream;
    if (typeof ctor !== "function") return false;
    try {
      new ctor("deflate-raw");
      return true;
    } catch {
      return false;
    }
  }
  async function inflateRawText(packed, bytesMax) {
    const ctor = globalThis.DecompressionStream;
    if (ctor === void 0) throw new ProtocolError("a compressed update, and no DecompressionStream to inflate it");
    const ds = new ctor("deflate-raw");
    const writer = ds.writable.getWriter();
    writer.write(packed).catch(() => {
    });
    writer.close().catch(() => {
    });
    const reader = ds.readable.getReader();
    const parts = [];
    let total = 0;
    try {
      for (; ; ) {
        const { done, value } = await reader.read();
        if (done) break;
        total += value.byteLength;
        if (total > bytesMax) {
          void reader.cancel().catch(() => {
          });
          throw new ProtocolError(`a compressed update inflates past messageBytesMax ${bytesMax}`);
        }
        parts.push(value);
      }
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      throw new ProtocolError(`a compressed update that does not inflate: ${e.message}`);
    }
    const whole = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      whole.set(p, at);
      at += p.byteLength;
    }
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(whole);
    } catch {
      throw new ProtocolError("a compressed update that is not UTF-8");
    }
  }

  // ../sdk/typescript/src/subscriber.ts
  var UPDATE_ENTRIES_MAX = 256;
  var INFLATE_WAITING_MAX = 256;
  var Subscriber = class _Subscriber {
    o;
    queueMax;
    onItem;
    broadcastsOnly;
    deflate;
    link;
    /**
     * Messages behind a compressed one still inflating wait here, in order
     * (the message handler's turn comes after the ones before it): the
     * chain's tail, and how many wait on it.
     */
    behind = null;
    waiting = 0;
    /** Whether the current link finished its handshake. */
    ready = false;
    hunts = /* @__PURE__ */ new Map();
    /** Hunts unsubscribed whose `unsubscribed` has not come yet (their updates are dropped). */
    leaving = /* @__PURE__ */ new Map();
    ops = [];
    queue = [];
    /**
     * Per hunt, its `local` gap still in the queue and the last item queued
     * for that hunt: a further drop merges into it, so that a full queue
     * holds at most one local gap per hunt however the hunts' messages
     * interleave.
     */
    localGaps = /* @__PURE__ */ new Map();
    queueHead = 0;
    waiter;
    error;
    closed = false;
    backoff;
    pingTimer;
    retryTimer;
    nonce = 0;
    answeredSinceConnect = false;
    constructor(o) {
      this.o = resolveConnection(o);
      this.queueMax = checkCount(o.queueMax ?? 65536, "queueMax", 1, 1 << 24);
      this.onItem = o.onItem;
      this.broadcastsOnly = o.broadcastsOnly === true;
      if (o.compression !== void 0 && o.compression !== "deflate") {
        throw new ConfigError(`option \`compression\` must be "deflate" or absent, got ${JSON.stringify(o.compression)?.slice(0, 64)}`);
      }
      this.deflate = o.compression === "deflate" && canInflate();
      this.backoff = new Backoff(this.o);
    }
    /** Connects (retrying as the options say); rejects if no connection could be made. */
    static async connect(options) {
      const s = new _Subscriber(options);
      await new Promise((resolve, reject) => {
        s.connectLoop(resolve, reject);
      });
      s.pingTimer = setInterval(() => {
        if (s.ready) s.link?.send(`{"type":"ping","nonce":${s.nonce++}}`);
      }, s.o.pingIntervalMs);
      unref(s.pingTimer);
      return s;
    }
    /** Watches `hunt` (one that does not exist yet too); resolves with the `next_seq` the server gave. */
    subscribe(hunt2) {
      if (!Number.isInteger(hunt2) || hunt2 < 0 || hunt2 > 4294967295) throw new ConfigError(`hunt must be a u32, got ${hunt2}`);
      if (this.error !== void 0) return Promise.reject(this.error);
      if (this.closed) return Promise.reject(new ClosedError());
      let st = this.hunts.get(hunt2);
      if (st === void 0) {
        st = { expected: null, seen: null, waiters: [] };
        this.hunts.set(hunt2, st);
        if (this.ready) this.sendOp({ op: "subscribe", hunt: hunt2 });
      } else if (st.expected !== null) {
        return Promise.resolve(st.expected);
      }
      const s = st;
      return new Promise((resolve, reject) => s.waiters.push({ resolve, reject }));
    }
    /** Stops watching `hunt`; resolves once the server confirmed (at once when disconnected). Nothing of it is yielded after. */
    unsubscribe(hunt2) {
      const st = this.hunts.get(hunt2);
      if (st === void 0) return Promise.resolve();
      this.hunts.delete(hunt2);
      for (const w of st.waiters) w.reject(new ClosedError());
      if (!this.ready) return Promise.resolve();
      this.leaving.set(hunt2, (this.leaving.get(hunt2) ?? 0) + 1);
      return new Promise((resolve) => this.sendOp({ op: "unsubscribe", hunt: hunt2, done: resolve }));
    }
    /** The hunts watched. */
    get watching() {
      return [...this.hunts.keys()];
    }
    /** Whether this subscriber asks for compressed updates (`compression` given, and the platform can inflate them). */
    get compressed() {
      return this.deflate;
    }
    /** Whether a connection is up and past its handshake. */
    get connected() {
      return this.ready;
    }
    /** The next item; `null` once closed. Rejects with the fatal error that stopped the subscriber, after the items before it. */
    next() {
      if (this.queueHead < this.queue.length) {
        const item = this.queue[this.queueHead];
        this.queue[this.queueHead++] = void 0;
        if (item.kind === "gap" && this.localGaps.get(item.hunt) === item) this.localGaps.delete(item.hunt);
        if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
          this.queue.splice(0, this.queueHead);
          this.queueHead = 0;
        }
        if (this.queued() <= this.queueMax / 2) this.link?.resume();
        return Promise.resolve(item);
      }
      if (this.error !== void 0) return Promise.reject(this.error);
      if (this.closed) return Promise.resolve(null);
      if (this.waiter !== void 0) return Promise.reject(new ConfigError("next() called again before the previous one resolved"));
      return new Promise((resolve, reject) => {
        this.waiter = { resolve, reject };
      });
    }
    async *[Symbol.asyncIterator]() {
      for (; ; ) {
        const item = await this.next();
        if (item === null) return;
        yield item;
      }
    }
    /** Closes the connection; `next()` yields what was queued, then `null`. */
    close() {
      if (this.closed) return;
      this.closed = true;
      this.stopTimers();
      for (const st of this.hunts.values()) for (const w of st.waiters) w.reject(new ClosedError());
      this.hunts.clear();
      const link = this.link;
      this.link = void 0;
      this.ready = false;
      link?.close();
      if (this.waiter !== void 0 && this.queued() === 0) {
        const w = this.waiter;
        this.waiter = void 0;
        w.resolve(null);
      }
    }
    // ---- internals ----
    queued() {
      return this.queue.length - this.queueHead;
    }
    stopTimers() {
      if (this.pingTimer !== void 0) clearInterval(this.pingTimer);
      if (this.retryTimer !== void 0) clearTimeout(this.retryTimer);
      this.pingTimer = this.retryTimer = void 0;
    }
    sendOp(op) {
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
    emit(item) {
      if (this.onItem !== void 0) {
        try {
          this.onItem(item);
        } catch (e) {
          this.answeredSinceConnect = false;
          throw new CallbackError(e);
        }
        return;
      }
      if (this.waiter !== void 0) {
        const w = this.waiter;
        this.waiter = void 0;
        w.resolve(item);
        return;
      }
      if ("hunt" in item) this.localGaps.delete(item.hunt);
      this.queue.push(item);
    }
    /** Whether the items of one more message may be queued (else they are dropped, and a local gap says so). */
    room() {
      if (this.onItem !== void 0 || this.queued() < this.queueMax) return true;
      if (this.link?.canPause) {
        this.link.pause();
        return true;
      }
      return false;
    }
    connectLoop(first, firstFailed) {
      if (this.closed) return;
      const attempt = async () => {
        let link;
        try {
          link = await Link.open(this.o.url, this.o);
        } catch (e) {
          this.retry(e, first, firstFailed);
          return;
        }
        if (this.closed) {
          link.close();
          return;
        }
        this.link = link;
        this.answeredSinceConnect = false;
        const handshake = this.o.token !== void 0 || this.deflate;
        let timer;
        link.onClose = (why) => {
          if (timer !== void 0) clearTimeout(timer);
          this.lost(link, why, first, firstFailed);
        };
        const handle = (text2) => {
          this.message(text2);
          if (this.ready && timer !== void 0) {
            clearTimeout(timer);
            timer = void 0;
            first?.();
            first = firstFailed = void 0;
          }
        };
        link.onMessage = (text2) => this.receive(link, text2, handle);
        if (this.deflate) {
          const bytesMax = this.o.messageBytesMax;
          link.onBinary = (packed) => this.receive(link, () => inflateRawText(packed, bytesMax), handle);
        }
        if (handshake) {
          link.send(helloText(void 0, false, this.o.token, this.deflate));
          timer = setTimeout(() => link.fail(new ProtocolError("no welcome within connectTimeoutMs")), this.o.connectTimeoutMs);
        } else {
          this.started();
          first?.();
          first = firstFailed = void 0;
        }
      };
      void attempt();
    }
    /**
     * Hands a message to `handle` in the order it came: at once, unless
     * compressed ones before it are still inflating (`input` a function:
     * inflated in its turn, one at a time).
     */
    receive(link, input, handle) {
      if (this.behind === null && typeof input === "string") {
        handle(input);
        return;
      }
      this.waiting++;
      if (this.waiting > INFLATE_WAITING_MAX) link.pause();
      const mine = (this.behind ?? Promise.resolve()).then(async () => {
        const text2 = typeof input === "string" ? input : await input();
        if (this.link === link && link.isOpen) link.handle(() => handle(text2));
      }).catch((e) => {
        link.fail(e instanceof Error && "fatal" in e ? e : new ProtocolError(`inflating an update: ${String(e)}`));
      }).finally(() => {
        this.waiting--;
        if (this.behind !== mine) return;
        this.behind = null;
        if (this.queued() <= this.queueMax / 2) link.resume();
      });
      this.behind = mine;
    }
    /** The handshake is done: subscribe to every hunt watched. */
    started() {
      this.ready = true;
      for (const hunt2 of this.hunts.keys()) this.sendOp({ op: "subscribe", hunt: hunt2 });
    }
    retry(why, first, firstFailed) {
      if (this.closed) return;
      const fatalError = why.fatal || why instanceof ServerError && why.closes && !why.retryable;
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
    lost(link, why, first, firstFailed) {
      if (this.link !== link) return;
      this.link = void 0;
      const wasReady = this.ready;
      this.ready = false;
      this.ops = [];
      this.leaving.clear();
      if (this.closed) return;
      for (const st of this.hunts.values()) {
        if (st.expected !== null) st.seen = st.expected;
        st.expected = null;
      }
      if (this.answeredSinceConnect) this.backoff.reset();
      if (wasReady && !first) {
        try {
          this.emit({ kind: "disconnected", error: why });
        } catch {
        }
      }
      this.retry(why, first, firstFailed);
    }
    fail(e) {
      if (this.error !== void 0) return;
      this.error = fatal(e);
      this.closed = true;
      this.stopTimers();
      for (const st of this.hunts.values()) for (const w of st.waiters) w.reject(e);
      this.hunts.clear();
      this.link?.close();
      this.link = void 0;
      if (this.onItem !== void 0) {
        try {
          this.onItem({ kind: "disconnected", error: e });
        } catch {
        }
      }
      if (this.waiter !== void 0 && this.queued() === 0) {
        const w = this.waiter;
        this.waiter = void 0;
        w.reject(e);
      }
    }
    message(text2) {
      const m = obj(parseJson(text2), "message");
      const type = str(m, "type", "message");
      switch (type) {
        case "welcome":
          if (this.ready || this.o.token === void 0 && !this.deflate) throw new ProtocolError("welcome that was not asked for");
          uint(m, "version", 16, "welcome");
          this.started();
          return;
        case "subscribed": {
          const hunt2 = uint(m, "hunt", 32, "subscribed");
          const next = u64(m, "next_seq", "subscribed");
          const op = this.ops.shift();
          if (op === void 0 || op.op !== "subscribe" || op.hunt !== hunt2) {
            throw new ProtocolError(`subscribed for hunt ${hunt2} answers no subscribe`);
          }
          this.answered();
          const st = this.hunts.get(hunt2);
          if (st === void 0) return;
          const seen = st.seen;
          st.expected = next;
          const waiters = st.waiters;
          st.waiters = [];
          for (const w of waiters) w.resolve(next);
          if (seen !== null) this.emit({ kind: "gap", hunt: hunt2, firstMissed: seen, missed: null, reason: "reconnect" });
          this.emit({ kind: "subscribed", hunt: hunt2, nextSeq: next });
          return;
        }
        case "unsubscribed": {
          const hunt2 = uint(m, "hunt", 32, "unsubscribed");
          const head = this.ops[0];
          const asked = head !== void 0 && head.op === "unsubscribe" && head.hunt === hunt2 && !("reason" in m);
          if (!asked) {
            const st = this.hunts.get(hunt2);
            if (st === void 0 || st.expected === null) {
              if ("reason" in m || this.leaving.has(hunt2)) return;
              throw new ProtocolError(`unsubscribed for hunt ${hunt2} answers no unsubscribe`);
            }
            this.hunts.delete(hunt2);
            for (const w of st.waiters) w.reject(new ProtocolError(`hunt ${hunt2} ended`));
            this.emit({ kind: "ended", hunt: hunt2, reason: "reason" in m && str(m, "reason", "unsubscribed") === "deleted" ? "deleted" : "revoked" });
            return;
          }
          const op = this.ops.shift();
          const n = (this.leaving.get(hunt2) ?? 1) - 1;
          if (n > 0) this.leaving.set(hunt2, n);
          else this.leaving.delete(hunt2);
          op.done?.();
          return;
        }
        case "update":
          this.update(m);
          return;
        case "gap": {
          const hunt2 = uint(m, "hunt", 32, "gap");
          const firstMissed = u64(m, "first_missed", "gap");
          const missed = u64(m, "missed", "gap");
          const st = this.stream(hunt2, "gap");
          if (st === void 0) return;
          if (firstMissed < st.expected) throw new ProtocolError(`gap for hunt ${hunt2} from ${firstMissed}, below the next expected ${st.expected}`);
          const end = firstMissed + missed;
          this.emit({ kind: "gap", hunt: hunt2, firstMissed: st.expected, missed: end - st.expected, reason: "server" });
          st.expected = st.seen = end;
          return;
        }
        case "pong":
          return;
        case "error": {
          const e = new ServerError(str(m, "code", "error"), str(m, "message", "error"));
          if (e.code === "too_many_subscriptions") {
            const i = this.ops.findIndex((op2) => op2.op === "subscribe");
            const op = i >= 0 ? this.ops.splice(i, 1)[0] : void 0;
            if (op === void 0) throw new ProtocolError("too_many_subscriptions answers no subscribe");
            const st = this.hunts.get(op.hunt);
            this.hunts.delete(op.hunt);
            for (const w of st?.waiters ?? []) w.reject(e);
            return;
          }
          if (!e.closes) throw new ProtocolError(`error ${e.code} answers nothing a subscriber sent`);
          this.link?.fail(e.retryable ? e : fatal(e));
          return;
        }
        default:
          throw new ProtocolError(`unexpected message type ${JSON.stringify(type).slice(0, 64)} for a subscriber`);
      }
    }
    answered() {
      this.answeredSinceConnect = true;
    }
    /** The hunt's stream state if its entries are wanted; undefined if it is being left; an error if never asked for. */
    stream(hunt2, what) {
      const st = this.hunts.get(hunt2);
      if (st !== void 0 && st.expected !== null) return st;
      if (this.leaving.has(hunt2) || this.ops.some((op) => op.hunt === hunt2)) return void 0;
      throw new ProtocolError(`${what} for hunt ${hunt2}, which this connection did not subscribe to`);
    }
    update(m) {
      const hunt2 = uint(m, "hunt", 32, "update");
      const first = u64(m, "first_seq", "update");
      const entries = arr(m, "entries", "update");
      if (entries.length === 0 || entries.length > UPDATE_ENTRIES_MAX) {
        throw new ProtocolError(`update with ${entries.length} entries (1..=${UPDATE_ENTRIES_MAX})`);
      }
      const st = this.stream(hunt2, "update");
      if (st === void 0) return;
      const expected = st.expected;
      if (first < expected) throw new ProtocolError(`update for hunt ${hunt2} from ${first}, below the next expected ${expected}`);
      const items = entries.map((raw, i) => {
        const what = `update.entries[${i}]`;
        const e = obj(raw, what);
        const seq = first + BigInt(i);
        const kind = str(e, "kind", what);
        if (kind === "applied") {
          return {
            kind: "applied",
            hunt: hunt2,
            seq,
            timeUs: u64(e, "time_us", what),
            event: decodeEvent(e["event"], `${what}.event`),
            outcome: decodeOutcome(e["outcome"], `${what}.outcome`)
          };
        }
        if (kind === "broadcast") return { kind: "broadcast", hunt: hunt2, seq, body: decodeBroadcast(e["body"], `${what}.body`) };
        throw new ProtocolError(`${what}: unknown kind ${JSON.stringify(kind).slice(0, 64)}`);
      });
      this.answered();
      const end = first + BigInt(entries.length);
      if (!this.room()) {
        const pending = this.localGaps.get(hunt2);
        if (pending !== void 0 && pending.missed !== null && pending.firstMissed + pending.missed === expected) {
          pending.missed = end - pending.firstMissed;
        } else {
          const item = { kind: "gap", hunt: hunt2, firstMissed: expected, missed: end - expected, reason: "local" };
          this.queue.push(item);
          this.localGaps.set(hunt2, item);
        }
        st.expected = st.seen = end;
        return;
      }
      if (first > expected) this.emit({ kind: "gap", hunt: hunt2, firstMissed: expected, missed: first - expected, reason: "server" });
      st.expected = st.seen = end;
      for (const item of items) this.emit(item);
    }
  };

  // src/hunt.ts
  var PLAYERS_DRAWN_MAX = 2e4;
  var HuntPage = class {
    constructor(id, feed2) {
      this.id = id;
      this.feed = feed2;
      this.root = el("section");
      this.root.dataset.page = "hunt";
      this.root.append(note("Loading the hunt…"));
      void this.start();
    }
    id;
    feed;
    root;
    sub = null;
    closed = false;
    unfeed = null;
    detail = null;
    players = /* @__PURE__ */ new Map();
    claimed = [];
    top = [];
    round = 0;
    treasuresLeft = 0;
    found = 0;
    rate = 0;
    subState = "connecting";
    drawPending = false;
    canvas = document.createElement("canvas");
    facts = el("div", "facts");
    topList = el("ol", "top");
    close() {
      this.closed = true;
      this.sub?.close();
      this.unfeed?.();
    }
    async start() {
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
      this.detail = answer.body;
      this.round = this.detail.round;
      this.treasuresLeft = this.detail.treasures_left;
      this.top = this.detail.leaderboard ?? [];
      this.layout();
      this.unfeed = this.feed.onSnapshot((s) => {
        const me = s.hunts.find((h) => String(h.id) === this.id);
        if (me !== void 0) this.rate = me.events_per_s;
        this.schedule();
      });
      const status = await getJson("/status").catch(() => null);
      const ws = status !== null && status.ok ? status.body.ws_addr : null;
      if (typeof ws !== "string") {
        this.subState = "off: the server's WebSocket endpoint is disabled";
        this.schedule();
        return;
      }
      await this.subscribe(wsUrl(ws));
    }
    async subscribe(url) {
      const token2 = sessionStorage.getItem("trove.token") ?? void 0;
      try {
        this.sub = await Subscriber.connect({ url, token: token2, compression: "deflate", reconnectAttemptsMax: null, onItem: (i) => this.item(i) });
      } catch (e) {
        this.subState = `failed: ${e instanceof Error ? e.message : String(e)}`;
        this.schedule();
        return;
      }
      if (this.closed) {
        this.sub.close();
        return;
      }
      await this.sub.subscribe(Number(this.id)).catch((e) => {
        this.subState = `failed: ${e instanceof Error ? e.message : String(e)}`;
      });
      this.schedule();
    }
    item(i) {
      switch (i.kind) {
        case "subscribed":
          this.subState = "live";
          break;
        case "disconnected":
          this.subState = "disconnected: reconnecting";
          break;
        case "ended":
          this.subState = i.reason === "deleted" ? "ended: the hunt was deleted" : "ended: no longer allowed";
          break;
        case "gap":
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
    async refreshDetail() {
      const a = await getJson(`/hunts/${encodeURIComponent(this.id)}`).catch(() => null);
      if (a === null || !a.ok || this.closed) return;
      const d = a.body;
      this.round = d.round;
      this.treasuresLeft = d.treasures_left;
      this.top = d.leaderboard ?? [];
      this.schedule();
    }
    fail(title, why, back = false) {
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
    layout() {
      const d = this.detail;
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
    schedule() {
      if (this.drawPending || this.detail === null) return;
      this.drawPending = true;
      requestAnimationFrame(() => {
        this.drawPending = false;
        if (!this.closed) this.render();
      });
    }
    render() {
      const facts = [
        ["round", String(this.round), "round"],
        ["treasures left", String(this.treasuresLeft), "treasures_left"],
        ["players seen", String(this.players.size), "players_seen"],
        ["events/s", short(this.rate), "hunt_rate"],
        ["updates", this.subState, "subscription"]
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
        })
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
          fill.style.width = `${t.score / scoreMax * 100}%`;
          b.append(fill);
          const l = el("div", "bar-label");
          l.append(text(`player ${t.player} · ${t.score}`));
          wrap.append(b, l);
          li.append(r, wrap);
          return li;
        })
      );
      if (this.top.length === 0) this.topList.append(note("No treasure found yet this round."));
      this.drawMap();
    }
    drawMap() {
      const d = this.detail;
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
  };
  function wsUrl(addr) {
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(addr);
    let host = m?.[1] ?? location.hostname;
    const port = m?.[2] ?? "7401";
    if (host === "0.0.0.0" || host === "[::]") host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${host}:${port}/`;
  }
  function note(s) {
    const p = el("p", "note");
    p.textContent = s;
    return p;
  }

  // src/hunts.ts
  var HuntsPage = class {
    root;
    list;
    more;
    constructor(feed2) {
      this.root = el("section");
      this.root.dataset.page = "hunts";
      const h = el("h2");
      h.textContent = "Hunts";
      this.list = el("div", "hunts");
      this.list.dataset.list = "hunts";
      this.more = el("p", "note");
      this.root.append(h, this.list, this.more);
      feed2.onSnapshot((s) => this.snapshot(s));
    }
    snapshot(s) {
      if (this.root.hidden) return;
      const hunts2 = s.hunts;
      const rateMax = Math.max(1, ...hunts2.map((x) => x.events_per_s));
      const playersMax = Math.max(1, ...hunts2.map((x) => x.players));
      const rows = hunts2.map((x) => {
        const row = el("div", "hunt-row");
        row.dataset.hunt = String(x.id);
        const link = el("a");
        link.href = `#/hunts/${x.id}`;
        link.textContent = `hunt ${x.id}`;
        row.append(
          link,
          bar("players", x.players / playersMax, `${x.players} players`),
          bar("rate", x.events_per_s / rateMax, `${short(x.events_per_s)} events/s`),
          text(`round ${x.round} · ${x.treasures_left} left`)
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
  };
  function bar(kind, share, label) {
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

  // src/main.ts
  token();
  var feed = new Feed();
  var view = document.getElementById("view");
  var engine = new EnginePage(feed);
  var hunts = new HuntsPage(feed);
  var hunt = null;
  function route() {
    const path = location.hash.replace(/^#/, "") || "/";
    hunt?.close();
    hunt = null;
    const m = /^\/hunts\/([^/]+)$/.exec(path);
    let page;
    let nav = "";
    if (m !== null) {
      hunt = new HuntPage(decodeURIComponent(m[1]), feed);
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
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === nav);
    document.body.dataset.route = nav === "engine" ? "engine" : m !== null ? "hunt" : "hunts";
  }
  var conn = document.getElementById("conn");
  var connNote = document.getElementById("conn-note");
  var time = (ms) => new Date(ms).toLocaleTimeString();
  feed.onState((s) => {
    conn.dataset.state = s.kind;
    if (s.kind === "live") {
      conn.textContent = "live";
      connNote.textContent = s.wasDownMs === null ? "" : `reconnected at ${time(s.since)} after ${(s.wasDownMs / 1e3).toFixed(1)} s disconnected`;
      void serverLine();
    } else if (s.kind === "disconnected") {
      conn.textContent = "disconnected";
      connNote.textContent = `since ${time(s.since)} (${s.why}); reconnecting…`;
    } else {
      conn.textContent = "connecting…";
    }
  });
  async function serverLine() {
    const s = await getJson("/status").catch(() => null);
    const server = document.getElementById("server");
    if (s === null || !s.ok) return;
    const b = s.body;
    server.textContent = `trove ${b.version ?? "?"} · ${b.mode ?? "?"} · ${b.shards ?? "?"} shards · fsync ${b.fsync ?? "?"}`;
  }
  window.addEventListener("hashchange", route);
  route();
})();
