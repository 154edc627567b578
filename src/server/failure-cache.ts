// Definite STS refusals, remembered per cache key for a short time: a policy STS rejects would
// otherwise cost an AssumeRole on every retry of every agent and replica, spending the STS budget
// that other tenants share. Only refusals that say something about the inputs are kept (StsDenied,
// PolicyInvalid), never throttling or outages. The key (failureKey, issue/keys.ts) covers the
// policy and allowance generations and the exact inputs, so an edited policy or allowance misses
// at once; a fix outside the cluster (the role's trust policy) shows after at most the TTL.

import { LRUCache } from "lru-cache";
import type { ErrorCode } from "../api/contract.ts";

export interface CachedFailure {
  code: ErrorCode;
  /** The public message (no STS text). */
  message: string;
}

export interface FailureCacheOptions {
  ttlMs: number;
  maxEntries: number;
  /** Milliseconds; injectable so tests need not wait. */
  now?: () => number;
}

export class FailureCache {
  private readonly entries: LRUCache<string, CachedFailure>;
  private readonly enabled: boolean;

  constructor(opts: FailureCacheOptions) {
    const now = opts.now ?? Date.now;
    this.entries = new LRUCache({
      max: Math.max(1, opts.maxEntries),
      // a TTL of 0 means "remember nothing"; lru-cache would read it as "forever"
      ttl: Math.max(1, opts.ttlMs),
      ttlResolution: 0,
      perf: { now },
    });
    this.enabled = opts.ttlMs > 0;
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: string): CachedFailure | undefined {
    return this.entries.get(key);
  }

  set(key: string, failure: CachedFailure): void {
    if (this.enabled) this.entries.set(key, failure);
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  /** Drops expired entries. */
  sweep(): void {
    this.entries.purgeStale();
  }
}
