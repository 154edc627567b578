// The container-credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI): GET /v1/credentials
// with the pod's own projected token in Authorization. The server validates the token once
// (it must name this pod); the agent remembers that (pod-token-memo.ts) and then answers from
// cached credentials.
import type { IncomingMessage, ServerResponse } from "node:http";
import type { ErrorCode } from "../api/errors.ts";
import type { Outcome } from "./cred-cache.ts";
import { recordRequest, type HandlerDeps } from "./handler-deps.ts";
import { ROUTES } from "./imds-routes.ts";
import type { Lookup } from "./pod-index.ts";
import { JSON_TYPE, send, sendRefusal } from "./replies.ts";
import { admit, pathOf } from "./request-screen.ts";
import { isRefusal, lookupOrWait, servableNow, servablePod } from "./servable-pod.ts";
import { credentialWaitLeftMs } from "./answer-budget.ts";

export const CONTAINER_CREDENTIALS_PATH = "/v1/credentials";
const MAX_TOKEN = 8192;
const TOKEN_CHARS = /^[A-Za-z0-9._-]+$/;

/** One container-credentials request on its way through the handler. */
interface ContainerRequest {
  res: ServerResponse;
  ip: string;
  /** The pod's token as presented (Bearer prefix removed). */
  token: string;
  /** performance.now() when it arrived. */
  start: number;
}

/** The pod's token from the Authorization header (a Bearer prefix is optional), or why it is refused. */
function presentedToken(header: string | undefined): string | { refusal: string } {
  if (typeof header !== "string" || header.length === 0)
    return { refusal: "the Authorization header must carry the pod's service-account token" };
  const token = header.startsWith("Bearer ") ? header.slice(7) : header;
  if (token.length > MAX_TOKEN || !TOKEN_CHARS.test(token)) return { refusal: "malformed token" };
  return token;
}

export function createContainerHandler(d: HandlerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { cfg, cache, metrics } = d;

  function done(start: number, status: number): void {
    recordRequest(metrics, "container", ROUTES.container, start, status);
  }

  function refuse(res: ServerResponse, code: ErrorCode, message: string, start: number): void {
    done(start, sendRefusal(res, code, message, true));
  }

  function answer(r: ContainerRequest, o: Outcome): void {
    if (!o.ok) return refuse(r.res, o.code, o.message, r.start);
    send(r.res, 200, o.creds.containerBody, JSON_TYPE);
    done(r.start, 200);
  }

  function afterLookup(r: ContainerRequest, l: Lookup): void {
    const pod = servablePod(l, r.ip, cfg.allowHostNetwork);
    if (isRefusal(pod)) return refuse(r.res, pod.code, pod.message, r.start);
    metrics.miss("container");
    cache.obtainWithToken(pod, r.token, credentialWaitLeftMs(cfg, performance.now() - r.start)).then(
      (o) => {
        if (!r.res.destroyed) answer(r, o);
      },
      () => refuse(r.res, "Unavailable", "internal error", r.start),
    );
  }

  return function containerHandler(req: IncomingMessage, res: ServerResponse): void {
    const admitted = admit(d, req, res, "container");
    if (admitted === undefined) return;
    const { ip, start } = admitted;
    const path = pathOf(req.url ?? "");
    if (path !== CONTAINER_CREDENTIALS_PATH)
      return refuse(res, path === undefined ? "BadRequest" : "NotFound", "no such path", start);
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET");
      return refuse(res, "MethodNotAllowed", "method not allowed", start);
    }
    const presented = presentedToken(req.headers.authorization);
    if (typeof presented !== "string") return refuse(res, "Unauthenticated", presented.refusal, start);
    const token = presented;
    const r: ContainerRequest = { res, ip, token, start };
    // Fast path: a token this pod already proved, and cached credentials.
    const pod = servableNow(d, ip);
    if (pod !== undefined) {
      const c = cache.fresh(pod.uid, "container");
      if (c !== undefined && cache.tokenValid(pod.uid, token)) {
        metrics.hit("container");
        send(res, 200, c.containerBody, JSON_TYPE);
        return done(start, 200);
      }
    }
    lookupOrWait(d, ip, (l) => {
      if (!res.destroyed) afterLookup(r, l);
    });
  };
}
