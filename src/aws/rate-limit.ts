// A token-bucket limiter for STS calls with two priorities: first issuance (a pod that has no
// credentials yet, e.g. a job burst) goes before refreshes (a pod that still holds valid
// credentials and can wait). Waiters are bounded: past maxWaitMs a call is refused (Throttled)
// rather than queued forever.

export type Priority = "first" | "refresh";

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class RateLimitTimeout extends Error {
  constructor() {
    super("STS rate limit: waited too long for a slot");
    this.name = "RateLimitTimeout";
  }
}

export interface RateLimiterOptions {
  /** Sustained calls per second. */
  ratePerSecond: number;
  /** Bucket size. */
  burst: number;
  /** Longest a call waits for a token. */
  maxWaitMs: number;
}

export class RateLimiter {
  private tokens: number;
  private last: number;
  private readonly queues: Record<Priority, Waiter[]> = { first: [], refresh: [] };
  private timer: NodeJS.Timeout | undefined;
  private readonly opts: RateLimiterOptions;

  constructor(opts: RateLimiterOptions) {
    this.opts = opts;
    this.tokens = opts.burst;
    this.last = performance.now();
  }

  get queued(): number {
    return this.queues.first.length + this.queues.refresh.length;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(
      this.opts.burst,
      this.tokens + ((now - this.last) / 1000) * this.opts.ratePerSecond,
    );
    this.last = now;
  }

  acquire(priority: Priority): Promise<void> {
    this.refill();
    if (this.queued === 0 && this.tokens >= 1) {
      this.tokens -= 1;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          const q = this.queues[priority];
          const i = q.indexOf(w);
          if (i >= 0) q.splice(i, 1);
          reject(new RateLimitTimeout());
        }, this.opts.maxWaitMs),
      };
      this.queues[priority].push(w);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.timer) return;
    const need = Math.max(0, 1 - this.tokens);
    const ms = Math.max(1, Math.ceil((need / this.opts.ratePerSecond) * 1000));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.drain();
    }, ms);
    this.timer.unref?.();
  }

  private drain(): void {
    this.refill();
    while (this.tokens >= 1) {
      const w = this.queues.first.shift() ?? this.queues.refresh.shift();
      if (!w) break;
      this.tokens -= 1;
      clearTimeout(w.timer);
      w.resolve();
    }
    if (this.queued > 0) this.schedule();
  }
}
