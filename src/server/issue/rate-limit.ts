// Fifth step: the STS budget (../fair-queue.ts), shared fairly by namespaces, first
// issuances before refreshes. A wait that would be too long is a Throttled refusal, not a queue.
import { KeycutterError } from "../../api/errors.ts";
import type { Clock } from "../../common/clock.ts";
import { RateLimitQueueFull, RateLimitTimeout, type FairQueue } from "../fair-queue.ts";
import type { IssuePlan } from "../../policy/decide.ts";
import { WrappingIssuer, type IssueContext, type Issued } from "./issuer.ts";
import type { IssuedHistory } from "./issued-history.ts";

export interface RateLimitOptions {
  limiter: Pick<FairQueue, "acquire">;
  history: IssuedHistory;
  clock: Pick<Clock, "now">;
}

export class RateLimitedIssuer extends WrappingIssuer<RateLimitOptions> {
  async issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued> {
    const { limiter, history, clock } = this.opts;
    const priority = history.holdsValid(ctx.podUID, clock.now()) ? "refresh" : "first";
    try {
      await limiter.acquire(priority, plan.policy.namespace);
    } catch (err) {
      if (err instanceof RateLimitTimeout || err instanceof RateLimitQueueFull)
        throw new KeycutterError("Throttled", "too many credential requests; retry shortly", { cause: err });
      throw err;
    }
    return this.next.issue(plan, ctx);
  }
}
