// What every keycutter test world is built from, written once: the server tests' world
// (test/server/world.ts), the end-to-end System (test/e2e/system.ts) and the benchmarks'
// environment (bench/lib/env.ts). A real cluster (and moto, Redis when asked) started together,
// a scratch directory, clean-ups run last first; the keycutter API (CRDs, the system namespace, the
// server's RBAC); the server's IAM user and kubeconfig; an agent's node, pod and bound tokens.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KubernetesObject, V1Pod } from "@kubernetes/client-node";
import { applyObjects } from "./apply.ts";
import { startCluster, type Cluster } from "./cluster.ts";
import { applyServerRbac, installCrds } from "./keycutter-server.ts";
import { Kubelet } from "./kubelet.ts";
import { BROKER_USER, startMoto, type Moto, type StaticCredentials } from "./moto.ts";
import { startRedis, type Redis } from "./redis.ts";

export const SYSTEM_NS = "keycutter-system";
export const AGENT_SA = "keycutter-agent";
export const SERVER_SA = "keycutter-server";
export interface BaseWorld {
  cluster: Cluster;
  kubelet: Kubelet;
  moto: Moto | undefined;
  redis: Redis | undefined;
  /** Scratch directory, removed by stop(). */
  dir: string;
  /** Run `fn` at stop(), after everything registered later. */
  defer(fn: () => Promise<unknown> | unknown): void;
  /** Runs the clean-ups, then stops the parts; once, however often called. */
  stop(): Promise<void>;
}

export interface BaseWorldOptions {
  /** Prefix of the scratch directory's name. */
  prefix: string;
  moto?: boolean;
  redis?: boolean;
  /** A clean-up's error (the world goes on stopping the rest). */
  onCleanupError?: (e: unknown) => void;
}

/** Starts the parts at once; if one fails, the others are stopped before the error propagates. */
export async function startBaseWorld(opts: BaseWorldOptions): Promise<BaseWorld> {
  const dir = mkdtempSync(join(tmpdir(), `${opts.prefix}-`));
  const started = await Promise.allSettled([
    startCluster(),
    opts.moto ? startMoto() : Promise.resolve(undefined),
    opts.redis ? startRedis() : Promise.resolve(undefined),
  ]);
  const parts = started.map((s) => (s.status === "fulfilled" ? s.value : undefined));
  const [cluster, moto, redis] = parts as [Cluster | undefined, Moto | undefined, Redis | undefined];
  const stopParts = async () => {
    await Promise.all([cluster?.stop(), moto?.stop(), redis?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  };
  const failed = started.find((s) => s.status === "rejected");
  if (failed || !cluster) {
    await stopParts();
    throw (failed as PromiseRejectedResult | undefined)?.reason ?? new Error("no cluster");
  }
  const cleanups: Array<() => Promise<unknown> | unknown> = [];
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      for (const fn of cleanups.reverse()) {
        try {
          await fn();
        } catch (e) {
          opts.onCleanupError?.(e);
        }
      }
      await stopParts();
    })());
  return {
    cluster,
    kubelet: new Kubelet(cluster.kc),
    moto,
    redis,
    dir,
    defer: (fn) => cleanups.push(fn),
    stop,
  };
}

/**
 * The keycutter API in the cluster: the CRDs, the system namespace and the server's RBAC, either
 * the chart's rendered objects (`rbacObjects`) or deploy/rbac bound to SERVER_SA.
 */
export async function installKeycutterApi(
  world: Pick<BaseWorld, "cluster" | "kubelet">,
  rbacObjects?: KubernetesObject[],
): Promise<void> {
  await installCrds(world.cluster.kc);
  await world.kubelet.ensureNamespace(SYSTEM_NS);
  if (rbacObjects) {
    await applyObjects(world.cluster.kc, rbacObjects);
    return;
  }
  await world.kubelet.createServiceAccount(SYSTEM_NS, SERVER_SA);
  await world.kubelet.createServiceAccount(SYSTEM_NS, AGENT_SA);
  await applyServerRbac(world.cluster.kc, SYSTEM_NS, SERVER_SA);
}

/**
 * The server's own IAM user (BROKER_USER, whom defaultTrustPolicy trusts): AssumeRole with tags
 * and source identity, and with `readIam` the role reads `keycutter explain` simulates with.
 */
export function createServerUser(moto: Moto, opts: { readIam?: boolean } = {}): Promise<StaticCredentials> {
  const statements: object[] = [
    {
      Effect: "Allow",
      Action: ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
      Resource: "*",
    },
  ];
  if (opts.readIam)
    statements.push({
      Effect: "Allow",
      Action: [
        "iam:GetRole",
        "iam:GetRolePolicy",
        "iam:ListRolePolicies",
        "iam:ListAttachedRolePolicies",
        "iam:GetPolicy",
        "iam:GetPolicyVersion",
      ],
      Resource: "*",
    });
  return moto.createUser(BROKER_USER, { Version: "2012-10-17", Statement: statements });
}

/** A kubeconfig file acting as SERVER_SA (so the server runs under exactly its RBAC). */
export async function serverKubeconfig(
  world: Pick<BaseWorld, "cluster" | "kubelet">,
  host = "127.0.0.1",
): Promise<string> {
  const token = await world.kubelet.requestToken(SYSTEM_NS, SERVER_SA, {
    audiences: [world.cluster.issuer],
    expirationSeconds: 86400,
  });
  return world.cluster.kubeconfigFor(host, token);
}

/** The audience of the agents' tokens for the server (the chart's and the server's default). */
export const AGENT_AUDIENCE = "keycutter";

export interface AgentIdentity {
  /** The agent's DaemonSet pod on its node (hostNetwork, the node's IP). */
  pod: V1Pod;
  /** A token of AGENT_SA bound to that pod, for `audiences` (default: the server's). */
  token(audiences?: string[], expirationSeconds?: number): Promise<string>;
  /** Writes a server token to `file` (0600), as the kubelet projects it. */
  writeToken(file: string): Promise<string>;
}

/**
 * A node and its agent's identity, as a DaemonSet pod would have it: the Node with `ip`, the
 * agent's hostNetwork pod bound to it, and tokens bound to that pod (which give the server the
 * agent's node).
 */
export async function agentOnNode(
  world: Pick<BaseWorld, "kubelet">,
  node: string,
  ip: string,
  opts: { podCIDR?: string; labels?: Record<string, string> } = {},
): Promise<AgentIdentity> {
  await world.kubelet.createNode(node, ip, opts.podCIDR);
  const pod = await world.kubelet.createPod({
    namespace: SYSTEM_NS,
    name: `keycutter-agent-${node}`,
    nodeName: node,
    serviceAccountName: AGENT_SA,
    hostNetwork: true,
    podIP: ip,
    hostIP: ip,
    ...(opts.labels ? { labels: opts.labels } : {}),
  });
  const token = (audiences = [AGENT_AUDIENCE], expirationSeconds = 86400) =>
    world.kubelet.requestToken(SYSTEM_NS, AGENT_SA, {
      podName: pod.metadata!.name!,
      podUID: pod.metadata!.uid!,
      audiences,
      expirationSeconds,
    });
  return {
    pod,
    token,
    async writeToken(file) {
      writeFileSync(file, await token(), { mode: 0o600 });
      return file;
    },
  };
}
