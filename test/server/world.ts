// A shared test world for the server tests: real apiserver with the CRDs and the server's RBAC,
// real moto (auth enforced) with two tenant roles and buckets, namespaces, nodes, agent pods and
// tenant pods, and helpers to call the server as an agent.

import { createHash } from "node:crypto";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { readFileSync, rmSync } from "node:fs";
import { CustomObjectsApi, KubeConfig } from "@kubernetes/client-node";
import type { AssumeRoleCommandInput } from "@aws-sdk/client-sts";
import {
  defaultTrustPolicy,
  KEYCUTTER_MAIN,
  MOTO_ACCOUNT_ID,
  waitFor,
  type Cluster,
  type Kubelet,
  type Moto,
} from "../harness/index.ts";
import { makeServingCert, type TestPki } from "../harness/tls.ts";
import {
  agentOnNode,
  createServerUser,
  installKeycutterApi,
  serverKubeconfig,
  startBaseWorld,
  SYSTEM_NS,
} from "../harness/world.ts";
import { createLogger } from "../../src/common/logger.ts";
import { startServer, type RunningServer, type ServerConfig } from "../../src/server/index.ts";
import { SERVER_DEFAULTS } from "../../src/server/config.ts";
import type { AuditRecord } from "../../src/server/audit.ts";
import type { AccessPolicy, Condition, RoleAllowance } from "../../src/policy/types.ts";

export { SYSTEM_NS } from "../harness/world.ts";
export const ACCOUNT = MOTO_ACCOUNT_ID;
export const roleArn = (name: string) => `arn:aws:iam::${ACCOUNT}:role/${name}`;

export interface HttpResult {
  status: number;
  body: Record<string, unknown>;
  raw: string;
}

const agents = new Map<string, HttpsAgent>();

/** A keep-alive agent per CA content, as an agent process would hold (one TLS context, reused connections). */
function agentFor(caFile: string): HttpsAgent {
  const ca = readFileSync(caFile);
  const key = createHash("sha256").update(ca).digest("hex");
  let a = agents.get(key);
  if (!a) {
    a = new HttpsAgent({ keepAlive: true, ca, maxSockets: 64 });
    agents.set(key, a);
  }
  return a;
}

export function post(
  port: number,
  caFile: string,
  opts: {
    token?: string;
    body?: unknown;
    raw?: string | Buffer;
    contentType?: string;
    path?: string;
    method?: string;
  },
): Promise<HttpResult> {
  const payload = opts.raw ?? (opts.body === undefined ? "" : JSON.stringify(opts.body));
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = {
      "content-type": opts.contentType ?? "application/json",
    };
    if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
    headers["content-length"] = Buffer.byteLength(payload);
    const req = httpsRequest(
      {
        host: "127.0.0.1",
        port,
        path: opts.path ?? "/v1/credentials",
        method: opts.method ?? "POST",
        headers,
        agent: agentFor(caFile),
        servername: "localhost",
      },
      (res) => {
        let raw = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (raw += c));
        res.on("end", () => {
          let body: Record<string, unknown> = {};
          try {
            body = JSON.parse(raw) as Record<string, unknown>;
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, body, raw });
        });
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

export interface World {
  cluster: Cluster;
  kubelet: Kubelet;
  moto: Moto;
  cert: TestPki;
  dir: string;
  serverKubeconfig: string;
  serverCreds: { accessKeyId: string; secretAccessKey: string };
  /** An IAM reader (for explain). */
  auditorCreds: { accessKeyId: string; secretAccessKey: string };
  custom: CustomObjectsApi;
  agentToken: Record<string, string>;
  pods: Record<string, { namespace: string; name: string; uid: string }>;
  stop(): Promise<void>;
}

export async function createPolicy(w: World, p: AccessPolicy): Promise<void> {
  await w.custom.createNamespacedCustomObject({
    group: "keycutter.dev",
    version: "v1alpha1",
    namespace: p.metadata.namespace ?? "",
    plural: "accesspolicies",
    body: { apiVersion: "keycutter.dev/v1alpha1", kind: "AccessPolicy", ...p },
  });
}

export async function createAllowance(w: World, a: RoleAllowance): Promise<void> {
  await w.custom.createClusterCustomObject({
    group: "keycutter.dev",
    version: "v1alpha1",
    plural: "roleallowances",
    body: { apiVersion: "keycutter.dev/v1alpha1", kind: "RoleAllowance", ...a },
  });
}

/** Waits (30 s at most) until the AccessPolicy's Ready condition, as the leader writes it, is one `wanted` takes. */
export function readyConditionOf(
  w: Pick<World, "custom">,
  namespace: string,
  name: string,
  what: string,
  wanted: (ready: Condition) => boolean,
): Promise<Condition> {
  return waitFor(
    what,
    async () => {
      const policy = (await w.custom.getNamespacedCustomObject({
        group: "keycutter.dev",
        version: "v1alpha1",
        namespace,
        plural: "accesspolicies",
        name,
      })) as AccessPolicy;
      const ready = policy.status?.conditions?.find((c) => c.type === "Ready");
      return ready && wanted(ready) ? ready : undefined;
    },
    { timeoutMs: 30_000 },
  );
}

/** `keycutter explain` (for spawnSync with NODE) with `args`, this world's kubeconfig and its server's settings (no chart ConfigMap here). */
export function explainArgs(w: Pick<World, "cluster">, args: string[]): string[] {
  return [
    KEYCUTTER_MAIN,
    "explain",
    ...args,
    "--kubeconfig",
    w.cluster.kubeconfigPath,
    "--cluster-name",
    "test-cluster",
    "--max-duration",
    "3600",
  ];
}

export function tenantPolicy(
  ns: string,
  name: string,
  sa: string,
  role: string,
  bucket: string,
  extra: Partial<AccessPolicy["spec"]> = {},
): AccessPolicy {
  return {
    metadata: { name, namespace: ns },
    spec: {
      podSelector: { serviceAccountName: sa },
      roleArn: roleArn(role),
      sessionPolicy: {
        Version: "2012-10-17",
        Statement: [
          {
            Effect: "Allow",
            Action: ["s3:GetObject"],
            Resource: `arn:aws:s3:::${bucket}/\${namespace}/\${pod.labels['team']}/*`,
          },
          {
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: `arn:aws:s3:::${bucket}`,
            Condition: { StringLike: { "s3:prefix": "${namespace}/${pod.labels['team']}/*" } },
          },
        ],
      },
      sessionTags: { team: "${pod.labels['team']}" },
      durationSeconds: 3600,
      ...extra,
    },
  };
}

function bucketPolicy(bucket: string): object {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Effect: "Allow",
        Action: ["s3:GetObject", "s3:ListBucket"],
        Resource: [`arn:aws:s3:::${bucket}`, `arn:aws:s3:::${bucket}/*`],
      },
    ],
  };
}

export async function createWorld(): Promise<World> {
  const base = await startBaseWorld({ prefix: "kc-server-test", moto: true });
  const { cluster, kubelet, dir, stop } = base;
  const moto = base.moto!;
  try {
    await installKeycutterApi(base);
    for (const ns of ["tenant-a", "tenant-b", "amb", "nopol"]) await kubelet.ensureNamespace(ns);
    for (const [ns, sa] of [
      ["tenant-a", "app"],
      ["tenant-a", "thief"],
      ["tenant-a", "big"],
      ["tenant-a", "hostile"],
      ["tenant-b", "app"],
      ["amb", "app"],
      ["nopol", "app"],
    ] as const) {
      await kubelet.createServiceAccount(ns, sa);
    }
    const agentToken: Record<string, string> = {};
    for (const [node, ip] of [
      ["node-1", "10.99.0.1"],
      ["node-2", "10.99.0.2"],
    ] as const)
      agentToken[node] = await (await agentOnNode(base, node, ip)).token();
    const pods: World["pods"] = {};
    const mk = async (
      key: string,
      ns: string,
      name: string,
      sa: string,
      node: string,
      labels: Record<string, string> = { team: "blue" },
      annotations?: Record<string, string>,
    ) => {
      const p = await kubelet.createPod({
        namespace: ns,
        name,
        nodeName: node,
        serviceAccountName: sa,
        labels,
        ...(annotations ? { annotations } : {}),
        podIP: `10.244.${node === "node-1" ? 1 : 2}.${Object.keys(pods).length + 10}`,
      });
      pods[key] = { namespace: ns, name, uid: p.metadata!.uid! };
    };
    await mk("a1", "tenant-a", "web-1", "app", "node-1");
    await mk("a2", "tenant-a", "web-2", "app", "node-1");
    await mk("a3", "tenant-a", "web-3", "app", "node-1");
    await mk("a4", "tenant-a", "web-4", "app", "node-1");
    await mk("aTerm", "tenant-a", "web-term", "app", "node-1");
    await mk("aDel", "tenant-a", "web-del", "app", "node-1");
    await mk("b1", "tenant-b", "web-1", "app", "node-1");
    await mk("thief", "tenant-a", "thief-1", "thief", "node-1");
    await mk("big", "tenant-a", "big-1", "big", "node-1");
    await mk(
      "hostile",
      "tenant-a",
      "hostile-1",
      "hostile",
      "node-1",
      { team: "blue" },
      { evil: 'x"},{"Effect":"Allow","Action":"*","Resource":"*' },
    );
    await mk("amb", "amb", "x-1", "app", "node-1");
    await mk("nopol", "nopol", "x-1", "app", "node-1");
    await mk("n2", "tenant-a", "web-on-2", "app", "node-2");

    // AWS side: roles per tenant trusting the server's own IAM user, buckets; then auth on.
    const trust = defaultTrustPolicy(ACCOUNT) as { Statement: object[] };
    await moto.createRole("tenant-a", bucketPolicy("bucket-a"), trust);
    await moto.createRole("tenant-b", bucketPolicy("bucket-b"), trust);
    // A role whose trust policy names someone else: STS refuses every AssumeRole into it, with a
    // message naming the server's own user.
    await moto.createRole("tenant-locked", bucketPolicy("bucket-a"), {
      ...trust,
      Statement: trust.Statement.map((st) => ({
        ...st,
        Principal: { AWS: `arn:aws:iam::${ACCOUNT}:user/somebody-else` },
      })),
    });
    const serverCreds = await createServerUser(moto);
    const auditorCreds = await moto.createUser("auditor", {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: ["iam:Get*", "iam:List*"], Resource: "*" }],
    });
    await moto.createBucket("bucket-a", {
      "tenant-a/blue/data.txt": "A-blue",
      "tenant-a/red/data.txt": "A-red",
    });
    await moto.createBucket("bucket-b", { "tenant-b/blue/data.txt": "B-blue" });
    await moto.enableAuth();

    const custom = cluster.kc.makeApiClient(CustomObjectsApi);
    const w: World = {
      cluster,
      kubelet,
      moto,
      cert: await makeServingCert(["127.0.0.1"]),
      dir,
      serverKubeconfig: await serverKubeconfig(base),
      serverCreds,
      auditorCreds,
      custom,
      agentToken,
      pods,
      stop,
    };
    base.defer(() => rmSync(w.cert.dir, { recursive: true, force: true }));

    await createAllowance(w, {
      metadata: { name: "tenant-a" },
      spec: {
        namespaces: ["tenant-a"],
        roleArns: [roleArn("tenant-a")],
        maxDurationSeconds: 3600,
        sessionTagKeys: ["team"],
        denyStatements: [{ Effect: "Deny", Action: "s3:DeleteObject", Resource: "*" }],
      },
    });
    await createAllowance(w, {
      metadata: { name: "tenant-b" },
      spec: { namespaces: ["tenant-b"], roleArns: [roleArn("tenant-b")], sessionTagKeys: ["team"] },
    });
    await createAllowance(w, {
      metadata: { name: "amb" },
      spec: {
        namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "amb" } },
        roleArns: [roleArn("tenant-*")],
        sessionTagKeys: ["team"],
      },
    });
    await createPolicy(w, tenantPolicy("tenant-a", "a", "app", "tenant-a", "bucket-a"));
    await createPolicy(w, tenantPolicy("tenant-b", "b", "app", "tenant-b", "bucket-b"));
    await createPolicy(w, tenantPolicy("amb", "one", "app", "tenant-a", "bucket-a"));
    await createPolicy(w, tenantPolicy("amb", "two", "app", "tenant-a", "bucket-a"));
    await createPolicy(w, tenantPolicy("tenant-a", "steal", "thief", "tenant-b", "bucket-b"));
    const bigStatements = Array.from({ length: 30 }, (_, i) => ({
      Effect: "Allow",
      Action: "s3:GetObject",
      Resource: `arn:aws:s3:::bucket-a/\${namespace}/\${podName}/part-${i}/*`,
    }));
    await createPolicy(
      w,
      tenantPolicy("tenant-a", "big", "big", "tenant-a", "bucket-a", {
        sessionPolicy: { Version: "2012-10-17", Statement: bigStatements },
      }),
    );
    await createPolicy(
      w,
      tenantPolicy("tenant-a", "hostile", "hostile", "tenant-a", "bucket-a", {
        sessionPolicy: {
          Statement: [
            {
              Effect: "Allow",
              Action: "s3:GetObject",
              Resource: "arn:aws:s3:::bucket-a/${pod.annotations['evil']}",
            },
          ],
        },
      }),
    );
    return w;
  } catch (e) {
    await stop();
    throw e;
  }
}

export interface TestServer {
  running: RunningServer;
  audit: AuditRecord[];
  stsCalls: AssumeRoleCommandInput[];
}

export async function startTestServer(w: World, over: Partial<ServerConfig> = {}): Promise<TestServer> {
  const audit: AuditRecord[] = [];
  const stsCalls: AssumeRoleCommandInput[] = [];
  const kc = new KubeConfig();
  kc.loadFromFile(w.serverKubeconfig);
  const running = await startServer({
    ...SERVER_DEFAULTS,
    listenHost: "127.0.0.1",
    listenPort: 0,
    opsHost: "127.0.0.1",
    opsPort: 0,
    tlsCertFile: w.cert.certFile,
    tlsKeyFile: w.cert.keyFile,
    kubeconfig: w.serverKubeconfig,
    agentServiceAccounts: [`${SYSTEM_NS}/keycutter-agent`],
    clusterName: "test-cluster",
    region: w.moto.region,
    stsEndpoint: w.moto.endpoint,
    awsCredentials: w.serverCreds,
    leaseNamespace: SYSTEM_NS,
    identity: `replica-${Math.random().toString(36).slice(2, 8)}`,
    statusIntervalMs: 1000,
    audit: (r) => audit.push(r),
    onStsCall: (i) => stsCalls.push(i),
    log: createLogger("server-test", { level: process.env.KEYCUTTER_TEST_LOG ?? "warn" }),
    ...over,
  });
  return { running, audit, stsCalls };
}
