// The pod-facing HTTP surface: the IMDS-compatible endpoint and the container-credentials
// endpoint, on node:http. The hot path (known pod, cached credentials) is fully synchronous: a
// Map lookup by source IP, a token check, and a write of a pre-serialised Buffer. On the IMDS
// listener those answers are given before node:http is involved (createImdsFastResponder,
// called by imds-fast-path.ts); the full handler answers everything, the same way.
import type { IncomingMessage, ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import type { Logger } from "../common/logger.ts";
import type { ErrorCode } from "../api/contract.ts";
import type { PodIndex, PodInfo, Lookup } from "./pod-index.ts";
import type { CredCache, CachedCreds, Outcome } from "./cred-cache.ts";
import type { ImdsTokens } from "./imds-token.ts";
import { parseTtl } from "./imds-token.ts";
import type { AgentMetrics } from "./metrics.ts";
import type { RateLimiter } from "./rate-limit.ts";
import type { Passthrough } from "./passthrough.ts";
import type { FastReply, FastRequest, FastResponder } from "./imds-fast-path.ts";
import type { WaitSlots } from "./wait-slots.ts";
import { credentialWaitLeftMs } from "./answer-budget.ts";

export interface HandlerConfig {
  requireImdsV2: boolean;
  allowHostNetwork: boolean;
  /** How long a request from an unknown IP waits for the pod watch. */
  unknownPodWaitMs: number;
  /** How long a request waits for the credential service on a cache miss. */
  credentialWaitMs: number;
  /** Requests waiting for an unknown pod, all IPs together; beyond it: immediate 404. */
  maxWaiting: number;
  /** Requests waiting for an unknown pod from one source IP; beyond it: immediate 404. */
  maxWaitingPerSource: number;
  region: string;
  availabilityZone: string;
  accountId: string;
  instanceId: string;
  instanceType: string;
}

export interface HandlerDeps {
  cfg: HandlerConfig;
  index: PodIndex;
  cache: CredCache;
  tokens: ImdsTokens;
  metrics: AgentMetrics;
  limiter: Pick<RateLimiter, "take">;
  passthrough: Passthrough | undefined;
  /** The bounded waits for unknown pods, shared by both listeners (cfg.maxWaiting*). */
  waits: WaitSlots;
  log: Logger;
}

const TEXT = "text/plain";
const JSON_TYPE = "application/json";
const MAX_URL = 1024;
/** Only plain, unencoded, non-traversing paths; nothing else reaches routing. */
const SAFE_PATH = /^\/[A-Za-z0-9._\-/]*$/;

export const ROUTES = {
  token: "token",
  credList: "credentials-list",
  cred: "credentials",
  credExtList: "credentials-extended-list",
  credExt: "credentials-extended",
  info: "iam-info",
  region: "region",
  az: "availability-zone",
  identity: "identity-document",
  listing: "listing",
  passthrough: "passthrough",
  other: "other",
  bad: "bad-request",
  container: "container-credentials",
} as const;

const CRED_PREFIX = "/latest/meta-data/iam/security-credentials/";
const CRED_EXT_PREFIX = "/latest/meta-data/iam/security-credentials-extended/";

export function sourceIp(req: IncomingMessage): string {
  const a = req.socket.remoteAddress ?? "";
  return a.startsWith("::ffff:") ? a.slice(7) : a;
}

interface Refusal {
  status: number;
  code: ErrorCode;
  message: string;
}

function refusalFor(l: Lookup, ip: string, allowHostNetwork: boolean): Refusal | PodInfo {
  switch (l.kind) {
    case "pod":
      if (l.pod.hostNetwork && !allowHostNetwork) {
        return {
          status: 403,
          code: "Forbidden",
          message: "hostNetwork pods are not served (they share the node's IP)",
        };
      }
      return l.pod;
    case "hostNetwork":
      return {
        status: 403,
        code: "Forbidden",
        message: "hostNetwork pods are not served (they share the node's IP)",
      };
    case "ambiguous":
      return {
        status: 409,
        code: "PodNotFound",
        message: `more than one pod claims ${ip}; refusing to guess`,
      };
    case "none":
      return { status: 404, code: "PodNotFound", message: `no pod on this node has IP ${ip}` };
  }
}

function isRefusal(x: Refusal | PodInfo): x is Refusal {
  return (x as Refusal).status !== undefined;
}

/**
 * Looks `ip` up, waiting a bounded time for the pod watch when it is unknown and a wait slot is
 * free for it; otherwise the current lookup at once (an unknown IP: 404).
 */
function lookupOrWait(d: HandlerDeps, ip: string, then: (l: Lookup) => void): void {
  const l = d.index.lookup(ip);
  if (l.kind !== "none") return then(l);
  const release = d.waits.acquire(ip);
  if (typeof release !== "function") {
    d.metrics.waitRefused(release);
    return then(l);
  }
  d.index.waitFor(ip, d.cfg.unknownPodWaitMs).then((l2) => {
    release();
    then(l2);
  });
}

/** Common request screening. Returns false when an answer was already sent. */
function screen(req: IncomingMessage, res: ServerResponse, json: boolean): boolean {
  const url = req.url ?? "";
  const te = req.headers["transfer-encoding"];
  const cl = req.headers["content-length"];
  if ((cl !== undefined && cl !== "0") || te !== undefined) {
    res.shouldKeepAlive = false;
    const status = cl !== undefined && Number(cl) > 4096 ? 413 : 400;
    sendError(res, status, "BadRequest", "request bodies are not accepted", json);
    return false;
  }
  if (url.length > MAX_URL) {
    sendError(res, 414, "BadRequest", "URI too long", json);
    return false;
  }
  return true;
}

function pathOf(url: string): string | undefined {
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

function send(res: ServerResponse, status: number, body: Buffer | string, type: string): void {
  res.writeHead(status, {
    "content-type": type,
    "content-length": typeof body === "string" ? Buffer.byteLength(body) : body.length,
    server: "keycutter",
  });
  res.end(body);
}

function sendError(
  res: ServerResponse,
  status: number,
  code: ErrorCode,
  message: string,
  json: boolean,
): void {
  if (json) send(res, status, JSON.stringify({ code, message }), JSON_TYPE);
  else send(res, status, message + "\n", TEXT);
}

/** IMDS answers for credential failures: 404 for "no credentials for you", 503 for "try again". */
function imdsStatus(o: Extract<Outcome, { ok: false }>): number {
  switch (o.code) {
    case "Throttled":
    case "Unavailable":
    case "Unauthenticated":
    case "BadRequest":
    case "PayloadTooLarge":
      return 503;
    default:
      return 404;
  }
}

const TOKEN_PATH = "/latest/api/token";
const NOT_FOUND = "Not Found\n";
const TOO_MANY = "Too Many Requests\n";

/** The routes answered from cached credentials (and the token route); undefined for others. */
function hotRouteOf(path: string): string | undefined {
  if (path === TOKEN_PATH) return ROUTES.token;
  if (path === "/latest/meta-data/iam/security-credentials" || path === CRED_PREFIX) return ROUTES.credList;
  if (path.startsWith(CRED_PREFIX)) return ROUTES.cred;
  if (path === "/latest/meta-data/iam/security-credentials-extended" || path === CRED_EXT_PREFIX)
    return ROUTES.credExtList;
  if (path.startsWith(CRED_EXT_PREFIX)) return ROUTES.credExt;
  if (path === "/latest/meta-data/iam/info") return ROUTES.info;
  return undefined;
}

/** The answer to a credentials route from cached credentials. */
function credsReply(route: string, path: string, c: CachedCreds): FastReply {
  switch (route) {
    case ROUTES.credList:
    case ROUTES.credExtList:
      return { status: 200, body: c.roleNameBody };
    case ROUTES.cred:
    case ROUTES.credExt: {
      const prefix = route === ROUTES.cred ? CRED_PREFIX : CRED_EXT_PREFIX;
      if (path.length - prefix.length !== c.roleName.length || !path.endsWith(c.roleName))
        return { status: 404, body: NOT_FOUND };
      return { status: 200, body: route === ROUTES.cred ? c.imdsBody : c.imdsExtBody };
    }
    default:
      return { status: 200, body: c.infoBody };
  }
}

function recordImds(metrics: AgentMetrics, start: number, route: string, status: number): void {
  metrics.request("imds", route, status, (performance.now() - start) / 1000);
}

/**
 * The IMDS answers the fast path (imds-fast-path.ts) gives without node:http: a token for a
 * known pod, and the credential routes from cached credentials. Whatever else a request needs
 * (a wait, a fetch, a refusal, an error) is left to the full handler: undefined, no side effect.
 * Where it answers, it answers as the full handler does: same checks, metrics and rate limit.
 */
export function createImdsFastResponder(d: HandlerDeps): FastResponder {
  const { cfg, index, cache, tokens, metrics } = d;
  return function fastImds(r: FastRequest): FastReply | undefined {
    const route = hotRouteOf(r.path);
    if (route === undefined || (route === ROUTES.token) !== (r.method === "PUT")) return undefined;
    if (pathOf(r.path) !== r.path) return undefined;
    const l = index.lookup(r.ip);
    if (l.kind !== "pod" || (l.pod.hostNetwork && !cfg.allowHostNetwork)) return undefined;
    const uid = l.pod.uid;
    let ttl: number | undefined;
    let c: CachedCreds | undefined;
    if (route === ROUTES.token) {
      ttl = parseTtl(r.ttl);
      if (ttl === undefined) return undefined;
    } else {
      if (r.token === undefined ? cfg.requireImdsV2 : !tokens.verify(r.token, uid)) return undefined;
      c = cache.fresh(uid);
      if (c === undefined) return undefined;
    }
    if (!d.limiter.take(r.ip)) {
      metrics.limited("imds");
      recordImds(metrics, r.start, ROUTES.other, 429);
      return { status: 429, body: TOO_MANY };
    }
    if (c === undefined) {
      recordImds(metrics, r.start, route, 200);
      return { status: 200, body: tokens.issue(uid, ttl!), ttl: String(ttl) };
    }
    metrics.hit("imds");
    const reply = credsReply(route, r.path, c);
    recordImds(metrics, r.start, route, reply.status);
    return reply;
  };
}

export function createImdsHandler(d: HandlerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { cfg, cache, tokens, metrics } = d;
  const regionBody = Buffer.from(cfg.region);
  const azBody = Buffer.from(cfg.availabilityZone);
  const identityBody = Buffer.from(
    JSON.stringify(
      {
        accountId: cfg.accountId,
        architecture: "x86_64",
        availabilityZone: cfg.availabilityZone,
        billingProducts: null,
        devpayProductCodes: null,
        marketplaceProductCodes: null,
        imageId: "ami-00000000000000000",
        instanceId: cfg.instanceId,
        instanceType: cfg.instanceType,
        kernelId: null,
        pendingTime: new Date().toISOString().replace(/\.\d{3}Z$/, "Z"),
        privateIp: "",
        ramdiskId: null,
        region: cfg.region,
        version: "2017-09-30",
      },
      null,
      2,
    ),
  );
  const listings: Record<string, Buffer> = {
    "/latest": Buffer.from("dynamic\nmeta-data"),
    "/latest/": Buffer.from("dynamic\nmeta-data"),
    "/latest/meta-data": Buffer.from("iam/\nplacement/"),
    "/latest/meta-data/": Buffer.from("iam/\nplacement/"),
    "/latest/meta-data/iam": Buffer.from("info\nsecurity-credentials/"),
    "/latest/meta-data/iam/": Buffer.from("info\nsecurity-credentials/"),
    "/latest/meta-data/placement": Buffer.from("availability-zone\nregion"),
    "/latest/meta-data/placement/": Buffer.from("availability-zone\nregion"),
    "/latest/dynamic": Buffer.from("instance-identity/"),
    "/latest/dynamic/": Buffer.from("instance-identity/"),
    "/latest/dynamic/instance-identity": Buffer.from("document"),
    "/latest/dynamic/instance-identity/": Buffer.from("document"),
  };

  function done(start: number, route: string, status: number): void {
    recordImds(metrics, start, route, status);
  }

  function routeOf(path: string): string {
    const hot = hotRouteOf(path);
    if (hot !== undefined) return hot;
    // an allowlisted node path comes from the real IMDS (e.g. placement/* for the node's own zone)
    // rather than from the agent's configured stand-ins; credential paths never get this far
    if (d.passthrough?.allows(path)) return ROUTES.passthrough;
    if (path === "/latest/meta-data/placement/region") return ROUTES.region;
    if (path === "/latest/meta-data/placement/availability-zone") return ROUTES.az;
    if (path === "/latest/dynamic/instance-identity/document") return ROUTES.identity;
    if (listings[path] !== undefined) return ROUTES.listing;
    return ROUTES.other;
  }

  function answerCreds(res: ServerResponse, route: string, path: string, c: CachedCreds): number {
    const r = credsReply(route, path, c);
    send(res, r.status, r.body, TEXT);
    return r.status;
  }

  function serve(
    req: IncomingMessage,
    res: ServerResponse,
    pod: PodInfo,
    route: string,
    path: string,
    start: number,
  ): void {
    switch (route) {
      case ROUTES.token: {
        const ttl = parseTtl(req.headers["x-aws-ec2-metadata-token-ttl-seconds"]);
        if (ttl === undefined) {
          send(
            res,
            400,
            "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be an integer from 1 to 21600\n",
            TEXT,
          );
          return done(start, route, 400);
        }
        const token = tokens.issue(pod.uid, ttl);
        res.writeHead(200, {
          "content-type": TEXT,
          "content-length": token.length,
          "x-aws-ec2-metadata-token-ttl-seconds": String(ttl),
          server: "keycutter",
        });
        res.end(token);
        return done(start, route, 200);
      }
      case ROUTES.region:
        send(res, 200, regionBody, TEXT);
        return done(start, route, 200);
      case ROUTES.az:
        send(res, 200, azBody, TEXT);
        return done(start, route, 200);
      case ROUTES.identity:
        send(res, 200, identityBody, TEXT);
        return done(start, route, 200);
      case ROUTES.listing:
        send(res, 200, listings[path]!, TEXT);
        return done(start, route, 200);
      case ROUTES.passthrough: {
        d.passthrough!.get(path).then(
          (a) => {
            const status = a.status === 200 || a.status === 404 ? a.status : 502;
            send(res, status, status === 502 ? "Bad Gateway\n" : a.body, a.contentType);
            done(start, route, status);
          },
          () => {
            send(res, 502, "Bad Gateway\n", TEXT);
            done(start, route, 502);
          },
        );
        return;
      }
      case ROUTES.credList:
      case ROUTES.cred:
      case ROUTES.credExtList:
      case ROUTES.credExt:
      case ROUTES.info: {
        const c = cache.fresh(pod.uid);
        if (c !== undefined) {
          metrics.hit("imds");
          return done(start, route, answerCreds(res, route, path, c));
        }
        metrics.miss("imds");
        cache.obtain(pod, credentialWaitLeftMs(cfg, performance.now() - start)).then(
          (o) => {
            if (res.destroyed) return;
            if (o.ok) return done(start, route, answerCreds(res, route, path, o.creds));
            const status = imdsStatus(o);
            send(res, status, `${o.code}: ${o.message}\n`, TEXT);
            done(start, route, status);
          },
          () => {
            send(res, 503, "Service Unavailable\n", TEXT);
            done(start, route, 503);
          },
        );
        return;
      }
      default:
        send(res, 404, NOT_FOUND, TEXT);
        return done(start, route, 404);
    }
  }

  function afterLookup(
    req: IncomingMessage,
    res: ServerResponse,
    l: Lookup,
    ip: string,
    route: string,
    path: string,
    start: number,
  ): void {
    const r = refusalFor(l, ip, cfg.allowHostNetwork);
    if (isRefusal(r)) {
      // A 403, 404 or 405 on the token PUT switches Go and JS clients to IMDSv1 for good; an IP
      // not known (yet) is "try again", which they retry or take for this call only.
      const status = route === ROUTES.token && l.kind === "none" ? 503 : r.status;
      sendError(res, status, r.code, r.message, false);
      return done(start, route, status);
    }
    if (route !== ROUTES.token) {
      const tok = req.headers["x-aws-ec2-metadata-token"];
      if (tok !== undefined && (typeof tok !== "string" || !tokens.verify(tok, r.uid))) {
        send(res, 401, "Unauthorized\n", TEXT);
        return done(start, route, 401);
      }
    }
    serve(req, res, r, route, path, start);
  }

  return function imdsHandler(req: IncomingMessage, res: ServerResponse): void {
    const start = performance.now();
    const ip = sourceIp(req);
    if (!d.limiter.take(ip)) {
      metrics.limited("imds");
      send(res, 429, TOO_MANY, TEXT);
      return done(start, ROUTES.other, 429);
    }
    if (!screen(req, res, false)) return done(start, ROUTES.bad, res.statusCode);
    const path = pathOf(req.url ?? "");
    if (path === undefined) {
      send(res, 400, "Bad Request\n", TEXT);
      return done(start, ROUTES.bad, 400);
    }
    const route = routeOf(path);
    const method = req.method;
    if (route === ROUTES.token) {
      if (method !== "PUT") {
        res.setHeader("allow", "PUT");
        send(res, 405, "Method Not Allowed\n", TEXT);
        return done(start, route, 405);
      }
      if (req.headers["x-forwarded-for"] !== undefined) {
        send(res, 403, "Forbidden: proxied token requests are refused\n", TEXT);
        return done(start, route, 403);
      }
    } else {
      if (method !== "GET" && method !== "HEAD") {
        res.setHeader("allow", "GET, HEAD");
        send(res, 405, "Method Not Allowed\n", TEXT);
        return done(start, route, 405);
      }
      const tok = req.headers["x-aws-ec2-metadata-token"];
      if (tok === undefined && cfg.requireImdsV2) {
        send(res, 401, "Unauthorized\n", TEXT);
        return done(start, route, 401);
      }
      if (route === ROUTES.other) {
        send(res, 404, NOT_FOUND, TEXT);
        return done(start, route, 404);
      }
    }
    lookupOrWait(d, ip, (l) => {
      if (!res.destroyed) afterLookup(req, res, l, ip, route, path, start);
    });
  };
}

export function createContainerHandler(d: HandlerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { cfg, index, cache, metrics } = d;
  const route = ROUTES.container;

  function done(start: number, status: number): void {
    metrics.request("container", route, status, (performance.now() - start) / 1000);
  }

  function answer(res: ServerResponse, o: Outcome, start: number): void {
    if (o.ok) {
      send(res, 200, o.creds.containerBody, JSON_TYPE);
      return done(start, 200);
    }
    sendError(res, o.status, o.code, o.message, true);
    done(start, o.status);
  }

  function afterLookup(res: ServerResponse, l: Lookup, ip: string, token: string, start: number): void {
    const r = refusalFor(l, ip, cfg.allowHostNetwork);
    if (isRefusal(r)) {
      sendError(res, r.status, r.code, r.message, true);
      return done(start, r.status);
    }
    metrics.miss("container");
    cache.obtainWithToken(r, token, credentialWaitLeftMs(cfg, performance.now() - start)).then(
      (o) => {
        if (!res.destroyed) answer(res, o, start);
      },
      () => {
        sendError(res, 503, "Unavailable", "internal error", true);
        done(start, 503);
      },
    );
  }

  return function containerHandler(req: IncomingMessage, res: ServerResponse): void {
    const start = performance.now();
    const ip = sourceIp(req);
    if (!d.limiter.take(ip)) {
      metrics.limited("container");
      sendError(res, 429, "Throttled", "too many requests", true);
      return done(start, 429);
    }
    if (!screen(req, res, true)) return done(start, res.statusCode);
    const path = pathOf(req.url ?? "");
    if (path !== "/v1/credentials") {
      sendError(
        res,
        path === undefined ? 400 : 404,
        path === undefined ? "BadRequest" : "PodNotFound",
        "no such path",
        true,
      );
      return done(start, path === undefined ? 400 : 404);
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET");
      sendError(res, 405, "BadRequest", "method not allowed", true);
      return done(start, 405);
    }
    let token = req.headers.authorization;
    if (typeof token !== "string" || token.length === 0) {
      sendError(
        res,
        401,
        "Unauthenticated",
        "the Authorization header must carry the pod's service-account token",
        true,
      );
      return done(start, 401);
    }
    if (token.startsWith("Bearer ")) token = token.slice(7);
    if (token.length > 8192 || !/^[A-Za-z0-9._-]+$/.test(token)) {
      sendError(res, 401, "Unauthenticated", "malformed token", true);
      return done(start, 401);
    }
    const tok = token;
    // Fast path: a token this pod already proved, and cached credentials.
    const l = index.lookup(ip);
    if (l.kind === "pod" && (!l.pod.hostNetwork || cfg.allowHostNetwork)) {
      const c = cache.fresh(l.pod.uid, "container");
      if (c !== undefined && cache.tokenValid(l.pod.uid, tok)) {
        metrics.hit("container");
        send(res, 200, c.containerBody, JSON_TYPE);
        return done(start, 200);
      }
    }
    lookupOrWait(d, ip, (l2) => {
      if (!res.destroyed) afterLookup(res, l2, ip, tok, start);
    });
  };
}
