// The treasure hunt's events, outcomes and broadcasts (docs/game.md), in
// the JSON shapes of docs/protocol.md ("WebSocket (JSON)"): field names
// are the protocol's, snake_case. Encoding checks every range the server
// checks and throws `ConfigError` naming the field; decoding checks every
// field the server sends and throws `ProtocolError`.

import { ConfigError, ProtocolError } from "./errors.js";
import { type Json, type Obj, arr, int16, obj, str, uint } from "./json.js";

export interface HuntConfig {
  /** 1..=4096 */
  width: number;
  /** 1..=4096 */
  height: number;
  /** u32 */
  seed: number;
  /** 1..= width * height / 4 */
  treasures_per_round: number;
  /** 1..=value_max */
  value_min: number;
  /** value_min..=65535 */
  value_max: number;
  /** 0..=65535 */
  dig_cooldown_ms: number;
  /** 1..=255 */
  step_max: number;
  /** 1..=2^20 */
  players_max: number;
}

export type PlayerAction = "join" | "leave" | "dig" | "scan";

export type HuntEvent =
  | { hunt: number; action: "create"; config: HuntConfig }
  | { hunt: number; player: number; action: PlayerAction }
  | { hunt: number; player: number; action: "move"; dx: number; dy: number }
  /** Deletes the hunt (docs/game.md, "Hunts"): an admin's token when authentication is on. */
  | { hunt: number; action: "delete" }
  /** Only in updates: an event whose kind the rules did not know (rejected `invalid_event`). */
  | { hunt: number; player: number; action: "invalid" };

export type Band = "hot" | "warm" | "cold";

export const REJECT_REASONS = [
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
  "duplicate",
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

export type HuntOutcome =
  | { outcome: "created"; round: number }
  | { outcome: "joined"; x: number; y: number; score: number }
  | { outcome: "left" }
  | { outcome: "moved"; x: number; y: number }
  | { outcome: "dig_found"; value: number; score: number }
  | { outcome: "dig_nothing" }
  | { outcome: "hint"; band: Band }
  | { outcome: "rejected"; reason: RejectReason }
  /** The hunt is deleted; `round` is the round it was in. */
  | { outcome: "deleted"; round: number };

export interface TopEntry {
  player: number;
  score: number;
}

/** At most this many lines in a top (docs/game.md: the top 10). */
export const TOP_MAX = 10;

export type HuntBroadcast =
  | {
      broadcast: "treasure_found";
      round: number;
      player: number;
      x: number;
      y: number;
      value: number;
      score: number;
      treasures_left: number;
    }
  | { broadcast: "leaderboard_changed"; round: number; top: TopEntry[] }
  | { broadcast: "round_finished"; round: number; top: TopEntry[] }
  /** The hunt was deleted: the last entry of its stream (the subscription ends after it). */
  | { broadcast: "hunt_deleted"; round: number; top: TopEntry[] };

// ---- constructors ----

export const create = (hunt: number, config: HuntConfig): HuntEvent => ({ hunt, action: "create", config });
export const join = (hunt: number, player: number): HuntEvent => ({ hunt, player, action: "join" });
export const leave = (hunt: number, player: number): HuntEvent => ({ hunt, player, action: "leave" });
export const move = (hunt: number, player: number, dx: number, dy: number): HuntEvent => ({
  hunt,
  player,
  action: "move",
  dx,
  dy,
});
export const dig = (hunt: number, player: number): HuntEvent => ({ hunt, player, action: "dig" });
export const scan = (hunt: number, player: number): HuntEvent => ({ hunt, player, action: "scan" });
/** Deletes `hunt` (`delete` is a reserved word). */
export const deleteHunt = (hunt: number): HuntEvent => ({ hunt, action: "delete" });

// ---- encoding (client to server) ----

function checkInt(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`event: \`${field}\` must be an integer in ${min}..=${max}, got ${String(v)}`);
  }
  return v;
}

const U32_MAX = 0xffff_ffff;

/**
 * One event as compact JSON. Checks the ranges the wire has (the rules
 * check the rest and answer `rejected`): ids are u32, `dx`/`dy` i16, the
 * config's fields their integer types.
 */
export function encodeEvent(e: HuntEvent): string {
  if (typeof e !== "object" || e === null) throw new ConfigError("event must be an object");
  const hunt = checkInt(e.hunt, "hunt", 0, U32_MAX);
  switch (e.action) {
    case "create": {
      const c = e.config;
      if (typeof c !== "object" || c === null) throw new ConfigError("event: `config` must be an object");
      return (
        `{"hunt":${hunt},"action":"create","config":{"width":${checkInt(c.width, "config.width", 0, 0xffff)}` +
        `,"height":${checkInt(c.height, "config.height", 0, 0xffff)},"seed":${checkInt(c.seed, "config.seed", 0, U32_MAX)}` +
        `,"treasures_per_round":${checkInt(c.treasures_per_round, "config.treasures_per_round", 0, U32_MAX)}` +
        `,"value_min":${checkInt(c.value_min, "config.value_min", 0, 0xffff)}` +
        `,"value_max":${checkInt(c.value_max, "config.value_max", 0, 0xffff)}` +
        `,"dig_cooldown_ms":${checkInt(c.dig_cooldown_ms, "config.dig_cooldown_ms", 0, 0xffff)}` +
        `,"step_max":${checkInt(c.step_max, "config.step_max", 0, 0xff)}` +
        `,"players_max":${checkInt(c.players_max, "config.players_max", 0, U32_MAX)}}}`
      );
    }
    case "join":
    case "leave":
    case "dig":
    case "scan":
      return `{"hunt":${hunt},"player":${checkInt(e.player, "player", 0, U32_MAX)},"action":"${e.action}"}`;
    case "delete":
      return `{"hunt":${hunt},"action":"delete"}`;
    case "move":
      return (
        `{"hunt":${hunt},"player":${checkInt(e.player, "player", 0, U32_MAX)},"action":"move"` +
        `,"dx":${checkInt(e.dx, "dx", -32768, 32767)},"dy":${checkInt(e.dy, "dy", -32768, 32767)}}`
      );
    default:
      throw new ConfigError(`event: unknown action ${JSON.stringify((e as { action: unknown }).action)}`);
  }
}

// ---- decoding (server to client) ----

const BANDS: ReadonlySet<string> = new Set(["hot", "warm", "cold"]);
const REASONS: ReadonlySet<string> = new Set(REJECT_REASONS);

/**
 * Checks one outcome and returns it: the parsed object itself when it
 * is exactly the shape (no copy on the hot path of every ack), else a
 * copy of the checked fields.
 */
export function decodeOutcome(v: Json | undefined, what = "outcome"): HuntOutcome {
  const o = obj(v, what);
  const kind = str(o, "outcome", what);
  let fields: number;
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
  if (Object.keys(o).length === fields) return o as unknown as HuntOutcome;
  return copyOutcome(o);
}

/** The checked fields of an outcome that came with others (dropped). */
function copyOutcome(o: Obj): HuntOutcome {
  const out: Record<string, Json> = { outcome: o["outcome"]! };
  for (const k of ["round", "x", "y", "score", "value", "band", "reason"]) if (k in o) out[k] = o[k]!;
  return out as unknown as HuntOutcome;
}

export function decodeEvent(v: Json | undefined, what = "event"): HuntEvent {
  const o = obj(v, what);
  const hunt = uint(o, "hunt", 32, what);
  const action = str(o, "action", what);
  switch (action) {
    case "create": {
      const c: Obj = obj(o["config"], `${what}.config`);
      const w = `${what}.config`;
      return {
        hunt,
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
          players_max: uint(c, "players_max", 32, w),
        },
      };
    }
    case "join":
    case "leave":
    case "dig":
    case "scan":
    case "invalid":
      return { hunt, player: uint(o, "player", 32, what), action } as HuntEvent;
    case "delete":
      return { hunt, action };
    case "move":
      return { hunt, player: uint(o, "player", 32, what), action, dx: int16(o, "dx", what), dy: int16(o, "dy", what) };
    default:
      throw new ProtocolError(`${what}: unknown action ${JSON.stringify(action).slice(0, 64)}`);
  }
}

function decodeTop(o: Obj, what: string): TopEntry[] {
  const top = arr(o, "top", what);
  if (top.length > TOP_MAX) throw new ProtocolError(`${what}: \`top\` has ${top.length} lines, more than ${TOP_MAX}`);
  return top.map((l, i) => {
    const line = obj(l, `${what}.top[${i}]`);
    return { player: uint(line, "player", 32, `${what}.top[${i}]`), score: uint(line, "score", 32, `${what}.top[${i}]`) };
  });
}

export function decodeBroadcast(v: Json | undefined, what = "broadcast"): HuntBroadcast {
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
        treasures_left: uint(o, "treasures_left", 32, what),
      };
    case "leaderboard_changed":
    case "round_finished":
    case "hunt_deleted":
      return { broadcast: kind, round: uint(o, "round", 32, what), top: decodeTop(o, what) };
    default:
      throw new ProtocolError(`${what}: unknown broadcast ${JSON.stringify(kind).slice(0, 64)}`);
  }
}
