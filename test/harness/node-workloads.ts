/**
 * Helpers for test/node/ suites that run workloads on the real node (test/harness/realnode.ts):
 * install the chart as a user would and wait for it, run a Job or a Deployment of a workload
 * image and read what it printed, and put a stand-in "real IMDS" with node credentials on the
 * node, which pods must never reach.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppsV1Api, BatchV1Api, CoreV1Api, type V1Pod } from "@kubernetes/client-node";
import { applyObjects } from "./apply.ts";
import { FAKE_IMDS_SCRIPT } from "./fake-imds.ts";
import { BROKER_USER, type Moto } from "./moto.ts";
import { NODE } from "./paths.ts";
import { ManagedProcess, waitFor } from "./process.ts";
import type { RealNode } from "./realnode.ts";
import { CHART_DIR, helmBinary } from "../deploy/render.ts";

export const KEYCUTTER_NAMESPACE = "keycutter-system";

export interface Installed {
  /** Wall time of `helm install` until the server and agent were Ready. */
  readyMs: number;
  /** Runs helm against the node's cluster (its own cache/config dirs); throws on failure. */
  helm(args: string[], values?: object): string;
  /** Removes the helm home (the release goes with the node). */
  cleanup(): void;
}

export interface InstallOptions {
  /** Values merged over the ones every install on the node needs (see installKeycutter). */
  values?: Record<string, unknown>;
}

/**
 * What a user of this node brings before `helm install`: the release's namespace with the
 * broker's AWS keys (moto) as the Secret `keycutter-aws`, and returns the values a user sets:
 * image (imported, never pulled), region, moto's STS endpoint, that Secret, the bridge's `cni0` as
 * the pods' interface, the node's address as `networkPolicy.nodeCidrs`. No TLS Secret: the chart's
 * default is self-managed TLS.
 */
export async function userInstallValues(node: RealNode, moto: Moto): Promise<Record<string, unknown>> {
  const broker = await moto.createUser(BROKER_USER, {
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Action: ["sts:*", "iam:GetRole"], Resource: "*" }],
  });
  await applyObjects(node.cluster.kc, [
    { apiVersion: "v1", kind: "Namespace", metadata: { name: KEYCUTTER_NAMESPACE } },
    {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "keycutter-aws", namespace: KEYCUTTER_NAMESPACE },
      stringData: { AWS_ACCESS_KEY_ID: broker.accessKeyId, AWS_SECRET_ACCESS_KEY: broker.secretAccessKey },
    },
  ] as never);
  const [repository, tag] = node.images.keycutter.ref.split(/:(?=[^:]+$)/) as [string, string];
  return {
    image: { repository, tag, pullPolicy: "Never" },
    aws: { region: moto.region, stsEndpoint: moto.endpointFor(node.hostIP) },
    server: { envFrom: [{ secretRef: { name: "keycutter-aws" } }] },
    // The bridge plugin's pods reach the node through cni0: iptables sees the bridge as the
    // in-interface (-i), not the pod's veth (the chart's default veth+ matches no pod here).
    agent: { hook: { podInterfaces: ["cni0"] } },
    // the agents run in the node's network: the server's API port is limited to it
    networkPolicy: { nodeCidrs: [`${node.nodeIP}/32`] },
  };
}

/**
 * `helm install` of deploy/helm/keycutter with userInstallValues (and `opts.values` over them):
 * resolves once the server Deployment and the agent DaemonSet are Ready.
 */
export async function installKeycutter(
  node: RealNode,
  moto: Moto,
  opts: InstallOptions = {},
): Promise<Installed> {
  const cluster = node.cluster;
  const base = await userInstallValues(node, moto);
  const helmDir = mkdtempSync(join(tmpdir(), "kc-node-helm-"));
  const cleanup = (): void => rmSync(helmDir, { recursive: true, force: true });
  const helm = (args: string[], values?: object): string => {
    const result = spawnSync(helmBinary(), [...args, ...(values ? ["--values", "-"] : [])], {
      input: values ? JSON.stringify(values) : undefined,
      encoding: "utf8",
      timeout: 300_000,
      env: {
        ...process.env,
        KUBECONFIG: cluster.kubeconfigPath,
        HELM_CACHE_HOME: join(helmDir, "cache"),
        HELM_CONFIG_HOME: join(helmDir, "config"),
        HELM_DATA_HOME: join(helmDir, "data"),
      },
    });
    if (result.status !== 0) throw new Error(`helm ${args.join(" ")}\n${result.stdout}${result.stderr}`);
    return result.stdout;
  };
  try {
    const started = Date.now();
    helm(
      ["install", "keycutter", CHART_DIR, "--namespace", KEYCUTTER_NAMESPACE],
      mergeValues(base, opts.values ?? {}),
    );
    const apps = cluster.kc.makeApiClient(AppsV1Api);
    await waitFor(
      "the server Deployment and the agent DaemonSet Ready",
      async () => {
        const server = await apps.readNamespacedDeployment({
          name: "keycutter-server",
          namespace: KEYCUTTER_NAMESPACE,
        });
        const agent = await apps.readNamespacedDaemonSet({
          name: "keycutter-agent",
          namespace: KEYCUTTER_NAMESPACE,
        });
        return (
          (server.status?.readyReplicas ?? 0) === server.spec!.replicas &&
          agent.status?.desiredNumberScheduled === 1 &&
          agent.status.numberReady === 1
        );
      },
      { timeoutMs: 300_000, intervalMs: 1000, onTimeout: () => "" },
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}\n${await node.describePods(KEYCUTTER_NAMESPACE)}`, { cause: err });
    });
    return { readyMs: Date.now() - started, helm, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
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

export interface NodeImds {
  process: ManagedProcess;
  stop(): Promise<void>;
}

const IMDS_ADDRESSES = ["169.254.169.254/32", "169.254.170.23/32"];

/**
 * The stand-in "real IMDS" of test/harness/fake-imds.ts in the node's network namespace: it
 * answers 169.254.169.254 and 169.254.170.23 with the NODE's credentials, as a cloud instance's
 * metadata service would. A pod that is not DNATed to the agent reaches it through the node's
 * routing; every test must see that it never does.
 */
export async function startNodeImds(node: RealNode): Promise<NodeImds> {
  for (const address of IMDS_ADDRESSES) {
    const added = await node.execInNode("ip", ["addr", "add", address, "dev", "lo"]);
    if (added.code !== 0) throw new Error(`ip addr add ${address} in the node: ${added.stderr}`);
  }
  // IPv4 only: the node's namespace has no IPv6 pod network; the script's [::] listener is idle
  const proc = new ManagedProcess("node-imds", "nsenter", [
    `--net=/run/netns/${node.netns}`,
    "--",
    NODE,
    "-e",
    FAKE_IMDS_SCRIPT,
    "169.254.169.254",
  ]);
  await proc.waitForLine(/fake imds listening/, 15_000);
  return {
    process: proc,
    async stop() {
      await proc.stop();
      for (const address of IMDS_ADDRESSES)
        await node.execInNode("ip", ["addr", "del", address, "dev", "lo"]);
    },
  };
}
