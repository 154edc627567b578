// The credentials decision for one authenticated agent request: pod checks, policy decision,
// cache (in-process + shared), single flight, rate-limited STS, audit and metrics.

import { createHash } from "node:crypto";
import { ContractError, type CredentialsRequest, type CredentialsResponse } from "../api/contract.ts";
import type { Logger } from "../common/logger.ts";
import { RateLimiter, RateLimitQueueFull, RateLimitTimeout, type Priority } from "../aws/rate-limit.ts";
import { StsError, type AssumeRoleRequest, type AssumedCredentials } from "../aws/sts.ts";
import type { ReviewedIdentity } from "../k8s/token-review.ts";
import { ineligibility, type PodRecord } from "../k8s/pod-lookup.ts";
import { decide, type Decision, type IssuePlan, type PolicyRef } from "../policy/decide.ts";
import type { AccessPolicy, NamespaceFacts, RoleAllowance } from "../policy/types.ts";
import type { AuditRecord, AuditSink } from "./audit.ts";
import { MemoryCache, type CachedCredentials, type SharedStore } from "./cache.ts";
import { FailureCache } from "./failure-cache.ts";
import type { ServerMetrics } from "./metrics.ts";
import { serverReuseMinRemainingSeconds } from "../api/serve-window.ts";

export interface AgentIdentity {
  /** ns/name of the agent's service account. */
  serviceAccount: string;
  nodeName: string;
}

export interface Deps {
  pods: {
    pod(ns: string, name: string): Promise<PodRecord | undefined>;
    namespace(name: string): Promise<NamespaceFacts | undefined>;
  };
  policies: { accessPolicies(ns?: string): AccessPolicy[]; roleAllowances(): RoleAllowance[] };
  /** The agent's node is the pod token's source: each node has its own review budget. */
  reviewPodToken: (token: string, agent: AgentIdentity) => Promise<ReviewedIdentity>;
  sts: { assumeRole(req: AssumeRoleRequest): Promise<AssumedCredentials> };
  shared?: SharedStore;
  audit: AuditSink;
  metrics: ServerMetrics;
  log: Logger;
  /** The namespace's policy epoch (policy-epochs.ts), sent with the credentials. */
  epochs?: { epochOf(namespace: string): string };
  /** Called with every refusal tied to a policy (the status writer shows the latest). */
  observe?: (policy: PolicyRef, reason: string, message: string) => void;
  /** Wall-clock milliseconds for the STS failure cache; injectable for tests. */
  now?: () => number;
}

export interface ServiceOptions {
  clusterName: string;
  maxDurationSeconds: number;
  sourceIdentity: boolean;
  /** Reuse cached credentials only while at least this much lifetime is left (capped at 3/4 of the duration; never below what agents refresh at, serve-window.ts). */
  cacheMinRemainingSeconds: number;
  stsRatePerSecond: number;
  stsBurst: number;
  stsMaxWaitMs: number;
  /** How long a replica waits for another replica holding the shared lock. */
  lockWaitMs: number;
  /** STS waiters of one namespace, at most (default: what the budget serves within stsMaxWaitMs). */
  stsMaxWaitersPerNamespace?: number;
  /** A definite STS refusal (StsDenied, PolicyInvalid) is answered from memory for this long. */
  stsFailureTtlMs: number;
  stsFailureCacheEntries: number;
}

export const DEFAULT_SERVICE_OPTIONS: ServiceOptions = {
  clusterName: "",
  maxDurationSeconds: 3600,
  sourceIdentity: true,
  cacheMinRemainingSeconds: 2700,
  stsRatePerSecond: 50,
  stsBurst: 200,
  stsMaxWaitMs: 5000,
  lockWaitMs: 3000,
  stsFailureTtlMs: 30_000,
  stsFailureCacheEntries: 10_000,
};

function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class CredentialService {
  private readonly deps: Deps;
  private readonly opts: ServiceOptions;
  readonly memory = new MemoryCache();
  private readonly inflight = new Map<
    string,
    Promise<{ creds: CachedCredentials; source: "memory" | "shared" | "sts" }>
  >();
  /** pod UID → expiry (ms) of the last credentials issued: tells refreshes from first issuance. */
  private readonly lastIssued = new Map<string, number>();
  private readonly limiter: RateLimiter;
  private readonly failures: FailureCache;
  private readonly sweeper: NodeJS.Timeout;

  constructor(deps: Deps, opts: Partial<ServiceOptions> = {}) {
    this.deps = deps;
    this.opts = { ...DEFAULT_SERVICE_OPTIONS, ...opts };
    this.limiter = new RateLimiter({
      ratePerSecond: this.opts.stsRatePerSecond,
      burst: this.opts.stsBurst,
      maxWaitMs: this.opts.stsMaxWaitMs,
      ...(this.opts.stsMaxWaitersPerNamespace !== undefined
        ? { maxWaitersPerTenant: this.opts.stsMaxWaitersPerNamespace }
        : {}),
    });
    this.failures = new FailureCache({
      ttlMs: this.opts.stsFailureTtlMs,
      maxEntries: this.opts.stsFailureCacheEntries,
      ...(deps.now ? { now: deps.now } : {}),
    });
    this.sweeper = setInterval(() => {
      const now = Date.now();
      this.memory.sweep(now);
      this.failures.sweep();
      for (const [k, v] of this.lastIssued) if (v <= now) this.lastIssued.delete(k);
    }, 60_000);
    this.sweeper.unref();
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  /** Throws ContractError for every refusal; audits every outcome. */
  async issue(agent: AgentIdentity, req: CredentialsRequest): Promise<CredentialsResponse> {
    const t0 = performance.now();
    const rec: AuditRecord = {
      decision: "denied",
      code: "",
      reason: "",
      node: agent.nodeName,
      agent: agent.serviceAccount,
      pod: { ...req.pod },
      podToken: req.podToken !== undefined,
    };
    try {
      const res = await this.issueInner(agent, req, rec);
      rec.decision = "allowed";
      rec.code = "issued";
      rec.reason = "ok";
      this.deps.metrics.decisions.inc({ outcome: "issued" });
      return res;
    } catch (e) {
      const ce = e instanceof ContractError ? e : new ContractError("Unavailable", "internal error");
      if (!(e instanceof ContractError)) this.deps.log.error({ err: e }, "credentials request failed");
      rec.code = ce.code;
      rec.reason = ce.message;
      this.deps.metrics.decisions.inc({ outcome: ce.code });
      throw ce;
    } finally {
      rec.latencyMs = Math.round((performance.now() - t0) * 10) / 10;
      this.deps.audit(rec);
    }
  }

  private async issueInner(
    agent: AgentIdentity,
    req: CredentialsRequest,
    rec: AuditRecord,
  ): Promise<CredentialsResponse> {
    const { namespace, name, uid } = req.pod;
    let pod: PodRecord | undefined;
    try {
      pod = await this.deps.pods.pod(namespace, name);
    } catch (e) {
      this.deps.log.warn({ err: (e as Error).message }, "pod lookup failed");
      throw new ContractError("Unavailable", "cannot read the pod from the Kubernetes API");
    }
    if (!pod) throw new ContractError("PodNotFound", `pod ${namespace}/${name} does not exist`);
    if (pod.facts.uid !== uid)
      throw new ContractError(
        "PodNotFound",
        `pod ${namespace}/${name} has a different UID (the pod was replaced)`,
      );
    rec.serviceAccount = pod.facts.serviceAccountName;
    if (pod.facts.nodeName !== agent.nodeName) {
      throw new ContractError(
        "PodNotOnNode",
        `pod ${namespace}/${name} is not bound to node ${agent.nodeName}`,
      );
    }
    const ineligible = ineligibility(pod);
    if (ineligible)
      throw new ContractError("PodNotEligible", `pod ${namespace}/${name} is not served: ${ineligible}`);
    if (pod.phase === "Succeeded" || pod.phase === "Failed") {
      throw new ContractError("PodNotFound", `pod ${namespace}/${name} has finished (${pod.phase})`);
    }
    // A terminating pod (deletionTimestamp set, still running) keeps getting credentials until
    // it is gone: its graceful shutdown may need them. Once deleted, the lookup above refuses.

    if (req.podToken !== undefined) {
      let id: ReviewedIdentity;
      try {
        id = await this.deps.reviewPodToken(req.podToken, agent);
      } catch (e) {
        if (e instanceof ContractError) throw e;
        this.deps.log.warn({ err: (e as Error).message }, "pod token review failed");
        throw new ContractError("Unavailable", "cannot review the pod token");
      }
      if (!id.authenticated)
        throw new ContractError("PodTokenMismatch", `pod token rejected: ${id.error ?? "not authenticated"}`);
      if (id.podName !== name || id.podUID !== uid || id.serviceAccount?.namespace !== namespace) {
        throw new ContractError("PodTokenMismatch", `pod token does not belong to pod ${namespace}/${name}`);
      }
      if (id.serviceAccount?.name !== pod.facts.serviceAccountName) {
        throw new ContractError("PodTokenMismatch", "pod token is for another service account");
      }
    }

    let ns: NamespaceFacts | undefined;
    try {
      ns = await this.deps.pods.namespace(namespace);
    } catch {
      throw new ContractError("Unavailable", "cannot read the namespace from the Kubernetes API");
    }
    // Read in the same turn as the decision's policies: the epoch names exactly what was decided on.
    const policyEpoch = this.deps.epochs?.epochOf(namespace);
    const d: Decision = decide(
      {
        pod: pod.facts,
        namespace: ns ?? { name: namespace, labels: {} },
        policies: this.deps.policies.accessPolicies(namespace),
        allowances: this.deps.policies.roleAllowances(),
      },
      {
        clusterName: this.opts.clusterName,
        maxDurationSeconds: this.opts.maxDurationSeconds,
        sourceIdentity: this.opts.sourceIdentity,
      },
    );
    if (!d.ok) {
      if (d.policy) {
        rec.policy = { namespace: d.policy.namespace, name: d.policy.name, generation: d.policy.generation };
        this.deps.observe?.(d.policy, d.reason, `for pod ${namespace}/${name}: ${d.message}`);
      }
      throw new ContractError(d.code, d.message);
    }
    const plan = d.plan;
    rec.policy = {
      namespace: plan.policy.namespace,
      name: plan.policy.name,
      generation: plan.policy.generation,
    };
    rec.allowances = plan.allowances.map((a) => ({ name: a.name, generation: a.generation }));
    rec.role = plan.roleArn;
    rec.sessionName = plan.sessionName;
    rec.policySha256 = plan.policySha256;
    rec.tags = Object.fromEntries(plan.tags.map((t) => [t.Key, t.Value]));
    rec.durationSeconds = plan.durationSeconds;

    const { creds, source } = await this.obtain(plan, uid);
    rec.source = source;
    rec.expiration = creds.expiration;
    const out: CredentialsResponse = {
      credentials: {
        accessKeyId: creds.accessKeyId,
        secretAccessKey: creds.secretAccessKey,
        sessionToken: creds.sessionToken,
        expiration: creds.expiration,
      },
      roleArn: plan.roleArn,
      roleName: plan.roleName,
      sessionName: plan.sessionName,
      policy: {
        namespace: plan.policy.namespace,
        name: plan.policy.name,
        generation: plan.policy.generation,
      },
    };
    if (policyEpoch !== undefined) out.policyEpoch = policyEpoch;
    if (creds.accountId) out.credentials.accountId = creds.accountId;
    return out;
  }

  /**
   * The cache key is the pod UID and what the decision says, the exact AssumeRole inputs (role,
   * rendered session policy with the allowances' denies, managed policies, tags, duration capped
   * by the allowances, names), never which objects or generations led there: a policy edit that
   * leaves a pod's decision as it was finds the credentials already issued, and one that changes
   * anything the credentials carry misses and forces a new AssumeRole.
   */
  static cacheKey(plan: IssuePlan, podUID: string): string {
    const inputs = createHash("sha256")
      .update(
        JSON.stringify([
          plan.roleArn,
          plan.sessionPolicy ?? "",
          plan.policyArns,
          plan.tags,
          plan.durationSeconds,
          plan.sessionName,
          plan.sourceIdentity,
        ]),
      )
      .digest("hex");
    return `${podUID}|${inputs}`;
  }

  /**
   * Refusals are remembered per decision *and* per object generation: any edit of the policy or an
   * allowance (also one that leaves the decision as it was, after the role's trust policy was fixed
   * outside the cluster) asks STS again at once, while credentials are shared across such edits.
   */
  static failureKey(cacheKey: string, plan: IssuePlan): string {
    const allow = plan.allowances.map((a) => `${a.uid}:${a.generation}`).join(",");
    return `${cacheKey}|${plan.policy.uid}:${plan.policy.generation}|${allow}`;
  }

  private fresh(
    c: CachedCredentials | undefined,
    durationSeconds: number,
    now = Date.now(),
  ): c is CachedCredentials {
    if (!c) return false;
    // never what an agent refreshing them would get back (serve-window.ts); the option can only add to it
    const min =
      Math.max(
        serverReuseMinRemainingSeconds(durationSeconds),
        Math.min(this.opts.cacheMinRemainingSeconds, 0.75 * durationSeconds),
      ) * 1000;
    return Date.parse(c.expiration) - now >= min;
  }

  private async obtain(
    plan: IssuePlan,
    podUID: string,
  ): Promise<{ creds: CachedCredentials; source: "memory" | "shared" | "sts" }> {
    const key = CredentialService.cacheKey(plan, podUID);
    const m = this.memory.get(key);
    if (this.fresh(m, plan.durationSeconds)) {
      this.deps.metrics.cacheLookups.inc({ result: "hit_memory" });
      return { creds: m, source: "memory" };
    }
    const failed = this.failures.get(CredentialService.failureKey(key, plan));
    if (failed) {
      this.deps.metrics.cacheLookups.inc({ result: "hit_failure" });
      throw new ContractError(failed.code, failed.message);
    }
    const running = this.inflight.get(key);
    if (running) return running;
    const p = this.fill(key, plan, podUID).finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  private async fill(
    key: string,
    plan: IssuePlan,
    podUID: string,
  ): Promise<{ creds: CachedCredentials; source: "shared" | "sts" }> {
    const shared = this.deps.shared;
    if (shared) {
      const s = await shared.get(key);
      if (this.fresh(s, plan.durationSeconds)) {
        this.deps.metrics.cacheLookups.inc({ result: "hit_shared" });
        this.remember(key, s, podUID);
        return { creds: s, source: "shared" };
      }
    }
    this.deps.metrics.cacheLookups.inc({ result: "miss" });
    let lockToken: string | undefined;
    if (shared) {
      lockToken = await shared.lock(key, 10_000);
      if (!lockToken && shared.ready) {
        // Another replica is calling STS for the same key: wait for its result.
        const deadline = Date.now() + this.opts.lockWaitMs;
        while (Date.now() < deadline) {
          await sleep(50);
          const s = await shared.get(key);
          if (this.fresh(s, plan.durationSeconds)) {
            this.remember(key, s, podUID);
            return { creds: s, source: "shared" };
          }
          if (!shared.ready) break;
        }
      }
    }
    try {
      const priority: Priority = (this.lastIssued.get(podUID) ?? 0) > Date.now() ? "refresh" : "first";
      try {
        await this.limiter.acquire(priority, plan.policy.namespace);
      } catch (e) {
        if (e instanceof RateLimitTimeout || e instanceof RateLimitQueueFull)
          throw new ContractError("Throttled", "too many credential requests; retry shortly");
        throw e;
      }
      let a: AssumedCredentials;
      try {
        const req: AssumeRoleRequest = {
          roleArn: plan.roleArn,
          sessionName: plan.sessionName,
          durationSeconds: plan.durationSeconds,
          policyArns: plan.policyArns,
          tags: plan.tags,
        };
        if (plan.sessionPolicy) req.sessionPolicy = plan.sessionPolicy;
        if (plan.sourceIdentity) req.sourceIdentity = plan.sourceIdentity;
        try {
          a = await this.deps.sts.assumeRole(req);
        } catch (e) {
          // A role whose MaxSessionDuration is below what the policy asks for: STS says
          // ValidationError. Retry once at the default role maximum (3600) instead of refusing.
          if (
            e instanceof StsError &&
            e.awsCode === "ValidationError" &&
            /DurationSeconds|MaxSessionDuration/i.test(e.detail) &&
            req.durationSeconds > 3600
          ) {
            this.deps.log.warn(
              { role: plan.roleArn, durationSeconds: req.durationSeconds },
              "role's MaxSessionDuration is lower than requested; retrying with 3600",
            );
            a = await this.deps.sts.assumeRole({ ...req, durationSeconds: 3600 });
          } else throw e;
        }
      } catch (e) {
        if (e instanceof StsError) {
          // STS's text names the server's own identity: it goes to this log only; agents, pods
          // and status conditions get e.message (the code and the request id).
          this.deps.log.warn(
            { err: e, requestId: e.requestId, role: plan.roleArn, pod: `${plan.policy.namespace}/${podUID}` },
            "STS AssumeRole failed",
          );
          if (e.code === "StsDenied" || e.code === "PolicyInvalid") {
            this.failures.set(CredentialService.failureKey(key, plan), { code: e.code, message: e.message });
            this.deps.observe?.(
              plan.policy,
              e.code === "StsDenied" ? "StsDenied" : "StsRejectedPolicy",
              e.message,
            );
          }
          throw new ContractError(e.code, e.message);
        }
        throw e;
      }
      const creds: CachedCredentials = {
        accessKeyId: a.accessKeyId,
        secretAccessKey: a.secretAccessKey,
        sessionToken: a.sessionToken,
        expiration: rfc3339(a.expiration),
      };
      if (a.accountId) creds.accountId = a.accountId;
      this.remember(key, creds, podUID);
      if (shared) await shared.set(key, creds, a.expiration.getTime() - Date.now());
      return { creds, source: "sts" };
    } finally {
      if (shared && lockToken) await shared.unlock(key, lockToken);
    }
  }

  private remember(key: string, creds: CachedCredentials, podUID: string): void {
    this.memory.set(key, creds);
    const exp = Date.parse(creds.expiration);
    if ((this.lastIssued.get(podUID) ?? 0) < exp) this.lastIssued.set(podUID, exp);
  }
}
