// Fresh reads of pods and namespaces for the server's per-request authorization. Pods are read
// from the apiserver on every credentials request (a request is a cache miss on the agent, so
// this is rare per pod), which means a deleted or rebound pod is never judged from stale state.
// Namespaces (for RoleAllowance namespaceSelector) are cached for a short time.

import type { KubeConfig, V1Pod } from "@kubernetes/client-node";
import { ApiClient, kubeConfigConnection } from "../../k8s/api-client.ts";
import { systemClock, type Clock } from "../../common/clock.ts";
import type { NamespaceFacts, PodFacts } from "../../policy/types.ts";
import { isMirrorPod } from "../../k8s/mirror-pod.ts";

export function isNotFound(err: unknown): boolean {
  return (err as { code?: number })?.code === 404;
}

export interface PodRecord {
  facts: PodFacts;
  phase: string;
  terminating: boolean;
  /** A mirror of a static pod: written by a node's kubelet from a local manifest, not through the API. */
  mirror: boolean;
}

/** The plural status field's addresses, else the singular one's (older kubelets set only that). */
function addresses(plural: { ip?: string }[] | undefined, singular: string | undefined): string[] {
  const listed = (plural ?? []).map((entry) => entry.ip ?? "").filter((ip) => ip !== "");
  if (listed.length > 0) return listed;
  return singular ? [singular] : [];
}

export function podFacts(pod: V1Pod): PodRecord {
  return {
    facts: {
      namespace: pod.metadata?.namespace ?? "",
      name: pod.metadata?.name ?? "",
      uid: pod.metadata?.uid ?? "",
      // No defaulting: the apiserver's ServiceAccount admission sets "default" on every pod it
      // admits, so a pod without one (a mirror pod) was not admitted that way and matches nothing.
      serviceAccountName: pod.spec?.serviceAccountName ?? "",
      nodeName: pod.spec?.nodeName ?? "",
      labels: { ...(pod.metadata?.labels ?? {}) },
      annotations: { ...(pod.metadata?.annotations ?? {}) },
      podIPs: addresses(pod.status?.podIPs, pod.status?.podIP),
      hostIPs: addresses(pod.status?.hostIPs, pod.status?.hostIP),
    },
    phase: pod.status?.phase ?? "",
    terminating: pod.metadata?.deletionTimestamp != null,
    mirror: isMirrorPod(pod.metadata),
  };
}

/** Why no credentials are ever issued to this pod, whatever the policies say; undefined if none. */
export function ineligibility(pod: PodRecord): string | undefined {
  if (pod.mirror) return "it is a mirror (static) pod, created by a node rather than through the API";
  if (pod.facts.serviceAccountName === "") return "it has no service account";
  return undefined;
}

export class PodLookup {
  private readonly fast: ApiClient;
  private readonly nsCache = new Map<string, { at: number; ns: NamespaceFacts | undefined }>();
  private readonly nsTtlMs: number;

  private readonly clock: Pick<Clock, "now">;

  /** `clock`: the namespace cache's age. */
  constructor(kc: KubeConfig, opts: { namespaceTtlMs?: number; clock?: Pick<Clock, "now"> } = {}) {
    this.fast = new ApiClient(kubeConfigConnection(kc));
    this.nsTtlMs = opts.namespaceTtlMs ?? 30_000;
    this.clock = opts.clock ?? systemClock;
  }

  /** The pod, or undefined when it does not exist. Other errors propagate. */
  async pod(namespace: string, name: string): Promise<PodRecord | undefined> {
    try {
      return podFacts(
        await this.fast.json<V1Pod>(
          "GET",
          `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`,
        ),
      );
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  async namespace(name: string): Promise<NamespaceFacts | undefined> {
    const hit = this.nsCache.get(name);
    const now = this.clock.now();
    if (hit && now - hit.at < this.nsTtlMs) return hit.ns;
    let ns: NamespaceFacts | undefined;
    try {
      const o = await this.fast.json<{ metadata?: { labels?: Record<string, string> } }>(
        "GET",
        `/api/v1/namespaces/${encodeURIComponent(name)}`,
      );
      ns = { name, labels: { ...(o.metadata?.labels ?? {}) } };
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
    if (this.nsCache.size > 10_000) this.nsCache.clear();
    this.nsCache.set(name, { at: now, ns });
    return ns;
  }

  close(): void {
    this.fast.close();
  }

  /**
   * The namespace's pods, at most `max`, in pages (status loop only): a namespace of any size
   * costs at most `max` pods of memory per round.
   */
  async listPods(namespace: string, max = Infinity): Promise<PodRecord[]> {
    const out: PodRecord[] = [];
    let cont = "";
    do {
      const q = new URLSearchParams({ limit: String(Math.min(500, max - out.length)) });
      if (cont) q.set("continue", cont);
      const res = await this.fast.json<{ items?: V1Pod[]; metadata?: { continue?: string } }>(
        "GET",
        `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods?${q}`,
      );
      for (const p of res.items ?? []) out.push(podFacts(p));
      cont = res.metadata?.continue ?? "";
    } while (cont && out.length < max);
    return out;
  }
}
