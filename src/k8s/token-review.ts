// TokenReview for the server: validates a service-account token with the apiserver for a given
// audience and returns the identity, including the pod and node a pod-bound token names.
// Results are cached briefly by sha256(token) (never the token itself), so a burst of requests
// from one agent costs one review; a negative result is cached for a shorter time.

import { createHash } from "node:crypto";
import type { KubeConfig, V1TokenReview } from "@kubernetes/client-node";
import { ApiClient, kubeConfigConnection } from "./api-client.ts";
import { RateLimiter } from "../aws/rate-limit.ts";

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
}

const EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name";

export interface TokenReviewerOptions {
  positiveTtlMs?: number;
  negativeTtlMs?: number;
  maxEntries?: number;
  /** TokenReview calls per second to the apiserver (a flood of forged tokens cannot flood it). */
  reviewsPerSecond?: number;
  reviewBurst?: number;
}

export class TokenReviewer {
  private readonly api: ApiClient;
  private readonly cache = new Map<string, { at: number; id: ReviewedIdentity }>();
  private readonly inflight = new Map<string, Promise<ReviewedIdentity>>();
  private readonly positiveTtlMs: number;
  private readonly negativeTtlMs: number;
  private readonly maxEntries: number;
  private readonly limiter: RateLimiter;

  constructor(kc: KubeConfig, opts: TokenReviewerOptions = {}) {
    this.api = new ApiClient(kubeConfigConnection(kc));
    this.positiveTtlMs = opts.positiveTtlMs ?? 10_000;
    this.negativeTtlMs = opts.negativeTtlMs ?? 5_000;
    this.maxEntries = opts.maxEntries ?? 10_000;
    this.limiter = new RateLimiter({
      ratePerSecond: opts.reviewsPerSecond ?? 200,
      burst: opts.reviewBurst ?? 400,
      maxWaitMs: 2000,
    });
  }

  close(): void {
    this.api.close();
  }

  async review(token: string, audience: string): Promise<ReviewedIdentity> {
    const key = createHash("sha256").update(audience).update("\0").update(token).digest("hex");
    const now = Date.now();
    const hit = this.cache.get(key);
    if (hit && now - hit.at < (hit.id.authenticated ? this.positiveTtlMs : this.negativeTtlMs)) return hit.id;
    const running = this.inflight.get(key);
    if (running) return running;
    const p = this.doReview(token, audience).finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    const id = await p;
    if (this.cache.size >= this.maxEntries) {
      for (const [k, v] of this.cache) if (now - v.at > this.positiveTtlMs) this.cache.delete(k);
      if (this.cache.size >= this.maxEntries) this.cache.clear();
    }
    this.cache.set(key, { at: now, id });
    return id;
  }

  private async doReview(token: string, audience: string): Promise<ReviewedIdentity> {
    await this.limiter.acquire("first");
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
