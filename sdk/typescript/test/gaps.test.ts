// A subscriber that does not read: it stops reading from its socket once
// its queue is full, the server drops entries for it and says so, and the
// subscriber yields the gap, with the numbers continuing after it.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Producer, Subscriber, type SubscriberItem, create, join, scan } from "../src/index.js";
import { CONFIG, Server, within } from "./harness.js";

test("a subscriber that does not read gets a gap, and the stream goes on after it", async () => {
  const server = await Server.start({
    toml: "[limits]\nsubscriber_updates_max = 256\n",
  });
  let sub: Subscriber | undefined;
  let p: Producer | undefined;
  try {
    sub = await Subscriber.connect({ url: server.ws, queueMax: 16 });
    p = await Producer.connect({ url: server.ws, outcomes: false });
    const hunt = 4;
    const next = await within("subscribed", sub.subscribe(hunt));
    await p.send(create(hunt, CONFIG));
    await p.send(join(hunt, 1));
    // Far more than the socket buffers and the server's queue hold, while nobody reads.
    const EVENTS = 60_000;
    for (let i = 0; i < EVENTS; i++) {
      while (!p.canSend) await p.ready();
      void p.send(scan(hunt, 1)).catch(() => {});
    }
    await within("every scan acknowledged", p.drain(), 120_000);
    // Markers to read up to: joins of players from 100 up, one now and one
    // more each second the stream is quiet (a marker may fall in a gap).
    let marker = 100;
    void p.send(join(hunt, marker++)).catch(() => {});
    const deadline = Date.now() + 60_000;

    const gaps: SubscriberItem[] = [];
    let expected = next;
    let seenLast = false;
    while (!seenLast) {
      assert.ok(Date.now() < deadline, "a marker within 60 s");
      const pending = sub.next();
      let item: SubscriberItem | null | undefined;
      while (item === undefined) {
        item = await Promise.race([pending, new Promise<undefined>((r) => setTimeout(r, 1000))]);
        if (item === undefined) void p.send(join(hunt, marker++)).catch(() => {});
      }
      assert.ok(item !== null);
      switch (item.kind) {
        case "subscribed":
          break;
        case "gap":
          assert.equal(item.reason, "server");
          assert.equal(item.firstMissed, expected, "a gap starts where the stream was");
          assert.ok(item.missed !== null && item.missed > 0n);
          gaps.push(item);
          expected = item.firstMissed + item.missed!;
          break;
        case "applied":
        case "broadcast":
          assert.equal(item.seq, expected, "entries are numbered on from the gap");
          expected++;
          if (item.kind === "applied" && item.event.action === "join" && item.event.player >= 100) seenLast = true;
          break;
        default:
          assert.fail(`unexpected ${item.kind}`);
      }
    }
    assert.ok(gaps.length >= 1, "the server dropped entries for the subscriber that did not read");
  } finally {
    p?.destroy();
    sub?.close();
    await server.dispose();
  }
});
