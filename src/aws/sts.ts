// STS AssumeRole for the server: configurable endpoint/region, the server's own credentials from
// the default provider chain (or static, for tests), our own retry with exponential backoff and
// jitter on throttling and transient errors (the SDK's retries are off so the policy is ours and
// observable), and errors mapped to the contract's codes. Messages never contain a secret.

import { AssumeRoleCommand, STSClient, type AssumeRoleCommandInput } from "@aws-sdk/client-sts";
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from "@aws-sdk/types";
import type { ErrorCode } from "../api/contract.ts";

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
}

export class StsError extends Error {
  readonly code: Extract<ErrorCode, "StsDenied" | "PolicyInvalid" | "Throttled" | "Unavailable">;
  readonly awsCode: string;
  constructor(code: StsError["code"], awsCode: string, message: string) {
    super(message);
    this.name = "StsError";
    this.code = code;
    this.awsCode = awsCode;
  }
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
  sleep?: (ms: number) => Promise<void>;
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
  $metadata?: { httpStatusCode?: number };
  $fault?: string;
}

export function classify(e: unknown): {
  code: StsError["code"];
  awsCode: string;
  retry: boolean;
  message: string;
} {
  const err = (e ?? {}) as AwsLikeError;
  const awsCode = err.name && err.name !== "Error" ? err.name : (err.Code ?? err.code ?? "Unknown");
  const status = err.$metadata?.httpStatusCode ?? 0;
  // AWS messages name the role and the problem, never a secret; cap the length anyway.
  const msg = String(err.message ?? awsCode).slice(0, 300);
  if (THROTTLE.has(awsCode) || status === 429)
    return { code: "Throttled", awsCode, retry: true, message: `STS throttled the request (${awsCode})` };
  if (DENIED.has(awsCode))
    return {
      code: "StsDenied",
      awsCode,
      retry: false,
      message: `STS refused AssumeRole: ${awsCode}: ${msg}`,
    };
  if (POLICY.has(awsCode))
    return {
      code: "PolicyInvalid",
      awsCode,
      retry: false,
      message: `STS rejected the session policy or parameters: ${awsCode}: ${msg}`,
    };
  if (status >= 500 || err.$fault === "server" || status === 0) {
    return { code: "Unavailable", awsCode, retry: true, message: `STS unavailable: ${awsCode}` };
  }
  return { code: "Unavailable", awsCode, retry: false, message: `STS error ${awsCode}: ${msg}` };
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
    const sleep = this.opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    let last: ReturnType<typeof classify> | undefined;
    for (let attempt = 1; attempt <= max; attempt++) {
      this.opts.onCall?.(structuredClone(input));
      const t0 = performance.now();
      try {
        const out = await this.client.send(new AssumeRoleCommand(input));
        this.opts.onAttempt?.("ok", (performance.now() - t0) / 1000);
        const c = out.Credentials;
        if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
          throw new StsError("Unavailable", "IncompleteResponse", "STS returned no credentials");
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
        return res;
      } catch (e) {
        if (e instanceof StsError) throw e;
        last = classify(e);
        this.opts.onAttempt?.(last.awsCode, (performance.now() - t0) / 1000);
        if (!last.retry || attempt === max) break;
        const backoff = Math.min(cap, base * 2 ** (attempt - 1));
        await sleep(backoff / 2 + Math.random() * (backoff / 2));
      }
    }
    const l = last as ReturnType<typeof classify>;
    throw new StsError(l.code, l.awsCode, l.message);
  }

  destroy(): void {
    this.client.destroy();
  }
}
