// Compressed updates (docs/protocol.md, WebSocket, `compression`): a
// binary message is the raw DEFLATE (RFC 1951) of an update's JSON text.
// Inflated with the platform's `DecompressionStream('deflate-raw')`
// (browsers, Node 18 and later), bounded: a message that inflates past
// the limit, does not inflate, or is not UTF-8 is a `ProtocolError`.

import { ProtocolError } from "./errors.js";

type DecompressionStreamClass = new (format: "deflate-raw") => {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
};

/** Whether this platform can inflate compressed updates (some browsers' DecompressionStream lacks 'deflate-raw'). */
export function canInflate(): boolean {
  const ctor = (globalThis as { DecompressionStream?: DecompressionStreamClass }).DecompressionStream;
  if (typeof ctor !== "function") return false;
  try {
    new ctor("deflate-raw");
    return true;
  } catch {
    return false;
  }
}

/** The text `packed` holds, at most `bytesMax` bytes of it. */
export async function inflateRawText(packed: Uint8Array, bytesMax: number): Promise<string> {
  const ctor = (globalThis as { DecompressionStream?: DecompressionStreamClass }).DecompressionStream;
  if (ctor === undefined) throw new ProtocolError("a compressed update, and no DecompressionStream to inflate it");
  const ds = new ctor("deflate-raw");
  const writer = ds.writable.getWriter();
  // Their failures are the reader's too: reported there.
  writer.write(packed).catch(() => {});
  writer.close().catch(() => {});
  const reader = ds.readable.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > bytesMax) {
        void reader.cancel().catch(() => {});
        throw new ProtocolError(`a compressed update inflates past messageBytesMax ${bytesMax}`);
      }
      parts.push(value);
    }
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    throw new ProtocolError(`a compressed update that does not inflate: ${(e as Error).message}`);
  }
  const whole = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    whole.set(p, at);
    at += p.byteLength;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(whole);
  } catch {
    throw new ProtocolError("a compressed update that is not UTF-8");
  }
}
