// One token bucket (../common/token-bucket.ts) shared fairly between tenants: in front of STS
// (tenants are namespaces, issue/rate-limit.ts) and of TokenReview (tenants are trusted and
// untrusted sources, k8s/token-review.ts).
//
// STS throttles per account, so one bucket holds the whole budget. Waiters queue per tenant and
// are served round-robin, so a tenant with a thousand pods asking at once (a job burst, or a
// policy STS keeps refusing) gets one turn per round like a tenant with one pod, and cannot hold
// the others back. Two priorities: first issuance (a pod with no credentials yet) before refresh
// (a pod that still holds valid credentials and can wait), with every `refreshEvery`-th grant
// reserved for refreshes while both wait, so that a stream of first issuances cannot starve the
// refreshes either. Waiting is bounded three ways: past maxWaitMs a call is refused (Throttled),
// and a tenant, or everyone together, with too many waiters is refused at once.

import { systemClock, type Timers, type TimerHandle } from "../common/clock.ts";
import { TokenBucket } from "../common/token-bucket.ts";

export type Priority = "first" | "refresh";

interface Waiter {
  tenant: string;
  priority: Priority;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: TimerHandle;
}

export class RateLimitTimeout extends Error {
  constructor(label: string) {
    super(`${label} rate limit: waited too long for a slot`);
    this.name = "RateLimitTimeout";
  }
}

/** Refused without waiting: the tenant (or the server) already has as many waiters as allowed. */
export class RateLimitQueueFull extends Error {
  constructor(label: string, scope: "tenant" | "total") {
    super(`${label} rate limit: too many requests waiting (${scope})`);
    this.name = "RateLimitQueueFull";
  }
}

export interface FairQueueOptions {
  /** What the budget is for, in refusals' messages ("STS", "TokenReview"). */
  label: string;
  /** Sustained calls per second. */
  ratePerSecond: number;
  /** Bucket size. */
  burst: number;
  /** Longest a call waits for a token. */
  maxWaitMs: number;
  /**
   * Waiters of one tenant, at most. Default: what the bucket can serve within maxWaitMs; a
   * waiter beyond that would time out even with the whole budget to itself.
   */
  maxWaitersPerTenant?: number;
  /** Waiters of all tenants together, at most (bounds the per-tenant map too). Default 10000. */
  maxWaiters?: number;
  /** While first issuances and refreshes both wait, every n-th grant goes to a refresh. Default 4. */
  refreshEvery?: number;
  /** Monotonic milliseconds; injectable for tests. */
  now?: () => number;
  /** The waiters' timers; injectable for tests. */
  timers?: Timers;
}

/** Per-tenant FIFO queues visited round-robin; a tenant is present only while it has waiters. */
class TenantRing {
  // Map order is the ring: the tenant served goes to the back if it still has waiters.
  private readonly queues = new Map<string, Set<Waiter>>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  waitersOf(tenant: string): number {
    return this.queues.get(tenant)?.size ?? 0;
  }

  push(w: Waiter): void {
    let queue = this.queues.get(w.tenant);
    if (!queue) {
      queue = new Set();
      this.queues.set(w.tenant, queue);
    }
    queue.add(w);
    this.count++;
  }

  remove(w: Waiter): boolean {
    const queue = this.queues.get(w.tenant);
    if (!queue?.delete(w)) return false;
    this.count--;
    if (queue.size === 0) this.queues.delete(w.tenant);
    return true;
  }

  /** The oldest waiter of the tenant whose turn it is. */
  shift(): Waiter | undefined {
    const next = this.queues.entries().next();
    if (next.done) return undefined;
    const [tenant, queue] = next.value;
    const w = queue.values().next().value as Waiter;
    queue.delete(w);
    this.count--;
    this.queues.delete(tenant);
    if (queue.size > 0) this.queues.set(tenant, queue);
    return w;
  }
}

export class FairQueue {
  private readonly bucket: TokenBucket;
  private readonly rings: Record<Priority, TenantRing> = {
    first: new TenantRing(),
    refresh: new TenantRing(),
  };
  private firstStreak = 0;
  private timer: TimerHandle | undefined;
  private readonly opts: Required<FairQueueOptions>;

  constructor(opts: FairQueueOptions) {
    this.opts = {
      maxWaitersPerTenant: Math.max(1, Math.ceil((opts.ratePerSecond * opts.maxWaitMs) / 1000)),
      maxWaiters: 10_000,
      refreshEvery: 4,
      now: () => performance.now(),
      timers: systemClock,
      ...opts,
    };
    this.bucket = new TokenBucket(opts.ratePerSecond, opts.burst, this.opts.now());
  }

  get queued(): number {
    return this.rings.first.size + this.rings.refresh.size;
  }

  waitersOf(tenant: string): number {
    return this.rings.first.waitersOf(tenant) + this.rings.refresh.waitersOf(tenant);
  }

  /** Resolves when the call may proceed; `tenant` is whom it is for (STS: the namespace). */
  acquire(priority: Priority, tenant = ""): Promise<void> {
    const { label } = this.opts;
    if (this.queued === 0 && this.bucket.take(this.opts.now())) return Promise.resolve();
    if (this.queued >= this.opts.maxWaiters) return Promise.reject(new RateLimitQueueFull(label, "total"));
    if (this.waitersOf(tenant) >= this.opts.maxWaitersPerTenant)
      return Promise.reject(new RateLimitQueueFull(label, "tenant"));
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        tenant,
        priority,
        resolve,
        reject,
        timer: this.opts.timers.setTimeout(() => {
          if (this.rings[priority].remove(w)) reject(new RateLimitTimeout(label));
        }, this.opts.maxWaitMs),
      };
      this.rings[priority].push(w);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.timer) return;
    const ms = this.bucket.msUntilToken(this.opts.now());
    this.timer = this.opts.timers.setTimeout(() => {
      this.timer = undefined;
      this.drain();
    }, ms);
    this.timer.unref?.();
  }

  private next(): Waiter | undefined {
    const { first, refresh } = this.rings;
    if (first.size > 0 && (refresh.size === 0 || this.firstStreak < this.opts.refreshEvery - 1)) {
      this.firstStreak++;
      return first.shift();
    }
    this.firstStreak = 0;
    return refresh.shift() ?? first.shift();
  }

  /** Grants tokens to waiters in turn; called by the timer, public so tests can drive a fake clock. */
  drain(): void {
    const now = this.opts.now();
    while (this.queued > 0 && this.bucket.take(now)) {
      const w = this.next()!;
      this.opts.timers.clearTimeout(w.timer);
      w.resolve();
    }
    if (this.queued > 0) this.schedule();
  }
}
