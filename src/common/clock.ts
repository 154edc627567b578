// The seam for time. What reads the time, waits or draws jitter (refresh, expiry, backoff, leases,
// bounded waits) takes a Clock, so that its tests move time by hand instead of sleeping
// (test/harness/manual-clock.ts) and a test's outcome does not depend on how busy the machine is.

/** A pending timer; Node's own timers can be unref'd so that they do not hold the process open. */
export interface TimerHandle {
  unref?(): unknown;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
}

export interface Clock extends Timers {
  /** Milliseconds since the epoch (credential expiry is wall-clock time). */
  now(): number;
  /** Uniform in [0, 1): jitter. */
  random(): number;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  random: () => Math.random(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout | undefined),
};

/** A bounded wait on `clock`; unref'd, so that a wait alone never keeps the process alive. */
export function sleep(clock: Timers, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms).unref?.());
}

/**
 * Runs `fn` every `ms` on `clock` until the returned stop() (a setInterval on the seam): re-armed
 * after each run, unref'd, so that a periodic job alone never keeps the process alive.
 */
export function repeat(clock: Timers, ms: number, fn: () => void): () => void {
  let stopped = false;
  let handle: TimerHandle | undefined;
  const arm = (): void => {
    handle = clock.setTimeout(() => {
      if (stopped) return;
      fn();
      if (!stopped) arm();
    }, ms);
    handle.unref?.();
  };
  arm();
  return () => {
    stopped = true;
    clock.clearTimeout(handle);
  };
}
