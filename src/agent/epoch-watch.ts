// The agent's side of the policy-epoch channel (src/api/contract.ts, POST /v1/policy-epochs): one
// long poll naming the namespaces of this node's pods with the epoch known for each. An answer
// replaces the known epochs at once, so from that moment credentials issued under another epoch
// are not served (cred-cache.ts compares); then the cache re-fetches the affected pods.
//
// When the channel fails, nothing confirms the epochs any more: `confirmedAtMs` stops moving and
// the cache revalidates each pod's credentials on next use once they are older than its bound.

import {
  MAX_EPOCH_NAMESPACES,
  POLICY_EPOCH_HOLD_MS,
  type PolicyEpochsRequest,
  type PolicyEpochsResponse,
} from "../api/contract.ts";
import type { Logger } from "../common/logger.ts";
import { systemClock, type Clock } from "../common/clock.ts";

export interface EpochSource {
  policyEpochs(
    req: PolicyEpochsRequest,
    timeoutMs: number,
    cancel?: AbortSignal,
  ): Promise<PolicyEpochsResponse>;
}

/** What the credential cache asks about a namespace. */
export interface EpochView {
  /** The epoch last answered for the namespace; undefined when the channel does not cover it. */
  known(namespace: string): string | undefined;
  /** When the channel last confirmed the namespace's epoch (0: never). */
  confirmedAtMs(namespace: string): number;
}

export interface PolicyEpochWatchOptions {
  source: EpochSource;
  /** The namespaces of the pods the agent holds credentials for. */
  namespaces: () => Iterable<string>;
  /** Called with every answer, after the known epochs were replaced. */
  onEpochs: (epochs: ReadonlyMap<string, string>) => void;
  log: Logger;
  /** When answers came (how old the known epochs are) and the pauses between polls. */
  clock?: Clock;
  /** Client-side bound on one poll: the server's hold plus a margin. */
  pollTimeoutMs?: number;
  /** Pause between two polls, so that a server answering at once cannot make the agent spin. */
  minIntervalMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
}

export class PolicyEpochWatch implements EpochView {
  private readonly o: Required<PolicyEpochWatchOptions>;
  private epochs = new Map<string, string>();
  private answeredAtMs = 0;
  /** The namespaces of the poll in flight. */
  private polling = new Set<string>();
  private poll: AbortController | undefined;
  private stopping = new AbortController();
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private failures = 0;

  constructor(opts: PolicyEpochWatchOptions) {
    this.o = {
      clock: systemClock,
      pollTimeoutMs: POLICY_EPOCH_HOLD_MS + 10_000,
      minIntervalMs: 200,
      retryInitialMs: 1000,
      retryMaxMs: 30_000,
      ...opts,
    };
  }

  known(namespace: string): string | undefined {
    return this.epochs.get(namespace);
  }

  confirmedAtMs(namespace: string): number {
    return this.epochs.has(namespace) ? this.answeredAtMs : 0;
  }

  /** Age of the last answer, for the metric (Infinity: none yet). */
  ageMs(): number {
    return this.answeredAtMs === 0 ? Number.POSITIVE_INFINITY : this.o.clock.now() - this.answeredAtMs;
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.poll?.abort();
    this.wake?.();
    await this.loop;
  }

  /** A pod of `namespace` appeared: restart the poll if it does not cover that namespace yet. */
  cover(namespace: string): void {
    if (this.polling.has(namespace)) return;
    this.poll?.abort();
    this.wake?.();
  }

  private async run(): Promise<void> {
    while (!this.stopping.signal.aborted) {
      const namespaces = [...new Set(this.o.namespaces())].sort().slice(0, MAX_EPOCH_NAMESPACES);
      if (namespaces.length === 0) {
        this.polling = new Set();
        this.epochs = new Map();
        // nothing to confirm: the channel is not behind on anything
        this.answeredAtMs = this.o.clock.now();
        await this.pause(1000);
        continue;
      }
      const request: PolicyEpochsRequest = { namespaces: {} };
      for (const ns of namespaces) request.namespaces[ns] = this.epochs.get(ns) ?? "";
      this.polling = new Set(namespaces);
      const poll = new AbortController();
      this.poll = poll;
      try {
        const answer = await this.o.source.policyEpochs(request, this.o.pollTimeoutMs, poll.signal);
        const next = new Map<string, string>();
        for (const ns of namespaces) {
          const epoch = answer.epochs[ns];
          if (typeof epoch === "string") next.set(ns, epoch);
        }
        this.epochs = next;
        this.answeredAtMs = this.o.clock.now();
        this.failures = 0;
        this.o.onEpochs(next);
      } catch (err) {
        if (!poll.signal.aborted) {
          this.failures++;
          const delay = Math.min(
            this.o.retryMaxMs,
            this.o.retryInitialMs * 2 ** Math.min(this.failures - 1, 16),
          );
          this.o.log.warn({ err, failures: this.failures, retryMs: delay }, "policy epoch poll failed");
          await this.pause(delay);
        }
      } finally {
        this.poll = undefined;
      }
      await this.pause(this.o.minIntervalMs);
    }
  }

  /** Sleeps `ms`, ended early by stop() or, for the idle wait, by cover(). */
  private pause(ms: number): Promise<void> {
    if (this.stopping.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.o.clock.clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      const timer = this.o.clock.setTimeout(done, ms);
      timer.unref?.();
      this.wake = done;
    });
  }
}
