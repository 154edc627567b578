// The IMDS-compatible endpoint on node:http: every request the fast path (imds-fast-path.ts)
// leaves to it, answered the same way. The hot path (known pod, cached credentials) is
// synchronous: a lookup by source IP, a token check, and a write of a pre-serialised Buffer.
import type { IncomingMessage, ServerResponse } from "node:http";
import { imdsStatus } from "../api/errors.ts";
import { recordRequest, type HandlerDeps } from "./handler-deps.ts";
import type { CachedCreds } from "./imds-documents.ts";
import {
  ROUTES,
  StaticDocuments,
  TOKEN_HEADER,
  TOKEN_TTL_HEADER,
  credsReply,
  routeOf,
} from "./imds-routes.ts";
import { parseTtl } from "./imds-token.ts";
import type { Lookup, PodInfo } from "./pod-index.ts";
import { IMDS_TEXT, TEXT, send, sendImdsText, sendRefusal } from "./replies.ts";
import { admit, pathOf } from "./request-screen.ts";
import { isRefusal, lookupOrWait, servablePod } from "./servable-pod.ts";
import { credentialWaitLeftMs } from "./answer-budget.ts";

/** One IMDS request on its way through the handler. */
interface ImdsRequest {
  req: IncomingMessage;
  res: ServerResponse;
  ip: string;
  path: string;
  route: string;
  /** performance.now() when it arrived. */
  start: number;
}

const BAD_TTL = "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be an integer from 1 to 21600\n";
const PROXIED_TOKEN = "Forbidden: proxied token requests are refused\n";

export function createImdsHandler(d: HandlerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { cfg, cache, tokens, metrics } = d;
  const docs = new StaticDocuments(cfg);

  function done(r: Pick<ImdsRequest, "route" | "start">, status: number): void {
    recordRequest(metrics, "imds", r.route, r.start, status);
  }

  function answerCreds(r: ImdsRequest, c: CachedCreds): void {
    const reply = credsReply(r.route, r.path, c);
    send(r.res, reply.status, reply.body, TEXT);
    done(r, reply.status);
  }

  function issueToken(r: ImdsRequest, pod: PodInfo): void {
    const ttl = parseTtl(r.req.headers[TOKEN_TTL_HEADER]);
    if (ttl === undefined) return done(r, sendImdsText(r.res, "BadRequest", BAD_TTL));
    const token = tokens.issue(pod.uid, ttl);
    r.res.writeHead(200, {
      "content-type": TEXT,
      "content-length": token.length,
      [TOKEN_TTL_HEADER]: String(ttl),
      server: "keycutter",
    });
    r.res.end(token);
    done(r, 200);
  }

  function passthrough(r: ImdsRequest): void {
    d.passthrough!.get(r.path).then(
      (a) => {
        if (a.status !== 200 && a.status !== 404)
          return done(r, sendImdsText(r.res, "MetadataUpstreamFailed", IMDS_TEXT.badGateway));
        send(r.res, a.status, a.body, a.contentType);
        done(r, a.status);
      },
      () => done(r, sendImdsText(r.res, "MetadataUpstreamFailed", IMDS_TEXT.badGateway)),
    );
  }

  function credentials(r: ImdsRequest, pod: PodInfo): void {
    const c = cache.fresh(pod.uid, "imds");
    if (c !== undefined) {
      metrics.hit("imds");
      return answerCreds(r, c);
    }
    metrics.miss("imds");
    cache.obtain(pod, credentialWaitLeftMs(cfg, performance.now() - r.start)).then(
      (o) => {
        if (r.res.destroyed) return;
        if (o.ok) return answerCreds(r, o.creds);
        const status = imdsStatus(o.code);
        send(r.res, status, `${o.code}: ${o.message}\n`, TEXT);
        done(r, status);
      },
      () => done(r, sendImdsText(r.res, "Unavailable", IMDS_TEXT.unavailable)),
    );
  }

  function serve(r: ImdsRequest, pod: PodInfo): void {
    switch (r.route) {
      case ROUTES.token:
        return issueToken(r, pod);
      case ROUTES.region:
        send(r.res, 200, docs.region, TEXT);
        return done(r, 200);
      case ROUTES.az:
        send(r.res, 200, docs.availabilityZone, TEXT);
        return done(r, 200);
      case ROUTES.identity:
        send(r.res, 200, docs.identity, TEXT);
        return done(r, 200);
      case ROUTES.listing:
        send(r.res, 200, docs.listing(r.path)!, TEXT);
        return done(r, 200);
      case ROUTES.passthrough:
        return passthrough(r);
      case ROUTES.credList:
      case ROUTES.cred:
      case ROUTES.credExtList:
      case ROUTES.credExt:
      case ROUTES.info:
        return credentials(r, pod);
      default:
        return done(r, sendImdsText(r.res, "NotFound", IMDS_TEXT.notFound));
    }
  }

  function afterLookup(r: ImdsRequest, l: Lookup): void {
    const pod = servablePod(l, r.ip, cfg.allowHostNetwork);
    if (isRefusal(pod)) {
      // A 403, 404 or 405 on the token PUT switches Go and JS clients to IMDSv1 for good; an IP
      // not known (yet) is "try again", which they retry or take for this call only.
      const code = r.route === ROUTES.token && l.kind === "none" ? "Unavailable" : pod.code;
      return done(r, sendRefusal(r.res, code, pod.message, false));
    }
    if (r.route !== ROUTES.token) {
      const tok = r.req.headers[TOKEN_HEADER];
      if (tok !== undefined && (typeof tok !== "string" || !tokens.verify(tok, pod.uid)))
        return done(r, sendImdsText(r.res, "Unauthenticated", IMDS_TEXT.unauthorized));
    }
    serve(r, pod);
  }

  /** Method and header checks that need no pod; false when an answer was already sent. */
  function admissible(r: ImdsRequest): boolean {
    const { req, res } = r;
    if (r.route === ROUTES.token) {
      if (req.method !== "PUT") {
        res.setHeader("allow", "PUT");
        done(r, sendImdsText(res, "MethodNotAllowed", IMDS_TEXT.methodNotAllowed));
        return false;
      }
      if (req.headers["x-forwarded-for"] !== undefined) {
        done(r, sendImdsText(res, "Forbidden", PROXIED_TOKEN));
        return false;
      }
      return true;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      done(r, sendImdsText(res, "MethodNotAllowed", IMDS_TEXT.methodNotAllowed));
      return false;
    }
    if (req.headers[TOKEN_HEADER] === undefined && cfg.requireImdsV2) {
      done(r, sendImdsText(res, "Unauthenticated", IMDS_TEXT.unauthorized));
      return false;
    }
    if (r.route === ROUTES.other) {
      done(r, sendImdsText(res, "NotFound", IMDS_TEXT.notFound));
      return false;
    }
    return true;
  }

  return function imdsHandler(req: IncomingMessage, res: ServerResponse): void {
    const admitted = admit(d, req, res, "imds");
    if (admitted === undefined) return;
    const { ip, start } = admitted;
    const path = pathOf(req.url ?? "");
    if (path === undefined)
      return done({ route: ROUTES.bad, start }, sendImdsText(res, "BadRequest", IMDS_TEXT.badRequest));
    const r: ImdsRequest = { req, res, ip, path, route: routeOf(path, d.passthrough, docs), start };
    if (!admissible(r)) return;
    lookupOrWait(d, ip, (l) => {
      if (!res.destroyed) afterLookup(r, l);
    });
  };
}
