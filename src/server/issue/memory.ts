// First step: this replica's own cache. A hit costs no I/O; whatever the later steps issue or
// find is kept here (and in the pod's issuance history) on the way back.
import type { Clock } from "../../common/clock.ts";
import type { IssuePlan } from "../../policy/decide.ts";
import type { MemoryCache } from "../cache.ts";
import type { ServerMetrics } from "../metrics.ts";
import { WrappingIssuer, freshEnough, type IssueContext, type Issued } from "./issuer.ts";
import type { IssuedHistory } from "./issued-history.ts";

export interface MemoryCacheOptions {
  memory: MemoryCache;
  history: IssuedHistory;
  minRemainingSeconds: number;
  metrics: Pick<ServerMetrics, "cacheLookups">;
  clock: Pick<Clock, "now">;
}

export class MemoryCacheIssuer extends WrappingIssuer<MemoryCacheOptions> {
  async issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued> {
    const { memory, history, minRemainingSeconds, metrics, clock } = this.opts;
    const nowMs = clock.now();
    const held = memory.get(ctx.cacheKey, nowMs);
    if (freshEnough(held, plan.durationSeconds, minRemainingSeconds, nowMs)) {
      metrics.cacheLookups.inc({ result: "hit_memory" });
      return { creds: held, source: "memory" };
    }
    const issued = await this.next.issue(plan, ctx);
    memory.set(ctx.cacheKey, issued.creds);
    history.record(ctx.podUID, Date.parse(issued.creds.expiration));
    return issued;
  }
}
