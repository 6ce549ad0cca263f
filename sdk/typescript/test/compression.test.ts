// Compressed updates against a real `trove serve`: a subscriber that asks
// for `compression: "deflate"` yields exactly the items a plain one does,
// in order, updates of many messages included; a bad option is refused.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ConfigError, Producer, Subscriber, type SubscriberItem, create, dig, join, move } from "../src/index.js";
import { Server, within } from "./harness.js";

let server: Server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.dispose();
});

const SMALL = {
  width: 8,
  height: 8,
  seed: 5,
  treasures_per_round: 16,
  value_min: 1,
  value_max: 9,
  dig_cooldown_ms: 0,
  step_max: 1,
  players_max: 1000,
};

/** Items up to and including the `applied` entry numbered `lastSeq`. */
async function until(s: Subscriber, lastSeq: bigint): Promise<SubscriberItem[]> {
  const got: SubscriberItem[] = [];
  for (;;) {
    const item = await within(`item ${got.length}`, s.next());
    assert.ok(item !== null, "subscriber closed");
    got.push(item);
    if (item.kind === "applied" && item.seq === lastSeq) return got;
  }
}

test("a compressed subscriber yields exactly what a plain one does", async () => {
  const hunt = 31;
  const plain = await Subscriber.connect({ url: server.ws });
  const packed = await Subscriber.connect({ url: server.ws, compression: "deflate" });
  assert.equal(packed.compressed, true, "Node 20 inflates deflate-raw");
  const p = await Producer.connect({ url: server.ws, outcomes: false });
  try {
    const first = await within("subscribed", plain.subscribe(hunt));
    assert.equal(await within("subscribed", packed.subscribe(hunt)), first);
    // Batches of hundreds of entries (several messages each) and single ones.
    const sent: Promise<unknown>[] = [p.send(create(hunt, SMALL))];
    for (let player = 0; player < 600; player++) sent.push(p.send(join(hunt, player)));
    p.flush();
    await within("joins acknowledged", Promise.all(sent));
    let events = 601;
    for (let i = 0; i < 40; i++) {
      await within("a move", p.send(move(hunt, i, 1, 0)));
      await within("a dig", p.send(dig(hunt, i)));
      events += 2;
    }
    const last = first + BigInt(events - 1);
    const a = await until(plain, last);
    const b = await until(packed, last);
    assert.ok(a.some((i) => i.kind === "broadcast"), "broadcasts among the entries");
    assert.ok(a.every((i) => i.kind !== "gap"), "no gap for a subscriber that keeps up");
    assert.deepEqual(b, a);
  } finally {
    await p.close();
    plain.close();
    packed.close();
  }
});

test("compression other than deflate is a ConfigError, before connecting", async () => {
  for (const bad of ["gzip", "Deflate", true, 1]) {
    await assert.rejects(
      Subscriber.connect({ url: server.ws, compression: bad as unknown as "deflate" }),
      (e: unknown) => e instanceof ConfigError && /compression/.test((e as Error).message),
    );
  }
});
