// Exactly once: connections cut under unanswered batches (a TCP proxy
// between the producer and the server), the server killed with -9 and
// restarted on its data directory, and BUSY from a server with tiny
// queues. Each run sends joins, then moves of +-1 cell, which are not
// idempotent: a move applied twice would put its player a cell further
// than the outcomes say, and the control plane shows where each player is.

import assert from "node:assert/strict";
import { type Server as NetServer, type Socket, createServer, connect as netConnect } from "node:net";
import { test } from "node:test";

import { type HuntOutcome, Producer, type TroveError, create, join, move } from "../src/index.js";
import { CONFIG, Server, within } from "./harness.js";

const PLAYERS = 100;
const MOVES = 40;

/** Forwards TCP connections to `target`; `cut()` kills every one of them at once. */
class Proxy {
  private readonly sockets = new Set<Socket>();
  private server: NetServer | undefined;
  port = 0;
  cuts = 0;

  constructor(private readonly target: () => { host: string; port: number }) {}

  async start(): Promise<void> {
    this.server = createServer((client) => {
      const t = this.target();
      const upstream = netConnect(t.port, t.host);
      this.sockets.add(client).add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on("error", drop).on("close", drop);
      upstream.on("error", drop).on("close", drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", () => r()));
    this.port = (this.server!.address() as { port: number }).port;
  }

  cut(): void {
    this.cuts++;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server?.close(() => r()));
  }
}

interface Run {
  /** Where each player must be: from its join's outcome plus its moves. */
  expected: Map<number, [number, number]>;
  outcomes: HuntOutcome[];
}

/**
 * Creates `hunt`, joins the players, then sends every player's moves
 * (towards the map's middle, so that none is clamped); `during` runs once
 * some of them are acknowledged and while others are still unanswered.
 */
async function play(p: Producer, hunt: number, during: () => Promise<void>): Promise<Run> {
  const config = { ...CONFIG, width: 512, height: 512, players_max: PLAYERS };
  assert.deepEqual(await within("create", p.send(create(hunt, config))), { outcome: "created", round: 1 });
  const joins = await within(
    "joins",
    Promise.all(Array.from({ length: PLAYERS }, (_, i) => p.send(join(hunt, i)))),
  );
  const expected = new Map<number, [number, number]>();
  const dirs = new Map<number, number>();
  joins.forEach((o, i) => {
    assert.ok(o !== null && o.outcome === "joined", JSON.stringify(o));
    const dx = o.x < 256 ? 1 : -1;
    dirs.set(i, dx);
    expected.set(i, [o.x + dx * MOVES, o.y]);
  });
  const pending: Promise<HuntOutcome | null>[] = [];
  let fired = false;
  let duringDone: Promise<void> = Promise.resolve();
  for (let k = 0; k < MOVES; k++) {
    for (let i = 0; i < PLAYERS; i++) {
      while (!p.canSend) await p.ready();
      const answer = p.send(move(hunt, i, dirs.get(i)!, 0));
      answer.catch(() => {}); // seen by Promise.all below; not unhandled if the test fails first
      pending.push(answer);
    }
    if (!fired && k === MOVES / 4) {
      // The first acknowledged, the rest in flight or still to send: now.
      await within("the first move", pending[0]!);
      fired = true;
      duringDone = during();
    }
  }
  await within("the fault", duringDone, 60_000);
  const outcomes = (await within("every move answered", Promise.all(pending), 120_000)).map((o) => o!);
  return { expected, outcomes };
}

/** Every move answered `moved` once, at the place the server has each player. */
async function check(server: Server, hunt: number, run: Run): Promise<void> {
  for (const o of run.outcomes) assert.equal(o.outcome, "moved", JSON.stringify(o));
  const summary = await server.get(`/hunts/${hunt}`);
  assert.equal((summary.body as { players: number }).players, PLAYERS);
  for (const [player, [x, y]] of run.expected) {
    const r = await server.get(`/hunts/${hunt}/players/${player}`);
    assert.equal(r.status, 200);
    const at = r.body as { x: number; y: number };
    assert.deepEqual([at.x, at.y], [x, y], `player ${player}: applied once means here`);
  }
}

test("exactly once across connections cut with batches unanswered", async () => {
  const server = await Server.start();
  const proxy = new Proxy(() => ({ host: "127.0.0.1", port: Number(new URL(server.ws).port) }));
  await proxy.start();
  const losses: TroveError[] = [];
  const p = await Producer.connect({
    url: `ws://127.0.0.1:${proxy.port}/`,
    batchEventsMax: 50,
    windowBatches: 16,
    lingerMs: 0,
    reconnectBackoffInitialMs: 10,
    onDisconnect: (e) => losses.push(e),
  });
  try {
    const run = await play(p, 1, async () => {
      for (let i = 0; i < 3; i++) {
        proxy.cut();
        await new Promise((r) => setTimeout(r, 30));
      }
    });
    assert.ok(losses.length >= 1, "the producer saw its connection cut");
    const stats = p.stats();
    assert.ok(stats.reconnects >= 1 && stats.resent > 0, `reconnected and resent: ${JSON.stringify(stats)}`);
    await check(server, 1, run);
  } finally {
    p.destroy();
    await proxy.stop();
    await server.dispose();
  }
});

test("exactly once across a server killed with -9 and restarted on its data directory", async () => {
  const server = await Server.start();
  const p = await Producer.connect({
    url: server.ws,
    batchEventsMax: 50,
    windowBatches: 16,
    lingerMs: 0,
    reconnectBackoffInitialMs: 20,
    reconnectBackoffMaxMs: 200,
    reconnectAttemptsMax: null,
  });
  try {
    const idBefore = p.producerId;
    const run = await play(p, 2, async () => {
      await server.restart();
    });
    assert.ok(p.stats().reconnects >= 1);
    assert.ok(p.stats().resent > 0, `batches sent again: ${JSON.stringify(p.stats())}`);
    assert.equal(p.producerId, idBefore, "the same (random) id was presented again and accepted");
    await check(server, 2, run);
  } finally {
    p.destroy();
    await server.dispose();
  }
});

test("BUSY: refused batches wait retry_after_ms and go again with their numbers", async () => {
  // Tiny queues: a window of 16 batches of 50 is far past them.
  const server = await Server.start({
    toml: "[engine]\nbatch_events_max = 64\nqueue_batches_max = 1\nqueue_events_max = 64\nqueue_wait_max_us = 100\n",
  });
  const p = await Producer.connect({ url: server.ws, batchEventsMax: 50, windowBatches: 16, lingerMs: 0 });
  try {
    const run = await play(p, 3, async () => {});
    const stats = p.stats();
    assert.ok(stats.busy > 0, `the server answered BUSY: ${JSON.stringify(stats)}`);
    assert.ok(stats.resent > 0);
    await check(server, 3, run);
  } finally {
    p.destroy();
    await server.dispose();
  }
});
