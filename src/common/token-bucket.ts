// One token bucket: `burst` tokens at most, refilled at `ratePerSecond`. The refill is worked out
// from the time elapsed whenever the bucket is used, so an idle bucket costs nothing and needs no
// timer. The one mechanism under every rate limit here: the per-key buckets
// (keyed-token-buckets.ts) and the server's fair queue in front of STS and TokenReview.

export class TokenBucket {
  private readonly ratePerSecond: number;
  private readonly burst: number;
  private available: number;
  private updatedAt: number;

  constructor(ratePerSecond: number, burst: number, nowMs: number) {
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.available = burst;
    this.updatedAt = nowMs;
  }

  /** Tokens available at `nowMs` (a clock that steps back refills nothing). */
  tokens(nowMs: number): number {
    this.available = Math.min(
      this.burst,
      this.available + (Math.max(0, nowMs - this.updatedAt) / 1000) * this.ratePerSecond,
    );
    this.updatedAt = nowMs;
    return this.available;
  }

  /** Takes one token; false (and nothing taken) when there is none. */
  take(nowMs: number): boolean {
    if (this.tokens(nowMs) < 1) return false;
    this.available -= 1;
    return true;
  }

  /** Milliseconds until a token is available, at least 1 (what a waiter's timer is set to). */
  msUntilToken(nowMs: number): number {
    const missing = Math.max(0, 1 - this.tokens(nowMs));
    return Math.max(1, Math.ceil((missing / this.ratePerSecond) * 1000));
  }
}
