// The API port (HTTPS, POST /v1/credentials per src/api/contract.ts) and the plain-HTTP ops port
// (/healthz, /readyz, /metrics).

import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from "node:http";
import {
  CREDENTIALS_PATH,
  MAX_EPOCH_REQUEST_BYTES,
  MAX_REQUEST_BYTES,
  POLICY_EPOCHS_PATH,
  parseCredentialsRequest,
  parsePolicyEpochsRequest,
  type PolicyEpochsResponse,
  type ErrorCode,
  type ErrorResponse,
} from "../api/contract.ts";
import { ERRORS, KeycutterError } from "../api/errors.ts";
import type { Logger } from "../common/logger.ts";
import { listen, type Listening } from "../common/listen.ts";
import { opsHandler } from "../common/ops-listener.ts";
import { ReviewThrottled, type ReviewedIdentity } from "./k8s/token-review.ts";
import type { Registry } from "prom-client";
import type { AgentIdentity, CredentialService } from "./service.ts";
import type { ServerMetrics } from "./metrics.ts";
import type { PolicyEpochs } from "./policy-epochs.ts";
import type { ServingTls } from "./tls/serving.ts";

export interface ApiOptions {
  /** What to serve on HTTPS (required unless insecure); swapped in place when it changes. */
  tls?: ServingTls;
  /** Serve plain HTTP on the API port (tests/dev only). */
  insecure?: boolean;
  agentServiceAccounts: string[];
  /** `source` is the client's address: each source has its own review budget. */
  reviewAgentToken: (token: string, source: string) => Promise<ReviewedIdentity>;
  service: CredentialService;
  /** Serves the agents' epoch long polls (POST /v1/policy-epochs); undefined: 404. */
  epochs?: PolicyEpochs;
  log: Logger;
  metrics: ServerMetrics;
  /** Audit records for requests refused before the service (authentication). */
  auditAuthFailure?: (code: ErrorCode, reason: string, agent?: string) => void;
}

function send(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  const s = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(s),
    "cache-control": "no-store",
    ...extra,
  });
  res.end(s);
}

function sendError(res: ServerResponse, e: KeycutterError): void {
  const body: ErrorResponse = { code: e.code, message: e.message };
  const extra: Record<string, string> = {};
  if (e.code === "Unauthenticated") extra["www-authenticate"] = "Bearer";
  if (ERRORS[e.code].retryable) extra["retry-after"] = "1";
  send(res, e.status, body, extra);
}

function readBody(req: IncomingMessage, maxBytes = MAX_REQUEST_BYTES): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const len = req.headers["content-length"];
    if (len !== undefined && Number(len) > maxBytes) {
      reject(new KeycutterError("PayloadTooLarge", `body larger than ${maxBytes} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on("data", (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > maxBytes) {
        done = true;
        reject(new KeycutterError("PayloadTooLarge", `body larger than ${maxBytes} bytes`));
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      if (!done) {
        done = true;
        resolve(Buffer.concat(chunks));
      }
    });
    req.on("error", (e) => {
      if (!done) {
        done = true;
        reject(e);
      }
    });
  });
}

/** The client's address, IPv4-mapped IPv6 written as IPv4, so one host is one source. */
function clientAddress(req: IncomingMessage): string {
  const address = req.socket.remoteAddress ?? "unknown";
  return address.startsWith("::ffff:") ? address.slice(7) : address;
}

export function createApiHandler(opts: ApiOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const allowed = new Set(opts.agentServiceAccounts);
  const authenticate = async (req: IncomingMessage): Promise<AgentIdentity> => {
    const h = req.headers.authorization;
    const m = typeof h === "string" ? /^Bearer ([^\s]+)$/.exec(h) : null;
    if (!m) throw new KeycutterError("Unauthenticated", "a Bearer token is required");
    const token = m[1] as string;
    let id: ReviewedIdentity;
    try {
      id = await opts.reviewAgentToken(token, clientAddress(req));
    } catch (e) {
      if (e instanceof ReviewThrottled) {
        opts.metrics.tokenReviews.inc({ result: "throttled" });
        throw new KeycutterError("Throttled", e.message, { cause: e });
      }
      opts.log.warn({ err: e }, "TokenReview failed");
      throw new KeycutterError("Unavailable", "cannot review the token with the Kubernetes API", {
        cause: e,
      });
    }
    if (!id.authenticated) {
      opts.metrics.tokenReviews.inc({ result: id.forbidden ? "forbidden" : "unauthenticated" });
      throw new KeycutterError(
        id.forbidden ? "Forbidden" : "Unauthenticated",
        `token rejected: ${id.error ?? "not authenticated"}`,
      );
    }
    const sa = id.serviceAccount ? `${id.serviceAccount.namespace}/${id.serviceAccount.name}` : id.username;
    if (!id.serviceAccount || !allowed.has(sa)) {
      opts.metrics.tokenReviews.inc({ result: "forbidden" });
      throw new KeycutterError("Forbidden", `${id.username || "caller"} is not a keycutter agent`);
    }
    if (!id.nodeName) {
      opts.metrics.tokenReviews.inc({ result: "forbidden" });
      throw new KeycutterError(
        "Forbidden",
        "agent token is not bound to a pod on a node (use a projected service-account token)",
      );
    }
    opts.metrics.tokenReviews.inc({ result: "ok" });
    return { serviceAccount: sa, nodeName: id.nodeName };
  };

  // Both routes: POST, an authenticated agent, a JSON body within its route's size limit.
  const authenticatedJson = async (
    req: IncomingMessage,
    maxBytes?: number,
  ): Promise<{ agent: AgentIdentity; body: unknown }> => {
    if (req.method !== "POST") throw new KeycutterError("MethodNotAllowed", "method not allowed; use POST");
    let agent: AgentIdentity;
    try {
      agent = await authenticate(req);
    } catch (e) {
      if (e instanceof KeycutterError) opts.auditAuthFailure?.(e.code, e.message);
      throw e;
    }
    const ct = String(req.headers["content-type"] ?? "");
    if (!/^application\/json\s*(;.*)?$/i.test(ct))
      throw new KeycutterError("UnsupportedMediaType", "content-type must be application/json");
    const raw = await readBody(req, maxBytes);
    try {
      return { agent, body: JSON.parse(raw.toString("utf8")) };
    } catch (e) {
      throw new KeycutterError("BadRequest", "body is not valid JSON", { cause: e });
    }
  };

  return (req, res) => {
    const started = performance.now();
    const path = (req.url ?? "/").split("?")[0];
    const route =
      path === CREDENTIALS_PATH ? "credentials" : path === POLICY_EPOCHS_PATH ? "policy_epochs" : "other";
    // bounded labels: three routes, and "ok", "aborted" or a catalogue code
    let outcome = "ok";
    res.once("close", () => {
      if (!res.writableFinished) outcome = "aborted";
      opts.metrics.requestDuration.observe({ route, outcome }, (performance.now() - started) / 1000);
    });
    const handle = async () => {
      if (path === POLICY_EPOCHS_PATH && opts.epochs) return handleEpochs(opts.epochs);
      if (path !== CREDENTIALS_PATH) throw new KeycutterError("NotFound", "no such path");
      const { agent, body } = await authenticatedJson(req);
      const out = await opts.service.issue(agent, parseCredentialsRequest(body));
      send(res, 200, out);
    };
    const handleEpochs = async (epochs: PolicyEpochs) => {
      const { agent, body } = await authenticatedJson(req, MAX_EPOCH_REQUEST_BYTES);
      const poll = parsePolicyEpochsRequest(body);
      const gone = new AbortController();
      res.once("close", () => gone.abort());
      const out: PolicyEpochsResponse = {
        epochs: await epochs.wait(agent.nodeName, poll.namespaces, gone.signal),
      };
      if (!gone.signal.aborted) send(res, 200, out);
    };
    handle().catch((e: unknown) => {
      if (res.headersSent) return;
      outcome = e instanceof KeycutterError ? e.code : "Unavailable";
      if (e instanceof KeycutterError) sendError(res, e);
      else {
        opts.log.error({ err: e }, "request failed");
        sendError(res, new KeycutterError("Unavailable", "internal error", { cause: e }));
      }
    });
  };
}

export async function startApiServer(
  opts: ApiOptions,
  host: string,
  port: number,
): Promise<Listening<HttpServer | HttpsServer>> {
  const handler = createApiHandler(opts);
  let server: HttpServer | HttpsServer;
  let stopWatch = () => {};
  if (opts.insecure) {
    server = createHttpServer(handler);
  } else {
    const tls = opts.tls;
    if (!tls)
      throw new Error(
        "TLS is required: --tls-secret, or --tls-cert and --tls-key (or --insecure-http for development)",
      );
    // Connections made before a certificate swap are ended after their next answer
    // ("connection: close", so the client knows not to reuse them: no request is lost): clients
    // move to the new certificate within one request, and one that does not trust it fails
    // now, while the old certificate still works elsewhere, not days later on a reconnect.
    let generation = 0;
    const socketGeneration = new WeakMap<object, number>();
    const https = createHttpsServer({ ...tls.current(), minVersion: "TLSv1.2" }, (req, res) => {
      if ((socketGeneration.get(req.socket) ?? generation) < generation) res.setHeader("connection", "close");
      handler(req, res);
    });
    https.on("secureConnection", (socket) => socketGeneration.set(socket, generation));
    stopWatch = tls.subscribe((pair) => {
      try {
        https.setSecureContext({ ...pair, minVersion: "TLSv1.2" });
        generation++;
      } catch (e) {
        opts.log.warn({ err: e }, "TLS certificate swap failed; keeping the old one");
      }
    });
    server = https;
  }
  server.requestTimeout = 30_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 60_000;
  server.maxHeadersCount = 50;
  const l = await listen(server, host, port);
  return {
    ...l,
    close: async () => {
      stopWatch();
      await l.close();
    },
  };
}

/** The ops port: live once listening, ready once the informers have synced. */
export function startOpsServer(
  registry: Registry,
  ready: () => boolean,
  host: string,
  port: number,
): Promise<Listening> {
  const server = createHttpServer(
    opsHandler({
      healthz: () => ({ ok: true, text: "ok" }),
      readyz: () => (ready() ? { ok: true, text: "ok" } : { ok: false, text: "not ready" }),
      registry,
    }),
  );
  return listen(server, host, port);
}
