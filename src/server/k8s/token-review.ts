// TokenReview for the server: validates a service-account token with the apiserver for a given
// audience and returns the identity, including the pod and node a pod-bound token names.
//
// A TokenReview is the expensive step anyone who can reach the API port can trigger, so before
// one is made a token must get past, in order:
//   1. local screening (src/k8s/token-claims.ts): shape, audience, expiry, subject, pod binding;
//   2. the caches, by sha256(audience, token), never the token itself: accepted tokens for a few
//      seconds (as the apiserver itself caches), rejected ones for 5 s; each a bounded LRU, kept
//      apart so that rejected junk can never evict an accepted token;
//   3. the source's own bucket (per client address for agent tokens, per node for pod tokens);
//   4. the budget of its kind: agent-token and pod-token reviews each have their own limiter, and
//      within the agent budget sources that recently authenticated go first.

import { createHash } from "node:crypto";
import type { KubeConfig, V1TokenReview } from "@kubernetes/client-node";
import { ApiClient, kubeConfigConnection } from "../../k8s/api-client.ts";
import { FairQueue, RateLimitQueueFull, RateLimitTimeout } from "../fair-queue.ts";
import { KeyedTokenBuckets } from "../../common/keyed-token-buckets.ts";
import { systemClock, type Clock } from "../../common/clock.ts";
import { LRUCache } from "lru-cache";
import { screenToken } from "./token-claims.ts";

export interface ReviewedIdentity {
  authenticated: boolean;
  /** system:serviceaccount:<ns>:<name> for service accounts. */
  username: string;
  serviceAccount?: { namespace: string; name: string };
  podName?: string;
  podUID?: string;
  nodeName?: string;
  audiences: string[];
  /** Why authentication failed (from the apiserver, or ours). Never contains the token. */
  error?: string;
  /** Refused by local screening as a token of the wrong subject or binding (403, not 401). */
  forbidden?: boolean;
}

export type ReviewKind = "agent" | "pod";

export interface ReviewRequest {
  kind: ReviewKind;
  audience: string;
  /** Whose budget a review spends: the client address (agent tokens), the agent's node (pod tokens). */
  source: string;
  /** `namespace/name` of the acceptable service accounts; undefined: any. */
  serviceAccounts?: ReadonlySet<string>;
  /** The token must name the node its pod is bound to. */
  requireNode: boolean;
}

/** What happened to one review request; `reviewed` is the only one that reached the apiserver. */
export type ReviewOutcome =
  | "refused_locally"
  | "cached_accepted"
  | "cached_rejected"
  | "throttled_source"
  | "throttled_budget"
  | "reviewed";

/** The source's or the kind's review budget is spent: the caller answers 429, no review was made. */
export class ReviewThrottled extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReviewThrottled";
  }
}

export interface ReviewBudget {
  /** TokenReviews per second to the apiserver for this kind, all sources together. */
  ratePerSecond: number;
  burst: number;
  /** Per source (client address or node). */
  perSourceRatePerSecond: number;
  perSourceBurst: number;
}

export interface TokenReviewerOptions {
  positiveTtlMs?: number;
  negativeTtlMs?: number;
  /** Bound of each cache (accepted, rejected) and of the per-source bucket maps. */
  maxEntries?: number;
  agent?: Partial<ReviewBudget>;
  pod?: Partial<ReviewBudget>;
  /** Longest a review waits for its kind's budget before it is refused (Throttled). */
  maxWaitMs?: number;
  onOutcome?: (kind: ReviewKind, outcome: ReviewOutcome) => void;
  /** The caches' TTLs, the per-source buckets and the token expiry check. */
  clock?: Pick<Clock, "now">;
}

export const DEFAULT_REVIEW_BUDGETS: Record<ReviewKind, ReviewBudget> = {
  // An agent reviews its one token once per positive TTL; a few per second per node is plenty,
  // and 100/s all together covers thousands of nodes.
  agent: { ratePerSecond: 100, burst: 200, perSourceRatePerSecond: 5, perSourceBurst: 20 },
  // Pod tokens (container-credentials path) come only from authenticated agents, per node: room
  // for a 250-pod start storm on one node.
  pod: { ratePerSecond: 200, burst: 400, perSourceRatePerSecond: 50, perSourceBurst: 300 },
};

/** How long a source that authenticated as an agent keeps its priority on the agent budget. */
const TRUSTED_SOURCE_TTL_MS = 60 * 60_000;

interface KindState {
  budget: FairQueue;
  /** Waiters beyond this would time out anyway: refuse untrusted sources at once instead. */
  maxQueued: number;
  perSource: KeyedTokenBuckets;
}

export class TokenReviewer {
  private readonly api: ApiClient;
  private readonly accepted: LRUCache<string, ReviewedIdentity>;
  private readonly rejected: LRUCache<string, ReviewedIdentity>;
  private readonly inflight = new Map<string, Promise<ReviewedIdentity>>();
  private readonly kinds: Record<ReviewKind, KindState>;
  private readonly trustedSources: LRUCache<string, true>;
  private readonly onOutcome: (kind: ReviewKind, outcome: ReviewOutcome) => void;
  private readonly now: () => number;

  constructor(kc: KubeConfig, opts: TokenReviewerOptions = {}) {
    this.api = new ApiClient(kubeConfigConnection(kc));
    const clock = opts.clock ?? systemClock;
    this.now = () => clock.now();
    // ttlResolution 0: lru-cache would otherwise memoise the time behind a real 1 ms timer, and
    // the TTLs would not follow the clock it is given
    const perf = { now: this.now };
    const ttlResolution = 0;
    const maxEntries = opts.maxEntries ?? 10_000;
    this.accepted = new LRUCache({ max: maxEntries, ttl: opts.positiveTtlMs ?? 10_000, perf, ttlResolution });
    // short: a TokenReview can fail transiently (the apiserver under load) for a valid token
    this.rejected = new LRUCache({ max: maxEntries, ttl: opts.negativeTtlMs ?? 5_000, perf, ttlResolution });
    this.trustedSources = new LRUCache({ max: maxEntries, ttl: TRUSTED_SOURCE_TTL_MS, perf, ttlResolution });
    const maxWaitMs = opts.maxWaitMs ?? 2000;
    const kindState = (budget: ReviewBudget): KindState => ({
      budget: new FairQueue({
        label: "TokenReview",
        ratePerSecond: budget.ratePerSecond,
        burst: budget.burst,
        maxWaitMs,
      }),
      maxQueued: Math.max(1, Math.ceil((budget.ratePerSecond * maxWaitMs) / 1000)),
      perSource: new KeyedTokenBuckets({
        ratePerSecond: budget.perSourceRatePerSecond,
        burst: budget.perSourceBurst,
        maxKeys: maxEntries,
        now: this.now,
      }),
    });
    this.kinds = {
      agent: kindState({ ...DEFAULT_REVIEW_BUDGETS.agent, ...opts.agent }),
      pod: kindState({ ...DEFAULT_REVIEW_BUDGETS.pod, ...opts.pod }),
    };
    this.onOutcome = opts.onOutcome ?? (() => undefined);
  }

  close(): void {
    this.api.close();
  }

  /** Entries in the rejected-token cache (bounded by maxEntries). */
  get rejectedCached(): number {
    return this.rejected.size;
  }

  /**
   * The identity the token proves, or authenticated: false with the reason. Throws
   * ReviewThrottled when the budget is spent, and other errors when the apiserver fails.
   */
  async review(token: string, req: ReviewRequest): Promise<ReviewedIdentity> {
    const screened = screenToken(
      token,
      { audience: req.audience, serviceAccounts: req.serviceAccounts, requireNode: req.requireNode },
      this.now() / 1000,
    );
    if (!screened.ok) {
      this.onOutcome(req.kind, "refused_locally");
      return {
        authenticated: false,
        username: "",
        audiences: [],
        error: screened.reason,
        ...(screened.code === "Forbidden" ? { forbidden: true } : {}),
      };
    }
    const key = createHash("sha256").update(req.audience).update("\0").update(token).digest("hex");
    const hit = this.accepted.get(key);
    if (hit) {
      this.onOutcome(req.kind, "cached_accepted");
      return hit;
    }
    const miss = this.rejected.get(key);
    if (miss) {
      this.onOutcome(req.kind, "cached_rejected");
      return miss;
    }
    const running = this.inflight.get(key);
    if (running) return running;
    const kind = this.kinds[req.kind];
    if (!kind.perSource.take(req.source)) {
      this.onOutcome(req.kind, "throttled_source");
      throw new ReviewThrottled(
        `too many token reviews from ${req.kind === "pod" ? "node" : "address"} ${req.source}`,
      );
    }
    const p = this.reviewOnce(token, req, kind).finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    const id = await p;
    if (id.authenticated) {
      this.accepted.set(key, id);
      this.trustedSources.set(`${req.kind}\0${req.source}`, true);
    } else {
      this.rejected.set(key, id);
    }
    return id;
  }

  private async reviewOnce(token: string, req: ReviewRequest, kind: KindState): Promise<ReviewedIdentity> {
    const trusted = this.trustedSources.has(`${req.kind}\0${req.source}`);
    if (!trusted && kind.budget.queued >= kind.maxQueued) {
      this.onOutcome(req.kind, "throttled_budget");
      throw new ReviewThrottled(`the ${req.kind}-token review budget is spent`);
    }
    try {
      // Trusted sources queue apart from the rest: the limiter caps the waiters of each queue and
      // serves the queues in turn, so a flood of untrusted sources can fill only its own.
      await kind.budget.acquire(trusted ? "first" : "refresh", trusted ? "trusted" : "untrusted");
    } catch (e) {
      if (!(e instanceof RateLimitTimeout || e instanceof RateLimitQueueFull)) throw e;
      this.onOutcome(req.kind, "throttled_budget");
      throw new ReviewThrottled(`the ${req.kind}-token review budget is spent`);
    }
    this.onOutcome(req.kind, "reviewed");
    return this.doReview(token, req.audience);
  }

  private async doReview(token: string, audience: string): Promise<ReviewedIdentity> {
    const res = await this.api.json<V1TokenReview>("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token, audiences: [audience] },
    });
    const st = res.status ?? {};
    const user = st.user ?? {};
    const audiences = st.audiences ?? [];
    const id: ReviewedIdentity = {
      authenticated: st.authenticated === true,
      username: user.username ?? "",
      audiences,
    };
    if (!id.authenticated) {
      id.error = st.error
        ? String(st.error)
            .replace(/[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}/g, "[token]")
            .slice(0, 200)
        : "token not authenticated";
      return id;
    }
    if (!audiences.includes(audience)) {
      return { ...id, authenticated: false, error: `token is not for audience "${audience}"` };
    }
    const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(id.username);
    if (m) id.serviceAccount = { namespace: m[1] as string, name: m[2] as string };
    const extra = user.extra ?? {};
    const first = (k: string) =>
      Array.isArray(extra[k]) && extra[k].length > 0 ? String(extra[k][0]) : undefined;
    const podName = first(EXTRA_POD_NAME);
    const podUID = first(EXTRA_POD_UID);
    const nodeName = first(EXTRA_NODE_NAME);
    if (podName) id.podName = podName;
    if (podUID) id.podUID = podUID;
    if (nodeName) id.nodeName = nodeName;
    return id;
  }
}

const EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name";
