// Requests to the control plane that served this page, with the bearer
// token when one is set (servers with tokens): `?token=...` in the page's
// address is kept for the tab in sessionStorage and taken out of the address.

const TOKEN_KEY = "trove.token";

export function token(): string | null {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given !== null) {
    sessionStorage.setItem(TOKEN_KEY, given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function headers(): Record<string, string> {
  const t = token();
  return t === null ? {} : { Authorization: `Bearer ${t}` };
}

/** A JSON body, or the server's error `{error, message}` with the status. */
export type Answer = { ok: true; body: unknown } | { ok: false; status: number; code: string; message: string };

/** Largest JSON answer read (a hunt's detail is a few KiB). */
const ANSWER_CHARS_MAX = 4 << 20;

export async function getJson(path: string, signal?: AbortSignal): Promise<Answer> {
  const r = await fetch(path, { headers: headers(), signal, cache: "no-store" });
  const text = await r.text();
  let body: unknown = null;
  if (text.length <= ANSWER_CHARS_MAX) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (r.ok) return { ok: true, body };
  const b = (body ?? {}) as { error?: unknown; message?: unknown };
  return {
    ok: false,
    status: r.status,
    code: typeof b.error === "string" ? b.error : `http_${r.status}`,
    message: typeof b.message === "string" ? b.message : r.statusText,
  };
}
