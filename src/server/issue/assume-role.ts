// Last step: STS AssumeRole with the plan's inputs. A role whose MaxSessionDuration is below what
// the policy asks for is retried once at the default role maximum instead of refused. STS's own
// text names the server's identity: it goes to this log only; agents, pods and status conditions
// get the code and the request id.
import { KeycutterError } from "../../api/errors.ts";
import type { Logger } from "../../common/logger.ts";
import { StsError, type AssumeRoleRequest, type AssumedCredentials } from "../../aws/sts.ts";
import type { IssuePlan, PolicyRef } from "../../policy/decide.ts";
import type { CachedCredentials } from "../cache.ts";
import type { IssueContext, Issued, Issuer } from "./issuer.ts";

/** What a role allows when nobody raised its MaxSessionDuration. */
const DEFAULT_ROLE_MAX_SECONDS = 3600;

export interface AssumeRoleOptions {
  sts: { assumeRole(req: AssumeRoleRequest): Promise<AssumedCredentials> };
  log: Logger;
  /** Called with every definite STS refusal (the status writer shows the latest). */
  observe?: (policy: PolicyRef, reason: string, message: string) => void;
}

function rfc3339(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function requestOf(plan: IssuePlan): AssumeRoleRequest {
  const req: AssumeRoleRequest = {
    roleArn: plan.roleArn,
    sessionName: plan.sessionName,
    durationSeconds: plan.durationSeconds,
    policyArns: plan.policyArns,
    tags: plan.tags,
  };
  if (plan.sessionPolicy) req.sessionPolicy = plan.sessionPolicy;
  if (plan.sourceIdentity) req.sourceIdentity = plan.sourceIdentity;
  return req;
}

function durationTooLong(err: unknown, req: AssumeRoleRequest): boolean {
  return (
    err instanceof StsError &&
    err.awsCode === "ValidationError" &&
    /DurationSeconds|MaxSessionDuration/i.test(err.detail) &&
    req.durationSeconds > DEFAULT_ROLE_MAX_SECONDS
  );
}

export class AssumeRoleIssuer implements Issuer {
  private readonly opts: AssumeRoleOptions;

  constructor(opts: AssumeRoleOptions) {
    this.opts = opts;
  }

  async issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued> {
    let assumed: AssumedCredentials;
    try {
      assumed = await this.assumeWithFallback(plan);
    } catch (err) {
      if (!(err instanceof StsError)) throw err;
      this.opts.log.warn(
        { err, requestId: err.requestId, role: plan.roleArn, pod: `${plan.policy.namespace}/${ctx.podUID}` },
        "STS AssumeRole failed",
      );
      if (err.code === "StsDenied" || err.code === "PolicyInvalid")
        this.opts.observe?.(
          plan.policy,
          err.code === "StsDenied" ? "StsDenied" : "StsRejectedPolicy",
          err.message,
        );
      throw new KeycutterError(err.code, err.message, { cause: err });
    }
    const creds: CachedCredentials = {
      accessKeyId: assumed.accessKeyId,
      secretAccessKey: assumed.secretAccessKey,
      sessionToken: assumed.sessionToken,
      expiration: rfc3339(assumed.expiration),
    };
    if (assumed.accountId) creds.accountId = assumed.accountId;
    if (assumed.requestId) creds.stsRequestId = assumed.requestId;
    return { creds, source: "sts" };
  }

  private async assumeWithFallback(plan: IssuePlan): Promise<AssumedCredentials> {
    const req = requestOf(plan);
    try {
      return await this.opts.sts.assumeRole(req);
    } catch (err) {
      if (!durationTooLong(err, req)) throw err;
      this.opts.log.warn(
        { role: plan.roleArn, durationSeconds: req.durationSeconds },
        "role's MaxSessionDuration is lower than requested; retrying with 3600",
      );
      return this.opts.sts.assumeRole({ ...req, durationSeconds: DEFAULT_ROLE_MAX_SECONDS });
    }
  }
}
