// A small keep-alive JSON client to the apiserver, for the paths where the official client costs
// too much: the server's hot path (pod GET, namespace GET, TokenReview — the official client
// builds a new connection pool and re-reads the CA file per request, i.e. a TLS handshake per
// call, which dominated the server's CPU in a pod storm) and the whole node agent (pod list +
// watch, node patch — loading the official client alone is most of the agent's memory budget).
// Where the apiserver is and the credentials come from an ApiConnectionSource: a RestConfig
// (rest-config.ts, no official client) or a KubeConfig (kubeConfigConnection), re-read every few
// seconds so that rotated tokens and certificates are picked up.

import { createHash } from "node:crypto";
import { Agent, request, type RequestOptions } from "node:https";
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
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

export interface ApiConnection {
  headers: Record<string, string>;
  tls: { ca?: string; cert?: string; key?: string; servername?: string; rejectUnauthorized?: boolean };
}

export interface ApiConnectionSource {
  readonly server: string;
  connection(): ApiConnection | Promise<ApiConnection>;
}

/** Authentication as the official client would do it (token, token file, client certificate). */
export function kubeConfigConnection(kc: KubeConfig): ApiConnectionSource {
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new Error("kubeconfig has no current cluster");
  return {
    server,
    async connection(): Promise<ApiConnection> {
      const o: RequestOptions = {};
      await kc.applyToHTTPSOptions(o);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(o.headers ?? {})) {
        if (v !== undefined) headers[k.toLowerCase()] = String(v);
      }
      if (o.auth) headers.authorization = `Basic ${Buffer.from(o.auth).toString("base64")}`;
      const tls: ApiConnection["tls"] = {};
      if (o.ca) tls.ca = String(o.ca);
      if (o.cert) tls.cert = String(o.cert);
      if (o.key) tls.key = String(o.key);
      if (o.servername) tls.servername = o.servername;
      if (o.rejectUnauthorized !== undefined) tls.rejectUnauthorized = o.rejectUnauthorized;
      return { headers, tls };
    },
  };
}

export interface WatchOptions {
  /** Stops the watch; the promise then resolves with "stopped". */
  signal: AbortSignal;
  /** No byte for this long (bookmarks come about once a minute): the watch is dropped. */
  inactivityMs: number;
  /** Called once the apiserver has answered 200 and the stream is open. */
  onOpen?: () => void;
}

export type WatchEnd = "closed" | "stopped";

const MAX_BODY = 8 * 1024 * 1024;
// A single watch event is one object; a pod is a few KiB, the apiserver's own limit is ~3 MiB.
const MAX_WATCH_LINE = 16 * 1024 * 1024;

export class ApiClient {
  private readonly source: ApiConnectionSource;
  private readonly url: URL;
  private agent: Agent | HttpAgent | undefined;
  private agentKey = "";
  private headers: Record<string, string> = {};
  private tlsOpts: RequestOptions = {};
  private refreshedAt = 0;
  private refreshing: Promise<void> | undefined;
  private readonly timeoutMs: number;

  constructor(source: ApiConnectionSource, opts: { timeoutMs?: number } = {}) {
    this.source = source;
    this.url = new URL(source.server);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  private async refresh(): Promise<void> {
    const { headers, tls } = await this.source.connection();
    this.headers = headers;
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
    this.tlsOpts = tls as RequestOptions;
    this.refreshedAt = Date.now();
  }

  private async ensure(): Promise<void> {
    if (this.agent && Date.now() - this.refreshedAt < 5_000) return;
    if (!this.refreshing) this.refreshing = this.refresh().finally(() => (this.refreshing = undefined));
    await this.refreshing;
  }

  private options(method: string, path: string, headers: Record<string, string | number>): RequestOptions {
    return {
      ...this.tlsOpts,
      method,
      host: this.url.hostname,
      port: this.url.port || (this.url.protocol === "http:" ? 80 : 443),
      path: `${this.url.pathname.replace(/\/$/, "")}${path}`,
      headers: { ...this.headers, accept: "application/json", ...headers },
      agent: this.agent,
    };
  }

  private send(opts: RequestOptions, onResponse: (res: IncomingMessage) => void) {
    return (this.url.protocol === "http:" ? httpRequest : request)(opts, onResponse);
  }

  async json<T>(
    method: "GET" | "POST" | "PUT" | "PATCH",
    path: string,
    body?: unknown,
    opts: { contentType?: string; maxBytes?: number } = {},
  ): Promise<T> {
    await this.ensure();
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = {};
    if (payload !== undefined) {
      headers["content-type"] = opts.contentType ?? "application/json";
      headers["content-length"] = Buffer.byteLength(payload);
    }
    const maxBytes = opts.maxBytes ?? MAX_BODY;
    return new Promise<T>((resolve, reject) => {
      const req = this.send({ ...this.options(method, path, headers), timeout: this.timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) req.destroy(new Error("apiserver response too large"));
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
          } else reject(apiError(status, text));
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

  /**
   * A watch (`path` carries `watch=true` and its parameters): calls `onEvent` with every decoded
   * event line. Resolves "closed" when the apiserver ends the stream (its timeoutSeconds), or
   * "stopped" once `signal` aborts; rejects on a non-200 answer (ApiError, e.g. 410 Gone), a
   * dropped connection, an undecodable line or inactivity.
   */
  async watch(path: string, onEvent: (event: unknown) => void, opts: WatchOptions): Promise<WatchEnd> {
    await this.ensure();
    if (opts.signal.aborted) return "stopped";
    return new Promise<WatchEnd>((resolve, reject) => {
      let settled = false;
      const finish = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        opts.signal.removeEventListener("abort", onAbort);
        fn();
      };
      const onAbort = (): void => {
        finish(() => resolve("stopped"));
        req.destroy();
      };
      // Dedicated socket: a watch holds its connection for minutes and must not queue behind,
      // or hold up, the pool's short requests.
      const req = this.send({ ...this.options("GET", path, {}), agent: false }, (res) => {
        const status = res.statusCode ?? 0;
        if (status !== 200) {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.length < 64 && chunks.push(c));
          res.on("end", () => finish(() => reject(apiError(status, Buffer.concat(chunks).toString("utf8")))));
          res.on("error", (err) => finish(() => reject(err)));
          return;
        }
        opts.onOpen?.();
        let pending = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          if (settled) return;
          pending += chunk;
          let nl: number;
          while ((nl = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, nl);
            pending = pending.slice(nl + 1);
            if (!line.trim()) continue;
            let event: unknown;
            try {
              event = JSON.parse(line);
            } catch {
              finish(() => reject(new Error("undecodable watch event from the apiserver")));
              req.destroy();
              return;
            }
            onEvent(event);
            if (settled) return;
          }
          if (pending.length > MAX_WATCH_LINE) {
            finish(() => reject(new Error("watch event too large")));
            req.destroy();
          }
        });
        res.on("end", () => finish(() => resolve("closed")));
        res.on("error", (err) => finish(() => reject(err)));
        // a close without the end of the body: the connection dropped mid-stream
        res.on("close", () => finish(() => reject(new Error("watch connection dropped"))));
      });
      req.setTimeout(opts.inactivityMs, () =>
        req.destroy(new Error(`watch idle for ${opts.inactivityMs} ms`)),
      );
      req.on("error", (err) => finish(() => reject(err)));
      req.on("close", () => finish(() => reject(new Error("watch connection closed"))));
      opts.signal.addEventListener("abort", onAbort, { once: true });
      req.end();
    });
  }

  close(): void {
    this.agent?.destroy();
  }
}

function apiError(status: number, text: string): ApiError {
  let message = `HTTP ${status}`;
  try {
    message = (JSON.parse(text) as { message?: string }).message ?? message;
  } catch {
    // not a Status object
  }
  return new ApiError(status, message.slice(0, 300), text.slice(0, 1000));
}
