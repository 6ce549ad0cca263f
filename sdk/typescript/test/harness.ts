// Starts and stops a real `trove serve` for the tests: the binary from
// TROVE_BIN or <repo>/target/debug/trove, every listener on port 0 (the
// addresses are read from what it prints), a temporary data directory.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository root: sdk/typescript/dist/test -> ../../../.. */
export const REPO = resolve(here, "..", "..", "..", "..");

export function troveBin(): string {
  const bin = process.env["TROVE_BIN"] || join(REPO, "target", "debug", "trove");
  if (!existsSync(bin)) {
    throw new Error(
      `no trove binary at ${bin}: build it first (cargo build -p trove, in ${REPO}) or set TROVE_BIN to one`,
    );
  }
  return bin;
}

export interface ServeOptions {
  /** Extra TOML for --config (sections [engine], [limits]...). */
  toml?: string;
  /** Extra flags. */
  args?: string[];
}

export class Server {
  tcp = "";
  ws = "";
  control = "";
  private child: ChildProcess | undefined;
  private output = "";

  private constructor(
    readonly data: string,
    private readonly opts: ServeOptions,
  ) {}

  /** Starts a server on a fresh data directory. */
  static async start(opts: ServeOptions = {}): Promise<Server> {
    const data = mkdtempSync(join(tmpdir(), "trove-ts-"));
    const s = new Server(data, opts);
    await s.spawn();
    return s;
  }

  /** Starts the process on the same data directory again, on the same ports. */
  async restart(): Promise<void> {
    const ports = { ws: new URL(this.ws).port, control: new URL(this.control).port };
    await this.kill9();
    await this.spawn(ports);
  }

  /** (Re)starts the process on the same data directory: on new ports, or on these. */
  async spawn(ports?: { ws: string; control: string }): Promise<void> {
    const args = ["serve", "--data", join(this.data, "journal"), "--tcp", "127.0.0.1:0"];
    args.push("--ws", `127.0.0.1:${ports?.ws ?? 0}`, "--control", `127.0.0.1:${ports?.control ?? 0}`);
    if (this.opts.toml !== undefined) {
      const file = join(this.data, "trove.toml");
      writeFileSync(file, this.opts.toml);
      args.push("--config", file);
    }
    args.push(...(this.opts.args ?? []));
    const child = spawn(troveBin(), args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    // A test that fails or is cut short leaves no server behind.
    const reap = () => child.kill("SIGKILL");
    process.once("exit", reap);
    child.once("exit", () => process.removeListener("exit", reap));
    this.output = "";
    this.ws = this.control = "";
    await new Promise<void>((resolveUp, reject) => {
      const deadline = setTimeout(() => reject(new Error(`trove serve did not start in 60 s:\n${this.output}`)), 60_000);
      const read = (chunk: Buffer) => {
        this.output += chunk.toString();
        if (this.output.length > 1 << 20) this.output = this.output.slice(-(1 << 19));
        const ws = /websocket \(JSON\) on (ws:\/\/[^\s]+)/.exec(this.output);
        const control = /control plane on (http:\/\/[0-9.:]+)\//.exec(this.output);
        if (ws && control && this.ws === "") {
          this.ws = ws[1]!;
          this.control = control[1]!;
          this.tcp = /protocol v1 on tcp:\/\/([0-9.:]+)/.exec(this.output)?.[1] ?? "";
          clearTimeout(deadline);
          resolveUp();
        }
      };
      child.stdout!.on("data", read);
      child.stderr!.on("data", read);
      child.on("exit", (code, signal) => {
        clearTimeout(deadline);
        if (this.ws === "") reject(new Error(`trove serve exited (${code ?? signal}) before listening:\n${this.output}`));
      });
    });
  }

  /** SIGKILL, and wait for the exit. */
  async kill9(): Promise<void> {
    await this.signal("SIGKILL");
  }

  /** SIGTERM (drains), and wait for the exit. */
  async stop(): Promise<void> {
    await this.signal("SIGTERM");
  }

  private async signal(sig: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill(sig);
    await exited;
    this.child = undefined;
  }

  /** Stops the server and removes its data directory. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.data, { recursive: true, force: true });
  }

  get log(): string {
    return this.output;
  }

  async get(path: string): Promise<{ status: number; body: unknown }> {
    const r = await fetch(this.control + path);
    const text = await r.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON (metrics)
    }
    return { status: r.status, body };
  }

  async del(path: string): Promise<{ status: number; body: unknown }> {
    const r = await fetch(this.control + path, { method: "DELETE" });
    const text = await r.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // keep text
    }
    return { status: r.status, body: parsed };
  }

  async post(path: string, body: unknown): Promise<{ status: number; body: unknown }> {
    const r = await fetch(this.control + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const text = await r.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // keep text
    }
    return { status: r.status, body: parsed };
  }
}

/** Polls `f` until it returns a value other than undefined, or fails after `ms`. */
export async function eventually<T>(what: string, f: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${String(last)})` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Races `p` against a generous deadline, so that a test fails instead of hanging. */
export function within<T>(what: string, p: Promise<T>, ms = 30_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

export const CONFIG = {
  width: 64,
  height: 64,
  seed: 7,
  treasures_per_round: 4,
  value_min: 1,
  value_max: 9,
  dig_cooldown_ms: 0,
  step_max: 4,
  players_max: 1000,
};
