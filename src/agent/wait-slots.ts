// Slots for requests that wait for the pod watch (a source IP it has not delivered yet). The
// waits are bounded in total, and per source IP: one source sending many requests from an IP no
// pod has cannot take every slot and turn another new pod's first request into an immediate 404.

export type WaitRefusal = "per_source" | "total";

export class WaitSlots {
  private readonly maxTotal: number;
  private readonly maxPerSource: number;
  /** Slots held per source; every entry holds at least one, so at most maxTotal entries. */
  private readonly bySource = new Map<string, number>();
  private held = 0;

  constructor(maxTotal: number, maxPerSource: number) {
    this.maxTotal = maxTotal;
    this.maxPerSource = maxPerSource;
  }

  /** Slots held, all sources together. */
  get size(): number {
    return this.held;
  }

  /**
   * Takes a slot for `source`: a release function (idempotent) to call when the wait ends, or
   * which limit refused it.
   */
  acquire(source: string): (() => void) | WaitRefusal {
    if (this.held >= this.maxTotal) return "total";
    const mine = this.bySource.get(source) ?? 0;
    if (mine >= this.maxPerSource) return "per_source";
    this.bySource.set(source, mine + 1);
    this.held++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held--;
      const left = (this.bySource.get(source) ?? 1) - 1;
      if (left > 0) this.bySource.set(source, left);
      else this.bySource.delete(source);
    };
  }
}
