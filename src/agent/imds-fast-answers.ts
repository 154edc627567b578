// The IMDS answers the fast path (imds-fast-path.ts) gives without node:http: a token for a
// known pod, and the credential routes from cached credentials. Whatever else a request needs
// (a wait, a fetch, a refusal, an error) is left to the full handler (imds-handler.ts):
// undefined, no side effect. Where it answers, it answers as the full handler does: the same
// servable-pod check, token check, metrics and rate limit.
import { httpStatus } from "../api/errors.ts";
import { recordRequest, type HandlerDeps } from "./handler-deps.ts";
import type { FastReply, FastRequest, FastResponder } from "./imds-fast-path.ts";
import type { CachedCreds } from "./imds-documents.ts";
import { ROUTES, credsReply, hotRouteOf } from "./imds-routes.ts";
import { parseTtl } from "./imds-token.ts";
import { IMDS_TEXT } from "./replies.ts";
import { pathOf } from "./request-screen.ts";
import { servableNow } from "./servable-pod.ts";

export function createImdsFastResponder(d: HandlerDeps): FastResponder {
  const { cfg, cache, tokens, metrics } = d;
  return function fastImds(r: FastRequest): FastReply | undefined {
    const route = hotRouteOf(r.path);
    if (route === undefined || (route === ROUTES.token) !== (r.method === "PUT")) return undefined;
    if (pathOf(r.path) !== r.path) return undefined;
    const pod = servableNow(d, r.ip);
    if (pod === undefined) return undefined;
    let ttl: number | undefined;
    let c: CachedCreds | undefined;
    if (route === ROUTES.token) {
      ttl = parseTtl(r.ttl);
      if (ttl === undefined) return undefined;
    } else {
      if (r.token === undefined ? cfg.requireImdsV2 : !tokens.verify(r.token, pod.uid)) return undefined;
      c = cache.fresh(pod.uid, "imds");
      if (c === undefined) return undefined;
    }
    if (!d.limiter.take(r.ip)) {
      metrics.limited("imds");
      const status = httpStatus("Throttled");
      recordRequest(metrics, "imds", ROUTES.other, r.start, status);
      return { status, body: IMDS_TEXT.tooMany };
    }
    if (c === undefined) {
      recordRequest(metrics, "imds", route, r.start, 200);
      return { status: 200, body: tokens.issue(pod.uid, ttl!), ttl: String(ttl) };
    }
    metrics.hit("imds");
    const reply = credsReply(route, r.path, c);
    recordRequest(metrics, "imds", route, r.start, reply.status);
    return reply;
  };
}
