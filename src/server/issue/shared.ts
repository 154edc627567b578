// Fourth step: the replicas' shared cache (../cache.ts, optional). A miss takes the key's lock
// so that replicas do not call STS twice for the same credentials; a replica that finds the lock
// taken waits, bounded, for the holder's result, and calls STS itself only if none comes.
import { sleep, type Clock } from "../../common/clock.ts";
import type { IssuePlan } from "../../policy/decide.ts";
import type { CachedCredentials, SharedStore } from "../cache.ts";
import type { ServerMetrics } from "../metrics.ts";
import { WrappingIssuer, freshEnough, type IssueContext, type Issued } from "./issuer.ts";

/** How long a lock outlives a replica that dies holding it. */
const LOCK_TTL_MS = 10_000;
const LOCK_POLL_MS = 50;

export interface SharedCacheOptions {
  /** undefined: no shared cache; every miss goes on to STS. */
  shared: SharedStore | undefined;
  minRemainingSeconds: number;
  /** How long to wait for another replica holding the lock. */
  lockWaitMs: number;
  metrics: Pick<ServerMetrics, "cacheLookups">;
  /** Freshness, the lock wait's deadline and its polls. */
  clock: Clock;
}

export class SharedCacheIssuer extends WrappingIssuer<SharedCacheOptions> {
  async issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued> {
    const { shared, metrics } = this.opts;
    if (!shared) {
      metrics.cacheLookups.inc({ result: "miss" });
      return this.next.issue(plan, ctx);
    }
    const found = await shared.get(ctx.cacheKey);
    if (this.fresh(found, plan)) {
      metrics.cacheLookups.inc({ result: "hit_shared" });
      return { creds: found, source: "shared" };
    }
    metrics.cacheLookups.inc({ result: "miss" });
    const lockToken = await shared.lock(ctx.cacheKey, LOCK_TTL_MS);
    if (!lockToken && shared.ready) {
      const theirs = await this.awaitHolder(shared, plan, ctx);
      if (theirs) return theirs;
    }
    try {
      const issued = await this.next.issue(plan, ctx);
      await shared.set(
        ctx.cacheKey,
        issued.creds,
        Date.parse(issued.creds.expiration) - this.opts.clock.now(),
      );
      return issued;
    } finally {
      if (lockToken) await shared.unlock(ctx.cacheKey, lockToken);
    }
  }

  /** Another replica is calling STS for the same key: its result, if it comes in time. */
  private async awaitHolder(
    shared: SharedStore,
    plan: IssuePlan,
    ctx: IssueContext,
  ): Promise<Issued | undefined> {
    const { clock } = this.opts;
    const deadline = clock.now() + this.opts.lockWaitMs;
    while (clock.now() < deadline) {
      await sleep(clock, LOCK_POLL_MS);
      const found = await shared.get(ctx.cacheKey);
      if (this.fresh(found, plan)) return { creds: found, source: "shared" };
      if (!shared.ready) return undefined;
    }
    return undefined;
  }

  private fresh(creds: CachedCredentials | undefined, plan: IssuePlan): creds is CachedCredentials {
    return freshEnough(creds, plan.durationSeconds, this.opts.minRemainingSeconds, this.opts.clock.now());
  }
}
