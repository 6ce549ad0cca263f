// Events per second acknowledged from one Node process through this SDK
// (WebSocket JSON), against the Rust SDK's producer example on the same
// server (over TCP, protocol v1: the Rust side has no WebSocket producer),
// in interleaved pairs, with medians.
//
//   npm run bench -- [EVENTS] [PAIRS]       (defaults 1000000, 3)
//
// Binaries: the server from TROVE_BIN, else <repo>/target/release/trove,
// else <repo>/target/debug/trove; the Rust producer from
// TROVE_RUST_PRODUCER, else <repo>/target/release/examples/producer,
// else <repo>/target/debug/examples/producer (no Rust figure if none, or
// with TROVE_RUST_PRODUCER=none).
// The server runs with its defaults (journal, fsync group) in a
// temporary directory. Both sides play the same workload: a hunt
// created, 1000 players joined, then random moves (60%), digs (25%) and
// scans (15%) as fast as the window allows, with outcomes.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join as pathJoin } from "node:path";

import { type HuntConfig, type HuntEvent, Producer, create, dig, join, move, scan } from "../src/index.js";
import { REPO, Server } from "../test/harness.js";

const argv = process.argv.slice(2);
const EVENTS = Number(argv[0] ?? 1_000_000);
const PAIRS = Number(argv[1] ?? 3);
if (!Number.isSafeInteger(EVENTS) || EVENTS < 1 || !Number.isSafeInteger(PAIRS) || PAIRS < 1) {
  console.error("usage: npm run bench -- [EVENTS] [PAIRS]");
  process.exit(2);
}

/** The binary an environment variable names ("none": no such run), else the first that exists. */
const pick = (env: string, ...candidates: string[]): string | undefined =>
  process.env[env] === "none" ? undefined : process.env[env] || candidates.find((c) => existsSync(c));
const serverBin = pick("TROVE_BIN", pathJoin(REPO, "target/release/trove"), pathJoin(REPO, "target/debug/trove"));
const rustBin = pick(
  "TROVE_RUST_PRODUCER",
  pathJoin(REPO, "target/release/examples/producer"),
  pathJoin(REPO, "target/debug/examples/producer"),
);
if (serverBin === undefined) {
  console.error("no trove binary: cargo build --release -p trove (or set TROVE_BIN)");
  process.exit(1);
}
process.env["TROVE_BIN"] = serverBin;

const PLAYERS = 1000;
const CONFIG: HuntConfig = {
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

let rng = 0x2545f491;
function below(n: number): number {
  // xorshift32: the workload needs no particular stream.
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  return (rng >>> 0) % n;
}

function play(hunt: number): HuntEvent {
  const player = below(PLAYERS);
  const r = below(100);
  if (r < 60) return move(hunt, player, below(9) - 4, below(9) - 4);
  if (r < 85) return dig(hunt, player);
  return scan(hunt, player);
}

/** Events per `sendAll` in the bulk run. */
const CHUNK = 1024;

/** This SDK: events/s from the first random event to the last acknowledgement; `send` per event, or `sendAll` per chunk. */
async function runTs(url: string, hunt: number, bulk: boolean): Promise<number> {
  const p = await Producer.connect({ url });
  const failed = (e: Error) => {
    throw e;
  };
  await p.send(create(hunt, CONFIG));
  for (let i = 0; i < PLAYERS; i++) p.send(join(hunt, i)).catch(failed);
  await p.drain();
  const before = p.stats().eventsAcked;
  const t0 = performance.now();
  let sent = 0;
  while (sent < EVENTS) {
    // No handler per event: a rejection would be unhandled and end the
    // bench, which is what a failure should do here.
    if (bulk) {
      while (sent < EVENTS) {
        const chunk: HuntEvent[] = [];
        for (let i = 0; i < CHUNK && sent + i < EVENTS; i++) chunk.push(play(hunt));
        await p.ready(chunk.length);
        void p.sendAll(chunk);
        sent += chunk.length;
      }
    }
    while (sent < EVENTS && p.canSend) {
      void p.send(play(hunt));
      sent++;
    }
    if (sent < EVENTS) await p.ready();
  }
  await p.drain();
  const secs = (performance.now() - t0) / 1000;
  const acked = p.stats().eventsAcked - before;
  await p.close();
  if (acked !== EVENTS) throw new Error(`${acked} acknowledged of ${EVENTS}`);
  return EVENTS / secs;
}

/** The Rust SDK's producer example at full speed; its own "N/s" figure (events played until the last acknowledgement). */
function runRust(tcp: string, hunt: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(rustBin!, [tcp, String(hunt), String(EVENTS), "0"], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.on("exit", (code) => {
      const m = /played in ([0-9.]+)s, (\d+)\/s\)/.exec(out);
      if (code !== 0 || m === null) reject(new Error(`rust producer exited ${code}:\n${out.slice(-2000)}`));
      else resolve(Number(m[2]));
    });
  });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const fmt = (x: number): string => `${(x / 1000).toFixed(0)}k/s`;

const server = await Server.start();
console.log(`server ${serverBin} (defaults: journal, fsync group)`);
console.log(`rust   ${rustBin ?? "(none: build with cargo build --release --examples -p trove-client)"}`);
console.log(`node   ${process.version}; ${EVENTS} events per run, ${PAIRS} interleaved pairs`);
const ts: number[] = [];
const bulk: number[] = [];
const rust: number[] = [];
try {
  let hunt = 100;
  for (let i = 0; i < PAIRS; i++) {
    ts.push(await runTs(server.ws, hunt++, false));
    bulk.push(await runTs(server.ws, hunt++, true));
    let line = `pair ${i + 1}: typescript (ws json) send ${fmt(ts[i]!)}, sendAll ${fmt(bulk[i]!)}`;
    if (rustBin !== undefined) {
      rust.push(await runRust(server.tcp, hunt++));
      line += `, rust (tcp v1) ${fmt(rust[i]!)}, ratio ${(ts[i]! / rust[i]!).toFixed(2)}`;
    }
    console.log(line);
  }
  let summary = `median: typescript send ${fmt(median(ts))}, sendAll ${fmt(median(bulk))}`;
  if (rust.length > 0) summary += `, rust ${fmt(median(rust))}, ratio ${(median(ts) / median(rust)).toFixed(2)}`;
  console.log(summary);
} finally {
  await server.dispose();
}
