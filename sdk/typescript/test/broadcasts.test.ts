// A broadcasts-only subscriber against a real `trove serve`: it gets
// exactly the hunt's broadcasts, in order, numbered consecutively by
// themselves, and nothing else, while a full subscriber gets every entry.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Producer, Subscriber, type SubscriberItem, create, dig, join, move } from "../src/index.js";
import { Server, within } from "./harness.js";

let server: Server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.dispose();
});

// A small map dense with treasures: digging every cell finds them.
const SMALL = {
  width: 8,
  height: 8,
  seed: 11,
  treasures_per_round: 16,
  value_min: 1,
  value_max: 9,
  dig_cooldown_ms: 0,
  step_max: 1,
  players_max: 100,
};

async function take(s: Subscriber, n: number, keep: (i: SubscriberItem) => boolean): Promise<SubscriberItem[]> {
  const got: SubscriberItem[] = [];
  while (got.length < n) {
    const item = await within(`item ${got.length} of ${n}`, s.next());
    assert.ok(item !== null, "subscriber closed");
    assert.notEqual(item.kind, "gap", "no gap for a subscriber that keeps up");
    if (keep(item)) got.push(item);
  }
  return got;
}

test("a broadcasts-only subscriber gets exactly the hunt's broadcasts, numbered by themselves", async () => {
  const hunt = 21;
  const full = await Subscriber.connect({ url: server.ws });
  const news = await Subscriber.connect({ url: server.ws, broadcastsOnly: true });
  const p = await Producer.connect({ url: server.ws, outcomes: false });
  try {
    await within("subscribed", full.subscribe(hunt));
    const first = await within("subscribed", news.subscribe(hunt));
    let events = 0;
    const send = async (e: Parameters<Producer["send"]>[0]) => {
      events++;
      await p.send(e);
    };
    await send(create(hunt, SMALL));
    await send(join(hunt, 1));
    for (let i = 0; i < 8; i++) {
      await send(move(hunt, 1, -1, 0));
      await send(move(hunt, 1, 0, -1));
    }
    for (let y = 0; y < SMALL.height; y++) {
      for (let x = 0; x < SMALL.width; x++) {
        await send(dig(hunt, 1));
        if (x + 1 < SMALL.width) await send(move(hunt, 1, y % 2 === 0 ? 1 : -1, 0));
      }
      await send(move(hunt, 1, 0, 1));
    }
    // The full stream up to its last applied event, and the broadcasts in it.
    const fullBroadcasts: unknown[] = [];
    await take(full, events, (i) => {
      if (i.kind === "broadcast") fullBroadcasts.push(i.body);
      return i.kind === "applied";
    });
    assert.ok(fullBroadcasts.length >= 4, `the sweep found treasures: ${fullBroadcasts.length} broadcasts`);
    const got = await take(news, fullBroadcasts.length, (i) => {
      assert.equal(i.kind === "applied", false, "no applied entry for a broadcasts-only subscriber");
      return i.kind === "broadcast";
    });
    got.forEach((item, k) => {
      assert.ok(item.kind === "broadcast");
      assert.equal(item.seq, first + BigInt(k), "consecutive numbers of their own");
    });
    assert.deepEqual(
      got.map((i) => (i.kind === "broadcast" ? i.body : null)),
      fullBroadcasts,
      "the same broadcasts, in the same order",
    );
  } finally {
    await p.close();
    full.close();
    news.close();
  }
});
