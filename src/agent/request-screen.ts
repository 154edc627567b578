// What every pod-facing request is checked for before routing: who sent it, no body, a bounded
// URI, and a plain path (unencoded, nothing that traverses).
import type { IncomingMessage, ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import { recordRequest, type HandlerDeps } from "./handler-deps.ts";
import { ROUTES } from "./imds-routes.ts";
import { IMDS_TEXT, sendImdsText, sendRefusal } from "./replies.ts";

const MAX_URL = 1024;
/** Bodies announced above this are too large; any other body is simply not accepted. */
const MAX_ANNOUNCED_BODY = 4096;
/** Only plain, unencoded, non-traversing paths; nothing else reaches routing. */
const SAFE_PATH = /^\/[A-Za-z0-9._\-/]*$/;

/** The peer's address, IPv4-mapped IPv6 written as IPv4: one host is one source. */
export function sourceIp(req: IncomingMessage): string {
  const a = req.socket.remoteAddress ?? "";
  return a.startsWith("::ffff:") ? a.slice(7) : a;
}

/**
 * Where every pod-facing request starts: its source within its rate limit, and screened. The
 * source and arrival time, or undefined when the request was already answered (and counted).
 */
export function admit(
  d: HandlerDeps,
  req: IncomingMessage,
  res: ServerResponse,
  listener: "imds" | "container",
): { ip: string; start: number } | undefined {
  const start = performance.now();
  const ip = sourceIp(req);
  const json = listener === "container";
  if (!d.limiter.take(ip)) {
    d.metrics.limited(listener);
    const status = json
      ? sendRefusal(res, "Throttled", "too many requests", true)
      : sendImdsText(res, "Throttled", IMDS_TEXT.tooMany);
    recordRequest(d.metrics, listener, json ? ROUTES.container : ROUTES.other, start, status);
    return undefined;
  }
  if (!screen(req, res, json)) {
    recordRequest(d.metrics, listener, json ? ROUTES.container : ROUTES.bad, start, res.statusCode);
    return undefined;
  }
  return { ip, start };
}

/** Refuses bodies and overlong URIs. Returns false when an answer was already sent. */
function screen(req: IncomingMessage, res: ServerResponse, json: boolean): boolean {
  const url = req.url ?? "";
  const te = req.headers["transfer-encoding"];
  const cl = req.headers["content-length"];
  if ((cl !== undefined && cl !== "0") || te !== undefined) {
    res.shouldKeepAlive = false;
    const code = cl !== undefined && Number(cl) > MAX_ANNOUNCED_BODY ? "PayloadTooLarge" : "BadRequest";
    sendRefusal(res, code, "request bodies are not accepted", json);
    return false;
  }
  if (url.length > MAX_URL) {
    sendRefusal(res, "UriTooLong", "URI too long", json);
    return false;
  }
  return true;
}

/** The path of `url` when it is plain; undefined for anything that must not reach routing. */
export function pathOf(url: string): string | undefined {
  const q = url.indexOf("?");
  const path = q >= 0 ? url.slice(0, q) : url;
  if (!SAFE_PATH.test(path)) return undefined;
  if (
    path.includes("//") ||
    path.includes("/./") ||
    path.includes("/../") ||
    path.endsWith("/..") ||
    path.endsWith("/.")
  ) {
    return undefined;
  }
  return path;
}
