// `keycutter doctor` against real parts: a node network namespace where a real agent installed
// its iptables hook (then removed, then put in the other backend's tables), the real keycutter
// server serving a certificate that expires within two days (test/harness/tls.ts), and the real
// apiserver holding the chart's published settings, its TLS Secret and policies whose status
// says they are not Ready.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppsV1Api, CoreV1Api, CustomObjectsApi, type KubernetesObject } from "@kubernetes/client-node";
import {
  applyObjects,
  freePort,
  Kubelet,
  KEYCUTTER_MAIN,
  makeServingCert,
  ManagedProcess,
  NODE,
  PodNetwork,
  startCluster,
  waitFor,
  type Cluster,
  type NodeNet,
  type TestPki,
} from "../harness/index.ts";
import { installCrds } from "../harness/keycutter-server.ts";
import { agentFlags, agentReady, hookCommand, spawnAgent } from "../harness/netns-agent.ts";
import { createAccessPolicy, createRoleAllowance } from "../harness/policies.ts";
import { renderChart } from "../deploy/render.ts";

const SYSTEM_NS = "keycutter-system";
const CHAIN = "KCDOC";

let cluster: Cluster;
let kubelet: Kubelet;
let net: PodNetwork;
let node: NodeNet;
let pki: TestPki;
let tmp: string;
let server: ManagedProcess | undefined;
let agent: ManagedProcess | undefined;
let apiPort: number;
let opsPort: number;

interface Check {
  check: string;
  status: "ok" | "warn" | "fail" | "skip";
  message: string;
  hint?: string;
}
interface Doctor {
  code: number;
  checks: Check[];
  stdout: string;
  stderr: string;
}

function parse(code: number, stdout: string, stderr: string): Doctor {
  let checks: Check[] = [];
  try {
    checks = (JSON.parse(stdout) as { checks: Check[] }).checks;
  } catch {
    assert.fail(`doctor printed no JSON (exit ${code}):\n${stdout}\n${stderr}`);
  }
  return { code, checks, stdout, stderr };
}

/** doctor on the node, as root in its network namespace, looking at the node only. */
async function doctorOnNode(extra: string[] = []): Promise<Doctor> {
  const r = await net.exec(node.netns, NODE, [
    KEYCUTTER_MAIN,
    "doctor",
    "--no-cluster",
    `--hook-agent-ip=${node.ip}`,
    `--hook-chain=${CHAIN}`,
    "--hook-pod-interface=cbr0",
    `--server-url=https://${net.gatewayIP}:${apiPort}`,
    `--server-ca-file=${pki.caFile}`,
    `--server-ops-url=http://${net.gatewayIP}:${opsPort}`,
    "-o",
    "json",
    ...extra,
  ]);
  return parse(r.code, r.stdout, r.stderr);
}

const only = (d: Doctor, check: string): Check[] => d.checks.filter((c) => c.check === check);
const one = (d: Doctor, check: string): Check => {
  const all = only(d, check);
  assert.equal(all.length, 1, `one ${check} line: ${JSON.stringify(d.checks, null, 1)}`);
  return all[0]!;
};

async function hook(command: "init" | "uninstall", extra: string[] = []): Promise<void> {
  const r = await hookCommand(net, node, CHAIN, command, extra);
  assert.equal(r.code, 0, r.stderr);
}

async function startServer(): Promise<ManagedProcess> {
  const p = new ManagedProcess("server", NODE, [
    KEYCUTTER_MAIN,
    "server",
    `--listen=0.0.0.0:${apiPort}`,
    `--ops-listen=0.0.0.0:${opsPort}`,
    `--tls-cert=${pki.certFile}`,
    `--tls-key=${pki.keyFile}`,
    `--kubeconfig=${cluster.kubeconfigPath}`,
    "--no-leader-elect",
    "--region=us-east-1",
  ]);
  await waitFor("server ready", async () => {
    if (!p.running) throw new Error(`server exited:\n${p.logs()}`);
    const r = await fetch(`http://127.0.0.1:${opsPort}/readyz`).catch(() => undefined);
    return r?.status === 200;
  });
  return p;
}

async function setStatus(plural: string, name: string, namespace: string | undefined, status: object) {
  const custom = cluster.kc.makeApiClient(CustomObjectsApi);
  const where = { group: "keycutter.dev", version: "v1alpha1", plural, name };
  const current = (
    namespace
      ? await custom.getNamespacedCustomObject({ ...where, namespace })
      : await custom.getClusterCustomObject(where)
  ) as Record<string, unknown>;
  const body = { ...current, status };
  if (namespace) await custom.replaceNamespacedCustomObjectStatus({ ...where, namespace, body });
  else await custom.replaceClusterCustomObjectStatus({ ...where, body });
}

const ready = (status: "True" | "False", reason: string, message: string) => ({
  conditions: [
    {
      type: "Ready",
      status,
      reason,
      message,
      lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      observedGeneration: 1,
    },
  ],
});

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "kc-doctor-"));
  cluster = await startCluster();
  kubelet = new Kubelet(cluster.kc);
  net = await PodNetwork.create();
  node = await net.addNode("node1");
  await kubelet.createNode("node1", node.ip, node.podCIDR);
  await installCrds(cluster.kc);
  await kubelet.ensureNamespace(SYSTEM_NS);
  [apiPort, opsPort] = [await freePort("0.0.0.0"), await freePort("0.0.0.0")];
  // expires in two days: inside doctor's default 14-day warning
  pki = await makeServingCert([net.gatewayIP, "127.0.0.1"]);
  server = await startServer();

  const tokenFile = join(tmp, "agent.token");
  writeFileSync(tokenFile, "unused: no pod on this node asks for credentials");
  agent = await spawnAgent(
    net,
    node,
    [
      ...agentFlags({
        net,
        node,
        server: { port: apiPort },
        pki,
        tokenFile,
        kubeconfig: cluster.kubeconfigFor(net.gatewayIP),
        chain: CHAIN,
      }),
      // only at start: the test removes the hook and the agent must not put it back
      "--hook-resync-ms=0",
      "--cni-state-dir=",
    ],
    { ...process.env, KEYCUTTER_LOG_LEVEL: "info" },
  );
  await agentReady(node);

  // the installation as the chart creates it: its published settings, the Deployment and
  // DaemonSet (their status as the controllers would write it), the TLS Secret
  await applyObjects(
    cluster.kc,
    // an existing TLS Secret (server.tls.secretName), which this test makes
    renderChart(
      { agent: { hook: { chain: CHAIN } }, server: { tls: { secretName: "keycutter-server-tls" } } },
      { namespace: SYSTEM_NS },
    ).filter(
      (o) => o.metadata.labels?.["app.kubernetes.io/component"] === "server-config",
    ) as KubernetesObject[],
  );
  const core = cluster.kc.makeApiClient(CoreV1Api);
  await core.createNamespacedSecret({
    namespace: SYSTEM_NS,
    body: {
      metadata: { name: "keycutter-server-tls" },
      type: "kubernetes.io/tls",
      stringData: {
        "tls.crt": readFileSync(pki.certFile, "utf8"),
        "tls.key": readFileSync(pki.keyFile, "utf8"),
        "ca.crt": readFileSync(pki.caFile, "utf8"),
      },
    },
  });
  const apps = cluster.kc.makeApiClient(AppsV1Api);
  const template = (app: string) => ({
    metadata: { labels: { app } },
    spec: { containers: [{ name: app, image: "keycutter:test" }] },
  });
  await apps.createNamespacedDeployment({
    namespace: SYSTEM_NS,
    body: {
      metadata: { name: "keycutter-server" },
      spec: { replicas: 2, selector: { matchLabels: { app: "server" } }, template: template("server") },
    },
  });
  const d = await apps.readNamespacedDeployment({ namespace: SYSTEM_NS, name: "keycutter-server" });
  d.status = { replicas: 2, readyReplicas: 2, availableReplicas: 2, updatedReplicas: 2 };
  await apps.replaceNamespacedDeploymentStatus({ namespace: SYSTEM_NS, name: "keycutter-server", body: d });
  await apps.createNamespacedDaemonSet({
    namespace: SYSTEM_NS,
    body: {
      metadata: { name: "keycutter-agent" },
      spec: { selector: { matchLabels: { app: "agent" } }, template: template("agent") },
    },
  });
  const ds = await apps.readNamespacedDaemonSet({ namespace: SYSTEM_NS, name: "keycutter-agent" });
  ds.status = { desiredNumberScheduled: 3, currentNumberScheduled: 3, numberMisscheduled: 0, numberReady: 2 };
  await apps.replaceNamespacedDaemonSetStatus({ namespace: SYSTEM_NS, name: "keycutter-agent", body: ds });

  await kubelet.ensureNamespace("tenant-a");
  await kubelet.ensureNamespace("tenant-b");
  await createRoleAllowance(cluster.kc, "tenants", {
    namespaces: ["tenant-*"],
    roleArns: ["arn:aws:iam::123456789012:role/tenant-*"],
  });
  for (const [ns, name, role] of [
    ["tenant-a", "good", "tenant-a"],
    ["tenant-a", "wrong-role", "admin"],
    ["tenant-b", "fresh", "tenant-b"],
  ] as const)
    await createAccessPolicy(cluster.kc, ns, name, {
      podSelector: {},
      roleArn: `arn:aws:iam::123456789012:role/${role}`,
    });
  // as the server's leader writes them; "fresh" has not been looked at yet
  await setStatus("roleallowances", "tenants", undefined, ready("True", "Valid", "in force"));
  await setStatus("accesspolicies", "good", "tenant-a", ready("True", "Valid", "in force"));
  await setStatus(
    "accesspolicies",
    "wrong-role",
    "tenant-a",
    ready("False", "RoleNotAllowed", "no RoleAllowance allows role arn:aws:iam::123456789012:role/admin"),
  );
});

after(async () => {
  await agent?.stop().catch(() => undefined);
  await server?.stop().catch(() => undefined);
  for (const iptables of ["iptables-nft", "iptables-legacy"])
    if (net)
      await hookCommand(net, node, CHAIN, "uninstall", [`--iptables=${iptables}`]).catch(() => undefined);
  await net?.destroy().catch(() => undefined);
  await cluster?.stop().catch(() => undefined);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

describe("keycutter doctor on a node", () => {
  it("all in place: ok lines, the certificates that end within 14 days a warning, exit 0", async () => {
    const d = await doctorOnNode();
    assert.equal(d.code, 0, d.stdout + d.stderr);
    assert.equal(one(d, "hook").status, "ok");
    assert.match(one(d, "hook").message, /in place in the nft tables .*rules as the agent installs them/);
    assert.equal(one(d, "agent").status, "ok");
    assert.equal(one(d, "server").status, "ok");
    assert.equal(one(d, "server API").status, "ok");
    const cert = one(d, "server certificate");
    assert.equal(cert.status, "warn");
    assert.match(cert.message, /server certificate "keycutter-server" expires in 1 day\(s\)/);
    assert.ok(cert.hint);
    assert.equal(one(d, "server CA").status, "warn");
    // a shorter horizon: nothing to warn about
    const calm = await doctorOnNode(["--tls-warn-days=1"]);
    assert.equal(one(calm, "server certificate").status, "ok");

    const text = await net.exec(node.netns, NODE, [
      KEYCUTTER_MAIN,
      "doctor",
      "--no-cluster",
      `--hook-agent-ip=${node.ip}`,
      `--hook-chain=${CHAIN}`,
    ]);
    assert.equal(text.code, 0, text.stdout + text.stderr);
    assert.match(text.stdout, /^ok +hook +in place in the nft tables/m);
    assert.match(text.stdout, /^skip +server +no --server-url/m);
  });

  it("the hook removed: fail, with what to do, exit 3", async () => {
    await hook("uninstall");
    try {
      const d = await doctorOnNode();
      assert.equal(d.code, 3, d.stdout + d.stderr);
      const hook = one(d, "hook");
      assert.equal(hook.status, "fail");
      assert.match(hook.message, /missing from the nft tables/);
      assert.match(hook.hint ?? "", /agent/);
      assert.equal(one(d, "agent").status, "ok", "the rest is judged on its own");
    } finally {
      await hook("init");
    }
  });

  it("the hook in the other backend's tables (legacy on an nft node): fail, naming the backend", async () => {
    await hook("uninstall");
    await hook("init", ["--iptables=iptables-legacy"]);
    try {
      const d = await doctorOnNode(["--iptables=iptables-nft"]);
      assert.equal(d.code, 3, d.stdout + d.stderr);
      const hook = one(d, "hook");
      assert.equal(hook.status, "fail");
      assert.match(hook.message, /found in the legacy tables, not in this node's nft tables/);
      assert.match(hook.hint ?? "", /iptablesMode=nft/);
    } finally {
      await hook("uninstall", ["--iptables=iptables-legacy"]);
      await hook("init");
    }
    assert.equal(one(await doctorOnNode(), "hook").status, "ok");
  });

  it("the server down: server unreachable, and then the agent not ready, say so", async () => {
    await server!.stop();
    server = undefined;
    try {
      const d = await doctorOnNode();
      assert.equal(d.code, 3);
      assert.equal(one(d, "server").status, "fail");
      assert.match(one(d, "server").message, /unreachable at http:.*ECONNREFUSED/);
      assert.equal(one(d, "server API").status, "fail");
      assert.match(one(d, "server API").message, /unreachable/);
      // the agent notices at its next probe of the server (every 10 s)
      await waitFor(
        "agent not ready",
        async () => (await fetch(`http://${node.ip}:8182/readyz`).catch(() => undefined))?.status === 503,
        { timeoutMs: 30_000 },
      );
      const agentLine = one(await doctorOnNode(), "agent");
      assert.equal(agentLine.status, "fail");
      assert.match(agentLine.message, /not ready: credential service unreachable/);
      assert.match(agentLine.hint ?? "", /cannot reach the server/);
    } finally {
      server = await startServer();
    }
  });
});

describe("keycutter doctor from a workstation (kubeconfig)", () => {
  it("the installation, rollout, TLS Secret and the policies not Ready, with why", async () => {
    const r = await net.exec(node.netns, NODE, [
      KEYCUTTER_MAIN,
      "doctor",
      "--no-hook",
      `--kubeconfig=${cluster.kubeconfigFor(net.gatewayIP)}`,
      "-o",
      "json",
    ]);
    const d = parse(r.code, r.stdout, r.stderr);
    assert.equal(d.code, 3, d.stdout + d.stderr);
    assert.match(one(d, "installation").message, /keycutter in namespace keycutter-system/);
    assert.equal(one(d, "server replicas").status, "ok");
    const agents = one(d, "agents");
    assert.equal(agents.status, "warn");
    assert.match(agents.message, /2 of 3 nodes ready/);
    assert.equal(one(d, "server certificate").status, "warn");
    assert.match(
      one(d, "server certificate").message,
      /Secret keycutter-system\/keycutter-server-tls tls\.crt/,
    );
    const policies = only(d, "policies");
    const failed = policies.filter((p) => p.status === "fail");
    assert.equal(failed.length, 1, JSON.stringify(policies));
    assert.match(
      failed[0]!.message,
      /AccessPolicy tenant-a\/wrong-role is not Ready: RoleNotAllowed: no RoleAllowance allows role .*role\/admin/,
    );
    assert.ok(
      policies.some((p) => p.status === "warn" && /tenant-b\/fresh: no Ready condition yet/.test(p.message)),
    );
    assert.equal(only(d, "hook").length, 0, "--no-hook");

    // -n narrows the AccessPolicies to one namespace
    const narrowed = await net.exec(node.netns, NODE, [
      KEYCUTTER_MAIN,
      "doctor",
      "--no-hook",
      `--kubeconfig=${cluster.kubeconfigFor(net.gatewayIP)}`,
      "-n",
      "tenant-b",
      "-o",
      "json",
    ]);
    const n = parse(narrowed.code, narrowed.stdout, narrowed.stderr);
    assert.ok(!only(n, "policies").some((p) => /wrong-role/.test(p.message)));
  });
});
