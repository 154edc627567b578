// Hostile clients of the server's API port, for the TokenReview-flood tests and benchmark: junk
// bearer tokens of every shape, forged agent tokens that pass every local check (right audience,
// subject, pod binding, not expired — only the signature is wrong), a sender from a chosen source
// address, and the apiserver's own count of TokenReviews (independent of keycutter's metrics).

import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";

const b64url = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString("base64url");
const signature = (): string => randomBytes(256).toString("base64url");

export interface ForgeOptions {
  audience?: string;
  namespace?: string;
  serviceAccount?: string;
  podName?: string;
  nodeName?: string;
  /** Seconds from now; negative: expired. */
  expiresIn?: number;
  /** Leave out the `kubernetes.io` pod binding. */
  unbound?: boolean;
  /** Leave out the node in the binding. */
  noNode?: boolean;
  alg?: string;
}

/** A JWT with the claims of a projected agent token and a random signature (unique each call). */
export function forgedToken(o: ForgeOptions = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const ns = o.namespace ?? "keycutter-system";
  const sa = o.serviceAccount ?? "keycutter-agent";
  const payload: Record<string, unknown> = {
    aud: [o.audience ?? "keycutter"],
    exp: now + (o.expiresIn ?? 3600),
    iat: now,
    nbf: now,
    iss: "https://kubernetes.default.svc",
    jti: randomUUID(),
    sub: `system:serviceaccount:${ns}:${sa}`,
  };
  if (!o.unbound) {
    const bound: Record<string, unknown> = {
      namespace: ns,
      pod: { name: o.podName ?? "agent-node-1", uid: randomUUID() },
      serviceaccount: { name: sa, uid: randomUUID() },
    };
    if (!o.noNode) bound.node = { name: o.nodeName ?? "node-1", uid: randomUUID() };
    payload["kubernetes.io"] = bound;
  }
  return `${b64url({ alg: o.alg ?? "RS256", kid: "forged" })}.${b64url(payload)}.${signature()}`;
}

/** Tokens a screening server refuses without a TokenReview, with the status it answers. */
export function junkTokens(): Array<{ name: string; token: string; status: number }> {
  const rand = (n: number) => randomBytes(n).toString("base64url");
  return [
    { name: "random three parts", token: `${rand(30)}.${rand(200)}.${rand(256)}`, status: 401 },
    { name: "not a JWT", token: rand(40), status: 401 },
    {
      name: "header not JSON",
      token: `${rand(20)}.${b64url({ aud: "keycutter" })}.${rand(64)}`,
      status: 401,
    },
    { name: "alg none", token: forgedToken({ alg: "none" }), status: 401 },
    {
      name: "no audience",
      token: `${b64url({ alg: "RS256" })}.${b64url({ sub: "x" })}.${rand(64)}`,
      status: 401,
    },
    {
      name: "wrong audience",
      token: forgedToken({ audience: "https://kubernetes.default.svc" }),
      status: 401,
    },
    { name: "expired", token: forgedToken({ expiresIn: -3600 }), status: 401 },
    { name: "huge", token: `${b64url({ alg: "RS256" })}.${rand(9000)}.${rand(64)}`, status: 401 },
    {
      name: "not an agent",
      token: forgedToken({ namespace: "tenant-a", serviceAccount: "app" }),
      status: 403,
    },
    { name: "not pod-bound", token: forgedToken({ unbound: true }), status: 403 },
    { name: "no node", token: forgedToken({ noNode: true }), status: 403 },
  ];
}

/** Keep-alive HTTPS client of the API port from one source address. */
export class ApiClientFrom {
  private readonly agent: HttpsAgent;
  private readonly port: number;
  readonly localAddress: string;

  constructor(port: number, caFile: string, localAddress: string, maxSockets = 16) {
    this.port = port;
    this.localAddress = localAddress;
    this.agent = new HttpsAgent({ keepAlive: true, maxSockets, ca: readFileSync(caFile) });
  }

  /** POST /v1/credentials; resolves with the status (0 on a connection error). */
  post(
    token: string,
    body: unknown,
    timeoutMs = 10_000,
  ): Promise<{ status: number; code?: string; ms: number }> {
    const payload = JSON.stringify(body);
    const t0 = performance.now();
    return new Promise((resolve) => {
      const req = httpsRequest(
        {
          host: "127.0.0.1",
          port: this.port,
          method: "POST",
          path: "/v1/credentials",
          localAddress: this.localAddress,
          servername: "localhost",
          agent: this.agent,
          timeout: timeoutMs,
          headers: {
            authorization: `Bearer ${token}`,
            "content-type": "application/json",
            "content-length": Buffer.byteLength(payload),
          },
        },
        (res) => {
          let raw = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (raw += c));
          res.on("end", () => {
            let code: string | undefined;
            try {
              code = (JSON.parse(raw) as { code?: string }).code;
            } catch {
              // not JSON
            }
            resolve({ status: res.statusCode ?? 0, ...(code ? { code } : {}), ms: performance.now() - t0 });
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", () => resolve({ status: 0, ms: performance.now() - t0 }));
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** TokenReviews the apiserver has answered so far (its apiserver_request_total). */
export async function apiserverTokenReviews(cluster: {
  server: string;
  adminToken: string;
  caFile: string;
}): Promise<number> {
  const url = new URL("/metrics", cluster.server);
  const text = await new Promise<string>((resolve, reject) => {
    const req = httpsRequest(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        ca: readFileSync(cluster.caFile),
        headers: { authorization: `Bearer ${cluster.adminToken}` },
      },
      (res) => {
        let s = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (s += c));
        res.on("end", () =>
          res.statusCode === 200 ? resolve(s) : reject(new Error(`metrics: ${res.statusCode}`)),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
  let total = 0;
  for (const line of text.split("\n"))
    if (line.startsWith("apiserver_request_total{") && line.includes('resource="tokenreviews"'))
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
  return total;
}
