// A game server feeding one treasure hunt to trove (the Rust SDK's
// examples/producer.rs, in TypeScript).
//
// Creates the hunt (an existing one is fine), joins its players, then
// sends moves, digs and scans at a steady rate, and prints per second how
// many events were acknowledged and what the rules answered.
//
//   node dist/examples/producer.js [URL] [HUNT] [EVENTS] [RATE]
//     URL     server WebSocket URL          (default ws://127.0.0.1:7401/)
//     HUNT    hunt id                       (default 1)
//     EVENTS  events after the joins        (default 1000000)
//     RATE    events per second, 0 = as fast as the window allows (default 100000)

import { type HuntConfig, type HuntEvent, type HuntOutcome, Producer, create, dig, join, move, scan } from "../src/index.js";

const PLAYERS = 1000;
const HUNT_CONFIG: HuntConfig = {
  width: 256,
  height: 256,
  seed: 42,
  treasures_per_round: 512,
  value_min: 1,
  value_max: 100,
  dig_cooldown_ms: 50,
  step_max: 4,
  players_max: PLAYERS,
};

function usage(): never {
  console.error("usage: producer [URL] [HUNT] [EVENTS] [RATE]");
  process.exit(2);
}

const argv = process.argv.slice(2);
if (argv.includes("-h") || argv.includes("--help")) usage();
const num = (i: number, def: number): number => {
  const s = argv[i];
  if (s === undefined) return def;
  const n = Number(s.replaceAll("_", ""));
  if (!Number.isSafeInteger(n) || n < 0) usage();
  return n;
};
const url = argv[0] ?? "ws://127.0.0.1:7401/";
const hunt = num(1, 1);
const events = num(2, 1_000_000);
const rate = num(3, 100_000);

/** Outcome kinds, with hint bands and rejection reasons apart. */
function kind(o: HuntOutcome | null): string {
  if (o === null) return "none";
  if (o.outcome === "hint") return `hint_${o.band}`;
  if (o.outcome === "rejected") return `rejected:${o.reason}`;
  return o.outcome;
}

// SplitMix64, as the Rust example's random play (not the same stream: seeded by the hunt only).
let state = BigInt(hunt) * 0x9e3779b97f4a7c15n;
function below(n: number): number {
  state = (state + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  let z = state;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  z ^= z >> 31n;
  return Number(((z >> 32n) * BigInt(n)) >> 32n);
}

/** A random move, dig or scan by a random player. */
function play(): HuntEvent {
  const player = below(PLAYERS);
  const r = below(100);
  if (r < 60) return move(hunt, player, below(9) - 4, below(9) - 4);
  if (r < 85) return dig(hunt, player);
  return scan(hunt, player);
}

const producer = await Producer.connect({ url, onDisconnect: (e) => console.error(`connection lost: ${e.message}; reconnecting`) });
console.log(
  `connected to ${url} as producer ${producer.producerId}; hunt ${hunt}, ${PLAYERS} players, ${events} events at ${rate === 0 ? "full speed" : `${rate}/s`}`,
);

let total = 0;
let inSecond = 0;
const second = new Map<string, number>();
const tally = new Map<string, number>();
const counted = (o: HuntOutcome | null): void => {
  total++;
  inSecond++;
  const k = kind(o);
  second.set(k, (second.get(k) ?? 0) + 1);
};
const failed = (e: Error): void => {
  console.error(`producer: ${e.message}`);
  process.exitCode = 1;
};
const start = performance.now();
const ticker = setInterval(() => {
  const parts = [...second].map(([k, n]) => `${k} ${n}`).join(", ");
  console.log(`${String(Math.round((performance.now() - start) / 1000)).padStart(4)}s  acked ${String(inSecond).padStart(9)}/s  total ${String(total).padStart(11)}  | ${parts}`);
  for (const [k, n] of second) tally.set(k, (tally.get(k) ?? 0) + n);
  second.clear();
  inSecond = 0;
}, 1000);

try {
  // An existing hunt answers rejected:hunt_exists and the players already
  // in it rejected:already_joined; play goes on.
  await producer.sendWait(create(hunt, HUNT_CONFIG)).then(({ outcome }) => outcome.then(counted, failed));
  for (let p = 0; p < PLAYERS; p++) {
    const { outcome } = await producer.sendWait(join(hunt, p));
    outcome.then(counted, failed);
  }
  const t0 = performance.now();
  let sent = 0;
  while (sent < events) {
    // At full speed send until the producer is full; at a rate, catch up
    // with the schedule, then sleep a millisecond.
    const due = rate === 0 ? events : Math.min(events, Math.floor(((performance.now() - t0) / 1000) * rate));
    while (sent < due && producer.canSend) {
      producer.send(play()).then(counted, failed);
      sent++;
    }
    if (sent < events) {
      if (!producer.canSend) await producer.ready();
      else await new Promise((r) => setTimeout(r, 1));
    }
  }
  await producer.close();
  const secs = (performance.now() - t0) / 1000;
  for (const [k, n] of second) tally.set(k, (tally.get(k) ?? 0) + n);
  const s = producer.stats();
  console.log(
    `done: ${total} events acknowledged (${sent} played in ${secs.toFixed(2)}s, ${Math.round(sent / secs)}/s); ${s.batchesAcked} batches, ${s.resent} resent, ${s.busy} busy, ${s.reconnects} reconnects`,
  );
  console.log(`outcomes: ${[...tally].map(([k, n]) => `${k} ${n}`).join(", ")}`);
} catch (e) {
  failed(e as Error);
  producer.destroy();
} finally {
  clearInterval(ticker);
}
