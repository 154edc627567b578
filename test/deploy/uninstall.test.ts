// The uninstall cleanup's waiting Job (deploy/helm/keycutter/files/wait-daemonset.mjs, run by the
// chart's post-delete Job with the image's Node): against a real apiserver, under the chart's own
// cleanup RBAC and a real service-account token, it waits while the cleanup DaemonSet is not ready
// on every node, succeeds once it is, and fails after its timeout.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppsV1Api, type V1DaemonSet } from "@kubernetes/client-node";
import { NODE, startCluster, Kubelet, type Cluster } from "../harness/index.ts";
import { CHART_DIR, findObject, isHook, renderChart, type K8sObject } from "./render.ts";
import { createObject } from "./api.ts";

const NS = "kc-uninstall";

describe("uninstall: the cleanup Job waits for the hook removal on every node", () => {
  let cluster: Cluster;
  let dir: string;
  let tokenFile: string;
  let apps: AppsV1Api;
  let ds: K8sObject;

  before(async () => {
    cluster = await startCluster();
    const kubelet = new Kubelet(cluster.kc);
    await kubelet.ensureNamespace(NS);
    apps = cluster.kc.makeApiClient(AppsV1Api);
    const hooks = renderChart({}, { namespace: NS }).filter(isHook);
    // the cleanup's ServiceAccount, Role, RoleBinding and DaemonSet, for real
    for (const kind of ["ServiceAccount", "Role", "RoleBinding", "DaemonSet"]) {
      const o = hooks.find((h) => h.kind === kind)!;
      const r = await createObject(cluster, o, { dryRun: false });
      assert.equal(r.status, 201, `${kind}: ${JSON.stringify(r.body).slice(0, 300)}`);
    }
    ds = findObject(hooks, "DaemonSet", "keycutter-hook-cleanup");
    const token = await kubelet.requestToken(NS, "keycutter-hook-cleanup", {
      audiences: [cluster.issuer],
      expirationSeconds: 600,
    });
    dir = mkdtempSync(join(tmpdir(), "kc-uninstall-"));
    tokenFile = join(dir, "token");
    writeFileSync(tokenFile, token);
  });
  after(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Runs the script exactly as the chart's Job does (node --input-type=module -e <file>). */
  function runWait(env: Record<string, string>): { done: Promise<{ code: number; out: string }> } {
    const job = findObject(
      renderChart({}, { namespace: NS }),
      "Job",
      "keycutter-hook-cleanup-wait",
    ) as unknown as {
      spec: { template: { spec: { containers: { command: string[] }[] } } };
    };
    const [cmd, ...args] = job.spec.template.spec.containers[0]!.command;
    assert.equal(cmd, "node");
    const port = new URL(cluster.server).port;
    const child = spawn(NODE, args, {
      env: {
        PATH: process.env.PATH ?? "",
        KUBERNETES_SERVICE_HOST: "127.0.0.1",
        KUBERNETES_SERVICE_PORT: port,
        NODE_EXTRA_CA_CERTS: cluster.caFile,
        TOKEN_FILE: tokenFile,
        NAMESPACE: NS,
        DAEMONSET: ds.metadata.name,
        ...env,
      },
    });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (out += c.toString()));
    return {
      done: new Promise((resolve) => child.on("exit", (code) => resolve({ code: code ?? -1, out }))),
    };
  }

  async function setStatus(desired: number, ready: number): Promise<void> {
    const cur = (await apps.readNamespacedDaemonSet({
      namespace: NS,
      name: ds.metadata.name,
    })) as V1DaemonSet;
    cur.status = {
      currentNumberScheduled: desired,
      desiredNumberScheduled: desired,
      numberMisscheduled: 0,
      numberReady: ready,
      observedGeneration: cur.metadata?.generation ?? 1,
    };
    await apps.replaceNamespacedDaemonSetStatus({ namespace: NS, name: ds.metadata.name, body: cur });
  }

  it("the script file in the chart is the one the Job runs", () => {
    const job = findObject(
      renderChart({}, { namespace: NS }),
      "Job",
      "keycutter-hook-cleanup-wait",
    ) as unknown as {
      spec: { template: { spec: { containers: { command: string[] }[] } } };
    };
    assert.ok(CHART_DIR);
    assert.match(job.spec.template.spec.containers[0]!.command.at(-1)!, /daemonsets\/\$\{name\}/);
  });

  it("times out (exit 1) while the DaemonSet has not been observed by its controller", async () => {
    const r = await runWait({ TIMEOUT_SECONDS: "3" }).done;
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /timed out/);
  });

  it("waits while nodes are pending and succeeds when every node is done", async () => {
    await setStatus(3, 1);
    const run = runWait({ TIMEOUT_SECONDS: "60" });
    await new Promise((r) => setTimeout(r, 3000));
    await setStatus(3, 3);
    const r = await run.done;
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /waiting: 1 of 3 node\(s\) done/);
    assert.match(r.out, /hook removed on 3 of 3 node\(s\)/);
  });

  it("with another token (no RBAC for the DaemonSet) it never reports success", async () => {
    const kubelet = new Kubelet(cluster.kc);
    await kubelet.createServiceAccount(NS, "nobody");
    const other = join(dir, "other-token");
    writeFileSync(other, await kubelet.requestToken(NS, "nobody", { audiences: [cluster.issuer] }));
    const r = await runWait({ TIMEOUT_SECONDS: "3", TOKEN_FILE: other }).done;
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /HTTP 403/);
  });
});
