// A Clock (src/common/clock.ts) that moves only when the test says so: timers fire in time order
// as advance() passes them, with the promise chains they start run in between, so a test of a
// refresh an hour ahead takes as long as the code it runs, not an hour (nor a scaled-down second).
import type { Clock, TimerHandle } from "../../src/common/clock.ts";

interface PendingTimer extends TimerHandle {
  at: number;
  order: number;
  fn: () => void;
}

/** Lets promise callbacks and I/O callbacks queued so far run. */
export async function settle(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

export class ManualClock implements Clock {
  private nowMs: number;
  private created = 0;
  private readonly timers = new Set<PendingTimer>();
  /** What random() answers; tests that need the spread's ends set it. */
  randomValue = 0.5;

  constructor(startMs = Date.parse("2026-01-01T00:00:00Z")) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  random(): number {
    return this.randomValue;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: PendingTimer = {
      at: this.nowMs + Math.max(0, ms),
      order: this.created++,
      fn,
      unref: () => timer,
    };
    this.timers.add(timer);
    return timer;
  }

  clearTimeout(handle: TimerHandle | undefined): void {
    if (handle) this.timers.delete(handle as PendingTimer);
  }

  /** Timers not yet fired. */
  get pending(): number {
    return this.timers.size;
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way, in order. */
  async advance(ms: number): Promise<void> {
    const end = this.nowMs + ms;
    await settle();
    for (;;) {
      const next = this.earliest();
      if (!next || next.at > end) break;
      this.timers.delete(next);
      this.nowMs = Math.max(this.nowMs, next.at);
      next.fn();
      await settle();
    }
    this.nowMs = end;
    await settle();
  }

  private earliest(): PendingTimer | undefined {
    let best: PendingTimer | undefined;
    for (const t of this.timers)
      if (!best || t.at < best.at || (t.at === best.at && t.order < best.order)) best = t;
    return best;
  }
}

/**
 * Turns the event loop (no timer, no sleep) until `condition` holds, at most `rounds` times: for
 * "the request has arrived and is waiting", which I/O decides, not time.
 */
export async function untilTrue(condition: () => boolean, what: string, rounds = 100_000): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    if (condition()) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  throw new Error(`not reached: ${what}`);
}
