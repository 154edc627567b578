// The documents a pod's SDK reads its credentials from, serialised once per issuance so that a
// cache hit only writes a Buffer: the IMDS security-credentials document (and its -extended form
// with AccountId), iam/info, the role name listing, and the container-credentials document.
import { createHash } from "node:crypto";
import type { CredentialsResponse } from "../api/contract.ts";

export interface CachedCreds {
  roleName: string;
  roleArn: string;
  accountId: string | undefined;
  expirationMs: number;
  fetchedAtMs: number;
  /** IMDS security-credentials/<role> document. */
  imdsBody: Buffer;
  /** IMDS security-credentials-extended/<role> document (with AccountId). */
  imdsExtBody: Buffer;
  /** Container-credentials document. */
  containerBody: Buffer;
  /** iam/info document. */
  infoBody: Buffer;
  roleNameBody: Buffer;
  /** The namespace's policy epoch the server decided under (undefined: an older server). */
  policyEpoch: string | undefined;
  /** When the request that brought these credentials was sent. */
  requestedAtMs: number;
  /** The server's answer itself: what a hand-over passes to a successor (handover.ts). */
  response: CredentialsResponse;
}

/** RFC 3339 in UTC to the second, as IMDS writes times. */
export function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function accountFromArn(arn: string): string | undefined {
  const m = /^arn:[^:]+:iam::(\d{12}):/.exec(arn);
  return m?.[1];
}

function instanceProfileArn(roleArn: string): string {
  const m = /^(arn:[^:]+:iam::\d{12}:)role\/(.*)$/.exec(roleArn);
  return m ? `${m[1]}instance-profile/${m[2]!.split("/").pop()}` : roleArn;
}

/** Every document for the server's answer `res`, received at `nowMs` for a request sent at `requestedAtMs`. */
export function serialiseCredentials(
  res: CredentialsResponse,
  nowMs: number,
  requestedAtMs: number,
): CachedCreds {
  const c = res.credentials;
  const expirationMs = Date.parse(c.expiration);
  const exp = formatTime(expirationMs);
  const updated = formatTime(nowMs);
  const base = {
    Code: "Success",
    LastUpdated: updated,
    Type: "AWS-HMAC",
    AccessKeyId: c.accessKeyId,
    SecretAccessKey: c.secretAccessKey,
    Token: c.sessionToken,
    Expiration: exp,
  };
  const accountId = c.accountId ?? accountFromArn(res.roleArn);
  const ext = accountId ? { ...base, AccountId: accountId } : base;
  const container: Record<string, string> = {
    AccessKeyId: c.accessKeyId,
    SecretAccessKey: c.secretAccessKey,
    Token: c.sessionToken,
    Expiration: exp,
  };
  if (accountId) container.AccountId = accountId;
  const info = {
    Code: "Success",
    LastUpdated: updated,
    InstanceProfileArn: instanceProfileArn(res.roleArn),
    InstanceProfileId:
      "AIPA" + createHash("sha256").update(res.roleArn).digest("hex").slice(0, 17).toUpperCase(),
  };
  return {
    roleName: res.roleName,
    roleArn: res.roleArn,
    accountId,
    expirationMs,
    fetchedAtMs: nowMs,
    imdsBody: Buffer.from(JSON.stringify(base, null, 2)),
    imdsExtBody: Buffer.from(JSON.stringify(ext, null, 2)),
    containerBody: Buffer.from(JSON.stringify(container)),
    infoBody: Buffer.from(JSON.stringify(info, null, 2)),
    roleNameBody: Buffer.from(res.roleName),
    policyEpoch: res.policyEpoch,
    requestedAtMs,
    response: res,
  };
}
