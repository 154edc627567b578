// A stand-in for the central service that follows src/api/contract.ts over TLS: it checks the
// agent's bearer token, validates the body with the contract's own parser, checks the pod against
// the real apiserver (exists, UID, node), validates pod tokens with a real TokenReview, and issues
// distinct credentials per pod (and per issuance). It records every call. It also serves the
// policy-epoch long poll, with an epoch per namespace that a test can move (setEpoch).
import { createServer, type Server } from "node:https";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { randomBytes } from "node:crypto";
import { AuthenticationV1Api, CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { serverReuseMinRemainingSeconds } from "../../src/api/serve-window.ts";
import {
  CREDENTIALS_PATH,
  MAX_EPOCH_REQUEST_BYTES,
  MAX_REQUEST_BYTES,
  POLICY_EPOCHS_PATH,
  POLICY_EPOCH_HOLD_MS,
  parseCredentialsRequest,
  parsePolicyEpochsRequest,
  type CredentialsRequest,
  type CredentialsResponse,
  type ErrorCode,
} from "../../src/api/contract.ts";
import { KeycutterError, httpStatus } from "../../src/api/errors.ts";
import { SERVER_DEFAULTS } from "../../src/server/config.ts";

export interface RecordedCall {
  pod: CredentialsRequest["pod"];
  withToken: boolean;
  result: "ok" | ErrorCode;
  accessKeyId?: string;
}

export interface TestServerOptions {
  kc: KubeConfig;
  certFile: string;
  keyFile: string;
  /** Bearer tokens accepted as "an agent of node <value>". */
  agents: Map<string, string>;
  host?: string;
  lifetimeSeconds?: number;
  /** Pods with this label get NoPolicy. */
  noPolicyLabel?: string;
  /** Audience pod tokens must carry (default "keycutter-pod", as the real server). */
  audience?: string;
  /** How long an epoch poll with nothing changed is held (default: the contract's). */
  epochHoldMs?: number;
  /** The clock credentials are issued by (default: Date.now). */
  now?: () => number;
  /** Hand a pod back its last session while the real server would (serverReuseMinRemainingSeconds). */
  reuse?: boolean;
}

export class TestServer {
  readonly calls: RecordedCall[] = [];
  /** While true every request gets 503 Unavailable. */
  down = false;
  /** While true only the epoch polls get 503 (the channel is down, credentials still work). */
  pollsDown = false;
  /** Added to every answer (ms). */
  delayMs = 0;
  /** Session duration of new credentials (default: the option's, else 3600). */
  lifetimeSeconds: number;
  /** Every access key issued → its expiry (ms), for a stand-in AWS service to check. */
  readonly issued = new Map<string, number>();
  /** The last session per pod UID, for `reuse`. */
  private readonly lastSession = new Map<string, { res: CredentialsResponse; expirationMs: number }>();
  port = 0;
  private readonly server: Server;
  private readonly core: CoreV1Api;
  private readonly authn: AuthenticationV1Api;
  private readonly o: TestServerOptions;
  private counter = 0;
  private readonly epochs = new Map<string, string>();
  /** Held polls; called with `force` at the hold time and on stop, without it on a change. */
  private readonly heldPolls = new Set<(force: boolean) => void>();

  constructor(o: TestServerOptions) {
    this.o = o;
    this.lifetimeSeconds = o.lifetimeSeconds ?? 3600;
    this.core = o.kc.makeApiClient(CoreV1Api);
    this.authn = o.kc.makeApiClient(AuthenticationV1Api);
    this.server = createServer(
      { cert: readFileSync(o.certFile), key: readFileSync(o.keyFile) },
      (req, res) => {
        const reply = (status: number, body: unknown): void => {
          const text = JSON.stringify(body);
          res.writeHead(status, {
            "content-type": "application/json",
            "content-length": Buffer.byteLength(text),
          });
          res.end(text);
        };
        const fail = (code: ErrorCode, message: string): void => reply(httpStatus(code), { code, message });
        if (req.url === POLICY_EPOCHS_PATH && req.method === "POST") {
          const body: Buffer[] = [];
          req.on("data", (c: Buffer) => body.push(c));
          req.on("end", () => this.poll(req.headers.authorization, Buffer.concat(body), reply, fail));
          return;
        }
        if (req.url !== CREDENTIALS_PATH || req.method !== "POST") return fail("BadRequest", "no such route");
        const chunks: Buffer[] = [];
        let size = 0;
        req.on("data", (c: Buffer) => {
          size += c.length;
          if (size <= MAX_REQUEST_BYTES) chunks.push(c);
        });
        req.on("end", () => {
          if (size > MAX_REQUEST_BYTES) return fail("PayloadTooLarge", "too large");
          this.handle(req.headers.authorization, Buffer.concat(chunks).toString("utf8")).then(
            ([status, body]) => {
              const wait = this.delayMs;
              if (wait > 0) setTimeout(() => reply(status, body), wait);
              else reply(status, body);
            },
            (err: unknown) => fail("Unavailable", `test server error: ${(err as Error).message}`),
          );
        });
      },
    );
  }

  /** Listens on `port` (default: a free one; pass the old port to restart in place). */
  async start(port = 0): Promise<void> {
    await new Promise<void>((r) => this.server.listen(port, this.o.host ?? "0.0.0.0", r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const answer of [...this.heldPolls]) answer(true);
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  epochOf(namespace: string): string {
    return this.epochs.get(namespace) ?? "epoch-0";
  }

  /** A policy change in `namespace`: held polls naming it are answered. */
  setEpoch(namespace: string, epoch: string): void {
    this.epochs.set(namespace, epoch);
    for (const answer of [...this.heldPolls]) answer(false);
  }

  private poll(
    auth: string | undefined,
    raw: Buffer,
    reply: (status: number, body: unknown) => void,
    fail: (code: ErrorCode, message: string) => void,
  ): void {
    if (this.down || this.pollsDown) return fail("Unavailable", "test server is down");
    const bearer = auth?.startsWith("Bearer ") ? auth.slice(7) : undefined;
    if (!bearer || !this.o.agents.has(bearer)) return fail("Unauthenticated", "unknown agent");
    if (raw.length > MAX_EPOCH_REQUEST_BYTES) return fail("PayloadTooLarge", "too large");
    let known: Record<string, string>;
    try {
      known = parsePolicyEpochsRequest(JSON.parse(raw.toString("utf8"))).namespaces;
    } catch (e) {
      return fail("BadRequest", e instanceof KeycutterError ? e.message : "body is not JSON");
    }
    const current = () => Object.fromEntries(Object.keys(known).map((ns) => [ns, this.epochOf(ns)]));
    const moved = () => Object.keys(known).some((ns) => known[ns] !== this.epochOf(ns));
    if (moved()) return reply(200, { epochs: current() });
    const answer = (force: boolean): void => {
      if (!force && !moved()) return;
      clearTimeout(timer);
      this.heldPolls.delete(answer);
      reply(200, { epochs: current() });
    };
    const timer = setTimeout(() => answer(true), this.o.epochHoldMs ?? POLICY_EPOCH_HOLD_MS);
    this.heldPolls.add(answer);
  }

  callsFor(podName: string): RecordedCall[] {
    return this.calls.filter((c) => c.pod.name === podName);
  }

  private async handle(auth: string | undefined, text: string): Promise<[number, unknown]> {
    const err = (code: ErrorCode, message: string): [number, unknown] => [
      httpStatus(code),
      { code, message },
    ];
    if (this.down) return err("Unavailable", "test server is down");
    const bearer = auth?.startsWith("Bearer ") ? auth.slice(7) : undefined;
    const node = bearer ? this.o.agents.get(bearer) : undefined;
    if (!node) return err("Unauthenticated", "unknown agent");
    let req: CredentialsRequest;
    try {
      req = parseCredentialsRequest(JSON.parse(text));
    } catch (e) {
      return err("BadRequest", e instanceof KeycutterError ? e.message : "body is not JSON");
    }
    const record = (result: "ok" | ErrorCode, accessKeyId?: string): void => {
      this.calls.push({ pod: req.pod, withToken: req.podToken !== undefined, result, accessKeyId });
    };
    let pod;
    try {
      pod = await this.core.readNamespacedPod({ namespace: req.pod.namespace, name: req.pod.name });
    } catch {
      record("PodNotFound");
      return err("PodNotFound", "no such pod");
    }
    if (pod.metadata?.uid !== req.pod.uid) {
      record("PodNotFound");
      return err("PodNotFound", "pod UID differs");
    }
    if (pod.spec?.nodeName !== node) {
      record("PodNotOnNode");
      return err("PodNotOnNode", "pod is not on the agent's node");
    }
    if (req.podToken !== undefined) {
      const tr = await this.authn.createTokenReview({
        body: {
          spec: { token: req.podToken, audiences: [this.o.audience ?? SERVER_DEFAULTS.podTokenAudience] },
        },
      });
      if (!tr.status?.authenticated) {
        record("Unauthenticated");
        return err("Unauthenticated", "pod token rejected");
      }
      const uid = tr.status.user?.extra?.["authentication.kubernetes.io/pod-uid"]?.[0];
      if (uid !== req.pod.uid) {
        record("PodTokenMismatch");
        return err("PodTokenMismatch", "the token does not belong to the calling pod");
      }
    }
    if (this.o.noPolicyLabel && pod.metadata?.labels?.[this.o.noPolicyLabel] !== undefined) {
      record("NoPolicy");
      return err("NoPolicy", "no policy selects this pod");
    }
    const nowMs = (this.o.now ?? Date.now)();
    const last = this.lastSession.get(req.pod.uid);
    if (
      this.o.reuse &&
      last &&
      last.expirationMs - nowMs >= serverReuseMinRemainingSeconds(this.lifetimeSeconds) * 1000
    ) {
      record("ok", last.res.credentials.accessKeyId);
      return [200, last.res];
    }
    const n = ++this.counter;
    // The pod name and issuance number are visible in the key, and the last 4 characters
    // (what `aws configure list` shows) are unique per issuance.
    const tag = req.pod.name
      .replace(/[^a-z0-9]/g, "")
      .toUpperCase()
      .slice(0, 8);
    const accessKeyId = `ASIA${tag}X${String(n).padStart(4, "0")}`;
    const res: CredentialsResponse = {
      credentials: {
        accessKeyId,
        secretAccessKey: randomBytes(30).toString("base64"),
        sessionToken: `session-${req.pod.uid}-${n}-${randomBytes(16).toString("hex")}`,
        expiration: new Date(nowMs + this.lifetimeSeconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z"),
        accountId: "123456789012",
      },
      roleArn: `arn:aws:iam::123456789012:role/kc-${req.pod.namespace}-${req.pod.name}`,
      roleName: `kc-${req.pod.namespace}-${req.pod.name}`,
      sessionName: `${req.pod.namespace}.${req.pod.name}`.slice(0, 64),
      policy: { namespace: req.pod.namespace, name: "test", generation: 1 },
      policyEpoch: this.epochOf(req.pod.namespace),
    };
    record("ok", accessKeyId);
    this.issued.set(accessKeyId, Date.parse(res.credentials.expiration));
    this.lastSession.set(req.pod.uid, { res, expirationMs: Date.parse(res.credentials.expiration) });
    return [200, res];
  }
}
