// STS AssumeRole for the server: configurable endpoint/region, the server's own credentials from
// the default provider chain (or static, for tests), our own retry with exponential backoff and
// jitter on throttling and transient errors (the SDK's retries are off so the policy is ours and
// observable), and errors mapped to the contract's codes. Messages never contain a secret, nor
// STS's own text (see StsError).

import { AssumeRoleCommand, STSClient, type AssumeRoleCommandInput } from "@aws-sdk/client-sts";
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from "@aws-sdk/types";
import { randomUUID } from "node:crypto";
import type { ErrorCode } from "../api/contract.ts";
import { systemClock, type Clock } from "../common/clock.ts";

export interface AssumeRoleRequest {
  roleArn: string;
  sessionName: string;
  sourceIdentity?: string;
  sessionPolicy?: string;
  policyArns?: string[];
  tags?: { Key: string; Value: string }[];
  durationSeconds: number;
}

export interface AssumedCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: Date;
  accountId?: string;
  assumedRoleArn?: string;
  /** STS's request id of the AssumeRole that issued them: CloudTrail's `requestID` of that event. */
  requestId?: string;
}

/**
 * An AssumeRole failure. `message` is what may leave the server (to agents, pods, policy status):
 * the contract code and a reference, never STS's own text, which names the server's identity
 * (its role or user ARN, its account) and the role's trust configuration. `detail` keeps that
 * text for the server log only.
 */
export class StsError extends Error {
  readonly code: Extract<ErrorCode, "StsDenied" | "PolicyInvalid" | "Throttled" | "Unavailable">;
  readonly awsCode: string;
  /** STS's own error text: for the server log only. */
  readonly detail: string;
  /** STS's request id when it answered, else one made here; both the log and `message` carry it. */
  readonly requestId: string;
  constructor(code: StsError["code"], awsCode: string, detail: string, requestId: string = randomUUID()) {
    super(publicMessage(code, requestId));
    this.name = "StsError";
    this.code = code;
    this.awsCode = awsCode;
    this.detail = detail;
    this.requestId = requestId;
  }
}

const PUBLIC_TEXT: Record<StsError["code"], string> = {
  StsDenied: "STS refused the AssumeRole request",
  PolicyInvalid: "STS rejected the session policy or parameters",
  Throttled: "STS throttled the AssumeRole request",
  Unavailable: "STS could not be reached or failed",
};

function publicMessage(code: StsError["code"], requestId: string): string {
  return `${PUBLIC_TEXT[code]} (${code}); see the server log, request id ${requestId}`;
}

export interface StsIssuerOptions {
  region: string;
  endpoint?: string;
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider;
  /** Attempts including the first (throttling and transient errors only). Default 5. */
  maxAttempts?: number;
  baseBackoffMs?: number;
  maxBackoffMs?: number;
  requestTimeoutMs?: number;
  /** Called with the exact input of every AssumeRole call (tests, debugging). */
  onCall?: (input: AssumeRoleCommandInput) => void;
  /** Called after each attempt: outcome "ok" | aws error code, latency in seconds. */
  onAttempt?: (outcome: string, seconds: number) => void;
  /** The backoff's waits and jitter; tests move a manual clock. */
  clock?: Clock;
}

/**
 * The wait before the retry that follows attempt `attempt` (1-based): exponential from `baseMs`,
 * capped at `capMs`, its upper half drawn at random (`random` in [0, 1)) so that replicas
 * throttled together do not retry together.
 */
export function backoffMs(attempt: number, baseMs: number, capMs: number, random: number): number {
  const backoff = Math.min(capMs, baseMs * 2 ** (attempt - 1));
  return backoff / 2 + random * (backoff / 2);
}

const DENIED = new Set(["AccessDenied", "AccessDeniedException", "InvalidIdentityToken"]);
const POLICY = new Set([
  "MalformedPolicyDocument",
  "MalformedPolicyDocumentException",
  "PackedPolicyTooLarge",
  "PackedPolicyTooLargeException",
  "ValidationError",
  // MinIO's STS answers an unsupported action in a session policy with this
  "InvalidParameterValue",
]);
const THROTTLE = new Set([
  "Throttling",
  "ThrottlingException",
  "RequestLimitExceeded",
  "TooManyRequestsException",
  "RequestThrottled",
  "SlowDown",
]);

interface AwsLikeError {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number; requestId?: string };
  $fault?: string;
}

export function classify(e: unknown): {
  code: StsError["code"];
  awsCode: string;
  retry: boolean;
  /** STS's text, for the server log only (it names the server's identity). */
  detail: string;
  requestId: string | undefined;
} {
  const err = (e ?? {}) as AwsLikeError;
  const awsCode = err.name && err.name !== "Error" ? err.name : (err.Code ?? err.code ?? "Unknown");
  const status = err.$metadata?.httpStatusCode ?? 0;
  const requestId = err.$metadata?.requestId || undefined;
  const detail = `${awsCode}: ${String(err.message ?? awsCode).slice(0, 1000)}`;
  const out = (code: StsError["code"], retry: boolean) => ({ code, awsCode, retry, detail, requestId });
  if (THROTTLE.has(awsCode) || status === 429) return out("Throttled", true);
  if (DENIED.has(awsCode)) return out("StsDenied", false);
  if (POLICY.has(awsCode)) return out("PolicyInvalid", false);
  return out("Unavailable", status >= 500 || err.$fault === "server" || status === 0);
}

export class StsIssuer {
  private readonly client: STSClient;
  private readonly opts: StsIssuerOptions;

  constructor(opts: StsIssuerOptions) {
    this.opts = opts;
    this.client = new STSClient({
      region: opts.region,
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      maxAttempts: 1,
      requestHandler: { requestTimeout: opts.requestTimeoutMs ?? 5000, connectionTimeout: 2000 },
    });
  }

  async assumeRole(req: AssumeRoleRequest): Promise<AssumedCredentials> {
    const input: AssumeRoleCommandInput = {
      RoleArn: req.roleArn,
      RoleSessionName: req.sessionName,
      DurationSeconds: req.durationSeconds,
    };
    if (req.sessionPolicy) input.Policy = req.sessionPolicy;
    if (req.policyArns && req.policyArns.length > 0)
      input.PolicyArns = req.policyArns.map((arn) => ({ arn }));
    if (req.tags && req.tags.length > 0) input.Tags = req.tags.map((t) => ({ Key: t.Key, Value: t.Value }));
    if (req.sourceIdentity) input.SourceIdentity = req.sourceIdentity;

    const max = this.opts.maxAttempts ?? 5;
    const base = this.opts.baseBackoffMs ?? 100;
    const cap = this.opts.maxBackoffMs ?? 2000;
    const clock = this.opts.clock ?? systemClock;
    // not unref'd: a retry in flight is work the process still has to finish
    const wait = (ms: number) => new Promise<void>((resolve) => clock.setTimeout(resolve, ms));
    let last: ReturnType<typeof classify> | undefined;
    for (let attempt = 1; attempt <= max; attempt++) {
      this.opts.onCall?.(structuredClone(input));
      const t0 = performance.now();
      try {
        const out = await this.client.send(new AssumeRoleCommand(input));
        this.opts.onAttempt?.("ok", (performance.now() - t0) / 1000);
        const c = out.Credentials;
        if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
          throw new StsError(
            "Unavailable",
            "IncompleteResponse",
            "STS returned no credentials",
            out.$metadata.requestId,
          );
        }
        const arn = out.AssumedRoleUser?.Arn;
        const account = arn?.split(":")[4];
        const res: AssumedCredentials = {
          accessKeyId: c.AccessKeyId,
          secretAccessKey: c.SecretAccessKey,
          sessionToken: c.SessionToken,
          expiration: new Date(c.Expiration),
        };
        if (account && /^\d{12}$/.test(account)) res.accountId = account;
        if (arn) res.assumedRoleArn = arn;
        if (out.$metadata.requestId) res.requestId = out.$metadata.requestId;
        return res;
      } catch (e) {
        if (e instanceof StsError) throw e;
        last = classify(e);
        this.opts.onAttempt?.(last.awsCode, (performance.now() - t0) / 1000);
        if (!last.retry || attempt === max) break;
        await wait(backoffMs(attempt, base, cap, clock.random()));
      }
    }
    const l = last as ReturnType<typeof classify>;
    throw new StsError(l.code, l.awsCode, l.detail, l.requestId);
  }

  destroy(): void {
    this.client.destroy();
  }
}
