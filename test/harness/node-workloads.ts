/**
 * Workloads on the real node (test/harness/realnode.ts) for test/node/ suites: a Job or a
 * Deployment of a workload image, what it printed, its removal; and helm values merged.
 */
import { AppsV1Api, BatchV1Api, CoreV1Api, type V1Pod } from "@kubernetes/client-node";
import { waitFor } from "./process.ts";
import type { RealNode } from "./realnode.ts";

/** The JSON lines of a container's output (a line cut by a log rotation or the container's end is skipped). */
export function jsonLines<T>(text: string): T[] {
  const parsed: T[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      parsed.push(JSON.parse(line) as T);
    } catch {
      // cut short
    }
  }
  return parsed;
}

/** Values objects merged key by key (arrays and scalars of `over` replace those of `base`). */
export function mergeValues(
  base: Record<string, unknown>,
  over: Record<string, unknown>,
): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const current = merged[key];
    const bothObjects = [current, value].every(
      (item) => typeof item === "object" && item !== null && !Array.isArray(item),
    );
    merged[key] = bothObjects
      ? mergeValues(current as Record<string, unknown>, value as Record<string, unknown>)
      : value;
  }
  return merged;
}

/** One workload container: image, command and environment. */
export interface WorkloadSpec {
  namespace: string;
  name: string;
  image: string;
  command: string[];
  env?: Record<string, string>;
  serviceAccountName?: string;
  workingDir?: string;
  /** Extra pod spec fields (volumes) and container fields (volumeMounts). */
  podSpec?: Record<string, unknown>;
  container?: Record<string, unknown>;
}

function podTemplate(spec: WorkloadSpec, restartPolicy: "Never" | "Always"): object {
  return {
    metadata: { labels: { workload: spec.name } },
    spec: {
      serviceAccountName: spec.serviceAccountName ?? "reader",
      restartPolicy,
      terminationGracePeriodSeconds: 0,
      containers: [
        {
          name: "workload",
          image: spec.image,
          imagePullPolicy: "Never",
          command: spec.command,
          workingDir: spec.workingDir,
          env: Object.entries(spec.env ?? {}).map(([name, value]) => ({ name, value })),
          ...spec.container,
        },
      ],
      ...spec.podSpec,
    },
  };
}

/** A Job of one pod that is never retried (backoffLimit 0): its first attempt is the result. */
export function jobObject(spec: WorkloadSpec): object {
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: { name: spec.name, namespace: spec.namespace, labels: { workload: spec.name } },
    spec: { backoffLimit: 0, template: podTemplate(spec, "Never") },
  };
}

/** A Deployment of one replica; its container is expected to keep running once done. */
export function deploymentObject(spec: WorkloadSpec): object {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: spec.name, namespace: spec.namespace, labels: { workload: spec.name } },
    spec: {
      replicas: 1,
      selector: { matchLabels: { workload: spec.name } },
      template: podTemplate(spec, "Always"),
    },
  };
}

export interface WorkloadRun {
  pod: V1Pod;
  /** What the workload container printed (every attempt, oldest first). */
  output: string;
}

/** The one pod labelled `workload=<name>` in the namespace, once `ready(pod)` says so. */
export async function waitForWorkloadPod(
  node: RealNode,
  namespace: string,
  name: string,
  ready: (pod: V1Pod, output: string) => boolean,
  timeoutMs = 240_000,
): Promise<WorkloadRun> {
  const core = node.cluster.kc.makeApiClient(CoreV1Api);
  return waitFor(
    `workload ${namespace}/${name}`,
    async () => {
      const pods = await core.listNamespacedPod({ namespace, labelSelector: `workload=${name}` });
      const pod = pods.items[0];
      if (!pod) return undefined;
      const output = node.containerLogs(namespace, pod.metadata!.name!, "workload");
      return ready(pod, output) ? { pod, output } : undefined;
    },
    { timeoutMs, intervalMs: 500 },
  ).catch(async (err: Error) => {
    throw new Error(`${err.message}\n${await node.describePods(namespace)}`, { cause: err });
  });
}

/** Waits for a Job's pod to finish; its phase is Succeeded or Failed. */
export function jobFinished(node: RealNode, namespace: string, name: string): Promise<WorkloadRun> {
  return waitForWorkloadPod(node, namespace, name, (pod) =>
    ["Succeeded", "Failed"].includes(pod.status?.phase ?? ""),
  );
}

/** Deletes the named Jobs and Deployments of jobObject/deploymentObject and waits until their pods are gone. */
export async function deleteWorkloads(node: RealNode, namespace: string, names: string[]): Promise<void> {
  const batch = node.cluster.kc.makeApiClient(BatchV1Api);
  const apps = node.cluster.kc.makeApiClient(AppsV1Api);
  const core = node.cluster.kc.makeApiClient(CoreV1Api);
  const labelSelector = `workload in (${names.join(",")})`;
  await batch.deleteCollectionNamespacedJob({ namespace, labelSelector, propagationPolicy: "Background" });
  await apps.deleteCollectionNamespacedDeployment({ namespace, labelSelector });
  await core.deleteCollectionNamespacedPod({ namespace, labelSelector, gracePeriodSeconds: 0 });
  await waitFor(
    `the pods of ${names.join(", ")} in ${namespace} gone`,
    async () => (await core.listNamespacedPod({ namespace, labelSelector })).items.length === 0,
    { timeoutMs: 120_000, intervalMs: 500 },
  );
}
