// Per-namespace policy epochs and the agents' long polls on them.
//
// A namespace's epoch is a digest over the uid and generation of its AccessPolicies and of every
// RoleAllowance: exactly the objects a decision for a pod of that namespace reads. It depends on
// nothing but the informers' contents, so every replica computes the same epoch once its
// informers have the same objects, and an agent may ask any replica. Generations only move on
// spec changes (the CRDs have a status subresource), so the leader's status writes do not move
// epochs; uids make a deleted and recreated object a new epoch, so an epoch never comes back.

import { createHash } from "node:crypto";
import { POLICY_EPOCH_HOLD_MS } from "../api/contract.ts";
import type { AccessPolicy, RoleAllowance } from "../policy/types.ts";
import { systemClock, type TimerHandle, type Timers } from "../common/clock.ts";

export interface PolicySource {
  accessPolicies(ns?: string): AccessPolicy[];
  roleAllowances(): RoleAllowance[];
}

export interface PolicyEpochsOptions {
  /** How long a poll with nothing changed is held. */
  holdMs?: number;
  /** Polls held at once, at most (each is one agent's open request); beyond it, answered at once. */
  maxWaiters?: number;
  /** Polls held at once for one holder (an agent's node): an agent needs one. */
  maxWaitersPerHolder?: number;
  /** Memoised namespace epochs between two changes, at most (names come from agents). */
  maxMemo?: number;
  timers?: Timers;
}

interface Waiter {
  holder: string;
  known: Record<string, string>;
  resolve: (epochs: Record<string, string>) => void;
  timer: TimerHandle | undefined;
}

/** Held polls never keep the process alive. */
function unrefd(timers: Timers): Timers {
  return {
    setTimeout: (fn, ms) => {
      const timer = timers.setTimeout(fn, ms);
      timer.unref?.();
      return timer;
    },
    clearTimeout: (handle) => timers.clearTimeout(handle),
  };
}

function digest(parts: string[]): string {
  return createHash("sha256").update(parts.join("\n")).digest("base64url").slice(0, 22);
}

const identity = (o: { metadata: { uid?: string; generation?: number } }): string =>
  `${o.metadata.uid ?? ""}:${o.metadata.generation ?? 0}`;

export class PolicyEpochs {
  private readonly source: PolicySource;
  private readonly holdMs: number;
  private readonly maxWaiters: number;
  private readonly maxWaitersPerHolder: number;
  private readonly perHolder = new Map<string, number>();
  private readonly maxMemo: number;
  private readonly timers: Timers;
  private allowanceDigest: string | undefined;
  private readonly memo = new Map<string, string>();
  private readonly waiters = new Set<Waiter>();
  private wakeScheduled = false;
  private closed = false;

  constructor(source: PolicySource, opts: PolicyEpochsOptions = {}) {
    this.source = source;
    this.holdMs = opts.holdMs ?? POLICY_EPOCH_HOLD_MS;
    this.maxWaiters = opts.maxWaiters ?? 20_000;
    this.maxWaitersPerHolder = opts.maxWaitersPerHolder ?? 4;
    this.maxMemo = opts.maxMemo ?? 50_000;
    this.timers = unrefd(opts.timers ?? systemClock);
  }

  get waiting(): number {
    return this.waiters.size;
  }

  epochOf(namespace: string): string {
    const memoised = this.memo.get(namespace);
    if (memoised !== undefined) return memoised;
    this.allowanceDigest ??= digest(this.source.roleAllowances().map(identity).sort());
    const policies = this.source.accessPolicies(namespace).map(identity).sort();
    const epoch = digest([this.allowanceDigest, ...policies]);
    // Agents choose the names asked about: forget everything rather than grow without bound.
    if (this.memo.size >= this.maxMemo) this.memo.clear();
    this.memo.set(namespace, epoch);
    return epoch;
  }

  epochsOf(namespaces: Iterable<string>): Record<string, string> {
    const out: Record<string, string> = Object.create(null) as Record<string, string>;
    for (const ns of namespaces) out[ns] = this.epochOf(ns);
    return out;
  }

  /** The informers saw a change: forget the epochs and answer every poll whose epochs moved. */
  changed(): void {
    this.memo.clear();
    this.allowanceDigest = undefined;
    // One informer event per object (a relist brings many): wake the polls once for all of them.
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      for (const w of [...this.waiters]) {
        const current = this.epochsOf(Object.keys(w.known));
        if (differs(w.known, current)) this.finish(w, current);
      }
    });
  }

  /**
   * The current epochs of `known`'s namespaces, as soon as one differs from what the agent knows,
   * or after the hold time. `cancel` (the client went away) ends the wait at once. Over the
   * waiter limits the answer comes at once: the agent then polls again after its own pause.
   */
  wait(holder: string, known: Record<string, string>, cancel?: AbortSignal): Promise<Record<string, string>> {
    const current = this.epochsOf(Object.keys(known));
    const held = this.perHolder.get(holder) ?? 0;
    if (
      this.closed ||
      differs(known, current) ||
      this.waiters.size >= this.maxWaiters ||
      held >= this.maxWaitersPerHolder
    ) {
      return Promise.resolve(current);
    }
    return new Promise((resolve) => {
      const w: Waiter = { holder, known, resolve, timer: undefined };
      w.timer = this.timers.setTimeout(() => this.finish(w, this.epochsOf(Object.keys(known))), this.holdMs);
      this.waiters.add(w);
      this.perHolder.set(holder, held + 1);
      cancel?.addEventListener("abort", () => this.finish(w, current), { once: true });
    });
  }

  private finish(w: Waiter, epochs: Record<string, string>): void {
    if (!this.waiters.delete(w)) return;
    const held = (this.perHolder.get(w.holder) ?? 1) - 1;
    if (held <= 0) this.perHolder.delete(w.holder);
    else this.perHolder.set(w.holder, held);
    this.timers.clearTimeout(w.timer);
    w.resolve(epochs);
  }

  /** Answers every held poll (shutdown). */
  close(): void {
    this.closed = true;
    for (const w of [...this.waiters]) this.finish(w, this.epochsOf(Object.keys(w.known)));
  }
}

function differs(known: Record<string, string>, current: Record<string, string>): boolean {
  for (const ns of Object.keys(known)) if (known[ns] !== current[ns]) return true;
  return false;
}
