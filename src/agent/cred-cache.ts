// Per-pod credential cache: prefetch, refresh ahead of expiry with jitter, one request in flight
// per pod, keep serving still-valid credentials while the server fails, drop at once when the pod
// goes. Responses are serialised once per issuance (imds-documents.ts) so that a cache hit only
// writes a Buffer; what the server said of a pod's own tokens is in pod-token-memo.ts.
// Credentials are served only under the policy epoch the agent knows for the pod's namespace
// (epoch-watch.ts): after a policy change they are re-fetched, never served again.
import type { CredentialsResponse, PodRef } from "../api/contract.ts";
import { ERRORS, KeycutterError, type ErrorCode } from "../api/errors.ts";
import type { Logger } from "../common/logger.ts";
import { sleep, systemClock, type Clock, type TimerHandle } from "../common/clock.ts";
import type { EpochView } from "./epoch-watch.ts";
import { serialiseCredentials, type CachedCreds } from "./imds-documents.ts";
import { PodTokenMemo, hashToken } from "./pod-token-memo.ts";
import * as sdkServeWindow from "../api/serve-window.ts";
import type { CredentialPath } from "../api/serve-window.ts";
import type { HandedOverCreds } from "./handover.ts";

export type { CachedCreds };

/** When credentials may be served on each path and when they are replaced (../api/serve-window.ts). */
export interface ServeWindow {
  minServeRemainingMs(path: CredentialPath, lifetimeMs: number): number;
  staleFloorMs(path: CredentialPath, configuredMs: number): number;
  refreshAtMs(expirationMs: number, fetchedAtMs: number, random: number): number;
}

export interface CredentialsSource {
  credentials(req: { pod: PodRef; podToken?: string }, timeoutMs?: number): Promise<CredentialsResponse>;
}

export type Outcome =
  { ok: true; creds: CachedCreds; stale: boolean } | { ok: false; code: ErrorCode; message: string };

export interface CacheMetrics {
  fetch(result: "ok" | ErrorCode, kind: "prefetch" | "demand" | "refresh" | "token"): void;
  staleServed(): void;
}

export interface CredCacheOptions {
  source: CredentialsSource;
  log: Logger;
  metrics?: CacheMetrics;
  /** The serve and refresh rules; the SDKs' windows unless a test scales them down. */
  window?: ServeWindow;
  /** While the server fails, keep serving credentials with at least this much left (IMDS: at least the window's floor). */
  staleFloorMs?: number;
  /** Definite denials (no policy, …) are remembered this long. */
  denialTtlMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
  requestTimeoutMs?: number;
  /** A pod token validated by the server is trusted again for at most this long. */
  podTokenTtlMs?: number;
  /** Pod tokens remembered per pod, accepted and refused each (least recently used go first). */
  maxTokensPerPod?: number;
  /** The policy-epoch channel; undefined: credentials are never checked against epochs. */
  epochs?: EpochView;
  /**
   * Credentials neither fetched nor confirmed by the epoch channel for this long are revalidated
   * with the server on next use (the channel's fail-closed bound).
   */
  epochMaxAgeMs?: number;
  /** After an epoch change, the affected pods are re-fetched spread over at most this long. */
  epochRefetchSpreadMs?: number;
  /** An answer under another epoch than the agent knows is asked again this often, this many times. */
  epochRetryMs?: number;
  epochRetries?: number;
  /** Time, timers and jitter (refresh, backoff, denials, bounded waits); tests pass a manual one. */
  clock?: Clock;
}

type Failure = { code: ErrorCode; message: string };
type Refusal = Failure & { untilMs: number };

interface Entry {
  pod: PodRef;
  creds: CachedCreds | undefined;
  denial: Refusal | undefined;
  lastError: Failure | undefined;
  inflight: Promise<void> | undefined;
  timer: TimerHandle | undefined;
  failures: number;
  retryAtMs: number;
  /** What the server said of this pod's own tokens (container-credentials path). */
  tokens: PodTokenMemo<Outcome> | undefined;
  gone: boolean;
}

function toError(err: unknown): Failure {
  if (err instanceof KeycutterError) return { code: err.code, message: err.message };
  return { code: "Unavailable", message: "credential service request failed" };
}

export class CredCache {
  private readonly o: Required<Omit<CredCacheOptions, "metrics" | "epochs">> & {
    metrics: CacheMetrics | undefined;
    epochs: EpochView | undefined;
  };
  private readonly entries = new Map<string, Entry>();

  constructor(opts: CredCacheOptions) {
    this.o = {
      window: sdkServeWindow,
      staleFloorMs: 2 * 60_000,
      denialTtlMs: 5_000,
      retryInitialMs: 500,
      retryMaxMs: 60_000,
      requestTimeoutMs: 5_000,
      podTokenTtlMs: 5 * 60_000,
      maxTokensPerPod: 64,
      epochMaxAgeMs: 60_000,
      epochRefetchSpreadMs: 2_000,
      epochRetryMs: 250,
      epochRetries: 4,
      clock: systemClock,
      ...opts,
      metrics: opts.metrics,
      epochs: opts.epochs,
    };
  }

  get size(): number {
    return this.entries.size;
  }

  /** Namespaces of the pods held (what the epoch channel has to cover). */
  namespaces(): Set<string> {
    const out = new Set<string>();
    for (const e of this.entries.values()) out.add(e.pod.namespace);
    return out;
  }

  /** Hot path: credentials that can be served on `path` without asking anyone, or undefined. */
  fresh(uid: string, path: CredentialPath = "imds", nowMs = this.o.clock.now()): CachedCreds | undefined {
    const e = this.entries.get(uid);
    const c = e?.creds;
    if (c === undefined) return undefined;
    if (!this.underKnownEpoch(e!.pod.namespace, c) || !this.confirmed(e!.pod.namespace, c, nowMs))
      return undefined;
    return this.longLived(c, path, nowMs) ? c : undefined;
  }

  private longLived(c: CachedCreds, path: CredentialPath, nowMs: number): boolean {
    return c.expirationMs - nowMs >= this.o.window.minServeRemainingMs(path, c.expirationMs - c.fetchedAtMs);
  }

  /** Start fetching for a pod that just got an IP (no-op when something is cached or in flight). */
  prefetch(pod: PodRef): void {
    const e = this.ensure(pod);
    if (!e.creds && !e.inflight && this.o.clock.now() >= e.retryAtMs) this.startFetch(e, "prefetch");
  }

  /** Drop everything held for a pod, at once (it is gone or its identity changed). */
  drop(uid: string): void {
    const e = this.entries.get(uid);
    if (!e) return;
    e.gone = true;
    this.o.clock.clearTimeout(e.timer);
    e.timer = undefined;
    e.creds = undefined;
    e.tokens?.forgetAccepted();
    this.entries.delete(uid);
  }

  /** The credentials held, as a successor agent adopts them (handover.ts). */
  handOver(): HandedOverCreds[] {
    const out: HandedOverCreds[] = [];
    for (const e of this.entries.values()) {
      if (e.gone || !e.creds) continue;
      const c = e.creds;
      const acceptedTokens = e.tokens?.acceptedEntries(this.o.clock.now());
      out.push({
        pod: e.pod,
        response: c.response,
        requestedAtMs: c.requestedAtMs,
        fetchedAtMs: c.fetchedAtMs,
        ...(acceptedTokens?.length ? { acceptedTokens } : {}),
      });
    }
    return out;
  }

  /**
   * Takes over a predecessor's credentials as if fetched here when it fetched them: served and
   * refreshed on the same schedule, never asked of the server again. Expired ones are skipped.
   * Returns how many were adopted.
   */
  adopt(list: HandedOverCreds[]): number {
    const now = this.o.clock.now();
    let adopted = 0;
    for (const h of list) {
      const creds = serialiseCredentials(h.response, h.fetchedAtMs, h.requestedAtMs);
      if (!Number.isFinite(creds.expirationMs) || creds.expirationMs <= now) continue;
      const e = this.ensure(h.pod);
      if (e.creds) continue;
      e.creds = creds;
      if (h.acceptedTokens?.length) {
        const memo = (e.tokens ??= new PodTokenMemo(this.o.maxTokensPerPod));
        for (const [digest, untilMs] of h.acceptedTokens)
          memo.accept(digest, Math.min(untilMs, creds.expirationMs));
      }
      this.schedule(e, this.refreshDelay(creds, now));
      adopted++;
    }
    return adopted;
  }

  /** Pods whose fetch is in flight (a successor takes traffic once its prefetches settled). */
  get fetching(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.inflight) n++;
    return n;
  }

  /** Drops every entry whose pod `keep` does not know (adopted for pods gone since). */
  retain(keep: (uid: string) => boolean): void {
    for (const uid of [...this.entries.keys()]) if (!keep(uid)) this.drop(uid);
  }

  dropAll(): void {
    for (const uid of [...this.entries.keys()]) this.drop(uid);
  }

  /**
   * The epoch channel answered. Credentials under another epoch are already unservable (fresh()
   * compares); re-fetch them now rather than on the pod's next request, spread out so that a
   * RoleAllowance change does not send every pod of the node to the server in the same instant.
   */
  confirmEpochs(epochs: ReadonlyMap<string, string>): void {
    const behind: Entry[] = [];
    for (const e of this.entries.values()) {
      const epoch = epochs.get(e.pod.namespace);
      if (e.creds && !e.gone && epoch !== undefined && e.creds.policyEpoch !== epoch) behind.push(e);
    }
    const spread = Math.min(this.o.epochRefetchSpreadMs, behind.length * 10);
    for (const e of behind) if (!e.inflight) this.schedule(e, this.o.clock.random() * spread);
  }

  /** The credentials were issued under the epoch the agent knows for the namespace (or it knows none). */
  private underKnownEpoch(namespace: string, c: CachedCreds): boolean {
    const known = this.o.epochs?.known(namespace);
    return known === undefined || known === c.policyEpoch;
  }

  /** Fetched, or confirmed by the epoch channel, within epochMaxAgeMs. */
  private confirmed(namespace: string, c: CachedCreds, nowMs: number): boolean {
    if (!this.o.epochs) return true;
    return Math.max(this.o.epochs.confirmedAtMs(namespace), c.requestedAtMs) + this.o.epochMaxAgeMs > nowMs;
  }

  /** Slow path: wait (bounded) for credentials for `pod`. */
  async obtain(pod: PodRef, waitMs: number, path: CredentialPath = "imds"): Promise<Outcome> {
    const e = this.ensure(pod);
    const now = this.o.clock.now();
    const fresh = this.fresh(pod.uid, path, now);
    if (fresh) return { ok: true, creds: fresh, stale: false };
    if (e.denial && e.denial.untilMs > now) return { ok: false, ...e.denial };
    if (!e.inflight && now >= e.retryAtMs) this.startFetch(e, e.creds ? "refresh" : "demand");
    // Unconfirmed only because the epoch channel is down, and the server already failed to
    // revalidate: no change is known, so serve what is still valid (as while the server fails)
    // instead of making every request wait for a server that is not answering.
    const unconfirmedOnly =
      e.creds !== undefined &&
      e.failures > 0 &&
      this.underKnownEpoch(pod.namespace, e.creds) &&
      this.longLived(e.creds, path, now);
    if (e.inflight && !unconfirmedOnly) await this.withTimeout(e.inflight, waitMs);
    return this.settle(e, path);
  }

  /** The server already accepted `podToken` for this pod (recently). */
  tokenValid(uid: string, podToken: string, nowMs = this.o.clock.now()): boolean {
    return this.entries.get(uid)?.tokens?.isAccepted(hashToken(podToken), nowMs) ?? false;
  }

  /**
   * Container-credentials path: the pod presents its own projected token. The server validates
   * it (and that it names this pod) once; the validation is remembered for a short time.
   */
  async obtainWithToken(pod: PodRef, podToken: string, waitMs: number): Promise<Outcome> {
    const e = this.ensure(pod);
    const now = this.o.clock.now();
    const h = hashToken(podToken);
    const memo = (e.tokens ??= new PodTokenMemo(this.o.maxTokensPerPod));
    if (memo.isAccepted(h, now)) {
      const fresh = this.fresh(pod.uid, "container", now);
      if (fresh) return { ok: true, creds: fresh, stale: false };
      return this.obtain(pod, waitMs, "container");
    }
    const refused = memo.refusalOf(h, now);
    if (refused !== undefined) return { ok: false, ...refused };
    const flight = memo.flight(h, () => this.fetchWithToken(e, memo, podToken, h));
    const r = await this.withTimeout(flight, waitMs);
    if (r === TIMEOUT) {
      return { ok: false, ...TIMED_OUT };
    }
    return r;
  }

  private async fetchWithToken(
    e: Entry,
    memo: PodTokenMemo<Outcome>,
    podToken: string,
    h: string,
  ): Promise<Outcome> {
    try {
      const requestedAtMs = this.o.clock.now();
      const res = await this.o.source.credentials({ pod: e.pod, podToken }, this.o.requestTimeoutMs);
      this.o.metrics?.fetch("ok", "token");
      if (e.gone) return { ok: false, code: "PodNotFound", message: "the pod is gone" };
      if (!this.matchesKnownEpoch(e, res)) return { ok: false, ...POLICY_CHANGE_PROPAGATING };
      const creds = this.apply(e, res, requestedAtMs);
      memo.accept(h, Math.min(this.o.clock.now() + this.o.podTokenTtlMs, creds.expirationMs));
      return { ok: true, creds, stale: false };
    } catch (err) {
      const x = toError(err);
      this.o.metrics?.fetch(x.code, "token");
      if (x.code === "PodTokenMismatch" || x.code === "Unauthenticated") {
        // A pod replaying a bad token must not turn into a TokenReview per request; a new bad
        // token evicts only the least recently used one, never all the others.
        memo.refuse(h, x, this.o.clock.now() + this.o.denialTtlMs);
      }
      return { ok: false, ...x };
    }
  }

  private settle(e: Entry, path: CredentialPath): Outcome {
    const now = this.o.clock.now();
    const fresh = this.fresh(e.pod.uid, path, now);
    if (fresh) return { ok: true, creds: fresh, stale: false };
    if (e.denial && e.denial.untilMs > now) return { ok: false, ...e.denial };
    // Credentials under a superseded epoch are never served, not even while the server fails.
    if (
      e.creds &&
      this.underKnownEpoch(e.pod.namespace, e.creds) &&
      e.creds.expirationMs - now > this.o.window.staleFloorMs(path, this.o.staleFloorMs)
    ) {
      this.o.metrics?.staleServed();
      return { ok: true, creds: e.creds, stale: true };
    }
    if (e.lastError) return { ok: false, ...e.lastError };
    return { ok: false, ...TIMED_OUT };
  }

  private ensure(pod: PodRef): Entry {
    let e = this.entries.get(pod.uid);
    if (!e) {
      e = {
        pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid },
        creds: undefined,
        denial: undefined,
        lastError: undefined,
        inflight: undefined,
        timer: undefined,
        failures: 0,
        retryAtMs: 0,
        tokens: undefined,
        gone: false,
      };
      this.entries.set(pod.uid, e);
    }
    return e;
  }

  /** The answer was decided under the epoch the agent knows for the pod's namespace (or it knows none). */
  private matchesKnownEpoch(e: Entry, res: CredentialsResponse): boolean {
    const known = this.o.epochs?.known(e.pod.namespace);
    return known === undefined || known === res.policyEpoch;
  }

  private apply(e: Entry, res: CredentialsResponse, requestedAtMs: number): CachedCreds {
    const now = this.o.clock.now();
    const creds = serialiseCredentials(res, now, requestedAtMs);
    if (!Number.isFinite(creds.expirationMs) || creds.expirationMs <= now) {
      throw new KeycutterError("ServerAnswerInvalid", "the credential service returned expired credentials");
    }
    e.creds = creds;
    e.denial = undefined;
    e.lastError = undefined;
    e.failures = 0;
    e.retryAtMs = 0;
    this.schedule(e, this.refreshDelay(creds, now));
    return creds;
  }

  private refreshDelay(c: CachedCreds, now: number): number {
    return Math.max(
      1000,
      this.o.window.refreshAtMs(c.expirationMs, c.fetchedAtMs, this.o.clock.random()) - now,
    );
  }

  private schedule(e: Entry, delayMs: number): void {
    this.o.clock.clearTimeout(e.timer);
    e.timer = this.o.clock.setTimeout(() => {
      e.timer = undefined;
      if (!e.gone && !e.inflight) this.startFetch(e, e.creds ? "refresh" : "prefetch");
    }, delayMs);
    e.timer.unref?.();
  }

  private startFetch(e: Entry, kind: "prefetch" | "demand" | "refresh"): void {
    const p = (async () => {
      try {
        for (let attempt = 0; ; attempt++) {
          const requestedAtMs = this.o.clock.now();
          const res = await this.o.source.credentials({ pod: e.pod }, this.o.requestTimeoutMs);
          if (e.gone) return;
          if (this.matchesKnownEpoch(e, res)) {
            this.apply(e, res, requestedAtMs);
            this.o.metrics?.fetch("ok", kind);
            return;
          }
          // The replica that answered, or this agent, is behind a policy change: the answer may
          // be the old decision. Ask again (any replica) while the informers converge.
          if (attempt >= this.o.epochRetries) {
            const x = POLICY_CHANGE_PROPAGATING;
            throw new KeycutterError(x.code, x.message);
          }
          await sleep(this.o.clock, this.o.epochRetryMs);
          if (e.gone) return;
        }
      } catch (err) {
        if (e.gone) return;
        const x = toError(err);
        this.o.metrics?.fetch(x.code, kind);
        if (ERRORS[x.code].definite) {
          // The server says this pod must not have credentials (any more): stop serving them.
          e.creds = undefined;
          e.tokens?.forgetAccepted();
          e.denial = { ...x, untilMs: this.o.clock.now() + this.o.denialTtlMs };
          e.lastError = x;
          this.o.clock.clearTimeout(e.timer);
          e.timer = undefined;
          return;
        }
        e.lastError = x;
        e.failures++;
        const backoff = Math.min(
          this.o.retryMaxMs,
          this.o.retryInitialMs * 2 ** Math.min(e.failures - 1, 16),
        );
        const delay = backoff * (0.75 + this.o.clock.random() * 0.5);
        e.retryAtMs = this.o.clock.now() + Math.min(delay, 1000);
        this.o.log.warn(
          {
            pod: `${e.pod.namespace}/${e.pod.name}`,
            code: x.code,
            failures: e.failures,
            retryMs: Math.round(delay),
          },
          "credential fetch failed",
        );
        this.schedule(e, delay);
      } finally {
        e.inflight = undefined;
      }
    })();
    e.inflight = p;
  }

  /** `p`, or TIMEOUT once `ms` have passed on the clock (a rejection counts as a timeout). */
  private withTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
    const clock = this.o.clock;
    return new Promise((resolve) => {
      const timer = clock.setTimeout(() => resolve(TIMEOUT), ms);
      p.then(
        (value) => {
          clock.clearTimeout(timer);
          resolve(value);
        },
        () => {
          clock.clearTimeout(timer);
          resolve(TIMEOUT);
        },
      );
    });
  }
}

const TIMEOUT = Symbol("timeout");

const POLICY_CHANGE_PROPAGATING: Failure = {
  code: "PolicyChangePropagating",
  message: "a policy change is still reaching the credential service; retry shortly",
};

const TIMED_OUT: Failure = { code: "Unavailable", message: "timed out waiting for the credential service" };
