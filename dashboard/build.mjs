// Builds the dashboard into crates/trove-server/src/dashboard/, where the
// control plane embeds it (include_str!): esbuild bundles src/main.ts with
// the TypeScript SDK's source (sdk/typescript/src) into one app.js, and
// index.html and app.css are copied as they are. The output is
// deterministic, so `node build.mjs --check` (run by `cargo xtask test`)
// rebuilds in memory and fails if the committed files differ.

import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "crates", "trove-server", "src", "dashboard");
const check = process.argv.includes("--check");

const result = await build({
  // Paths in the bundle's comments are relative to this folder, whoever runs it.
  absWorkingDir: here,
  entryPoints: [join(here, "src", "main.ts")],
  bundle: true,
  format: "iife",
  target: "es2022",
  platform: "browser",
  charset: "utf8",
  legalComments: "none",
  minify: false,
  sourcemap: false,
  write: false,
  logLevel: "warning",
  banner: { js: "// Built by dashboard/build.mjs from dashboard/src and sdk/typescript/src: do not edit." },
});
if (result.errors.length > 0) process.exit(1);

const files = new Map([
  ["app.js", result.outputFiles[0].text],
  ["index.html", readFileSync(join(here, "src", "index.html"), "utf8")],
  ["app.css", readFileSync(join(here, "src", "app.css"), "utf8")],
]);

if (check) {
  const stale = [];
  for (const [name, text] of files) {
    let committed = "";
    try {
      committed = readFileSync(join(out, name), "utf8");
    } catch {}
    if (committed !== text) stale.push(name);
  }
  if (stale.length > 0) {
    console.error(
      `the committed dashboard is stale: ${stale.map((n) => `crates/trove-server/src/dashboard/${n}`).join(", ")} ` +
        `differ from a fresh build of dashboard/src. Run \`cd dashboard && npm ci && npm run build\` and commit the result.`,
    );
    process.exit(1);
  }
  console.log(`dashboard bundle is fresh (${[...files.keys()].join(", ")})`);
} else {
  mkdirSync(out, { recursive: true });
  for (const [name, text] of files) writeFileSync(join(out, name), text);
  console.log(`built ${[...files.keys()].map((n) => `crates/trove-server/src/dashboard/${n}`).join(", ")}`);
}
