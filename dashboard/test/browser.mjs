// Headless Chromium (Debian's, at CHROMIUM or /usr/bin/chromium) driven by
// playwright-core, with a fresh profile each launch. The flags keep it off
// the network beyond the pages the tests open: this closed network refuses
// Chromium's own connections (updates, sync, field trials).

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { REPO } from "./server.mjs";

export const SCREENSHOTS = process.env.TROVE_SCREENSHOTS ?? join(REPO, "target", "screenshots");

export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), "trove-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** A page whose console errors and uncaught exceptions are collected. */
export async function open(context, url) {
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
  await page.goto(url);
  return { page, errors };
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const path = join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path });
  return path;
}

/** Polls `f` until it returns a truthy value; fails with `what` after `ms`. */
export async function until(what, f, ms = 60_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await f();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Network errors a page logs while its server is down or answers 404 on purpose. */
export function networkError(e) {
  return /Failed to load resource|net::ERR_/.test(e);
}
