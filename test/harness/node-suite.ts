/**
 * What every test/node suite starts around its cases and stops after them: the real node
 * (realnode.ts), moto, helm with a home of its own, and the stand-in "real IMDS" with the node's
 * credentials, which no pod may ever reach; keycutter installed with helm as a user would; and
 * the tenants' objects the suites share.
 */
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe } from "node:test";
import { AppsV1Api, CoreV1Api } from "@kubernetes/client-node";
import { applyObjects } from "./apply.ts";
import { FAKE_IMDS_SCRIPT } from "./fake-imds.ts";
import { BROKER_USER, startMoto, type Moto } from "./moto.ts";
import { mergeValues } from "./node-workloads.ts";
import { NODE } from "./paths.ts";
import { ManagedProcess, waitFor } from "./process.ts";
import { startRealNode, type Leftover, type RealNode, type RealNodeOptions } from "./realnode.ts";
import { CHART_DIR, helmBinary } from "../deploy/render.ts";
import {
  BUCKET_A,
  BUCKET_B,
  ROLE_A,
  ROLE_B,
  accessPolicy,
  createTenantAws,
  roleAllowance,
} from "../e2e/fixtures.ts";

/**
 * A test/node suite: skipped unless `npm run test:node` runs it (KEYCUTTER_TEST_NODE=1: its cold
 * setup builds the node's parts and images), an hour at most.
 */
export function describeOnNode(title: string, body: () => void): void {
  const enabled = process.env.KEYCUTTER_TEST_NODE === "1";
  describe(
    title,
    { skip: !enabled && "run by npm run test:node (KEYCUTTER_TEST_NODE=1)", timeout: 3_600_000 },
    body,
  );
}

export const secondsSince = (startMs: number): number => Math.round((Date.now() - startMs) / 1000);

export interface HelmRun {
  /** JSON on helm's stdin (`--values -`). */
  values?: object;
  timeoutMs?: number;
}

/** helm against one node's cluster, with cache, config and data directories of its own. */
export class NodeHelm {
  private readonly home = mkdtempSync(join(tmpdir(), "kc-node-helm-"));
  private readonly kubeconfig: string;

  constructor(kubeconfig: string) {
    this.kubeconfig = kubeconfig;
  }

  /** Runs helm `args`; the result whatever its exit status. */
  spawn(args: string[], opts: HelmRun = {}): SpawnSyncReturns<string> {
    return spawnSync(helmBinary(), opts.values ? [...args, "--values", "-"] : args, {
      input: opts.values ? JSON.stringify(opts.values) : undefined,
      encoding: "utf8",
      timeout: opts.timeoutMs ?? 600_000,
      env: {
        ...process.env,
        KUBECONFIG: this.kubeconfig,
        HELM_CACHE_HOME: join(this.home, "cache"),
        HELM_CONFIG_HOME: join(this.home, "config"),
        HELM_DATA_HOME: join(this.home, "data"),
      },
    });
  }

  /** Runs helm `args`; its stdout, or an error with all it printed. */
  run(args: string[], opts: HelmRun = {}): string {
    const result = this.spawn(args, opts);
    if (result.status !== 0)
      throw new Error(`helm ${args.join(" ")} (${result.status})\n${result.stdout}${result.stderr}`);
    return result.stdout;
  }

  remove(): void {
    rmSync(this.home, { recursive: true, force: true });
  }
}

export interface NodeSuite {
  node: RealNode;
  moto: Moto;
  helm: NodeHelm;
  imds: NodeImds;
  /** Stops everything (once; later calls get the first one's answer): what the node left behind. */
  stop(): Promise<Leftover[]>;
}

/** The node (with `opts`), moto, helm and the stand-in IMDS; says how long the node took (unless quiet). */
export async function startNodeSuite(opts: RealNodeOptions & { quiet?: boolean } = {}): Promise<NodeSuite> {
  const started = Date.now();
  const node = await startRealNode(opts);
  if (!opts.quiet)
    console.log(`# node ${node.name} Ready in ${secondsSince(started)} s, pods in ${node.podSubnet}`);
  let moto: Moto | undefined;
  let imds: NodeImds | undefined;
  const helm = new NodeHelm(node.cluster.kubeconfigPath);
  let stopped: Promise<Leftover[]> | undefined;
  const stop = (): Promise<Leftover[]> =>
    (stopped ??= (async () => {
      await imds?.stop();
      const left = await node.stop();
      await moto?.stop();
      helm.remove();
      return left;
    })());
  try {
    moto = await startMoto();
    imds = await startNodeImds(node);
  } catch (err) {
    await stop();
    throw err;
  }
  return { node, moto, helm, imds, stop };
}

export const KEYCUTTER_NAMESPACE = "keycutter-system";
/** The chart's default startup taint, which a user has the kubelet register the node with. */
export const STARTUP_TAINT = { key: "keycutter.dev/agent-not-ready", effect: "NoSchedule" };

export async function nodeHasStartupTaint(node: RealNode): Promise<boolean> {
  const current = await node.cluster.kc.makeApiClient(CoreV1Api).readNode({ name: node.name });
  return (current.spec?.taints ?? []).some((taint) => taint.key === STARTUP_TAINT.key);
}

/** Resolves once the Ready agent has taken the startup taint off its node. */
export async function waitStartupTaintRemoved(node: RealNode): Promise<void> {
  await waitFor("the agent to remove the startup taint", async () => !(await nodeHasStartupTaint(node)), {
    timeoutMs: 60_000,
    intervalMs: 250,
  });
}

/**
 * What a user of this node brings before `helm install`: the release's namespace with the
 * broker's AWS keys (moto) as the Secret `keycutter-aws`, and returns the values a user sets:
 * image (imported, never pulled), region, moto's STS endpoint, that Secret, the bridge's `cni0` as
 * the pods' interface, the node's address as `networkPolicy.nodeCidrs`. No TLS Secret: the chart's
 * default is self-managed TLS.
 */
export async function userInstallValues(
  suite: Pick<NodeSuite, "node" | "moto">,
): Promise<Record<string, unknown>> {
  const { node, moto } = suite;
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

/** Resolves once the server Deployment has all its replicas Ready and the agent DaemonSet its one. */
export async function waitKeycutterReady(node: RealNode, timeoutMs = 300_000): Promise<void> {
  const apps = node.cluster.kc.makeApiClient(AppsV1Api);
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
    { timeoutMs, intervalMs: 1000, onTimeout: () => "" },
  ).catch(async (err: Error) => {
    throw new Error(`${err.message}\n${await node.describePods(KEYCUTTER_NAMESPACE)}`, { cause: err });
  });
}

export interface Installed {
  /** Wall time of `helm install` until the server and agent were Ready. */
  readyMs: number;
  /** The values it was installed with (for upgrades that change one of them). */
  values: Record<string, unknown>;
}

/**
 * `helm install` of deploy/helm/keycutter with userInstallValues (and `over` merged over them),
 * once the server Deployment and the agent DaemonSet are Ready.
 */
export async function installKeycutter(
  suite: NodeSuite,
  over: Record<string, unknown> = {},
): Promise<Installed> {
  const values = mergeValues(await userInstallValues(suite), over);
  const started = Date.now();
  suite.helm.run(["install", "keycutter", CHART_DIR, "--namespace", KEYCUTTER_NAMESPACE], { values });
  await waitKeycutterReady(suite.node);
  return { readyMs: Date.now() - started, values };
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

export const TENANTS = ["tenant-a", "tenant-b"] as const;
export type Tenant = (typeof TENANTS)[number];

/** Each namespace, with the service accounts named (pods run as `reader` unless they say). */
export function tenantNamespaces(namespaces: readonly string[], serviceAccounts = ["reader"]): object[] {
  return namespaces.flatMap((namespace) => [
    { apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } },
    ...serviceAccounts.map((name) => ({
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name, namespace },
    })),
  ]);
}

/**
 * The platform's RoleAllowance over tenant-* and each tenant's AccessPolicy: `reader` in
 * tenant-a gets tenant-a-reader (reads tenant-a-data), in tenant-b tenant-b-reader.
 */
export function tenantPolicies(): object[] {
  return [
    roleAllowance(),
    accessPolicy("tenant-a", "readers", ROLE_A, BUCKET_A),
    accessPolicy("tenant-b", "readers", ROLE_B, BUCKET_B),
  ];
}

/**
 * The tenants as the suites use them: their buckets and roles in moto (createTenantAws), the
 * namespaces (default the two tenants') with their service accounts, and tenantPolicies().
 */
export async function setUpTenants(
  suite: Pick<NodeSuite, "node" | "moto">,
  opts: { namespaces?: readonly string[]; serviceAccounts?: string[] } = {},
): Promise<void> {
  await createTenantAws(suite);
  await applyObjects(suite.node.cluster.kc, [
    ...tenantNamespaces(opts.namespaces ?? TENANTS, opts.serviceAccounts),
    ...tenantPolicies(),
  ] as never);
}

/**
 * The node with keycutter installed and the tenants set up (setUpTenants with `opts`), and moto
 * checking every request's signature and the caller's policies from then on: the story both the
 * tenants suite and `demo --node` tell.
 */
export async function startNodeWithTenants(
  opts: { quiet?: boolean; namespaces?: readonly string[]; serviceAccounts?: string[] } = {},
): Promise<{ suite: NodeSuite; installed: Installed }> {
  const suite = await startNodeSuite({ quiet: opts.quiet });
  try {
    const installed = await installKeycutter(suite);
    await setUpTenants(suite, opts);
    await suite.moto.enableAuth();
    return { suite, installed };
  } catch (err) {
    await suite.stop();
    throw err;
  }
}
