// The subscriber against a real `trove serve`: typed updates, a hunt
// created through the control plane, resubscribe after a restart.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Subscriber, type SubscriberItem } from "../src/index.js";
import { CONFIG, Server, within } from "./harness.js";

let server: Server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.dispose();
});

async function nextOf(s: Subscriber, kind: SubscriberItem["kind"]): Promise<SubscriberItem> {
  for (;;) {
    const item = await within(`a ${kind} item`, s.next());
    assert.ok(item !== null, "subscriber closed");
    if (item.kind === kind) return item;
  }
}

test("a subscriber sees a hunt created through the control plane, typed", async () => {
  const s = await Subscriber.connect({ url: server.ws });
  try {
    const next = await within("subscribed", s.subscribe(11));
    assert.equal(typeof next, "bigint");
    const sub = await nextOf(s, "subscribed");
    assert.deepEqual(sub, { kind: "subscribed", hunt: 11, nextSeq: next });
    const created = await server.post("/hunts", { id: 11, config: CONFIG });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const applied = await nextOf(s, "applied");
    assert.ok(applied.kind === "applied");
    assert.equal(applied.hunt, 11);
    assert.equal(applied.seq, next);
    assert.equal(typeof applied.timeUs, "bigint");
    assert.deepEqual(applied.event, { hunt: 11, action: "create", config: CONFIG });
    assert.deepEqual(applied.outcome, { outcome: "created", round: 1 });
  } finally {
    s.close();
  }
  assert.equal(await s.next(), null);
});

test("a subscriber resubscribes after the server restarts, and says what it missed", async () => {
  const s = await Subscriber.connect({ url: server.ws, reconnectBackoffInitialMs: 20, reconnectAttemptsMax: null });
  try {
    await within("subscribed", s.subscribe(12));
    await nextOf(s, "subscribed");
    assert.equal((await server.post("/hunts", { id: 12, config: CONFIG })).status, 201);
    const first = await nextOf(s, "applied");
    assert.ok(first.kind === "applied");
    // kill -9, and the same data directory and ports again.
    await server.restart();
    const lost = await nextOf(s, "disconnected");
    assert.ok(lost.kind === "disconnected" && !lost.error.fatal);
    const gap = await nextOf(s, "gap");
    assert.deepEqual(gap, { kind: "gap", hunt: 12, firstMissed: first.seq + 1n, missed: null, reason: "reconnect" });
    const again = await nextOf(s, "subscribed");
    assert.ok(again.kind === "subscribed" && again.hunt === 12);
    // The hunt survived (journal); a new event reaches the subscriber.
    assert.equal((await server.post("/hunts", { id: 13, config: CONFIG })).status, 201);
    const dup = await server.post("/hunts", { id: 12, config: CONFIG });
    assert.equal(dup.status, 409);
    const rejected = await nextOf(s, "applied");
    assert.ok(rejected.kind === "applied");
    assert.deepEqual(rejected.outcome, { outcome: "rejected", reason: "hunt_exists" });
    assert.equal(rejected.seq, again.nextSeq);
  } finally {
    s.close();
  }
});

test("after unsubscribe a hunt's entries stop; another hunt's go on", async () => {
  const s = await Subscriber.connect({ url: server.ws });
  try {
    await within("subscribed 14", s.subscribe(14));
    await within("subscribed 15", s.subscribe(15));
    assert.deepEqual(s.watching.sort(), [14, 15]);
    await within("unsubscribed", s.unsubscribe(14));
    assert.deepEqual(s.watching, [15]);
    assert.equal((await server.post("/hunts", { id: 14, config: CONFIG })).status, 201);
    assert.equal((await server.post("/hunts", { id: 15, config: CONFIG })).status, 201);
    const applied = await nextOf(s, "applied");
    assert.ok(applied.kind === "applied");
    assert.equal(applied.hunt, 15, "nothing of hunt 14 after its unsubscribe");
  } finally {
    s.close();
  }
});
