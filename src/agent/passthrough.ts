// Allowlisted metadata paths forwarded to the node's real IMDS (IMDSv2 session kept by the
// agent). What would let a pod act as the node is never forwarded, whatever the allowlist says:
// credential paths, user-data (bootstrap secrets) and the signed identity documents (pkcs7,
// signature, rsa2048: proof of being this instance, e.g. to Vault's EC2 auth).
import { request, Agent, type IncomingMessage } from "node:http";
import { httpStatus } from "../api/errors.ts";
import { systemClock, type Clock } from "../common/clock.ts";

const MAX_BODY = 64 * 1024;
/**
 * Never forwarded, matched on the lower-cased path so that a case-insensitive upstream cannot be
 * reached by spelling: any `iam`, `identity-credentials` or `security-credentials*` segment, the
 * token, user-data, and under dynamic/instance-identity everything but the unsigned document.
 */
const FORBIDDEN =
  /(^|\/)(iam|identity-credentials|security-credentials[^/]*|user-data)(\/|$)|\/api\/token|\/dynamic\/instance-identity\/(?!document$)./;
/** Plain, unencoded paths only: no `%`, backslash, `//`, `.`/`..` segment can alias a forbidden one. */
const CANONICAL = /^\/[A-Za-z0-9._\-/]*$/;
const ALIASING = /\/\/|(^|\/)\.\.?(\/|$)/;

/** True for a path that may never be passed through (also for any path not in canonical form). */
export function isNeverPassedThrough(path: string): boolean {
  return !CANONICAL.test(path) || ALIASING.test(path) || FORBIDDEN.test(path.toLowerCase());
}

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

  private readonly clock: Clock;

  /** `clock`: the upstream session token's lifetime and each call's deadline. */
  constructor(
    upstreamUrl: string,
    allow: string[],
    { timeoutMs = 1000, clock = systemClock }: { timeoutMs?: number; clock?: Clock } = {},
  ) {
    this.clock = clock;
    this.upstream = new URL(upstreamUrl);
    if (this.upstream.protocol !== "http:") throw new Error("the upstream IMDS URL must be http://");
    this.timeoutMs = timeoutMs;
    for (const raw of allow) {
      const p = raw.trim();
      if (!p) continue;
      if (!p.startsWith("/latest/")) throw new Error(`passthrough path must start with /latest/: ${p}`);
      const bare = p.endsWith("*") ? p.slice(0, -1) : p;
      if (isNeverPassedThrough(bare))
        throw new Error(`credential, user-data and signed identity paths cannot be passed through: ${p}`);
      if (p.endsWith("*")) this.prefixes.push(bare);
      else this.exact.add(p);
    }
  }

  get enabled(): boolean {
    return this.exact.size > 0 || this.prefixes.length > 0;
  }

  allows(path: string): boolean {
    if (isNeverPassedThrough(path)) return false;
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
    const now = this.clock.now();
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
            this.clock.clearTimeout(timer);
            resolve({
              status: res.statusCode ?? httpStatus("MetadataUpstreamFailed"),
              body: Buffer.concat(chunks),
              contentType: String(res.headers["content-type"] ?? "text/plain"),
            });
          });
          res.on("error", reject);
        },
      );
      const timer = this.clock.setTimeout(() => req.destroy(new Error("upstream timeout")), this.timeoutMs);
      req.on("timeout", () => req.destroy(new Error("upstream timeout")));
      req.on("error", (e) => {
        this.clock.clearTimeout(timer);
        reject(e);
      });
      req.end();
    });
  }
}
