// A treasure hunt played end to end through the producer, with every
// outcome and broadcast checked against docs/game.md's rules and test
// vectors (seed 7, 64 x 64, 4 treasures of 1..=9: round 1's treasures
// are (7, 2, 1), (30, 42, 5), (59, 44, 1), (60, 44, 9); player 5 spawns at
// (7, 20), player 0 at (62, 55)).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  type HuntBroadcast,
  type HuntOutcome,
  Producer,
  Subscriber,
  create,
  dig,
  join,
  leave,
  move,
  scan,
} from "../src/index.js";
import { CONFIG, Server, within } from "./harness.js";

let server: Server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.dispose();
});

/** Moves from (x, y) to (tx, ty) in steps of at most 4; the promise of the last outcome. */
function walk(p: Producer, hunt: number, player: number, from: [number, number], to: [number, number]): Promise<HuntOutcome | null> {
  let [x, y] = from;
  let last: Promise<HuntOutcome | null> = Promise.resolve(null);
  while (x !== to[0] || y !== to[1]) {
    const dx = Math.max(-4, Math.min(4, to[0] - x));
    const dy = Math.max(-4, Math.min(4, to[1] - y));
    x += dx;
    y += dy;
    last = p.send(move(hunt, player, dx, dy));
  }
  return last;
}

test("a hunt played end to end: outcomes and broadcasts as docs/game.md says", async () => {
  const hunt = 1;
  const sub = await Subscriber.connect({ url: server.ws });
  const broadcasts: HuntBroadcast[] = [];
  const p = await Producer.connect({ url: server.ws });
  try {
    await within("subscribed", sub.subscribe(hunt));
    assert.ok(p.producerId >= 1n && p.producerId < 1n << 63n, `the default id is random, below 2^63: ${p.producerId}`);
    // Opted in: the server assigns one, at least 2^63, read exactly.
    const assigned = await Producer.connect({ url: server.ws, producerId: 0n });
    assert.ok(assigned.producerId >= 1n << 63n, `a server-assigned id is at least 2^63, exactly: ${assigned.producerId}`);
    await assigned.close();

    assert.deepEqual(await p.send(create(hunt, CONFIG)), { outcome: "created", round: 1 });
    assert.deepEqual(await p.send(create(hunt, CONFIG)), { outcome: "rejected", reason: "hunt_exists" });
    // Pipelined: one batch, answers in order.
    const answers = await Promise.all([
      p.send(join(hunt, 5)),
      p.send(join(hunt, 0)),
      p.send(join(hunt, 5)),
      p.send(join(hunt, 1000)),
      p.send(dig(99, 5)),
      p.send(move(hunt, 5, 5, 0)),
      p.send(leave(hunt, 7)),
      p.send(move(hunt, 0, 4, 4)),
      p.send(dig(hunt, 0)),
    ]);
    assert.deepEqual(answers, [
      { outcome: "joined", x: 7, y: 20, score: 0 },
      { outcome: "joined", x: 62, y: 55, score: 0 },
      { outcome: "rejected", reason: "already_joined" },
      { outcome: "rejected", reason: "player_out_of_range" },
      { outcome: "rejected", reason: "unknown_hunt" },
      { outcome: "rejected", reason: "step_too_large" },
      { outcome: "rejected", reason: "not_joined" },
      { outcome: "moved", x: 63, y: 59 }, // clamped at the map's edge
      { outcome: "dig_nothing" },
    ]);

    assert.deepEqual(await walk(p, hunt, 5, [7, 20], [7, 2]), { outcome: "moved", x: 7, y: 2 });
    assert.deepEqual(await p.send(scan(hunt, 5)), { outcome: "hint", band: "hot" });
    assert.deepEqual(await p.send(dig(hunt, 5)), { outcome: "dig_found", value: 1, score: 1 });
    assert.deepEqual(await p.send(dig(hunt, 5)), { outcome: "dig_nothing" });
    await walk(p, hunt, 5, [7, 2], [30, 42]);
    assert.deepEqual(await p.send(dig(hunt, 5)), { outcome: "dig_found", value: 5, score: 6 });
    await walk(p, hunt, 5, [30, 42], [59, 44]);
    assert.deepEqual(await p.send(dig(hunt, 5)), { outcome: "dig_found", value: 1, score: 7 });
    await walk(p, hunt, 5, [59, 44], [60, 44]);
    // The round's last treasure: round 2 begins, scores start again at 0.
    assert.deepEqual(await p.send(dig(hunt, 5)), { outcome: "dig_found", value: 9, score: 16 });
    assert.deepEqual(await p.send(leave(hunt, 5)), { outcome: "left" });
    assert.deepEqual(await p.send(join(hunt, 5)), { outcome: "joined", x: 7, y: 20, score: 0 });

    // Bulk: one promise, the outcomes in order.
    assert.deepEqual(await p.sendAll([leave(hunt, 0), join(hunt, 0), join(hunt, 0)]), [
      { outcome: "left" },
      { outcome: "joined", x: 62, y: 55, score: 0 }, // back at its spawn cell
      { outcome: "rejected", reason: "already_joined" },
    ]);

    const status = await server.get(`/hunts/${hunt}`);
    assert.equal(status.status, 200);
    const body = status.body as { round: number; players: number };
    assert.equal(body.round, 2);
    assert.equal(body.players, 2);

    // The subscriber saw every broadcast, in order, typed.
    while (broadcasts.length < 7) {
      const item = await within("broadcasts", sub.next());
      assert.ok(item !== null);
      assert.notEqual(item.kind, "gap");
      if (item.kind === "broadcast") broadcasts.push(item.body);
    }
    assert.deepEqual(broadcasts, [
      { broadcast: "treasure_found", round: 1, player: 5, x: 7, y: 2, value: 1, score: 1, treasures_left: 3 },
      { broadcast: "leaderboard_changed", round: 1, top: [{ player: 5, score: 1 }] },
      { broadcast: "treasure_found", round: 1, player: 5, x: 30, y: 42, value: 5, score: 6, treasures_left: 2 },
      { broadcast: "leaderboard_changed", round: 1, top: [{ player: 5, score: 6 }] },
      { broadcast: "treasure_found", round: 1, player: 5, x: 59, y: 44, value: 1, score: 7, treasures_left: 1 },
      { broadcast: "leaderboard_changed", round: 1, top: [{ player: 5, score: 7 }] },
      { broadcast: "treasure_found", round: 1, player: 5, x: 60, y: 44, value: 9, score: 16, treasures_left: 0 },
    ]);
    const more: HuntBroadcast[] = [];
    while (more.length < 2) {
      const item = await within("the round's end", sub.next());
      assert.ok(item !== null);
      if (item.kind === "broadcast") more.push(item.body);
    }
    assert.deepEqual(more, [
      { broadcast: "leaderboard_changed", round: 1, top: [{ player: 5, score: 16 }] },
      { broadcast: "round_finished", round: 1, top: [{ player: 5, score: 16 }] },
    ]);
    const stats = p.stats();
    assert.equal(stats.busy, 0);
    assert.equal(stats.held, 0);
  } finally {
    await p.close();
    sub.close();
  }
});
