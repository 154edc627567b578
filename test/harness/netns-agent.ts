// The node agent as the network-namespace tests run it (test/agent/agent-netns, sdk-timing,
// test/cli/doctor): a real `keycutter agent` process in the node's namespace, with the flags every
// one of them gives it, started and waited for until /readyz says so; its service account's RBAC
// and its projected token bound to its DaemonSet pod; the hook removed afterwards; and the
// environment the unmodified SDKs run with inside a pod's namespace.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { RbacAuthorizationV1Api, type V1PolicyRule } from "@kubernetes/client-node";
import { startCluster, type Cluster } from "./cluster.ts";
import { Kubelet } from "./kubelet.ts";
import { PodNetwork, type NodeNet, type PodNet } from "./netns.ts";
import type { ManagedProcess } from "./process.ts";
import { waitFor } from "./process.ts";
import { KEYCUTTER_MAIN, NODE } from "./paths.ts";

export const AGENT_NS = "keycutter-system";
export const AGENT_SA = "keycutter-agent";

/**
 * The real apiserver and one node, node1, in its own network namespace and registered, with its
 * libcni result cache (which the harness writes as the container runtime would) under `dir`.
 */
export async function startAgentNode(dir: string) {
  const cluster = await startCluster();
  const kubelet = new Kubelet(cluster.kc);
  const net = await PodNetwork.create();
  const cniStateDir = join(dir, "cni", "results");
  const node = await net.addNode("node1", { cniStateDir });
  await kubelet.createNode("node1", node.ip, node.podCIDR);
  return { cluster, kubelet, net, node, cniStateDir };
}

/** The listeners, the server, the kube access and the hook: what every netns test's agent is given. */
export function agentFlags(o: {
  net: PodNetwork;
  node: NodeNet;
  /** The credential service's port on the gateway, and the CA its certificate is checked with. */
  server: { port: number };
  pki: { caFile: string };
  tokenFile: string;
  kubeconfig: string;
  chain: string;
}): string[] {
  return [
    "--node-name=node1",
    `--server-url=https://${o.net.gatewayIP}:${o.server.port}`,
    `--server-ca-file=${o.pki.caFile}`,
    `--token-file=${o.tokenFile}`,
    `--kubeconfig=${o.kubeconfig}`,
    "--imds-listen=0.0.0.0:8180",
    "--container-listen=0.0.0.0:8181",
    "--ops-listen=0.0.0.0:8182",
    "--hook-pod-interface=cbr0",
    `--hook-agent-ip=${o.node.ip}`,
    `--hook-chain=${o.chain}`,
  ];
}

/** Starts `keycutter agent` in the node's namespace; resolves once it listens (its log otherwise). */
export async function spawnAgent(
  net: PodNetwork,
  node: NodeNet,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<ManagedProcess> {
  const agent = net.spawn(node.netns, NODE, [KEYCUTTER_MAIN, "agent", ...args], { env, name: "agent" });
  await agent.waitForLine(/agent listening/, 30_000).catch((e: unknown) => {
    throw new Error(`agent did not start: ${(e as Error).message}\n${agent.logs()}`);
  });
  return agent;
}

/** Waits for the agent's /readyz on the node's ops port to answer 200. */
export async function agentReady(node: NodeNet, what = "agent ready"): Promise<void> {
  await waitFor(what, async () => {
    const r = await fetch(`http://${node.ip}:8182/readyz`).catch(() => undefined);
    return r?.status === 200;
  });
}

/**
 * The agent's identity as the chart gives it: its service account with `rules` (a ClusterRole
 * `roleName` bound to it, RBAC on), and a token bound to its hostNetwork pod on node1, for the
 * apiserver and the server, written to `dir`/agent.token.
 */
export async function agentIdentity(
  cluster: Cluster,
  kubelet: Kubelet,
  node: NodeNet,
  o: { roleName: string; rules: V1PolicyRule[]; dir: string },
): Promise<{ token: string; tokenFile: string }> {
  await kubelet.createServiceAccount(AGENT_NS, AGENT_SA);
  const rbac = cluster.kc.makeApiClient(RbacAuthorizationV1Api);
  await rbac.createClusterRole({ body: { metadata: { name: o.roleName }, rules: o.rules } });
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: o.roleName },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: o.roleName },
      subjects: [{ kind: "ServiceAccount", name: AGENT_SA, namespace: AGENT_NS }],
    },
  });
  // As in the DaemonSet: the token is bound to the agent's own (hostNetwork) pod, so TokenReview
  // reports the node name; it serves both the apiserver and the service.
  const agentPod = await kubelet.createPod({
    namespace: AGENT_NS,
    name: "keycutter-agent-node1",
    nodeName: "node1",
    serviceAccountName: AGENT_SA,
    hostNetwork: true,
    podIP: node.ip,
    hostIP: node.ip,
  });
  const token = await kubelet.requestToken(AGENT_NS, AGENT_SA, {
    podName: "keycutter-agent-node1",
    podUID: agentPod.metadata!.uid!,
    audiences: [cluster.issuer, "keycutter"],
  });
  const tokenFile = join(o.dir, "agent.token");
  writeFileSync(tokenFile, token);
  return { token, tokenFile };
}

/** `keycutter hook <command>` on the node, for the hook `chain` (init and check: on cbr0, DNAT to the node's IP). */
export function hookCommand(
  net: PodNetwork,
  node: NodeNet,
  chain: string,
  command: "init" | "check" | "uninstall",
  extra: string[] = [],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const target = command === "uninstall" ? [] : ["--hook-pod-interface=cbr0", `--hook-agent-ip=${node.ip}`];
  return net.exec(node.netns, NODE, [
    KEYCUTTER_MAIN,
    "hook",
    command,
    `--hook-chain=${chain}`,
    ...target,
    ...extra,
  ]);
}

/** Removes the hook `chain` from the node (after a test; errors ignored). */
export async function removeHook(net: PodNetwork | undefined, node: NodeNet, chain: string): Promise<void> {
  if (net) await hookCommand(net, node, chain, "uninstall").catch(() => undefined);
}

/** What an SDK in a pod starts with: no config or credentials files, one quick IMDS attempt. */
export function sdkEnv(home: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    AWS_CONFIG_FILE: join(home, "no-config"),
    AWS_SHARED_CREDENTIALS_FILE: join(home, "no-credentials"),
    AWS_METADATA_SERVICE_TIMEOUT: "3",
    AWS_METADATA_SERVICE_NUM_ATTEMPTS: "1",
    ...extra,
  };
}

export interface TokenedPod {
  net: PodNet;
  uid: string;
  /** The pod's projected token for the container-credentials path. */
  tokenFile: string;
}

/**
 * A pod as a node brings it up: bound to node1 (Pending), its sandbox's network set up with the
 * runtime's CNI ADD recorded, then (unless `withIp` is false) the kubelet's status update with
 * the IP; its service account `app`'s token for the agent's pod audience in `dir`.
 */
export async function addTokenedPod(
  kubelet: Kubelet,
  net: PodNetwork,
  node: NodeNet,
  o: {
    dir: string;
    namespace: string;
    name: string;
    labels?: Record<string, string>;
    ip?: string;
    withIp?: boolean;
  },
): Promise<TokenedPod> {
  const { namespace, name } = o;
  const bound = await kubelet.createPod({
    namespace,
    name,
    nodeName: "node1",
    serviceAccountName: "app",
    labels: o.labels,
  });
  const uid = bound.metadata!.uid!;
  const podNet = await net.addPod("node1", name, o.ip, { namespace, name, uid });
  if (o.withIp !== false) await kubelet.setPodIP(namespace, name, podNet.ip, node.ip);
  const tokenFile = join(o.dir, `${name}.token`);
  writeFileSync(
    tokenFile,
    await kubelet.requestToken(namespace, "app", {
      podName: name,
      podUID: uid,
      audiences: ["keycutter-pod"],
    }),
  );
  return { net: podNet, uid, tokenFile };
}
