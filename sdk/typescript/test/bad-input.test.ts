// Every message from the server is hostile: a tiny fake WebSocket server
// (the `ws` package's) sends malformed JSON, unknown types, wrong shapes
// and huge numbers; each is a typed error, never an uncaught exception or
// a hang. And 64-bit integers are read exactly.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocketServer, type WebSocket as WsSocket } from "ws";

import {
  ANSWER_TIMEOUT_MS_DEFAULT,
  ASSIGNED_PRODUCER_IDS,
  CallbackError,
  ClosedError,
  ProducerIdRefusedError,
  ProtocolError,
  Producer,
  ReconnectFailedError,
  TimeoutError,
  ServerError,
  Subscriber,
  type SubscriberItem,
  type TroveError,
  decodeOutcome,
  join,
  parseJson,
  randomProducerId,
} from "../src/index.js";
import { within } from "./harness.js";

/** What the fake server does with each client message: answers it (or not). */
type Script = (msg: Record<string, unknown>, raw: string, socket: WsSocket) => void;

let wss: WebSocketServer;
let url = "";
let script: Script = () => {};

before(async () => {
  wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise<void>((r) => wss.once("listening", () => r()));
  url = `ws://127.0.0.1:${(wss.address() as { port: number }).port}/`;
  wss.on("connection", (socket) => {
    socket.on("message", (data, isBinary) => {
      const raw = isBinary ? "" : data.toString();
      let msg: Record<string, unknown> = {};
      try {
        msg = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        // the SDK only sends JSON
      }
      script(msg, raw, socket);
    });
  });
});

after(async () => {
  for (const c of wss.clients) c.terminate();
  await new Promise<void>((r) => wss.close(() => r()));
});

const BIG_ID = "18446744073709551557"; // 2^64 - 59: prime, above 2^53, odd
const welcome = (id = BIG_ID) => `{"type":"welcome","version":1,"producer_id":${id},"batch_events_max":65536,"outcomes":true}`;
/** The id a `hello` presents (its exact digits), or undefined. */
const presented = (hello: string): string | undefined => /"producer_id":(\d+)/.exec(hello)?.[1];
/** The server's `welcome` to a `hello`: the id it presents, else one it assigns (BIG_ID). */
const welcomeTo = (hello: string) => welcome(presented(hello) ?? BIG_ID);

/** A producer that gives up at the first failed reconnect. */
const once = { reconnectAttemptsMax: 0, connectTimeoutMs: 2000 };

test("64-bit integers are read exactly: a server-assigned producer id and sequence numbers above 2^53", async () => {
  const firstSeq = 2n ** 60n + 3n;
  script = (m, raw, s) => {
    if (m["type"] === "hello") s.send(welcome());
    if (m["type"] === "events") {
      // The SDK wrote first_seq as an exact integer literal.
      assert.match(raw, new RegExp(`"first_seq":${firstSeq}[,}]`));
      s.send(`{"type":"ack","first_seq":${firstSeq},"count":1,"outcomes":[{"outcome":"joined","x":1,"y":2,"score":3}]}`);
    }
  };
  const p = await within("connect", Producer.connect({ url, ...once, firstSeq, producerId: 0n }));
  try {
    assert.equal(p.producerId, BigInt(BIG_ID));
    assert.notEqual(Number(BIG_ID), Number.NaN);
    assert.deepEqual(await within("ack", p.send(join(1, 1))), { outcome: "joined", x: 1, y: 2, score: 3 });
    assert.equal(p.nextSeq, firstSeq + 1n);
  } finally {
    p.destroy();
  }
});

/** Connects a producer whose server answers `hello` with `reply`; the error the connect rejects with. */
async function connectError(reply: string | Buffer): Promise<TroveError> {
  script = (m, _raw, s) => {
    if (m["type"] === "hello") s.send(reply);
  };
  const e = await within("connect fails", Producer.connect({ url, ...once }).then(
    (p) => {
      p.destroy();
      assert.fail(`connected despite ${String(reply).slice(0, 80)}`);
    },
    (e: unknown) => e as TroveError,
  ));
  assert.ok(e.fatal, `${e.name} is fatal`);
  return e;
}

function rootCause(e: TroveError): TroveError {
  if (e instanceof ReconnectFailedError) return rootCause(e.last);
  if (e instanceof ClosedError && e.cause_) return rootCause(e.cause_);
  return e;
}

test("malformed welcomes are typed errors", async () => {
  const cases: [string | Buffer, RegExp][] = [
    ["not json", /not JSON/],
    ["{\"type\":\"welcome\"", /not JSON/],
    ["[1,2,3]", /must be an object/],
    ['{"type":"surprise"}', /unexpected message type/],
    ['{"type":42}', /`type` must be a string/],
    [welcome("18446744073709551616"), /producer_id.*0..=2\^64-1/], // 2^64
    [welcome("-1"), /producer_id/],
    [welcome("1.5"), /producer_id/],
    [welcome("1e30"), /producer_id/],
    [welcome('"12"'), /producer_id/],
    [welcome("0"), /producer_id 0/],
    ['{"type":"welcome","version":1,"producer_id":5,"batch_events_max":65536,"outcomes":false}', /outcomes false, asked true/],
    [`${"[".repeat(100_000)}99999999999999999999${"]".repeat(100_000)}`, /nested too deep/],
    [Buffer.from([1, 2, 3]), /binary/],
    ['{"type":"error","code":"unauthorized","message":"no token"}', /unauthorized: no token/],
    ['{"type":"error","code":"code_from_the_future","message":"?"}', /code_from_the_future/],
  ];
  for (const [reply, pattern] of cases) {
    const e = rootCause(await connectError(reply));
    assert.match(e.message, pattern, `for ${String(reply).slice(0, 60)}`);
    assert.ok(e instanceof ProtocolError || e instanceof ServerError, `${e.name} for ${String(reply).slice(0, 60)}`);
  }
});

test("a malformed ack fails the batch's events with a typed error, after a reconnect that fails too", async () => {
  const acks = [
    '{"type":"ack","first_seq":1,"count":2,"outcomes":[]}', // the batch has 1 event
    '{"type":"ack","first_seq":7,"count":1,"outcomes":[{"outcome":"left"}]}', // another batch
    '{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"teleported"}]}',
    '{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"joined","x":70000,"y":0,"score":0}]}',
    '{"type":"ack","first_seq":1,"count":1}',
    '{"type":"busy","first_seq":1,"count":1}',
  ];
  for (const ack of acks) {
    let connections = 0;
    script = (m, raw, s) => {
      if (m["type"] === "hello") {
        connections++;
        if (connections === 1) s.send(welcomeTo(raw));
        else s.close(); // the reconnect fails
      }
      if (m["type"] === "events") s.send(ack);
    };
    const p = await within("connect", Producer.connect({ url, ...once }));
    try {
      const e = await within(
        "the send fails",
        p.send(join(1, 1)).then(
          () => assert.fail(`resolved despite ${ack}`),
          (e: unknown) => e as TroveError,
        ),
      );
      assert.ok(e instanceof ClosedError && e.fatal, e.message);
      assert.ok(rootCause(e) instanceof ProtocolError || rootCause(e).message.includes("closed"), `${ack}: ${e.message}`);
    } finally {
      p.destroy();
    }
  }
});

test("a retryable error reconnects and resends; a refused batch is its own error and the producer goes on", async () => {
  let connections = 0;
  const seen: string[] = [];
  const ids: (string | undefined)[] = [];
  script = (m, raw, s) => {
    if (m["type"] === "hello") {
      connections++;
      ids.push(presented(raw));
      s.send(welcomeTo(raw));
    }
    if (m["type"] === "events") {
      const first = String(raw.match(/"first_seq":(\d+)/)?.[1]);
      seen.push(first);
      if (connections === 1) {
        s.send('{"type":"error","code":"shutting_down","message":"bye"}');
        s.close(1001, "shutting_down");
      } else if (first === "1") {
        s.send('{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"joined","x":0,"y":0,"score":0}]}');
      } else {
        s.send('{"type":"error","code":"sequence_reused","message":"sequence 2 was applied with another event"}');
      }
    }
  };
  const p = await within("connect", Producer.connect({ url, reconnectBackoffInitialMs: 1 }));
  try {
    assert.deepEqual(await within("resent and acknowledged", p.send(join(1, 1))), { outcome: "joined", x: 0, y: 0, score: 0 });
    assert.deepEqual(seen, ["1", "1"], "the same batch, with the same first_seq, on the new connection");
    assert.deepEqual(ids, [String(p.producerId), String(p.producerId)], "the reconnect presents the same id");
    const e = await within(
      "refused",
      p.send(join(1, 2)).then(
        () => assert.fail("resolved"),
        (e: unknown) => e as TroveError,
      ),
    );
    assert.ok(e.name === "BatchRefusedError" && !e.fatal, e.message);
    assert.ok(p.canSend, "the producer goes on");
  } finally {
    p.destroy();
  }
});

test("a subscriber reports malformed updates as typed errors and never yields them", async () => {
  const bad = [
    '{"type":"update","hunt":1,"first_seq":1,"entries":[{"kind":"applied","time_us":1,"event":{"hunt":1,"action":"fly","player":1},"outcome":{"outcome":"left"}}]}',
    '{"type":"update","hunt":1,"first_seq":1,"entries":[{"kind":"broadcast","body":{"broadcast":"leaderboard_changed","round":1,"top":[1]}}]}',
    '{"type":"update","hunt":1,"first_seq":1,"entries":[]}',
    '{"type":"update","hunt":2,"first_seq":1,"entries":[{"kind":"broadcast","body":{"broadcast":"round_finished","round":1,"top":[]}}]}',
    '{"type":"update","hunt":1,"first_seq":0,"entries":[{"kind":"broadcast","body":{"broadcast":"round_finished","round":1,"top":[]}}]}',
    '{"type":"gap","hunt":1,"first_missed":1,"missed":-3}',
    '{"type":"ack","first_seq":1,"count":1}',
    "{}",
  ];
  for (const msg of bad) {
    script = (m, _raw, s) => {
      if (m["type"] === "subscribe") {
        s.send(`{"type":"subscribed","hunt":${m["hunt"]},"next_seq":1}`);
        s.send(msg);
      }
    };
    const s = await within("connect", Subscriber.connect({ url, ...once }));
    try {
      assert.equal(await within("subscribed", s.subscribe(1)), 1n);
      const items: SubscriberItem[] = [];
      const e = await within(
        "a typed error",
        (async () => {
          for (;;) {
            try {
              const item = await s.next();
              if (item === null) return assert.fail("closed without an error");
              items.push(item);
            } catch (e) {
              return e as TroveError;
            }
          }
        })(),
      );
      assert.ok(e.fatal, `${msg}: ${e.message}`);
      const lost = items.find((i) => i.kind === "disconnected");
      assert.ok(lost?.kind === "disconnected" && lost.error instanceof ProtocolError, `${msg}: ${JSON.stringify(items.map((i) => i.kind))}`);
      assert.ok(!items.some((i) => i.kind === "applied" || i.kind === "broadcast"), `${msg}: nothing malformed is yielded`);
    } finally {
      s.close();
    }
  }
});

test("the JSON reader: exact big integers, the same values as JSON.parse elsewhere, errors typed", () => {
  assert.deepEqual(parseJson('{"a":18446744073709551615,"b":[9007199254740993,-9007199254740993,1.5,"99999999999999999"]}'), {
    a: 18446744073709551615n,
    b: [9007199254740993n, -9007199254740993n, 1.5, "99999999999999999"],
  });
  assert.deepEqual(parseJson('{"n":9007199254740991,"s":"x\\"y\\\\","t":true,"u":null,"e":[],"o":{}}'), {
    n: 9007199254740991,
    s: 'x"y\\',
    t: true,
    u: null,
    e: [],
    o: {},
  });
  const slow = parseJson('{"__proto__":{"polluted":1},"big":99999999999999999}') as Record<string, unknown>;
  assert.equal(({} as Record<string, unknown>)["polluted"], undefined);
  assert.deepEqual(Object.keys(slow), ["__proto__", "big"]);
  for (const bad of ["", "{", '{"a":99999999999999999', '{"a":99999999999999999}x', "[01]", '"\u0001"', "nul", '{"a" 1}']) {
    assert.throws(() => parseJson(bad), ProtocolError, JSON.stringify(bad));
    assert.throws(() => parseJson(`[99999999999999999,${bad}]`), ProtocolError, JSON.stringify(bad));
  }
  assert.throws(() => decodeOutcome(parseJson('{"outcome":"hint","band":"lukewarm"}')), /unknown band/);
});

test("where reading cannot be paused (a browser's WebSocket), a full queue drops whole messages and yields a local gap", async () => {
  const { WebSocket: NodeWs } = await import("ws");
  // A global WebSocket without pause(), as in a browser.
  class BrowserLike extends NodeWs {
    constructor(u: string) {
      super(u);
    }
  }
  Object.defineProperty(BrowserLike.prototype, "pause", { value: undefined });
  const g = globalThis as { WebSocket?: unknown };
  const saved = g.WebSocket;
  g.WebSocket = BrowserLike;
  const entry = '{"kind":"broadcast","body":{"broadcast":"round_finished","round":1,"top":[]}}';
  script = (m, _raw, s) => {
    if (m["type"] === "subscribe") {
      s.send('{"type":"subscribed","hunt":1,"next_seq":1}');
      // 50 messages of 2 entries: #1..=#100.
      for (let i = 0; i < 50; i++) s.send(`{"type":"update","hunt":1,"first_seq":${1 + 2 * i},"entries":[${entry},${entry}]}`);
    }
  };
  let s: Subscriber | undefined;
  try {
    s = await within("connect", Subscriber.connect({ url, queueMax: 10 }));
    await within("subscribed", s.subscribe(1));
    await new Promise((r) => setTimeout(r, 300)); // nobody reads meanwhile
    let expected = 1n;
    let local = 0n;
    while (expected <= 100n) {
      const item: SubscriberItem | null = await within("items", s.next());
      assert.ok(item !== null);
      if (item.kind === "subscribed") continue;
      if (item.kind === "gap") {
        assert.equal(item.reason, "local");
        assert.equal(item.firstMissed, expected);
        local += item.missed!;
        expected += item.missed!;
      } else {
        assert.ok(item.kind === "broadcast");
        assert.equal(item.seq, expected);
        expected++;
      }
    }
    assert.ok(local > 0n, "some entries were dropped locally");
  } finally {
    s?.close();
    g.WebSocket = saved;
  }
});

test("answerTimeoutMs: a server that stops answering is left, and the batch goes again on a new connection", async () => {
  let connections = 0;
  const sent: string[] = [];
  script = (m, raw, s) => {
    if (m["type"] === "hello") {
      connections++;
      s.send(welcomeTo(raw));
    }
    if (m["type"] === "events") {
      sent.push(String(raw.match(/"first_seq":(\d+)/)?.[1]));
      // The first connection swallows the batch, as a stalled server would.
      if (connections > 1) s.send('{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"left"}]}');
    }
  };
  const p = await within("connect", Producer.connect({ url, answerTimeoutMs: 200, reconnectBackoffInitialMs: 1 }));
  try {
    assert.deepEqual(await within("answered after the timeout", p.send(join(1, 1))), { outcome: "left" });
    assert.deepEqual(sent, ["1", "1"]);
    assert.equal(p.stats().reconnects, 1);
  } finally {
    p.destroy();
  }
});

test("a full producer throws FullError and takes nothing; ready() resolves when answers free room", async () => {
  let pending: WsSocket | undefined;
  script = (m, raw, s) => {
    if (m["type"] === "hello") s.send(welcomeTo(raw));
    if (m["type"] === "events") pending = s; // answered later
  };
  const p = await within("connect", Producer.connect({ url, unackedEventsMax: 2, lingerMs: 0 }));
  try {
    assert.throws(() => p.send({ hunt: -1, player: 1, action: "join" }), /`hunt` must be an integer/);
    const a = p.send(join(1, 1));
    const b = p.send(join(1, 2));
    assert.equal(p.canSend, false);
    assert.throws(() => p.send(join(1, 3)), (e: unknown) => e instanceof Error && e.name === "FullError");
    assert.throws(() => p.sendAll([join(1, 3), join(1, 4), join(1, 5)]), /more than unackedEventsMax/);
    const ready = p.ready();
    const ready2 = p.ready(2);
    await assert.rejects(p.ready(3), /n must be in 1..=unackedEventsMax 2/);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(pending !== undefined);
    // One batch: both sends came before the linger's timer.
    pending.send('{"type":"ack","first_seq":1,"count":2,"outcomes":[{"outcome":"left"},{"outcome":"left"}]}');
    await within("ready", Promise.all([ready, ready2]));
    assert.deepEqual(await within("answers", Promise.all([a, b])), [{ outcome: "left" }, { outcome: "left" }]);
    assert.equal(p.canSend, true);
  } finally {
    p.destroy();
  }
});

test("wss:// and the token: hello carries `token`, over TLS", async () => {
  const { execFileSync } = await import("node:child_process");
  const { mkdtempSync, readFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join: pathJoin } = await import("node:path");
  const { createServer } = await import("node:https");
  const dir = mkdtempSync(pathJoin(tmpdir(), "trove-ts-tls-"));
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", pathJoin(dir, "key.pem"), "-out", pathJoin(dir, "cert.pem")], { stdio: "ignore" });
  const cert = readFileSync(pathJoin(dir, "cert.pem"));
  const https = createServer({ cert, key: readFileSync(pathJoin(dir, "key.pem")) });
  const tls = new WebSocketServer({ server: https });
  const hellos: Record<string, unknown>[] = [];
  tls.on("connection", (socket) => {
    socket.on("message", (data) => {
      const m = JSON.parse(data.toString()) as Record<string, unknown>;
      if (m["type"] === "hello") {
        hellos.push(m);
        socket.send(welcomeTo(data.toString()));
      }
      if (m["type"] === "subscribe") socket.send(`{"type":"subscribed","hunt":${m["hunt"]},"next_seq":5}`);
      if (m["type"] === "events") socket.send('{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"left"}]}');
    });
  });
  await new Promise<void>((r) => https.listen(0, "127.0.0.1", () => r()));
  const port = (https.address() as { port: number }).port;
  const opts = { url: `wss://127.0.0.1:${port}/`, token: "s3cret \"quoted\"", nodeWebSocketOptions: { ca: cert }, ...once };
  try {
    const p = await within("connect over TLS", Producer.connect(opts));
    assert.deepEqual(await within("ack", p.send(join(1, 1))), { outcome: "left" });
    p.destroy();
    const s = await within("subscriber over TLS", Subscriber.connect(opts));
    assert.equal(await within("subscribed", s.subscribe(3)), 5n);
    s.close();
    assert.equal(hellos.length, 2);
    for (const h of hellos) assert.equal(h["token"], 's3cret "quoted"');
    assert.equal(hellos[1]!["outcomes"], false, "the subscriber's hello asks for no producer outcomes");
    // Without the CA the certificate is refused: a typed error.
    const refused = await Producer.connect({ ...opts, nodeWebSocketOptions: {} }).then(
      () => assert.fail("connected with an untrusted certificate"),
      (e: unknown) => e as TroveError,
    );
    assert.ok(refused.fatal && rootCause(refused).name === "ConnectionError", refused.message);
  } finally {
    for (const c of tls.clients) c.terminate();
    await new Promise<void>((r) => https.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  }
});


test("the default producer id is random, nonzero and below 2^63, and every connection presents it", async () => {
  const hellos: string[] = [];
  let drop = true;
  script = (m, raw, s) => {
    if (m["type"] === "hello") {
      hellos.push(raw);
      s.send(welcomeTo(raw));
    }
    if (m["type"] === "events") {
      if (drop) {
        drop = false;
        s.terminate(); // lost with the batch unanswered: the reconnect presents the id again
      } else s.send('{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"left"}]}');
    }
  };
  const a = await within("connect a", Producer.connect({ url, reconnectBackoffInitialMs: 1 }));
  const b = await within("connect b", Producer.connect({ url, reconnectBackoffInitialMs: 1 }));
  try {
    for (const id of [a.producerId, b.producerId]) assert.ok(id >= 1n && id < ASSIGNED_PRODUCER_IDS, `${id}`);
    assert.notEqual(a.producerId, b.producerId, "two producers, two ids");
    assert.deepEqual(await within("answered", a.send(join(1, 1))), { outcome: "left" });
    assert.deepEqual(
      hellos.map(presented),
      [String(a.producerId), String(b.producerId), String(a.producerId)],
      "each hello names its producer's own id, the reconnect too",
    );
    for (let i = 0; i < 1000; i++) {
      const id = randomProducerId();
      assert.ok(id >= 1n && id < ASSIGNED_PRODUCER_IDS);
    }
  } finally {
    a.destroy();
    b.destroy();
  }
});

test("a refused server-assigned id after a batch was written: a fatal typed error, nothing resent under a new id", async () => {
  const hellos: string[] = [];
  const batches: number[] = [];
  script = (m, raw, s) => {
    if (m["type"] === "hello") {
      hellos.push(raw);
      if (hellos.length === 1) s.send(welcome());
      else {
        // What trove serve answers an assigned id its journal never held.
        s.send(`{"type":"error","code":"malformed","message":"producer id ${BIG_ID}: ids from 2^63 up are assigned by the server (omit it)"}`);
        s.close(1008, "malformed");
      }
    }
    if (m["type"] === "events") {
      batches.push(hellos.length);
      // The batch may have been applied (in cluster mode its log holds it) when the server goes.
      s.terminate();
    }
  };
  const p = await within("connect", Producer.connect({ url, producerId: 0n, reconnectBackoffInitialMs: 1 }));
  try {
    const e = await within(
      "the send fails",
      p.send(join(1, 1)).then(
        () => assert.fail("resolved: the batch was sent again under another id"),
        (e: unknown) => e as TroveError,
      ),
    );
    assert.ok(e.fatal, e.message);
    const cause = rootCause(e);
    assert.ok(cause instanceof ProducerIdRefusedError && cause.written && cause.producerId === BigInt(BIG_ID), `${cause.name}: ${cause.message}`);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(hellos.length, 2, "no connection under a new id");
    assert.deepEqual(batches, [1], "the batch was written once, on the first connection");
    assert.throws(() => p.send(join(1, 2)), ClosedError);
  } finally {
    p.destroy();
  }
});

test("a refused server-assigned id with nothing ever written: the producer takes a new one", async () => {
  const hellos: string[] = [];
  script = (m, raw, s) => {
    if (m["type"] === "hello") {
      hellos.push(raw);
      if (hellos.length === 1) {
        s.send(welcome());
        setTimeout(() => s.terminate(), 20); // the server goes while the producer is idle
      } else if (hellos.length === 2) {
        s.send(`{"type":"error","code":"malformed","message":"producer id ${BIG_ID}: ids from 2^63 up are assigned by the server (omit it)"}`);
        s.close(1008, "malformed");
      } else s.send(welcome("9223372036854775999"));
    }
    if (m["type"] === "events") s.send('{"type":"ack","first_seq":1,"count":1,"outcomes":[{"outcome":"left"}]}');
  };
  const p = await within("connect", Producer.connect({ url, producerId: 0n, reconnectBackoffInitialMs: 1 }));
  try {
    await new Promise((r) => setTimeout(r, 200)); // lost while idle
    assert.deepEqual(await within("answered under the new id", p.send(join(1, 1))), { outcome: "left" });
    assert.equal(p.producerId, 9223372036854775999n);
    assert.equal(hellos.length, 3);
    assert.equal(presented(hellos[1]!), BIG_ID);
    assert.equal(presented(hellos[2]!), undefined, "the third hello lets the server assign");
  } finally {
    p.destroy();
  }
});

/** A server that welcomes and answers pings but never answers a batch. */
function neverAcks(events: { n: number }): Script {
  return (m, raw, s) => {
    if (m["type"] === "hello") s.send(welcomeTo(raw));
    if (m["type"] === "ping") s.send(`{"type":"pong","nonce":${JSON.stringify(m["nonce"])}}`);
    if (m["type"] === "events") events.n++;
  };
}

test("close() is bounded against a server that never answers: it closes after closeTimeoutMs", async () => {
  const events = { n: 0 };
  script = neverAcks(events);
  const p = await within("connect", Producer.connect({ url, closeTimeoutMs: 300, pingIntervalMs: 100 }));
  const sent = p.send(join(1, 1)).then(
    () => assert.fail("answered"),
    (e: unknown) => e as TroveError,
  );
  const closed = await within(
    "close() returns",
    p.close().then(
      () => assert.fail("close() resolved with an event unanswered"),
      (e: unknown) => e as TroveError,
    ),
  );
  assert.equal(closed.name, "TimeoutError", closed.message);
  const e = await within("the send is rejected", sent);
  assert.ok(e instanceof ClosedError, e.message);
  assert.equal(events.n, 1);
  assert.throws(() => p.send(join(1, 2)), ClosedError);
});

test("drain() ends by itself with the default answerTimeoutMs against a server that answers pings but never acks", async () => {
  assert.equal(ANSWER_TIMEOUT_MS_DEFAULT, 30_000);
  const events = { n: 0 };
  script = neverAcks(events);
  const p = await within("connect", Producer.connect({ url, reconnectAttemptsMax: 0, pingIntervalMs: 200 }));
  try {
    const sent = p.send(join(1, 1));
    sent.catch(() => {});
    const e = await within(
      "drain() ends",
      p.drain().then(
        () => assert.fail("drained with nothing answered"),
        (e: unknown) => e as TroveError,
      ),
      // The default timeout (30 s), its check (every 7.5 s), a reconnect: generous on a loaded machine.
      150_000,
    );
    assert.ok(e.fatal, e.message);
    assert.ok(rootCause(e) instanceof TimeoutError, `${rootCause(e).name}: ${e.message}`);
    await assert.rejects(sent, ClosedError);
    assert.ok(events.n >= 1);
  } finally {
    p.destroy();
  }
});

test("an onItem that always throws never escapes: each throw ends the connection, is reported, and the retries end", async () => {
  script = (m, _raw, s) => {
    if (m["type"] === "subscribe") {
      s.send(`{"type":"subscribed","hunt":${m["hunt"]},"next_seq":1}`);
      s.send('{"type":"update","hunt":1,"first_seq":1,"entries":[{"kind":"broadcast","body":{"broadcast":"round_finished","round":1,"top":[]}}]}');
    }
  };
  const items: SubscriberItem[] = [];
  let stopped: (e: TroveError) => void = () => {};
  const stop = new Promise<TroveError>((r) => (stopped = r));
  const s = await within(
    "connect",
    Subscriber.connect({
      url,
      reconnectAttemptsMax: 3,
      reconnectBackoffInitialMs: 1,
      onItem: (item) => {
        items.push(item);
        if (item.kind === "disconnected" && item.error.fatal) stopped(item.error);
        throw new Error("the game's handler is broken");
      },
    }),
  );
  try {
    assert.equal(await within("subscribed", s.subscribe(1)), 1n);
    const e = await within("the subscriber stops", stop);
    assert.ok(e instanceof ReconnectFailedError && e.last instanceof CallbackError, `${e.name}: ${e.message}`);
    assert.match(e.message, /the game's handler is broken/);
    const lost = items.filter((i) => i.kind === "disconnected");
    assert.ok(lost.length >= 2, `${lost.length} disconnected items`);
    for (const l of lost) assert.ok(l.kind === "disconnected" && (l.error instanceof CallbackError || l.error.fatal), l.kind);
    assert.ok(!items.some((i) => i.kind === "broadcast"), "the update's items never reach the callback: it threw on the subscribed item first");
  } finally {
    s.close();
  }
});

test("a full queue in a browser keeps at most one local gap per hunt, however the hunts' messages interleave", async () => {
  const { WebSocket: NodeWs } = await import("ws");
  class BrowserLike extends NodeWs {
    constructor(u: string) {
      super(u);
    }
  }
  Object.defineProperty(BrowserLike.prototype, "pause", { value: undefined });
  const g = globalThis as { WebSocket?: unknown };
  const saved = g.WebSocket;
  g.WebSocket = BrowserLike;
  const entry = '{"kind":"broadcast","body":{"broadcast":"round_finished","round":1,"top":[]}}';
  script = (m, _raw, s) => {
    if (m["type"] === "subscribe") {
      s.send(`{"type":"subscribed","hunt":${m["hunt"]},"next_seq":1}`);
      if (m["hunt"] !== 2) return;
      // Hunts 1 and 2 in turn, 50 messages of 2 entries each: #1..=#100 of each.
      for (let i = 0; i < 50; i++) {
        for (const h of [1, 2]) s.send(`{"type":"update","hunt":${h},"first_seq":${1 + 2 * i},"entries":[${entry},${entry}]}`);
      }
    }
  };
  let s: Subscriber | undefined;
  try {
    s = await within("connect", Subscriber.connect({ url, queueMax: 10 }));
    await within("subscribed", Promise.all([s.subscribe(1), s.subscribe(2)]));
    await new Promise((r) => setTimeout(r, 300)); // nobody reads meanwhile
    const expected = new Map([
      [1, 1n],
      [2, 1n],
    ]);
    const gaps = new Map([
      [1, 0],
      [2, 0],
    ]);
    let count = 0;
    while (expected.get(1)! <= 100n || expected.get(2)! <= 100n) {
      const item: SubscriberItem | null = await within("items", s.next());
      assert.ok(item !== null);
      count++;
      if (item.kind === "subscribed") continue;
      assert.ok(item.kind === "gap" || item.kind === "broadcast", item.kind);
      const at: bigint = expected.get(item.hunt)!;
      if (item.kind === "gap") {
        assert.equal(item.reason, "local");
        assert.equal(item.firstMissed, at, `hunt ${item.hunt}'s gap starts where its entries stopped`);
        gaps.set(item.hunt, gaps.get(item.hunt)! + 1);
        expected.set(item.hunt, at + item.missed!);
      } else {
        assert.equal(item.seq, at);
        expected.set(item.hunt, at + 1n);
      }
    }
    assert.deepEqual([...gaps.values()], [1, 1], "one local gap per hunt, merged while it waited in the queue");
    assert.ok(count <= 10 + 2, `${count} items: the queue's bound plus one gap per hunt`);
  } finally {
    s?.close();
    g.WebSocket = saved;
  }
});
