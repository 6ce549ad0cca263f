// `npm test`: Node's test runner over every compiled test file (or those
// named: `npm test -- dist/test/gaps.test.js`), one file at a time, with
// a bound per test and one on the whole run, so that a hung test fails CI
// in minutes instead of waiting out its job limit. Generous bounds: the
// tests start real servers on a loaded, shared machine.

import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** One test (an `it`/`test` with everything it awaits). */
export const TEST_MS_MAX = 300_000;
/** The whole run, every file. */
export const RUN_MS_MAX = 40 * 60_000;

const here = dirname(fileURLToPath(import.meta.url));
const named = process.argv.slice(2);
const files = named.length > 0 ? named : readdirSync(here).filter((f) => f.endsWith(".test.js")).sort().map((f) => join(here, f));

const child = spawn(
  process.execPath,
  ["--test", "--test-concurrency=1", `--test-timeout=${TEST_MS_MAX}`, "--test-force-exit", ...files],
  // Its own process group: on the run's deadline the runner, its file
  // processes and the servers they started all go.
  { stdio: "inherit", detached: true },
);

const killGroup = (sig: NodeJS.Signals) => {
  try {
    process.kill(-child.pid!, sig);
  } catch {
    // already gone
  }
};

const deadline = setTimeout(() => {
  console.error(`npm test: the run took longer than ${RUN_MS_MAX / 60_000} minutes; stopping it`);
  killGroup("SIGTERM");
  setTimeout(() => killGroup("SIGKILL"), 10_000).unref();
  process.exitCode = 1;
}, RUN_MS_MAX);

for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    killGroup(sig);
    process.exitCode = 1;
  });
}

child.on("exit", (code, signal) => {
  clearTimeout(deadline);
  if (process.exitCode === undefined || process.exitCode === 0) process.exitCode = code ?? (signal ? 1 : 0);
});
