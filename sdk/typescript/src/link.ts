// One WebSocket connection: opened with a timeout, text messages in and
// out (and binary ones in, for an owner that takes them), closed once. The browser's (and Node 22's) global `WebSocket`
// when there is one; otherwise the `ws` package, loaded by a dynamic
// import whose specifier is not a literal, so that a browser bundle never
// pulls it in.

import { ConnectionError, ProtocolError, TimeoutError, type TroveError } from "./errors.js";

/** The part of the WebSocket API this SDK uses (the browser's, and `ws`'s). */
interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  /** "arraybuffer": binary messages as ArrayBuffer (browsers and `ws` both know it). */
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: stop and restart reading from the socket. */
  pause?: () => void;
  resume?: () => void;
}

type WebSocketClass = new (url: string, protocolsOrOptions?: unknown, options?: unknown) => WebSocketLike;

let wsClass: Promise<{ ctor: WebSocketClass; isWs: boolean }> | undefined;

function webSocketClass(): Promise<{ ctor: WebSocketClass; isWs: boolean }> {
  const global = (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
  if (global !== undefined) return Promise.resolve({ ctor: global, isWs: false });
  if (wsClass === undefined) {
    // Not a literal: bundlers leave it alone, and only Node without a
    // global WebSocket (Node 20) ever runs it.
    const name = "ws";
    wsClass = (import(/* @vite-ignore */ /* webpackIgnore: true */ name) as Promise<{ WebSocket?: WebSocketClass; default?: WebSocketClass }>).then(
      (m) => {
        const ctor = m.WebSocket ?? m.default;
        if (ctor === undefined) throw new ConnectionError("the `ws` package has no WebSocket class");
        return { ctor, isWs: true };
      },
      (e: unknown) => {
        wsClass = undefined;
        throw new ConnectionError(
          `no global WebSocket and the \`ws\` package could not be loaded (npm install ws): ${(e as Error).message}`,
        );
      },
    );
  }
  return wsClass;
}

export interface LinkOptions {
  connectTimeoutMs: number;
  /** Longest message taken from the server; a longer one ends the connection (`ws` refuses it before buffering it). */
  messageBytesMax: number;
  /** More options for `ws`'s constructor (Node without a global WebSocket). */
  nodeWebSocketOptions: Record<string, unknown>;
}

/** One open connection. `onMessage` and `onClose` are set by its owner; `onClose` runs once. */
export class Link {
  onMessage: (text: string) => void = () => {};
  /** Binary messages, if the owner asked for them (compressed updates); unset, one ends the link. */
  onBinary: ((bytes: Uint8Array) => void) | undefined = undefined;
  onClose: (why: TroveError) => void = () => {};
  private closed = false;
  /** The first error that ended the link (what `onClose` gets). */
  private why: TroveError | undefined;
  private paused = false;

  private constructor(
    private readonly ws: WebSocketLike,
    private readonly messageBytesMax: number,
  ) {}

  static async open(url: string, o: LinkOptions): Promise<Link> {
    if (!/^wss?:\/\//i.test(url)) throw new ConnectionError(`url must start with ws:// or wss://, got ${url.slice(0, 100)}`);
    const { ctor, isWs } = await webSocketClass();
    return new Promise<Link>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = isWs
          ? new ctor(url, { ...o.nodeWebSocketOptions, maxPayload: o.messageBytesMax, perMessageDeflate: false })
          : new ctor(url);
      } catch (e) {
        reject(new ConnectionError(`connecting to ${url}: ${(e as Error).message}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      const link = new Link(ws, o.messageBytesMax);
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        ws.onopen = ws.onclose = ws.onmessage = null;
        // `ws` reports the aborted handshake as an error event: keep a listener.
        ws.onerror = () => {};
        try {
          ws.close();
        } catch {
          // closing a socket still connecting may throw in some runtimes
        }
        reject(new TimeoutError(`connecting to ${url}`));
      }, o.connectTimeoutMs);
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        link.attach();
        resolve(link);
      };
      ws.onerror = (ev) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(new ConnectionError(`connecting to ${url}: ${errorText(ev)}`));
      };
      ws.onclose = (ev) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(new ConnectionError(`connecting to ${url}: closed (${ev.code} ${ev.reason})`));
      };
    });
  }

  private attach(): void {
    this.ws.onmessage = (ev) => {
      if (this.closed) return;
      const data = ev.data;
      if (typeof data !== "string") {
        const onBinary = this.onBinary;
        if (onBinary === undefined || !(data instanceof ArrayBuffer)) {
          this.fail(new ProtocolError("the server sent a binary message"));
          return;
        }
        if (data.byteLength > this.messageBytesMax) {
          this.fail(new ProtocolError(`the server sent a message of ${data.byteLength} bytes, above messageBytesMax ${this.messageBytesMax}`));
          return;
        }
        this.handle(() => onBinary(new Uint8Array(data)));
        return;
      }
      if (data.length > this.messageBytesMax) {
        this.fail(new ProtocolError(`the server sent a message of ${data.length} characters, above messageBytesMax ${this.messageBytesMax}`));
        return;
      }
      this.handle(() => this.onMessage(data));
    };
    this.ws.onerror = (ev) => {
      this.fail(new ConnectionError(`connection error: ${errorText(ev)}`));
    };
    this.ws.onclose = (ev) => {
      this.finish(this.why ?? new ConnectionError(`the server closed the connection (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`));
    };
  }

  /**
   * Runs the owner's handler. The owner turns what it cannot read into a
   * typed error; anything else still ends the link, never escapes as an
   * uncaught exception.
   */
  handle(run: () => void): void {
    try {
      run();
    } catch (e) {
      this.fail(e instanceof Error && "fatal" in e ? (e as TroveError) : new ProtocolError(`handling a message: ${String(e)}`));
    }
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  send(text: string): void {
    if (this.closed) return;
    try {
      this.ws.send(text);
    } catch (e) {
      this.fail(new ConnectionError(`send: ${(e as Error).message}`));
    }
  }

  /** Whether reading can be paused (Node with `ws`); a browser cannot. */
  get canPause(): boolean {
    return typeof this.ws.pause === "function";
  }

  pause(): void {
    if (!this.paused && this.ws.pause) {
      this.paused = true;
      this.ws.pause();
    }
  }

  resume(): void {
    if (this.paused && this.ws.resume) {
      this.paused = false;
      this.ws.resume();
    }
  }

  /** Ends the link with `why` (reported once through `onClose`). */
  fail(why: TroveError): void {
    if (this.why === undefined) this.why = why;
    // 1000: the only code below 3000 a browser lets a client send.
    this.close(1000);
  }

  close(code = 1000, reason = ""): void {
    if (this.closed) return;
    try {
      this.resume();
      this.ws.close(code, reason);
    } catch {
      // already closing
    }
    // Report now: a socket that never completes its close handshake must
    // not keep the owner waiting.
    this.finish(this.why ?? new ConnectionError("closed by the client"));
  }

  private finish(why: TroveError): void {
    if (this.closed) return;
    this.closed = true;
    this.ws.onmessage = null;
    this.onClose(why);
  }
}

function errorText(ev: unknown): string {
  const e = ev as { message?: unknown; error?: { message?: unknown } } | null;
  const m = e?.message ?? e?.error?.message;
  return typeof m === "string" && m !== "" ? m : "the WebSocket failed";
}
