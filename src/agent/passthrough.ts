// Allowlisted metadata paths forwarded to the node's real IMDS (IMDSv2 session kept by the
// agent). Credential paths are never forwarded, whatever the allowlist says.
import { request, Agent, type IncomingMessage } from "node:http";

const MAX_BODY = 64 * 1024;
const FORBIDDEN = /(^|\/)(iam|identity-credentials|security-credentials[^/]*)(\/|$)|\/api\/token/;

export interface UpstreamAnswer {
  status: number;
  body: Buffer;
  contentType: string;
}

export class Passthrough {
  private readonly upstream: URL;
  private readonly exact = new Set<string>();
  private readonly prefixes: string[] = [];
  private readonly timeoutMs: number;
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 8 });
  private token: { value: string; untilMs: number } | undefined;

  constructor(upstreamUrl: string, allow: string[], timeoutMs = 1000) {
    this.upstream = new URL(upstreamUrl);
    if (this.upstream.protocol !== "http:") throw new Error("the upstream IMDS URL must be http://");
    this.timeoutMs = timeoutMs;
    for (const raw of allow) {
      const p = raw.trim();
      if (!p) continue;
      if (!p.startsWith("/latest/")) throw new Error(`passthrough path must start with /latest/: ${p}`);
      if (FORBIDDEN.test(p)) throw new Error(`credential paths cannot be passed through: ${p}`);
      if (p.endsWith("*")) this.prefixes.push(p.slice(0, -1));
      else this.exact.add(p);
    }
  }

  get enabled(): boolean {
    return this.exact.size > 0 || this.prefixes.length > 0;
  }

  allows(path: string): boolean {
    if (FORBIDDEN.test(path)) return false;
    if (this.exact.has(path)) return true;
    for (const p of this.prefixes) if (path.startsWith(p)) return true;
    return false;
  }

  close(): void {
    this.agent.destroy();
  }

  async get(path: string): Promise<UpstreamAnswer> {
    const token = await this.sessionToken();
    const headers: Record<string, string> = {};
    if (token) headers["x-aws-ec2-metadata-token"] = token;
    let r = await this.send("GET", path, headers);
    if (r.status === 401 && token) {
      this.token = undefined;
      const t2 = await this.sessionToken();
      if (t2) headers["x-aws-ec2-metadata-token"] = t2;
      r = await this.send("GET", path, headers);
    }
    return r;
  }

  private async sessionToken(): Promise<string | undefined> {
    const now = Date.now();
    if (this.token && this.token.untilMs > now) return this.token.value;
    try {
      const r = await this.send("PUT", "/latest/api/token", {
        "x-aws-ec2-metadata-token-ttl-seconds": "21600",
      });
      if (r.status === 200) {
        this.token = { value: r.body.toString("utf8"), untilMs: now + 21000 * 1000 };
        return this.token.value;
      }
    } catch {
      // v1-only upstream or unreachable: try without a token
    }
    return undefined;
  }

  private send(method: string, path: string, headers: Record<string, string>): Promise<UpstreamAnswer> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          hostname: this.upstream.hostname,
          port: this.upstream.port || 80,
          path,
          method,
          headers,
          agent: this.agent,
          timeout: this.timeoutMs,
        },
        (res: IncomingMessage) => {
          const chunks: Buffer[] = [];
          let n = 0;
          res.on("data", (c: Buffer) => {
            n += c.length;
            if (n > MAX_BODY) {
              req.destroy(new Error("upstream answer too large"));
              return;
            }
            chunks.push(c);
          });
          res.on("end", () => {
            clearTimeout(timer);
            resolve({
              status: res.statusCode ?? 502,
              body: Buffer.concat(chunks),
              contentType: String(res.headers["content-type"] ?? "text/plain"),
            });
          });
          res.on("error", reject);
        },
      );
      const timer = setTimeout(() => req.destroy(new Error("upstream timeout")), this.timeoutMs);
      req.on("timeout", () => req.destroy(new Error("upstream timeout")));
      req.on("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      req.end();
    });
  }
}
