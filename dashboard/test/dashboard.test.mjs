// The dashboard in a real headless Chromium against a real `trove serve`:
// it loads with no console error, its figures move while the Rust SDK's
// producer example runs, a hunt's top 10 changes on the page as treasures
// are found, it survives a server restart (says it was disconnected,
// reconnects), and a hunt that does not exist gets a clear message. A
// screenshot of each page goes to target/screenshots/.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { launch, networkError, open, screenshot, until } from "./browser.mjs";
import { Server, producer } from "./server.mjs";

let server;
let browser;

before(async () => {
  server = await Server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

const figure = (page, name) => page.locator(`[data-figure="${name}"]`).first().textContent();
/** "1.2k / 980" -> [1200, 980]; "–" -> null. */
function numbers(text) {
  return (text ?? "").split(" / ").map((t) => {
    const m = /^(-?[0-9.]+)\s*(k|M|G|µs|ms|s|%)?$/.exec(t.trim());
    if (m === null) return null;
    const scale = { k: 1e3, M: 1e6, G: 1e9 }[m[2]] ?? 1;
    return Number(m[1]) * scale;
  });
}

describe("the dashboard", () => {
  test("loads with no console error; its figures move while the producer runs; a hunt's top 10 changes as treasures are found", async () => {
    const { page, errors } = await open(browser.context, `${server.control}/`);
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    await page.locator('[data-chart="events"]').waitFor();
    assert.equal(await page.locator('nav a.active').textContent(), "Engine");

    // Paced at 50,000 events/s, for longer than the test takes: it is stopped at the end.
    const run = producer(server, 1, 100_000_000, 50_000);
    try {
      // The figures move: events/s in and acknowledged above 0, and more
      // than one value seen over time.
      const seen = new Set();
      await until("events/s in and acknowledged above 0, changing", async () => {
        const [inRate, acked] = numbers(await figure(page, "events"));
        if (inRate > 0 && acked > 0) seen.add(`${inRate}/${acked}`);
        return seen.size >= 3;
      });
      await until("a latency to acknowledgement", async () => (numbers(await figure(page, "ack_latency"))[1] ?? 0) > 0);
      await until("polls per event", async () => numbers(await figure(page, "io"))[0] !== null);
      await until("a busy shard", async () => (numbers(await figure(page, "busy")) ?? []).some((v) => v > 0));
      await page.waitForTimeout(1500); // a few more points on each line
      console.log(`screenshot: ${await screenshot(page, "engine")}`);

      // The hunts page lists hunt 1 with its players and events/s.
      await page.click('nav a[data-nav="hunts"]');
      const row = page.locator('[data-hunt="1"]');
      await row.waitFor({ timeout: 30_000 });
      await until("hunt 1 with players and events/s", async () => {
        const players = Number.parseInt((await row.locator('[data-figure="players"]').textContent()) ?? "", 10);
        const rate = numbers(((await row.locator('[data-figure="rate"]').textContent()) ?? "").replace(" events/s", ""))[0];
        return players > 0 && rate > 0;
      });
      console.log(`screenshot: ${await screenshot(page, "hunts")}`);

      // A hunt's page: the map and the top 10, live over the WebSocket.
      await row.locator("a").click();
      await page.locator('[data-map="1"]').waitFor({ timeout: 30_000 });
      await until("the subscription is live", async () => (await figure(page, "subscription")) === "live");
      const top = async () =>
        (await page.locator('[data-list="top"] li[data-player]').evaluateAll((lis) => lis.map((li) => `${li.dataset.player}:${li.dataset.score}`))).join(",");
      const first = await top();
      await until("the top 10 changes as treasures are found", async () => {
        const now = await top();
        return now !== first && now !== "";
      }, 120_000);
      await until("players on the map", async () => Number(await figure(page, "players_seen")) > 0);
      console.log(`screenshot: ${await screenshot(page, "hunt")}`);
    } finally {
      run.stop();
      await run.done;
    }
    assert.deepEqual(errors, [], "console errors on the dashboard");
    await page.close();
  });

  test("a hunt that does not exist, or an id that is not one, gets a clear message", async () => {
    const { page, errors } = await open(browser.context, `${server.control}/#/hunts/4242`);
    const message = page.locator('[data-message="hunt"]');
    await message.waitFor({ timeout: 30_000 });
    assert.match((await message.textContent()) ?? "", /Hunt 4242 does not exist/);
    console.log(`screenshot: ${await screenshot(page, "missing-hunt")}`);
    await page.goto(`${server.control}/#/hunts/not-a-number`);
    await page.reload();
    await message.waitFor({ timeout: 30_000 });
    assert.match((await message.textContent()) ?? "", /cannot be shown.*bad_request/s);
    // The rest of the page still works: the header says it is live.
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    // The browser logs the 404 and 400 it was answered; nothing else.
    assert.deepEqual(errors.filter((e) => !networkError(e)), []);
    await page.close();
  });

  test("survives a server restart: shows it is disconnected, then reconnects (the engine page and a hunt's)", async () => {
    // Hunt 2: a small field, so that its page has something to show.
    const config = { width: 32, height: 32, seed: 3, treasures_per_round: 64, value_min: 1, value_max: 9, dig_cooldown_ms: 0, step_max: 4, players_max: 1000 };
    const created = await server.post("/hunts", { id: 2, config });
    assert.ok(created.status === 201 || created.status === 409, JSON.stringify(created));
    const { page, errors } = await open(browser.context, `${server.control}/`);
    const huntTab = await open(browser.context, `${server.control}/#/hunts/2`);
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    await until("the hunt's subscription is live", async () => (await figure(huntTab.page, "subscription")) === "live");

    await server.kill();
    await page.locator('#conn[data-state="disconnected"]').waitFor({ timeout: 30_000 });
    assert.match((await page.locator("#conn-note").textContent()) ?? "", /reconnecting/);
    await until("the hunt's page says it is reconnecting", async () => /disconnected/.test((await figure(huntTab.page, "subscription")) ?? ""));
    console.log(`screenshot: ${await screenshot(page, "disconnected")}`);

    await server.restart();
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 60_000 });
    assert.match((await page.locator("#conn-note").textContent()) ?? "", /reconnected at .* after [0-9.]+ s disconnected/);
    await until("the hunt's subscription is live again", async () => (await figure(huntTab.page, "subscription")) === "live", 60_000);
    // The feed and the subscription run again: the figures come from the
    // new process, and the hunt's players appear on its map.
    const run = producer(server, 2, 100_000_000, 50_000);
    try {
      await until("events/s above 0 after the restart", async () => (numbers(await figure(page, "events"))[1] ?? 0) > 0);
      await until("players on the hunt's map after the restart", async () => Number(await figure(huntTab.page, "players_seen")) > 0);
    } finally {
      run.stop();
      await run.done;
    }
    // While the server was down the browser logged refused connections.
    assert.deepEqual(errors.filter((e) => !networkError(e)), []);
    assert.deepEqual(huntTab.errors.filter((e) => !networkError(e)), []);
    await huntTab.page.close();
    await page.close();
  });
});
