// Deleting a hunt (issue 25, docs/decisions/0048) through the SDK against a
// real `trove serve`: the delete event's encoding and outcome, a
// subscriber's last broadcast and its `ended` item, the id created again,
// and a kill -9 after an acknowledged delete that keeps the hunt deleted.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Producer, Subscriber, type SubscriberItem, create, decodeEvent, deleteHunt, encodeEvent, join } from "../src/index.js";
import { CONFIG, Server, within } from "./harness.js";

let server: Server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.dispose();
});

const text = (v: unknown): string => JSON.stringify(v, (_, x: unknown) => (typeof x === "bigint" ? String(x) : x));

async function nextOf(s: Subscriber, kind: SubscriberItem["kind"]): Promise<SubscriberItem> {
  for (;;) {
    const item = await within(`a ${kind} item`, s.next());
    assert.ok(item !== null, "subscriber closed");
    if (item.kind === kind) return item;
  }
}

test("a delete event encodes as the protocol says and decodes back", () => {
  assert.equal(encodeEvent(deleteHunt(3)), '{"hunt":3,"action":"delete"}');
  assert.deepEqual(decodeEvent(JSON.parse(encodeEvent(deleteHunt(3)))), { hunt: 3, action: "delete" });
});

test("a deleted hunt: its producer's outcomes, its subscriber's end, and a new hunt under the id", async () => {
  const s = await Subscriber.connect({ url: server.ws });
  const p = await Producer.connect({ url: server.ws });
  try {
    await within("subscribed", s.subscribe(21));
    assert.deepEqual(await within("created", p.send(create(21, CONFIG))), { outcome: "created", round: 1 });
    assert.equal((await within("joined", p.send(join(21, 5))))?.outcome, "joined");
    assert.deepEqual(await within("deleted", p.send(deleteHunt(21))), { outcome: "deleted", round: 1 });
    assert.deepEqual(await within("unknown", p.send(join(21, 6))), { outcome: "rejected", reason: "unknown_hunt" });
    const last = await nextOf(s, "broadcast");
    assert.ok(last.kind === "broadcast" && last.body.broadcast === "hunt_deleted", text(last));
    assert.deepEqual(await nextOf(s, "ended"), { kind: "ended", hunt: 21, reason: "deleted" });
    // Created again: the ended subscription does not follow it; a new one does.
    assert.deepEqual(await within("created", p.send(create(21, CONFIG))), { outcome: "created", round: 1 });
    const next = await within("subscribed again", s.subscribe(21));
    await within("joined", p.send(join(21, 7)));
    const applied = await nextOf(s, "applied");
    assert.ok(applied.kind === "applied" && applied.seq === next, text(applied));
    assert.deepEqual(applied.event, { hunt: 21, player: 7, action: "join" });
  } finally {
    s.close();
    await p.close();
  }
});

test("a kill -9 after an acknowledged DELETE /hunts/{id} keeps the hunt deleted", async () => {
  assert.equal((await server.post("/hunts", { id: 22, config: CONFIG })).status, 201);
  assert.equal((await server.post("/hunts", { id: 23, config: CONFIG })).status, 201);
  const d = await server.del("/hunts/22");
  assert.equal(d.status, 200, JSON.stringify(d.body));
  assert.deepEqual(d.body, { id: 22, round: 1 });
  assert.equal((await server.del("/hunts/22")).status, 404);
  // kill -9, and the same data directory again.
  await server.restart();
  assert.equal((await server.get("/hunts/22")).status, 404);
  assert.equal((await server.get("/hunts/23")).status, 200);
  assert.equal((await server.post("/hunts", { id: 22, config: CONFIG })).status, 201, "the id is free again");
});
