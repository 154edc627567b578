// One token bucket per key (a client address, a node), so that one source spending its budget
// leaves every other source's untouched. Buckets live in a bounded LRU: a flood of new keys evicts
// the longest-idle bucket, which then starts full again — a fresh key gets at most `burst`, and
// holding many keys costs the holder, not the other sources.

import { LRUCache } from "lru-cache";
import { TokenBucket } from "./token-bucket.ts";

export interface KeyedTokenBucketsOptions {
  /** Sustained tokens per second, per key. */
  ratePerSecond: number;
  /** Bucket size, per key. */
  burst: number;
  /** Most keys remembered. */
  maxKeys: number;
  /** Milliseconds clock (tests inject one). */
  now?: () => number;
}

export class KeyedTokenBuckets {
  private readonly opts: Required<Omit<KeyedTokenBucketsOptions, "now">>;
  private readonly now: () => number;
  private readonly buckets: LRUCache<string, TokenBucket>;

  constructor(opts: KeyedTokenBucketsOptions) {
    if (!(opts.ratePerSecond > 0) || !(opts.burst >= 1))
      throw new Error("KeyedTokenBuckets: ratePerSecond must be > 0 and burst ≥ 1");
    this.opts = { ratePerSecond: opts.ratePerSecond, burst: opts.burst, maxKeys: opts.maxKeys };
    this.now = opts.now ?? (() => performance.now());
    this.buckets = new LRUCache({ max: opts.maxKeys });
  }

  get keys(): number {
    return this.buckets.size;
  }

  /** Takes one token from `key`'s bucket; false when it is empty (the caller refuses). */
  take(key: string): boolean {
    const now = this.now();
    let bucket = this.buckets.get(key);
    if (!bucket) {
      bucket = new TokenBucket(this.opts.ratePerSecond, this.opts.burst, now);
      this.buckets.set(key, bucket);
    }
    return bucket.take(now);
  }
}
