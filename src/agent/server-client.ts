// Client for the central service (src/api/contract.ts): HTTPS POST with the agent's projected
// service-account token as a Bearer token, CA verification (trust-bundle.ts: reloaded when the
// mounted bundle changes), timeouts, error codes mapped.
import { request as httpsRequest, Agent as HttpsAgent } from "node:https";
import { request as httpRequest, Agent as HttpAgent, type IncomingMessage } from "node:http";
import { readFileSync, statSync } from "node:fs";
import {
  CREDENTIALS_PATH,
  POLICY_EPOCHS_PATH,
  isCredentialsResponse,
  isPolicyEpochsResponse,
  type CredentialsRequest,
  type CredentialsResponse,
  type PolicyEpochsRequest,
  type PolicyEpochsResponse,
} from "../api/contract.ts";
import { ERRORS, KeycutterError, isErrorCode, type ErrorCode } from "../api/errors.ts";
import { systemClock, type Clock } from "../common/clock.ts";
import { TrustBundle } from "./trust-bundle.ts";

const MAX_RESPONSE_BYTES = 64 * 1024;

export interface ServerClientOptions {
  serverUrl: string;
  /** PEM CA bundle to verify the server with; undefined: the system roots. */
  caFile?: string;
  /** The agent's projected token; re-read when the file changes. */
  tokenFile: string;
  timeoutMs?: number;
  /** Reachability, the token file's and CA bundle's re-read pace, each call's overall deadline. */
  clock?: Clock;
}

/** Re-reads a token file when its mtime/size/inode changes (projected tokens are swapped in place). */
export class TokenFile {
  private readonly path: string;
  private stamp = "";
  private value = "";
  private checkedAt = 0;
  private readonly clock: Pick<Clock, "now">;

  constructor(path: string, clock: Pick<Clock, "now"> = systemClock) {
    this.path = path;
    this.clock = clock;
  }

  read(nowMs = this.clock.now()): string {
    if (nowMs - this.checkedAt < 1000 && this.value) return this.value;
    this.checkedAt = nowMs;
    const st = statSync(this.path);
    const stamp = `${st.ino}:${st.mtimeMs}:${st.size}`;
    if (stamp !== this.stamp) {
      this.value = readFileSync(this.path, "utf8").trim();
      this.stamp = stamp;
    }
    return this.value;
  }
}

/** Only a code the server itself answers with is believed; anything else is its status alone. */
function serverCode(value: unknown): ErrorCode | undefined {
  return isErrorCode(value) && ERRORS[value].raisedBy !== "agent" ? value : undefined;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A non-2xx answer as a KeycutterError: the server's own code when it sent one. */
function errorFrom(status: number, parsed: unknown): KeycutterError {
  const p = parsed as { code?: unknown; message?: unknown } | undefined;
  const code = serverCode(p?.code);
  if (code !== undefined) {
    const msg = typeof p?.message === "string" ? p.message.slice(0, 500) : code;
    return new KeycutterError(code, msg);
  }
  if (status === 401)
    return new KeycutterError("Unauthenticated", "the credential service rejected the agent");
  if (status === 429) return new KeycutterError("Throttled", "the credential service is throttling");
  return new KeycutterError("ServerAnswerInvalid", `credential service answered HTTP ${status}`);
}

export class ServerClient {
  private readonly url: URL;
  private readonly plainAgent: HttpAgent | undefined;
  private readonly trust: TrustBundle | undefined;
  private readonly systemRoots: HttpsAgent | undefined;
  private readonly token: TokenFile;
  private readonly timeoutMs: number;
  private readonly clock: Clock;
  /** Last time any HTTP answer came back (reachability for /readyz). */
  lastAnswerMs = 0;
  lastFailureMs = 0;

  constructor(opts: ServerClientOptions) {
    this.url = new URL(opts.serverUrl);
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.clock = opts.clock ?? systemClock;
    this.token = new TokenFile(opts.tokenFile, this.clock);
    if (this.url.protocol === "https:") {
      const pool = (ca?: Buffer) =>
        new HttpsAgent({ keepAlive: true, maxSockets: 32, ...(ca ? { ca } : {}) });
      if (opts.caFile) this.trust = new TrustBundle(opts.caFile, pool, this.clock);
      else this.systemRoots = pool();
    } else if (this.url.protocol === "http:") {
      this.plainAgent = new HttpAgent({ keepAlive: true, maxSockets: 32 });
    } else {
      throw new Error(`server URL must be https:// (or http:// for tests), got ${this.url.protocol}`);
    }
  }

  close(): void {
    this.plainAgent?.destroy();
    this.systemRoots?.destroy();
    this.trust?.close();
  }

  /** Times the CA bundle changed under a running agent. */
  get trustReloads(): number {
    return this.trust?.reloads ?? 0;
  }

  private connectionPool(): HttpsAgent | HttpAgent {
    return this.trust?.agent() ?? this.systemRoots ?? this.plainAgent!;
  }

  get reachable(): boolean {
    return this.lastAnswerMs > 0 && this.lastAnswerMs >= this.lastFailureMs;
  }

  async credentials(req: CredentialsRequest, timeoutMs = this.timeoutMs): Promise<CredentialsResponse> {
    const { status, text } = await this.send(
      "POST",
      CREDENTIALS_PATH,
      JSON.stringify(req),
      this.bearer(),
      timeoutMs,
    );
    const parsed = parseJson(text);
    if (status >= 200 && status < 300) {
      if (!isCredentialsResponse(parsed))
        throw new KeycutterError("ServerAnswerInvalid", "malformed answer from the credential service");
      return parsed;
    }
    throw errorFrom(status, parsed);
  }

  /** The epochs long poll (held by the server up to POLICY_EPOCH_HOLD_MS); `cancel` ends it. */
  async policyEpochs(
    req: PolicyEpochsRequest,
    timeoutMs: number,
    cancel?: AbortSignal,
  ): Promise<PolicyEpochsResponse> {
    const { status, text } = await this.send(
      "POST",
      POLICY_EPOCHS_PATH,
      JSON.stringify(req),
      this.bearer(),
      timeoutMs,
      cancel,
    );
    const parsed = parseJson(text);
    if (status >= 200 && status < 300) {
      if (!isPolicyEpochsResponse(parsed))
        throw new KeycutterError(
          "ServerAnswerInvalid",
          "malformed epochs answer from the credential service",
        );
      return parsed;
    }
    throw errorFrom(status, parsed);
  }

  private bearer(): string {
    try {
      return this.token.read();
    } catch (err) {
      throw new KeycutterError(
        "Unavailable",
        `cannot read the agent token file: ${(err as NodeJS.ErrnoException).code ?? "error"}`,
        { cause: err },
      );
    }
  }

  /** Any HTTP answer (even 404) means reachable; a connection or TLS failure does not. */
  async probe(timeoutMs = 2000): Promise<boolean> {
    try {
      await this.send("GET", "/healthz", undefined, undefined, timeoutMs);
      return true;
    } catch {
      return false;
    }
  }

  private send(
    method: string,
    path: string,
    body: string | undefined,
    token: string | undefined,
    timeoutMs: number,
    cancel?: AbortSignal,
  ): Promise<{ status: number; text: string }> {
    const doRequest = this.url.protocol === "https:" ? httpsRequest : httpRequest;
    const base = this.url.pathname.replace(/\/$/, "");
    let agent: HttpsAgent | HttpAgent;
    try {
      agent = this.connectionPool();
    } catch (e) {
      this.lastFailureMs = this.clock.now();
      return Promise.reject(e as Error);
    }
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = { accept: "application/json" };
      if (body !== undefined) {
        headers["content-type"] = "application/json";
        headers["content-length"] = String(Buffer.byteLength(body));
      }
      if (token) headers.authorization = `Bearer ${token}`;
      const req = doRequest(
        {
          protocol: this.url.protocol,
          hostname: this.url.hostname,
          port: this.url.port || undefined,
          path: base + path,
          method,
          headers,
          agent,
          timeout: timeoutMs,
        },
        (res: IncomingMessage) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (c: Buffer) => {
            size += c.length;
            if (size > MAX_RESPONSE_BYTES) {
              res.destroy();
              fail(new KeycutterError("ServerAnswerInvalid", "answer from the credential service too large"));
              return;
            }
            chunks.push(c);
          });
          res.on("end", () => {
            this.clock.clearTimeout(timer);
            cancel?.removeEventListener("abort", onCancel);
            this.lastAnswerMs = this.clock.now();
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") });
          });
          res.on("error", (e) => fail(e));
        },
      );
      const fail = (err: unknown): void => {
        this.clock.clearTimeout(timer);
        cancel?.removeEventListener("abort", onCancel);
        // Ending our own long poll says nothing about the server's reachability.
        if ((err as NodeJS.ErrnoException).code !== "ECANCELLED") this.lastFailureMs = this.clock.now();
        req.destroy();
        if (err instanceof KeycutterError) reject(err);
        else {
          const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message ?? "error";
          reject(
            new KeycutterError("Unavailable", `credential service unreachable (${code})`, { cause: err }),
          );
        }
      };
      // Overall deadline (socket `timeout` is only inactivity).
      const timer = this.clock.setTimeout(
        () => fail(Object.assign(new Error("timeout"), { code: "ETIMEDOUT" })),
        timeoutMs,
      );
      req.on("timeout", () => fail(Object.assign(new Error("timeout"), { code: "ETIMEDOUT" })));
      req.on("error", fail);
      const onCancel = (): void => fail(Object.assign(new Error("cancelled"), { code: "ECANCELLED" }));
      if (cancel?.aborted) onCancel();
      else cancel?.addEventListener("abort", onCancel, { once: true });
      req.end(body);
    });
  }
}
