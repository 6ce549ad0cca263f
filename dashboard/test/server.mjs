// A real `trove serve` for the browser tests: the binary from TROVE_BIN or
// <repo>/target/debug/trove, a temporary data directory (journaled, so a
// restart keeps the hunts), every listener on 127.0.0.1. It restarts on the
// same ports, as a restarted server would come back for a browser.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "..", "..");

export function binary(env, relative, what) {
  const path = process.env[env] ?? join(REPO, relative);
  if (!existsSync(path)) {
    throw new Error(`no ${what} at ${path}: build it first (cargo xtask test does) or set ${env}`);
  }
  return path;
}

/** Output kept from the server, at most (its last part). */
const OUTPUT_CHARS_MAX = 1 << 20;

export class Server {
  tcp = "";
  ws = "";
  control = "";
  output = "";
  child = undefined;

  constructor(data) {
    this.data = data;
  }

  static async start() {
    const s = new Server(mkdtempSync(join(tmpdir(), "trove-dash-")));
    await s.spawn({ tcp: 0, ws: 0, control: 0 });
    return s;
  }

  /** SIGKILL, then the same directory and ports again. */
  async restart(downMs = 0) {
    const port = (u) => Number(new URL(u).port);
    const ports = { tcp: Number(this.tcp.split(":").pop()), ws: port(this.ws), control: port(this.control) };
    await this.kill();
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    await this.spawn(ports);
  }

  async spawn(ports) {
    const args = ["serve", "--data", join(this.data, "journal"), "--shards", "2"];
    args.push("--tcp", `127.0.0.1:${ports.tcp}`, "--ws", `127.0.0.1:${ports.ws}`, "--control", `127.0.0.1:${ports.control}`);
    const child = spawn(binary("TROVE_BIN", "target/debug/trove", "trove binary"), args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    this.output = "";
    this.tcp = this.ws = this.control = "";
    await new Promise((up, fail) => {
      const deadline = setTimeout(() => fail(new Error(`trove serve did not start in 120 s:\n${this.output}`)), 120_000);
      const read = (chunk) => {
        this.output = (this.output + chunk.toString()).slice(-OUTPUT_CHARS_MAX);
        const tcp = /protocol v1 on tcp:\/\/([0-9.:]+)/.exec(this.output);
        const ws = /websocket \(JSON\) on (ws:\/\/[^\s]+)/.exec(this.output);
        const control = /control plane on (http:\/\/[0-9.:]+)\//.exec(this.output);
        if (tcp && ws && control && this.control === "") {
          [this.tcp, this.ws, this.control] = [tcp[1], ws[1], control[1]];
          clearTimeout(deadline);
          up();
        }
      };
      child.stdout.on("data", read);
      child.stderr.on("data", read);
      child.on("exit", (code, signal) => {
        clearTimeout(deadline);
        if (this.control === "") fail(new Error(`trove serve exited (${code ?? signal}) before listening:\n${this.output}`));
      });
    });
  }

  async kill(signal = "SIGKILL") {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", () => r()));
    child.kill(signal);
    await exited;
    this.child = undefined;
  }

  async dispose() {
    await this.kill("SIGTERM");
    rmSync(this.data, { recursive: true, force: true });
  }

  async post(path, body) {
    const r = await fetch(this.control + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: r.status, body: await r.json() };
  }
}

/** Runs the Rust SDK's producer example against `server` (ADDR HUNT EVENTS RATE); resolves on its exit. */
export function producer(server, hunt, events, rate) {
  const bin = binary("TROVE_PRODUCER_BIN", "target/debug/examples/producer", "producer example");
  const child = spawn(bin, [server.tcp, String(hunt), String(events), String(rate)], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (c) => (output = (output + c).slice(-OUTPUT_CHARS_MAX)));
  child.stderr.on("data", (c) => (output = (output + c).slice(-OUTPUT_CHARS_MAX)));
  const done = new Promise((ok, fail) => {
    child.on("exit", (code, signal) =>
      code === 0 || signal === "SIGTERM" ? ok(output) : fail(new Error(`the producer example exited ${code ?? signal}:\n${output}`)),
    );
  });
  return { child, done, stop: () => child.kill("SIGTERM") };
}
