// Definite STS refusals, remembered per cache key for a short time: a policy STS rejects would
// otherwise cost an AssumeRole on every retry of every agent and replica, spending the STS budget
// that other tenants share. Only refusals that say something about the inputs are kept (StsDenied,
// PolicyInvalid), never throttling or outages. The key (CredentialService.failureKey) covers the
// policy and allowance generations and the exact inputs, so an edited policy or allowance misses
// at once; a fix outside the cluster (the role's trust policy) shows after at most the TTL.

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
  // Insertion order is expiry order (one TTL for all), so the first entry is both the oldest
  // and the next to expire: evicting it when full needs no LRU bookkeeping.
  private readonly entries = new Map<string, { failure: CachedFailure; expiresAt: number }>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(opts: FailureCacheOptions) {
    this.ttlMs = opts.ttlMs;
    this.maxEntries = Math.max(1, opts.maxEntries);
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: string): CachedFailure | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.failure;
  }

  set(key: string, failure: CachedFailure): void {
    if (this.ttlMs <= 0) return;
    this.entries.delete(key);
    while (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.entries.delete(oldest.value);
    }
    this.entries.set(key, { failure, expiresAt: this.now() + this.ttlMs });
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  /** Drops expired entries (from the front: they expire in insertion order). */
  sweep(): void {
    const now = this.now();
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt > now) break;
      this.entries.delete(key);
    }
  }
}
