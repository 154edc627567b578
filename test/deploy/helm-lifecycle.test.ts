// `helm install`, `helm upgrade` and `helm uninstall` of the chart against a real kube-apiserver
// (no dry-run: every object is created, changed and deleted by Helm itself). There is no
// controller-manager or kubelet, so nothing runs the workloads; for the uninstall, this test plays
// the Job controller and marks the cleanup Job complete, which is what Helm waits for.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ApiextensionsV1Api, AppsV1Api, BatchV1Api, CoreV1Api } from "@kubernetes/client-node";
import { startCluster, waitFor, type Cluster } from "../harness/index.ts";
import { CHART_DIR, helmBinary } from "./render.ts";

const NS = "keycutter-system";

describe("helm install, upgrade and uninstall against a real apiserver", { timeout: 300_000 }, () => {
  let cluster: Cluster;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  before(async () => {
    cluster = await startCluster();
    dir = mkdtempSync(join(tmpdir(), "kc-helm-life-"));
    env = {
      ...process.env,
      KUBECONFIG: cluster.kubeconfigPath,
      HELM_CACHE_HOME: join(dir, "cache"),
      HELM_CONFIG_HOME: join(dir, "config"),
      HELM_DATA_HOME: join(dir, "data"),
    };
  });
  after(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const helm = (...args: string[]) => {
    const r = spawnSync(helmBinary(), args, { env, encoding: "utf8", timeout: 120_000 });
    assert.equal(r.status, 0, `helm ${args.join(" ")}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const agentArgs = async () =>
    (
      await cluster.kc
        .makeApiClient(AppsV1Api)
        .readNamespacedDaemonSet({ namespace: NS, name: "keycutter-agent" })
    ).spec!.template.spec!.containers[0]!.args!;

  it("install: CRDs first, then every object; the release is deployed", async () => {
    // without the node CIDRs the chart refuses to install, and says how to find them
    const refused = spawnSync(
      helmBinary(),
      ["install", "keycutter", CHART_DIR, "--namespace", NS, "--create-namespace", "--dry-run=client"],
      { env, encoding: "utf8", timeout: 120_000 },
    );
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /networkPolicy\.nodeCidrs is required/);
    assert.match(refused.stderr, /kubectl get nodes -o jsonpath=/);
    const out = helm(
      "install",
      "keycutter",
      CHART_DIR,
      "--namespace",
      NS,
      "--create-namespace",
      "--set-json",
      'networkPolicy.nodeCidrs=["10.0.0.0/8"]',
    );
    // the notes tell what was installed and what is still open
    assert.match(out, /keycutter 0\.1\.0 is installed in namespace keycutter-system/);
    assert.doesNotMatch(out, /allowApiFromAnyAddress/, "no warning: the API port is limited to the nodes");
    const ext = cluster.kc.makeApiClient(ApiextensionsV1Api);
    for (const crd of ["accesspolicies.keycutter.dev", "roleallowances.keycutter.dev"])
      assert.ok(await ext.readCustomResourceDefinition({ name: crd }));
    const apps = cluster.kc.makeApiClient(AppsV1Api);
    const dep = await apps.readNamespacedDeployment({ namespace: NS, name: "keycutter-server" });
    assert.equal(dep.spec!.replicas, 2);
    assert.ok(await apps.readNamespacedDaemonSet({ namespace: NS, name: "keycutter-agent" }));
    assert.ok(
      await cluster.kc
        .makeApiClient(CoreV1Api)
        .readNamespacedService({ namespace: NS, name: "keycutter-server" }),
    );
    // no hook ran on install: the cleanup objects do not exist
    await assert.rejects(apps.readNamespacedDaemonSet({ namespace: NS, name: "keycutter-hook-cleanup" }));
    const list = JSON.parse(helm("list", "--namespace", NS, "--output", "json")) as {
      name: string;
      status: string;
    }[];
    assert.deepEqual(
      list.map((r) => [r.name, r.status]),
      [["keycutter", "deployed"]],
    );
  });

  it("upgrade: changed values reach the workloads (IMDSv1 opted in, a Redis store, 3 replicas)", async () => {
    assert.ok((await agentArgs()).includes("--require-imdsv2"), "IMDSv2 required by default");
    helm(
      "upgrade",
      "keycutter",
      CHART_DIR,
      "--namespace",
      NS,
      "--reuse-values",
      "--set",
      "agent.requireImdsV2=false",
      "--set",
      "server.replicas=3",
      "--set",
      "store.url=redis://valkey.cache.svc:6379",
      "--set",
      "store.encryptionKeySecret=keycutter-cache-key",
    );
    assert.ok((await agentArgs()).includes("--no-require-imdsv2"));
    const dep = await cluster.kc
      .makeApiClient(AppsV1Api)
      .readNamespacedDeployment({ namespace: NS, name: "keycutter-server" });
    assert.equal(dep.spec!.replicas, 3);
    const c = dep.spec!.template.spec!.containers[0]!;
    assert.equal(
      c.env!.find((e) => e.name === "KEYCUTTER_REDIS_URL")?.value,
      "redis://valkey.cache.svc:6379",
    );
    assert.ok(c.args!.includes("--cache-key-file=/etc/keycutter/cache-key/key"));
    const hist = JSON.parse(helm("history", "keycutter", "--namespace", NS, "--output", "json")) as {
      revision: number;
      status: string;
    }[];
    assert.deepEqual(
      hist.map((h) => [h.revision, h.status]),
      [
        [1, "superseded"],
        [2, "deployed"],
      ],
    );
  });

  it("uninstall: workloads go first, then the cleanup DaemonSet and Job run, then everything is gone but the CRDs", async () => {
    const apps = cluster.kc.makeApiClient(AppsV1Api);
    const batch = cluster.kc.makeApiClient(BatchV1Api);
    const child = spawn(helmBinary(), ["uninstall", "keycutter", "--namespace", NS, "--timeout", "120s"], {
      env,
    });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number>((resolve) => child.on("exit", (code) => resolve(code ?? -1)));

    // Helm creates the post-delete hooks after deleting the release's objects
    const job = await waitFor(
      "the cleanup Job",
      async () => {
        try {
          return await batch.readNamespacedJob({ namespace: NS, name: "keycutter-hook-cleanup-wait" });
        } catch {
          return undefined;
        }
      },
      { timeoutMs: 60_000, onTimeout: () => out },
    );
    await assert.rejects(
      apps.readNamespacedDaemonSet({ namespace: NS, name: "keycutter-agent" }),
      "the agent is gone first",
    );
    await assert.rejects(apps.readNamespacedDeployment({ namespace: NS, name: "keycutter-server" }));
    const cleanup = await apps.readNamespacedDaemonSet({ namespace: NS, name: "keycutter-hook-cleanup" });
    assert.deepEqual(cleanup.spec!.template.spec!.initContainers![0]!.args, [
      "hook",
      "uninstall",
      "--hook-chain=KEYCUTTER",
    ]);

    // the Job controller's part: the wait Job succeeded
    const now = new Date();
    job.status = {
      startTime: now,
      completionTime: now,
      succeeded: 1,
      conditions: [
        { type: "SuccessCriteriaMet", status: "True", lastProbeTime: now, lastTransitionTime: now },
        { type: "Complete", status: "True", lastProbeTime: now, lastTransitionTime: now },
      ],
    };
    await batch.replaceNamespacedJobStatus({ namespace: NS, name: job.metadata!.name!, body: job });

    assert.equal(await exited, 0, out);
    // hook-succeeded: the cleanup objects are deleted too
    await waitFor(
      "cleanup objects deleted",
      async () => {
        try {
          await apps.readNamespacedDaemonSet({ namespace: NS, name: "keycutter-hook-cleanup" });
          return false;
        } catch {
          return true;
        }
      },
      { timeoutMs: 30_000 },
    );
    const left = await cluster.kc.makeApiClient(CoreV1Api).listNamespacedServiceAccount({ namespace: NS });
    assert.deepEqual(
      left.items.map((s) => s.metadata!.name).filter((n) => n!.startsWith("keycutter")),
      [],
    );
    // Helm keeps CRDs (and so every policy) on uninstall
    assert.ok(
      await cluster.kc
        .makeApiClient(ApiextensionsV1Api)
        .readCustomResourceDefinition({ name: "accesspolicies.keycutter.dev" }),
    );
  });
});
