// Writes status conditions (type Ready) on AccessPolicy and RoleAllowance objects. Runs on the
// leader only. For each AccessPolicy it combines:
//   - static checks: validation, template syntax, a RoleAllowance covering namespace + role, and
//     the rendered size (rendered for a stand-in pod: 1-character placeholders give the minimum
//     size; over the limit even then → PolicyTooLarge),
//   - ambiguity: pods of the namespace selected by more than one policy at the top priority,
//   - what this replica saw at issuance for the current generation (template failures on real
//     pods, policies too large for a real pod, STS refusals).
// Writes only when the condition changed (status subresource, optimistic concurrency).

import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { systemClock, type Clock, type TimerHandle } from "../../common/clock.ts";
import type { Logger } from "../../common/logger.ts";
import type { PolicyRef } from "../../policy/decide.ts";
import { podSelectorMismatch } from "../../policy/match.ts";
import { accessPolicyReadiness, roleAllowanceReadiness, type ReadyState } from "../../policy/readiness.ts";
import {
  ACCESS_POLICY_PLURAL,
  GROUP,
  ROLE_ALLOWANCE_PLURAL,
  VERSION,
  type AccessPolicy,
  type Condition,
  type NamespaceFacts,
  type PodFacts,
  type RoleAllowance,
} from "../../policy/types.ts";
import { decide } from "../../policy/decide.ts";
import { ineligibility, type PodLookup } from "./pod-lookup.ts";
import type { PolicyInformers } from "./policy-informers.ts";

export interface StatusOptions {
  clusterName: string;
  maxDurationSeconds: number;
  intervalMs: number;
  /** The reconcile loop, the kick's debounce, how long an observation is shown, transition times. */
  clock?: Clock;
  /** Default: the official client on `kc`. */
  api?: StatusApi;
}

/** The status writes the writer makes; the official client's, or a unit test's recorder. */
export type StatusApi = Pick<
  CustomObjectsApi,
  "replaceNamespacedCustomObjectStatus" | "replaceClusterCustomObjectStatus"
>;

/** What this replica saw at issuance is shown for this long after it last saw it. */
const OBSERVATION_SHOWN_MS = 600_000;

interface Observation {
  generation: number;
  uid: string;
  reason: string;
  message: string;
  at: number;
}

export class PolicyStatusWriter {
  private readonly api: StatusApi;
  private readonly informers: PolicyInformers;
  private readonly pods: PodLookup;
  private readonly log: Logger;
  private readonly o: StatusOptions;
  private readonly clock: Clock;
  private readonly observations = new Map<string, Observation>();
  private timer: TimerHandle | undefined;
  private kickTimer: TimerHandle | undefined;
  private active = false;
  private running: Promise<void> | undefined;

  constructor(kc: KubeConfig, informers: PolicyInformers, pods: PodLookup, log: Logger, o: StatusOptions) {
    this.api = o.api ?? kc.makeApiClient(CustomObjectsApi);
    this.informers = informers;
    this.pods = pods;
    this.log = log;
    this.o = o;
    this.clock = o.clock ?? systemClock;
  }

  observe(p: PolicyRef, reason: string, message: string): void {
    const key = `${p.namespace}/${p.name}`;
    const prev = this.observations.get(key);
    this.observations.set(key, {
      generation: p.generation,
      uid: p.uid,
      reason,
      message,
      at: this.clock.now(),
    });
    if (!prev || prev.reason !== reason || prev.generation !== p.generation) this.kick();
  }

  start(): void {
    if (this.active) return;
    this.active = true;
    const loop = () => {
      if (!this.active) return;
      void this.runOnce().finally(() => {
        if (this.active) this.timer = this.clock.setTimeout(loop, this.o.intervalMs);
      });
    };
    loop();
  }

  stop(): void {
    this.active = false;
    this.clock.clearTimeout(this.timer);
    this.clock.clearTimeout(this.kickTimer);
    this.kickTimer = undefined;
  }

  kick(): void {
    if (!this.active || this.kickTimer) return;
    this.kickTimer = this.clock.setTimeout(() => {
      this.kickTimer = undefined;
      void this.runOnce();
    }, 300);
    this.kickTimer.unref?.();
  }

  async runOnce(): Promise<void> {
    if (this.running) return this.running;
    this.running = this.reconcile()
      .catch((e: unknown) => this.log.warn({ err: (e as Error).message }, "status reconcile failed"))
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  private async reconcile(): Promise<void> {
    if (!this.informers.synced) return;
    const allowances = this.informers.roleAllowances();
    const policies = this.informers.accessPolicies();
    const byNs = new Map<string, AccessPolicy[]>();
    for (const p of policies) {
      const ns = p.metadata.namespace ?? "";
      byNs.set(ns, [...(byNs.get(ns) ?? []), p]);
    }
    // Every pod a policy selects is evaluated as an issuance would evaluate it, so a problem that
    // only shows with a real pod (a missing label in a template, a tie) reaches the status even
    // when another replica served the request.
    const ambiguous = new Map<string, string>();
    const podProblems = new Map<string, { reason: string; message: string }>();
    for (const [ns, list] of byNs) {
      let pods: PodFacts[];
      let nsFacts: NamespaceFacts;
      try {
        // Pods the server never serves (mirror pods, no service account) are no evidence about a
        // policy: they are refused before any policy is consulted.
        pods = (await this.pods.listPods(ns, 5000))
          .filter((r) => ineligibility(r) === undefined)
          .map((r) => r.facts);
        nsFacts = (await this.pods.namespace(ns)) ?? { name: ns, labels: {} };
      } catch {
        continue;
      }
      for (const pod of pods) {
        const sel = list.filter(
          (p) => p.spec?.podSelector && podSelectorMismatch(p.spec.podSelector, pod) === null,
        );
        if (sel.length === 0) continue;
        const top = Math.max(...sel.map((p) => p.spec.priority ?? 0));
        const tied = sel.filter((p) => (p.spec.priority ?? 0) === top);
        if (tied.length > 1) {
          for (const p of tied) {
            const key = `${ns}/${p.metadata.name}`;
            if (!ambiguous.has(key)) {
              const others = tied.filter((q) => q !== p).map((q) => q.metadata.name);
              ambiguous.set(
                key,
                `pod ${pod.name} is also selected by ${others.join(", ")} at priority ${top}; no credentials are issued to it`,
              );
            }
          }
          continue;
        }
        const d = decide(
          { pod, namespace: nsFacts, policies: list, allowances },
          { clusterName: this.o.clusterName, maxDurationSeconds: this.o.maxDurationSeconds },
        );
        if (!d.ok && d.policy) {
          const key = `${ns}/${d.policy.name}`;
          if (!podProblems.has(key))
            podProblems.set(key, { reason: d.reason, message: `pod ${pod.name}: ${d.message}` });
        }
      }
    }
    for (const p of policies) {
      const key = `${p.metadata.namespace}/${p.metadata.name}`;
      let state: ReadyState;
      const ns = await this.pods.namespace(p.metadata.namespace ?? "").catch(() => undefined);
      state = accessPolicyReadiness(
        p,
        allowances,
        ns?.labels ?? {},
        this.o.clusterName,
        this.o.maxDurationSeconds,
      );
      const obs = this.observations.get(key);
      const problem = podProblems.get(key);
      if (state.status === "True" && ambiguous.has(key))
        state = { status: "False", reason: "AmbiguousMatch", message: ambiguous.get(key) as string };
      else if (state.status === "True" && problem) state = { status: "False", ...problem };
      else if (
        state.status === "True" &&
        obs &&
        obs.generation === (p.metadata.generation ?? 0) &&
        obs.uid === (p.metadata.uid ?? "") &&
        this.clock.now() - obs.at < OBSERVATION_SHOWN_MS
      ) {
        state = { status: "False", reason: obs.reason, message: obs.message };
      }
      await this.write(ACCESS_POLICY_PLURAL, p, state);
    }
    for (const a of allowances) await this.write(ROLE_ALLOWANCE_PLURAL, a, roleAllowanceReadiness(a));
  }

  private async write(plural: string, obj: AccessPolicy | RoleAllowance, state: ReadyState): Promise<void> {
    const gen = obj.metadata.generation ?? 0;
    const prev = (obj.status?.conditions ?? []).find((c) => c.type === "Ready");
    if (
      prev &&
      prev.status === state.status &&
      prev.reason === state.reason &&
      prev.message === state.message &&
      prev.observedGeneration === gen &&
      obj.status?.observedGeneration === gen
    )
      return;
    const cond: Condition = {
      type: "Ready",
      status: state.status,
      reason: state.reason,
      message: state.message.slice(0, 32_000),
      lastTransitionTime:
        prev && prev.status === state.status
          ? prev.lastTransitionTime
          : new Date(this.clock.now()).toISOString().replace(/\.\d{3}Z$/, "Z"),
      observedGeneration: gen,
    };
    const conditions = [...(obj.status?.conditions ?? []).filter((c) => c.type !== "Ready"), cond];
    const body = { ...obj, status: { observedGeneration: gen, conditions } };
    try {
      if (plural === ACCESS_POLICY_PLURAL) {
        await this.api.replaceNamespacedCustomObjectStatus({
          group: GROUP,
          version: VERSION,
          namespace: obj.metadata.namespace ?? "",
          plural,
          name: obj.metadata.name ?? "",
          body,
        });
      } else {
        await this.api.replaceClusterCustomObjectStatus({
          group: GROUP,
          version: VERSION,
          plural,
          name: obj.metadata.name ?? "",
          body,
        });
      }
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (code !== 409 && code !== 404)
        this.log.warn({ err: (e as Error).message, object: obj.metadata.name }, "status write failed");
    }
  }
}
