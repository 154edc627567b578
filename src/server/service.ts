// The credentials decision for one authenticated agent request: who may ask (the pod, its UID,
// node, phase, eligibility, its own token), the policy decision, and the audit record. Obtaining
// the credentials is the issuance chain's job (issue/chain.ts).

import type { CredentialsRequest, CredentialsResponse, PodRef } from "../api/contract.ts";
import { KeycutterError, type ErrorCode } from "../api/errors.ts";
import { repeat, systemClock, type Clock } from "../common/clock.ts";
import type { Logger } from "../common/logger.ts";
import { StsError, type AssumeRoleRequest, type AssumedCredentials } from "../aws/sts.ts";
import type { ReviewedIdentity } from "./k8s/token-review.ts";
import { ineligibility, type PodRecord } from "./k8s/pod-lookup.ts";
import { decide, type Decision, type IssuePlan, type PolicyRef } from "../policy/decide.ts";
import type { AccessPolicy, NamespaceFacts, RoleAllowance } from "../policy/types.ts";
import type { AuditRecord, AuditSink } from "./audit.ts";
import type { MemoryCache, SharedStore } from "./cache.ts";
import type { ServerMetrics } from "./metrics.ts";
import { issuanceChain, type IssuanceChain } from "./issue/chain.ts";
import { cacheKey } from "./issue/keys.ts";

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
  /** Kubernetes Events for refusals of a pod that exists (events/credential-events.ts); best-effort, never awaited. */
  events?: { podDenied(pod: PodRef, code: ErrorCode, message: string): void };
  /** Called with every refusal tied to a policy (the status writer shows the latest). */
  observe?: (policy: PolicyRef, reason: string, message: string) => void;
  /** The issuance chain's time (freshness, refusal TTL, the shared lock's waits) and the sweep. */
  clock?: Clock;
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

const SWEEP_INTERVAL_MS = 60_000;

export class CredentialService {
  private readonly deps: Deps;
  private readonly opts: ServiceOptions;
  private readonly chain: IssuanceChain;
  private readonly stopSweep: () => void;

  constructor(deps: Deps, opts: Partial<ServiceOptions> = {}) {
    this.deps = deps;
    this.opts = { ...DEFAULT_SERVICE_OPTIONS, ...opts };
    const clock = deps.clock ?? systemClock;
    this.chain = issuanceChain({
      sts: deps.sts,
      shared: deps.shared,
      metrics: deps.metrics,
      log: deps.log,
      observe: deps.observe,
      cacheMinRemainingSeconds: this.opts.cacheMinRemainingSeconds,
      lockWaitMs: this.opts.lockWaitMs,
      stsRatePerSecond: this.opts.stsRatePerSecond,
      stsBurst: this.opts.stsBurst,
      stsMaxWaitMs: this.opts.stsMaxWaitMs,
      stsMaxWaitersPerNamespace: this.opts.stsMaxWaitersPerNamespace,
      stsFailureTtlMs: this.opts.stsFailureTtlMs,
      stsFailureCacheEntries: this.opts.stsFailureCacheEntries,
      clock,
    });
    this.stopSweep = repeat(clock, SWEEP_INTERVAL_MS, () => this.chain.sweep(clock.now()));
  }

  /** This replica's credentials cache (the chain's first step). */
  get memory(): MemoryCache {
    return this.chain.memory;
  }

  close(): void {
    this.stopSweep();
  }

  /** Throws KeycutterError for every refusal; audits every outcome. */
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
    const found = { pod: false };
    try {
      const res = await this.issueInner(agent, req, rec, found);
      rec.decision = "allowed";
      rec.code = "issued";
      rec.reason = "ok";
      this.deps.metrics.decisions.inc({ outcome: "issued" });
      return res;
    } catch (e) {
      const ce =
        e instanceof KeycutterError ? e : new KeycutterError("Unavailable", "internal error", { cause: e });
      if (!(e instanceof KeycutterError)) this.deps.log.error({ err: e }, "credentials request failed");
      rec.code = ce.code;
      rec.reason = ce.message;
      if (ce.cause instanceof StsError) rec.stsRequestId = ce.cause.requestId;
      // only on a pod that exists with this UID: an Event names its object, and a wrong UID is another pod
      if (found.pod) this.deps.events?.podDenied(req.pod, ce.code, ce.message);
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
    found: { pod: boolean },
  ): Promise<CredentialsResponse> {
    const pod = await this.servablePod(agent, req.pod, rec, found);
    if (req.podToken !== undefined) await this.checkPodToken(agent, req.pod, req.podToken, pod);
    const { namespace, uid } = req.pod;
    let ns: NamespaceFacts | undefined;
    try {
      ns = await this.deps.pods.namespace(namespace);
    } catch (e) {
      throw new KeycutterError("Unavailable", "cannot read the namespace from the Kubernetes API", {
        cause: e,
      });
    }
    // Read in the same turn as the decision's policies: the epoch names exactly what was decided on.
    const policyEpoch = this.deps.epochs?.epochOf(namespace);
    const plan = this.decideFor(pod, ns ?? { name: namespace, labels: {} }, req.pod, rec);
    const { creds, source } = await this.chain.issuer.issue(plan, {
      podUID: uid,
      cacheKey: cacheKey(plan, uid),
    });
    rec.source = source;
    rec.expiration = creds.expiration;
    rec.accessKeyId = creds.accessKeyId;
    if (creds.stsRequestId) rec.stsRequestId = creds.stsRequestId;
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

  /** The pod, read live: it exists with this UID, is bound to the agent's node, is eligible and running. */
  private async servablePod(
    agent: AgentIdentity,
    ref: PodRef,
    rec: AuditRecord,
    found: { pod: boolean },
  ): Promise<PodRecord> {
    const { namespace, name, uid } = ref;
    let pod: PodRecord | undefined;
    try {
      pod = await this.deps.pods.pod(namespace, name);
    } catch (e) {
      this.deps.log.warn({ err: e }, "pod lookup failed");
      throw new KeycutterError("Unavailable", "cannot read the pod from the Kubernetes API", { cause: e });
    }
    if (!pod) throw new KeycutterError("PodNotFound", `pod ${namespace}/${name} does not exist`);
    if (pod.facts.uid !== uid)
      throw new KeycutterError(
        "PodNotFound",
        `pod ${namespace}/${name} has a different UID (the pod was replaced)`,
      );
    found.pod = true;
    rec.serviceAccount = pod.facts.serviceAccountName;
    if (pod.facts.nodeName !== agent.nodeName) {
      throw new KeycutterError(
        "PodNotOnNode",
        `pod ${namespace}/${name} is not bound to node ${agent.nodeName}`,
      );
    }
    const ineligible = ineligibility(pod);
    if (ineligible)
      throw new KeycutterError("PodNotEligible", `pod ${namespace}/${name} is not served: ${ineligible}`);
    if (pod.phase === "Succeeded" || pod.phase === "Failed") {
      throw new KeycutterError("PodNotFound", `pod ${namespace}/${name} has finished (${pod.phase})`);
    }
    // A terminating pod (deletionTimestamp set, still running) keeps getting credentials until
    // it is gone: its graceful shutdown may need them. Once deleted, the lookup above refuses.
    return pod;
  }

  /** Container-credentials path: the pod's own token must name this pod, UID and service account. */
  private async checkPodToken(
    agent: AgentIdentity,
    ref: PodRef,
    podToken: string,
    pod: PodRecord,
  ): Promise<void> {
    const { namespace, name, uid } = ref;
    let id: ReviewedIdentity;
    try {
      id = await this.deps.reviewPodToken(podToken, agent);
    } catch (e) {
      if (e instanceof KeycutterError) throw e;
      this.deps.log.warn({ err: e }, "pod token review failed");
      throw new KeycutterError("Unavailable", "cannot review the pod token", { cause: e });
    }
    if (!id.authenticated)
      throw new KeycutterError("PodTokenMismatch", `pod token rejected: ${id.error ?? "not authenticated"}`);
    if (id.podName !== name || id.podUID !== uid || id.serviceAccount?.namespace !== namespace) {
      throw new KeycutterError("PodTokenMismatch", `pod token does not belong to pod ${namespace}/${name}`);
    }
    if (id.serviceAccount?.name !== pod.facts.serviceAccountName) {
      throw new KeycutterError("PodTokenMismatch", "pod token is for another service account");
    }
  }

  /** AccessPolicy × RoleAllowance for the pod: the plan to issue, or the refusal (recorded for status). */
  private decideFor(pod: PodRecord, ns: NamespaceFacts, ref: PodRef, rec: AuditRecord): IssuePlan {
    const d: Decision = decide(
      {
        pod: pod.facts,
        namespace: ns,
        policies: this.deps.policies.accessPolicies(ref.namespace),
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
        // A transient refusal (a pod without an address yet) says nothing about the policy.
        if (d.code !== "Unavailable")
          this.deps.observe?.(d.policy, d.reason, `for pod ${ref.namespace}/${ref.name}: ${d.message}`);
      }
      throw new KeycutterError(d.code, d.message);
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
    return plan;
  }
}
