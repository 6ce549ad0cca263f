// src/ stays bundleable for a browser (the dashboard bundles it with
// esbuild): no Node built-in and no literal import of `ws` anywhere in it.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const src = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src");

test("src/ imports nothing but its own files", () => {
  const files = readdirSync(src).filter((f) => f.endsWith(".ts"));
  assert.ok(files.includes("index.ts"));
  for (const f of files) {
    const text = readFileSync(join(src, f), "utf8");
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*(?:\/\*.*?\*\/\s*)*)(["'])([^"']+)\1/g)) {
      assert.ok(m[2]!.startsWith("./"), `${f} imports ${m[2]}`);
    }
    assert.doesNotMatch(text, /\brequire\s*\(/, `${f} uses require`);
    assert.doesNotMatch(text, /\bprocess\.|\bBuffer\b/, `${f} uses a Node global`);
  }
});
