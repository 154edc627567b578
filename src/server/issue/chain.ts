// The issuance chain, in order: memory cache → remembered refusals → single flight → shared
// cache with its lock → fair rate limit → STS AssumeRole with the duration fallback.
import type { Clock } from "../../common/clock.ts";
import type { Logger } from "../../common/logger.ts";
import { FairQueue } from "../fair-queue.ts";
import type { AssumeRoleRequest, AssumedCredentials } from "../../aws/sts.ts";
import type { PolicyRef } from "../../policy/decide.ts";
import { MemoryCache, type SharedStore } from "../cache.ts";
import { FailureCache } from "../failure-cache.ts";
import type { ServerMetrics } from "../metrics.ts";
import { AssumeRoleIssuer } from "./assume-role.ts";
import type { Issuer } from "./issuer.ts";
import { IssuedHistory } from "./issued-history.ts";
import { MemoryCacheIssuer } from "./memory.ts";
import { RateLimitedIssuer } from "./rate-limit.ts";
import { RefusalCacheIssuer } from "./refusals.ts";
import { SharedCacheIssuer } from "./shared.ts";
import { SingleFlightIssuer } from "./single-flight.ts";

export interface ChainOptions {
  sts: { assumeRole(req: AssumeRoleRequest): Promise<AssumedCredentials> };
  shared: SharedStore | undefined;
  metrics: Pick<ServerMetrics, "cacheLookups">;
  log: Logger;
  observe: ((policy: PolicyRef, reason: string, message: string) => void) | undefined;
  cacheMinRemainingSeconds: number;
  lockWaitMs: number;
  stsRatePerSecond: number;
  stsBurst: number;
  stsMaxWaitMs: number;
  stsMaxWaitersPerNamespace: number | undefined;
  stsFailureTtlMs: number;
  stsFailureCacheEntries: number;
  /** Freshness, expiry, the refusal TTL and the shared lock's waits (the STS budget keeps its own monotonic time). */
  clock: Clock;
}

export interface IssuanceChain {
  /** The first step: what the service calls. */
  issuer: Issuer;
  memory: MemoryCache;
  /** Drops what has expired from the chain's bounded stores. */
  sweep(nowMs: number): void;
}

export function issuanceChain(opts: ChainOptions): IssuanceChain {
  const memory = new MemoryCache();
  const history = new IssuedHistory();
  const failures = new FailureCache({
    ttlMs: opts.stsFailureTtlMs,
    maxEntries: opts.stsFailureCacheEntries,
    now: () => opts.clock.now(),
  });
  const limiter = new FairQueue({
    label: "STS",
    ratePerSecond: opts.stsRatePerSecond,
    burst: opts.stsBurst,
    maxWaitMs: opts.stsMaxWaitMs,
    ...(opts.stsMaxWaitersPerNamespace !== undefined
      ? { maxWaitersPerTenant: opts.stsMaxWaitersPerNamespace }
      : {}),
  });
  const { metrics, clock } = opts;
  const minRemainingSeconds = opts.cacheMinRemainingSeconds;
  const sts = new AssumeRoleIssuer({
    sts: opts.sts,
    log: opts.log,
    ...(opts.observe ? { observe: opts.observe } : {}),
  });
  const limited = new RateLimitedIssuer(sts, { limiter, history, clock });
  const shared = new SharedCacheIssuer(limited, {
    shared: opts.shared,
    minRemainingSeconds,
    lockWaitMs: opts.lockWaitMs,
    metrics,
    clock,
  });
  const flights = new SingleFlightIssuer(shared);
  const refusals = new RefusalCacheIssuer(flights, { failures, metrics });
  const issuer = new MemoryCacheIssuer(refusals, { memory, history, minRemainingSeconds, metrics, clock });
  return {
    issuer,
    memory,
    sweep(nowMs) {
      memory.sweep(nowMs);
      failures.sweep();
      history.sweep(nowMs);
    },
  };
}
