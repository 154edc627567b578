// Best-effort Kubernetes Events, as client-go's events recorder does them: the first occurrence of
// an event (same object, type, reason, action) creates an Event; repeats within the series window
// only count, and the count reaches the Event as its `series`, written at most once per update
// interval. record() never waits and never throws: the answer to the agent does not depend on an
// Event. Under pressure writes are dropped, never queued without bound: a bounded LRU of series,
// a bounded write queue, and a write budget per namespace, so one tenant's flood of denials
// neither grows memory nor spends the budget of another tenant's events.

import { LRUCache } from "lru-cache";
import { KeyedTokenBuckets } from "../../common/keyed-token-buckets.ts";
import { repeat, systemClock, type Clock } from "../../common/clock.ts";
import {
  eventObject,
  seriesPatch,
  type EventObject,
  type EventSpec,
  type EventTarget,
  type SeriesPatch,
} from "./event-object.ts";

export interface EventWriter {
  create(namespace: string, event: EventObject): Promise<void>;
  patch(namespace: string, name: string, patch: SeriesPatch): Promise<void>;
}

/** created / series_updated: written; aggregated: counted into a series, nothing written yet. */
export type EventOutcome = "created" | "series_updated" | "aggregated" | "dropped" | "failed";

export interface EventRecorderOptions {
  writer: EventWriter;
  /** This replica (reportingInstance). */
  reportingInstance: string;
  /** Event times, series windows, write budgets and the flush timer. */
  clock?: Clock;
  /** Series remembered at most; the least recently seen goes first. */
  maxSeries?: number;
  /** A repeat later than this after the last one starts a new Event (client-go: 6 minutes). */
  seriesWindowMs?: number;
  /** A series' count is written at most this often. */
  seriesUpdateMs?: number;
  /** How often due series counts are looked for: a count is written at most this late. */
  flushIntervalMs?: number;
  maxInFlight?: number;
  /** Writes waiting at most (beyond: dropped). */
  maxQueued?: number;
  /** Writes per second per namespace, sustained, and its burst. */
  namespaceWriteRate?: number;
  namespaceWriteBurst?: number;
  onOutcome?: (outcome: EventOutcome) => void;
  onError?: (err: unknown, event: { namespace: string; reason: string }) => void;
}

interface Series {
  target: EventTarget;
  spec: EventSpec;
  /** The Event's name once created. */
  name?: string;
  count: number;
  /** The count the Event carries. */
  written: number;
  lastObservedMs: number;
  lastWriteMs: number;
  /** A write of this series is queued or in flight. */
  busy: boolean;
}

interface Job {
  key: string;
  series: Series;
  kind: "create" | "patch";
}

const DEFAULTS = {
  maxSeries: 4096,
  seriesWindowMs: 6 * 60_000,
  seriesUpdateMs: 30_000,
  flushIntervalMs: 5_000,
  maxInFlight: 4,
  maxQueued: 256,
  namespaceWriteRate: 1,
  namespaceWriteBurst: 10,
};

export class EventRecorder {
  private readonly writer: EventWriter;
  private readonly reportingInstance: string;
  private readonly clock: Clock;
  private readonly now: () => number;
  private readonly limits: typeof DEFAULTS;
  private readonly series: LRUCache<string, Series>;
  private readonly budgets: KeyedTokenBuckets;
  private readonly queue: Job[] = [];
  private inFlight = 0;
  private readonly onOutcome: (outcome: EventOutcome) => void;
  private readonly onError: NonNullable<EventRecorderOptions["onError"]>;
  private stopFlushing: (() => void) | undefined;
  private readonly idleWaiters: Array<() => void> = [];

  constructor(opts: EventRecorderOptions) {
    this.writer = opts.writer;
    this.reportingInstance = opts.reportingInstance;
    const clock = opts.clock ?? systemClock;
    this.clock = clock;
    this.now = () => clock.now();
    this.limits = {
      maxSeries: opts.maxSeries ?? DEFAULTS.maxSeries,
      seriesWindowMs: opts.seriesWindowMs ?? DEFAULTS.seriesWindowMs,
      seriesUpdateMs: opts.seriesUpdateMs ?? DEFAULTS.seriesUpdateMs,
      flushIntervalMs: opts.flushIntervalMs ?? DEFAULTS.flushIntervalMs,
      maxInFlight: opts.maxInFlight ?? DEFAULTS.maxInFlight,
      maxQueued: opts.maxQueued ?? DEFAULTS.maxQueued,
      namespaceWriteRate: opts.namespaceWriteRate ?? DEFAULTS.namespaceWriteRate,
      namespaceWriteBurst: opts.namespaceWriteBurst ?? DEFAULTS.namespaceWriteBurst,
    };
    this.series = new LRUCache({ max: this.limits.maxSeries });
    this.budgets = new KeyedTokenBuckets({
      ratePerSecond: this.limits.namespaceWriteRate,
      burst: this.limits.namespaceWriteBurst,
      maxKeys: this.limits.maxSeries,
      now: this.now,
    });
    this.onOutcome = opts.onOutcome ?? (() => undefined);
    this.onError = opts.onError ?? (() => undefined);
  }

  /** Writes the counts of series that repeated since their last write, once due. */
  start(): void {
    this.stopFlushing ??= repeat(this.clock, this.limits.flushIntervalMs, () => this.flush());
  }

  close(): void {
    this.stopFlushing?.();
    this.stopFlushing = undefined;
  }

  /** Series remembered (bounded by maxSeries). */
  get size(): number {
    return this.series.size;
  }

  record(target: EventTarget, spec: EventSpec): void {
    const key = `${target.uid}\u0000${spec.type}\u0000${spec.reason}\u0000${spec.action}`;
    const nowMs = this.now();
    const known = this.series.get(key);
    if (!known || nowMs - known.lastObservedMs > this.limits.seriesWindowMs) {
      const fresh: Series = {
        target,
        spec,
        count: 1,
        written: 0,
        lastObservedMs: nowMs,
        lastWriteMs: 0,
        busy: false,
      };
      this.series.set(key, fresh);
      this.enqueue({ key, series: fresh, kind: "create" });
      return;
    }
    known.count += 1;
    known.lastObservedMs = nowMs;
    if (this.patchDue(known, nowMs)) this.enqueue({ key, series: known, kind: "patch" });
    else this.onOutcome("aggregated");
  }

  /** Queues the series patches that are due (the timer calls it; tests call it with their clock). */
  flush(): void {
    const nowMs = this.now();
    for (const [key, series] of this.series.entries())
      if (series.count > series.written && this.patchDue(series, nowMs))
        this.enqueue({ key, series, kind: "patch" });
  }

  /** Resolves once nothing is queued or in flight (tests). */
  idle(): Promise<void> {
    if (this.inFlight === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private patchDue(series: Series, nowMs: number): boolean {
    return (
      series.name !== undefined && !series.busy && nowMs - series.lastWriteMs >= this.limits.seriesUpdateMs
    );
  }

  private enqueue(job: Job): void {
    const full = this.queue.length + this.inFlight >= this.limits.maxQueued;
    if (full || !this.budgets.take(job.series.target.namespace)) {
      // a dropped creation is retried by the next occurrence; a dropped patch by the next flush
      if (job.kind === "create") this.series.delete(job.key);
      this.onOutcome("dropped");
      return;
    }
    job.series.busy = true;
    this.queue.push(job);
    this.pump();
  }

  private pump(): void {
    while (this.inFlight < this.limits.maxInFlight && this.queue.length > 0) {
      const job = this.queue.shift() as Job;
      this.inFlight += 1;
      void this.write(job).finally(() => {
        this.inFlight -= 1;
        this.pump();
        if (this.inFlight === 0 && this.queue.length === 0)
          for (const resolve of this.idleWaiters.splice(0)) resolve();
      });
    }
  }

  private async write(job: Job): Promise<void> {
    const { series } = job;
    const { namespace } = series.target;
    const nowMs = this.now();
    try {
      if (job.kind === "create") {
        const event = eventObject(series.target, series.spec, this.reportingInstance, series.lastObservedMs);
        await this.writer.create(namespace, event);
        series.name = event.metadata.name;
        series.written = 1;
        this.onOutcome("created");
      } else {
        const count = series.count;
        await this.writer.patch(namespace, series.name as string, seriesPatch(count, series.lastObservedMs));
        series.written = count;
        this.onOutcome("series_updated");
      }
      series.lastWriteMs = nowMs;
    } catch (err) {
      this.onOutcome("failed");
      this.onError(err, { namespace, reason: series.spec.reason });
      // the next occurrence starts over: a new Event (the old one may be gone, or was never made)
      if (this.series.peek(job.key) === series) this.series.delete(job.key);
    } finally {
      series.busy = false;
    }
  }
}
