// A small keep-alive JSON client to the apiserver for the server's hot path (pod GET, namespace
// GET, TokenReview). The official client builds a new connection pool (and re-reads the CA file)
// per request, i.e. a TLS handshake per call; under a pod storm that dominated the server's CPU.
// Authentication comes from the same KubeConfig (applyToHTTPSOptions: token, token file with
// rotation, client certificates), refreshed every few seconds.

import { createHash } from "node:crypto";
import { Agent, request, type RequestOptions } from "node:https";
import { Agent as HttpAgent, request as httpRequest } from "node:http";
import type { KubeConfig } from "@kubernetes/client-node";

export class ApiError extends Error {
  readonly code: number;
  readonly body: string;
  constructor(code: number, message: string, body: string) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.body = body;
  }
}

const MAX_BODY = 8 * 1024 * 1024;

export class FastApi {
  private readonly kc: KubeConfig;
  private readonly url: URL;
  private agent: Agent | HttpAgent | undefined;
  private agentKey = "";
  private headers: Record<string, string> = {};
  private tlsOpts: RequestOptions = {};
  private refreshedAt = 0;
  private refreshing: Promise<void> | undefined;
  private readonly timeoutMs: number;

  constructor(kc: KubeConfig, opts: { timeoutMs?: number } = {}) {
    this.kc = kc;
    const server = kc.getCurrentCluster()?.server;
    if (!server) throw new Error("kubeconfig has no current cluster");
    this.url = new URL(server);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  private async refresh(): Promise<void> {
    const o: RequestOptions = {};
    await this.kc.applyToHTTPSOptions(o);
    const h: Record<string, string> = {};
    for (const [k, v] of Object.entries(o.headers ?? {})) if (v !== undefined) h[k.toLowerCase()] = String(v);
    if (o.auth) h.authorization = `Basic ${Buffer.from(o.auth).toString("base64")}`;
    this.headers = h;
    const tls: RequestOptions = {};
    if (o.ca) tls.ca = o.ca;
    if (o.cert) tls.cert = o.cert;
    if (o.key) tls.key = o.key;
    if (o.servername) tls.servername = o.servername;
    if (o.rejectUnauthorized !== undefined) tls.rejectUnauthorized = o.rejectUnauthorized;
    const key = createHash("sha256")
      .update(String(tls.ca ?? ""))
      .update(String(tls.cert ?? ""))
      .update(String(tls.key ?? ""))
      .update(String(tls.servername ?? ""))
      .update(String(tls.rejectUnauthorized ?? ""))
      .digest("hex");
    if (key !== this.agentKey || !this.agent) {
      this.agent?.destroy();
      const common = { keepAlive: true, maxSockets: 64, maxFreeSockets: 16, timeout: 60_000 };
      this.agent =
        this.url.protocol === "http:" ? new HttpAgent(common) : new Agent({ ...common, ...(tls as object) });
      this.agentKey = key;
    }
    this.tlsOpts = tls;
    this.refreshedAt = Date.now();
  }

  private async ensure(): Promise<void> {
    if (this.agent && Date.now() - this.refreshedAt < 5_000) return;
    if (!this.refreshing) this.refreshing = this.refresh().finally(() => (this.refreshing = undefined));
    await this.refreshing;
  }

  async json<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    await this.ensure();
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = { ...this.headers, accept: "application/json" };
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = Buffer.byteLength(payload);
    }
    const opts: RequestOptions = {
      ...this.tlsOpts,
      method,
      host: this.url.hostname,
      port: this.url.port || (this.url.protocol === "http:" ? 80 : 443),
      path: `${this.url.pathname.replace(/\/$/, "")}${path}`,
      headers,
      agent: this.agent,
      timeout: this.timeoutMs,
    };
    const send = this.url.protocol === "http:" ? httpRequest : request;
    return new Promise<T>((resolve, reject) => {
      const req = send(opts, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY) req.destroy(new Error("apiserver response too large"));
          else chunks.push(c);
        });
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) {
            try {
              resolve(JSON.parse(text) as T);
            } catch {
              reject(new ApiError(status, "invalid JSON from the apiserver", ""));
            }
          } else {
            let message = `HTTP ${status}`;
            try {
              message = (JSON.parse(text) as { message?: string }).message ?? message;
            } catch {
              // not a Status object
            }
            reject(new ApiError(status, message.slice(0, 300), text.slice(0, 1000)));
          }
        });
        res.on("error", reject);
      });
      req.on("timeout", () =>
        req.destroy(new Error(`apiserver request timed out after ${this.timeoutMs} ms`)),
      );
      req.on("error", reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent?.destroy();
  }
}
