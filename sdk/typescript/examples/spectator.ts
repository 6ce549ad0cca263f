// A spectator: subscribes to hunts and prints their live updates, one line
// per entry (applied events with their outcomes, broadcasts), and the gaps
// where updates were lost (the Rust SDK's examples/spectator.rs, in
// TypeScript).
//
//   node dist/examples/spectator.js [URL] [HUNT...]
//     URL   server WebSocket URL   (default ws://127.0.0.1:7401/)
//     HUNT  hunt ids               (default 1)

import { type HuntBroadcast, type HuntEvent, type HuntOutcome, Subscriber, type TopEntry } from "../src/index.js";

function eventText(e: HuntEvent): string {
  if (e.action === "create") {
    const c = e.config;
    return `create ${c.width}x${c.height} map, ${c.treasures_per_round} treasures of ${c.value_min}..=${c.value_max}, ${c.players_max} players max`;
  }
  if (e.action === "delete") return "delete the hunt";
  const who = `player ${e.player}`;
  switch (e.action) {
    case "join":
      return `${who} joins`;
    case "leave":
      return `${who} leaves`;
    case "move":
      return `${who} moves (${e.dx >= 0 ? "+" : ""}${e.dx},${e.dy >= 0 ? "+" : ""}${e.dy})`;
    case "dig":
      return `${who} digs`;
    case "scan":
      return `${who} scans`;
    default:
      return `${who}: invalid event`;
  }
}

function outcomeText(o: HuntOutcome): string {
  switch (o.outcome) {
    case "created":
      return `created, round ${o.round}`;
    case "joined":
      return `joined at (${o.x},${o.y}), score ${o.score}`;
    case "left":
      return "left";
    case "moved":
      return `now at (${o.x},${o.y})`;
    case "dig_found":
      return `FOUND ${o.value}, score ${o.score}`;
    case "dig_nothing":
      return "nothing";
    case "hint":
      return o.band;
    case "rejected":
      return `rejected: ${o.reason}`;
    case "deleted":
      return `deleted in round ${o.round}`;
  }
}

const topText = (top: TopEntry[]): string =>
  top.length === 0 ? "nobody" : top.map((e, i) => `${i + 1}. player ${e.player} (${e.score})`).join(", ");

function broadcastText(b: HuntBroadcast): string {
  switch (b.broadcast) {
    case "treasure_found":
      return `** round ${b.round}: player ${b.player} found ${b.value} at (${b.x},${b.y}), score ${b.score}; ${b.treasures_left} treasures left`;
    case "leaderboard_changed":
      return `** round ${b.round} leaderboard: ${topText(b.top)}`;
    case "round_finished":
      return `** round ${b.round} finished: ${topText(b.top)}`;
    case "hunt_deleted":
      return `** hunt deleted in round ${b.round}: ${topText(b.top)}`;
  }
}

const argv = process.argv.slice(2);
if (argv.includes("-h") || argv.includes("--help")) {
  console.error("usage: spectator [URL] [HUNT...]");
  process.exit(2);
}
const url = argv[0] ?? "ws://127.0.0.1:7401/";
const hunts = argv.length > 1 ? argv.slice(1).map(Number) : [1];
if (hunts.some((h) => !Number.isInteger(h) || h < 0 || h > 0xffff_ffff)) {
  console.error("HUNT: a u32");
  process.exit(2);
}
// A closed pipe (`| head`) ends the spectator quietly.
process.stdout.on("error", () => process.exit(0));

try {
  const sub = await Subscriber.connect({ url, reconnectAttemptsMax: null });
  for (const hunt of hunts) console.error(`watching hunt ${hunt} from update #${await sub.subscribe(hunt)}`);
  for await (const item of sub) {
    switch (item.kind) {
      case "applied": {
        const t = item.timeUs;
        console.log(`hunt ${item.hunt} #${item.seq} t=${t / 1_000_000n}.${String(t % 1_000_000n).padStart(6, "0")}s  ${eventText(item.event)} -> ${outcomeText(item.outcome)}`);
        break;
      }
      case "broadcast":
        console.log(`hunt ${item.hunt} #${item.seq} ${broadcastText(item.body)}`);
        break;
      case "gap":
        if (item.missed === null) console.log(`hunt ${item.hunt} -- gap: reconnected, updates from #${item.firstMissed} on the old connection lost --`);
        else console.log(`hunt ${item.hunt} -- gap: missed #${item.firstMissed}..=#${item.firstMissed + item.missed - 1n} (${item.missed} updates), too slow --`);
        break;
      case "subscribed":
        console.error(`hunt ${item.hunt}: updates from #${item.nextSeq}`);
        break;
      case "disconnected":
        console.error(`connection lost: ${item.error.message}; reconnecting`);
        break;
      case "ended":
        console.log(`hunt ${item.hunt} -- ended (${item.reason}) --`);
        break;
    }
  }
} catch (e) {
  console.error(`spectator: ${(e as Error).message}`);
  process.exitCode = 1;
}
