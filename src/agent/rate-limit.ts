// Per-source token buckets: a flooding pod gets 429s and cannot starve the others.
export class RateLimiter {
  private readonly rate: number;
  private readonly burst: number;
  private readonly maxKeys: number;
  private readonly buckets = new Map<string, { tokens: number; last: number }>();

  /** `rate` requests per second sustained, `burst` at once; `rate <= 0` disables the limit. */
  constructor(rate: number, burst: number, maxKeys = 8192) {
    this.rate = rate;
    this.burst = Math.max(1, burst);
    this.maxKeys = maxKeys;
  }

  take(key: string, nowMs = Date.now()): boolean {
    if (this.rate <= 0) return true;
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= this.maxKeys) this.prune(nowMs);
      b = { tokens: this.burst, last: nowMs };
      this.buckets.set(key, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((nowMs - b.last) / 1000) * this.rate);
      b.last = nowMs;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  private prune(nowMs: number): void {
    const full = (this.burst / this.rate) * 1000;
    for (const [k, b] of this.buckets) if (nowMs - b.last > full) this.buckets.delete(k);
    if (this.buckets.size >= this.maxKeys) this.buckets.clear();
  }
}
