// Second step: definite STS refusals remembered briefly (../failure-cache.ts), so that the retries
// of a broken policy by every agent and replica cost no AssumeRole. Only definite refusals are
// kept, never throttling or outages.
import { ERRORS, KeycutterError } from "../../api/errors.ts";
import type { IssuePlan } from "../../policy/decide.ts";
import type { FailureCache } from "../failure-cache.ts";
import type { ServerMetrics } from "../metrics.ts";
import { WrappingIssuer, type IssueContext, type Issued } from "./issuer.ts";
import { failureKey } from "./keys.ts";

export interface RefusalCacheOptions {
  failures: FailureCache;
  metrics: Pick<ServerMetrics, "cacheLookups">;
}

export class RefusalCacheIssuer extends WrappingIssuer<RefusalCacheOptions> {
  async issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued> {
    const key = failureKey(ctx.cacheKey, plan);
    const failed = this.opts.failures.get(key);
    if (failed) {
      this.opts.metrics.cacheLookups.inc({ result: "hit_failure" });
      throw new KeycutterError(failed.code, failed.message);
    }
    try {
      return await this.next.issue(plan, ctx);
    } catch (err) {
      if (err instanceof KeycutterError && ERRORS[err.code].definite)
        this.opts.failures.set(key, { code: err.code, message: err.message });
      throw err;
    }
  }
}
