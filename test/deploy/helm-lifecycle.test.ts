// `helm install`, `helm upgrade` and `helm uninstall` of the chart against a real kube-apiserver
// (no dry-run: every object is created, changed and deleted by Helm itself). There is no
// controller-manager or kubelet, so nothing runs the workloads; for the uninstall, this test plays
// the Job controller and marks the cleanup Job complete, which is what Helm waits for.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ApiextensionsV1Api,
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
} from "@kubernetes/client-node";
import { parseDocument } from "yaml";
import { startCluster, waitFor, type Cluster } from "../harness/index.ts";
import { CHART_DIR, helmBinary } from "./render.ts";
import { apiCall } from "./api.ts";

interface PublishedSchema {
  description?: string;
  properties?: Record<string, PublishedSchema>;
  items?: PublishedSchema;
  allOf?: PublishedSchema[];
  type?: string;
}

/** Fields of a published (OpenAPI v3) schema without a description: what kubectl explain shows bare. */
function bareFields(schema: PublishedSchema, path: string): string[] {
  const out: string[] = [];
  for (const [name, child] of Object.entries(schema.properties ?? {})) {
    if (!child.description) out.push(`${path}.${name}`);
    out.push(...bareFields(child, `${path}.${name}`));
  }
  if (schema.items?.properties) out.push(...bareFields(schema.items, `${path}[]`));
  return out;
}

const GROUP_VERSION = "keycutter.dev/v1alpha1";

const NS = "keycutter-system";

/** An AccessPolicy in NS as the custom objects API takes it, with `spec` over a minimal one. */
function policyRequest(name: string, spec: Record<string, unknown> = {}) {
  return {
    group: "keycutter.dev",
    version: "v1alpha1",
    namespace: NS,
    plural: "accesspolicies",
    body: {
      apiVersion: GROUP_VERSION,
      kind: "AccessPolicy",
      metadata: { name },
      spec: { podSelector: {}, roleArn: "arn:aws:iam::123456789012:role/r", ...spec },
    },
  };
}

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

  it("install: the CRDs carry the chart's labels and the keep policy, and kubectl explain has a description for every field", async () => {
    const ext = cluster.kc.makeApiClient(ApiextensionsV1Api);
    for (const name of ["accesspolicies.keycutter.dev", "roleallowances.keycutter.dev"]) {
      const crd = await ext.readCustomResourceDefinition({ name });
      assert.equal(crd.metadata!.labels!["app.kubernetes.io/managed-by"], "Helm");
      assert.equal(crd.metadata!.labels!["app.kubernetes.io/instance"], "keycutter");
      assert.equal(crd.metadata!.annotations!["helm.sh/resource-policy"], "keep");
      assert.equal(
        crd.metadata!.annotations!["meta.helm.sh/release-name"],
        "keycutter",
        "owned by the release",
      );
    }
    // kubectl explain reads the apiserver's OpenAPI v3 document of the group version, which the
    // apiserver publishes a moment after the CRDs are established
    type Schemas = Record<string, PublishedSchema>;
    const schemas = await waitFor(
      "the CRDs' OpenAPI v3 schemas published",
      async () => {
        const index = await apiCall(cluster, "GET", "/openapi/v3");
        const entry = (index.body as { paths?: Record<string, { serverRelativeURL: string }> }).paths?.[
          `apis/${GROUP_VERSION}`
        ];
        if (!entry) return undefined;
        const doc = await apiCall(cluster, "GET", entry.serverRelativeURL);
        const found = (doc.body as { components?: { schemas?: Schemas } }).components?.schemas;
        return found?.["dev.keycutter.v1alpha1.AccessPolicy"] && found["dev.keycutter.v1alpha1.RoleAllowance"]
          ? found
          : undefined;
      },
      { timeoutMs: 30_000 },
    );
    for (const kind of ["AccessPolicy", "RoleAllowance"]) {
      const schema = schemas[`dev.keycutter.v1alpha1.${kind}`];
      assert.ok(schema?.description, `${kind} is described`);
      const spec = schema.properties!.spec!;
      const status = schema.properties!.status!;
      assert.ok(spec.description && status.description);
      assert.deepEqual([...bareFields(spec, `${kind}.spec`), ...bareFields(status, `${kind}.status`)], []);
    }
    const ap = schemas[`dev.keycutter.v1alpha1.AccessPolicy`]!;
    assert.match(ap.properties!.spec!.properties!.roleArn!.description!, /RoleAllowance must cover it/);
  });

  it("the AccessPolicy status takes only metav1.Condition reasons; -o wide has the message", async () => {
    const custom = cluster.kc.makeApiClient(CustomObjectsApi);
    const created = (await custom.createNamespacedCustomObject(policyRequest("conditions"))) as {
      metadata: { resourceVersion: string };
    };
    const writeStatus = (reason: string, message = "m") =>
      apiCall(cluster, "PUT", `/apis/${GROUP_VERSION}/namespaces/${NS}/accesspolicies/conditions/status`, {
        apiVersion: GROUP_VERSION,
        kind: "AccessPolicy",
        metadata: { name: "conditions", namespace: NS, resourceVersion: created.metadata.resourceVersion },
        spec: { podSelector: {}, roleArn: "arn:aws:iam::123456789012:role/r" },
        status: {
          observedGeneration: 1,
          conditions: [
            {
              type: "Ready",
              status: "False",
              reason,
              message,
              lastTransitionTime: "2026-01-01T00:00:00Z",
              observedGeneration: 1,
            },
          ],
        },
      });
    for (const bad of ["pod not found", "Bad-Reason", "", "x".repeat(1025)]) {
      const r = await writeStatus(bad);
      assert.equal(
        r.status,
        422,
        `reason ${JSON.stringify(bad.slice(0, 20))}: ${JSON.stringify(r.body).slice(0, 200)}`,
      );
    }
    assert.equal((await writeStatus("RoleNotAllowed", "x".repeat(32769))).status, 422, "message over 32768");
    const ok = await writeStatus("RoleNotAllowed", "no RoleAllowance covers it");
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    // the Table the apiserver serves kubectl: the message column, at priority 1 (-o wide)
    const table = await fetchTable(`/apis/${GROUP_VERSION}/namespaces/${NS}/accesspolicies`);
    const col = table.columnDefinitions.findIndex((c) => c.name === "Message");
    assert.equal(table.columnDefinitions[col]?.priority, 1);
    assert.equal(table.rows[0]!.cells[col], "no RoleAllowance covers it");
    await custom.deleteNamespacedCustomObject({
      group: "keycutter.dev",
      version: "v1alpha1",
      namespace: NS,
      plural: "accesspolicies",
      name: "conditions",
    });
  });

  const fetchTable = async (path: string) => {
    const r = await apiCall(cluster, "GET", path, undefined, {
      accept: "application/json;as=Table;v=v1;g=meta.k8s.io",
    });
    assert.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
    return r.body as {
      columnDefinitions: { name: string; priority: number }[];
      rows: { cells: unknown[] }[];
    };
  };

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

  it("upgrade: a chart whose CRD adds a field reaches the cluster (--reset-then-reuse-values)", async () => {
    const custom = cluster.kc.makeApiClient(CustomObjectsApi);
    const policy = (name: string) => policyRequest(name, { upgradeProbe: "kept" });
    const probeOf = async (name: string) =>
      (
        (await custom.getNamespacedCustomObject({ ...policy(name), name })) as {
          spec: { upgradeProbe?: string };
        }
      ).spec.upgradeProbe;
    // today's CRD does not know the field: the apiserver prunes it
    await custom.createNamespacedCustomObject(policy("before-upgrade"));
    assert.equal(await probeOf("before-upgrade"), undefined);

    // the next chart version: its CRD (files/crds, synced from deploy/crds) has the field
    const next = join(dir, "chart-next");
    cpSync(CHART_DIR, next, { recursive: true });
    const crdFile = join(next, "files", "crds", "keycutter.dev_accesspolicies.yaml");
    const crd = parseDocument(readFileSync(crdFile, "utf8"));
    crd.setIn(
      [
        "spec",
        "versions",
        0,
        "schema",
        "openAPIV3Schema",
        "properties",
        "spec",
        "properties",
        "upgradeProbe",
      ],
      {
        description: "A field the next version adds.",
        type: "string",
      },
    );
    writeFileSync(crdFile, crd.toString());
    const chartFile = join(next, "Chart.yaml");
    writeFileSync(chartFile, readFileSync(chartFile, "utf8").replace(/^version: .*$/m, "version: 0.1.1"));
    helm("upgrade", "keycutter", next, "--namespace", NS, "--reset-then-reuse-values");

    const ext = cluster.kc.makeApiClient(ApiextensionsV1Api);
    const live = await ext.readCustomResourceDefinition({ name: "accesspolicies.keycutter.dev" });
    const props = live.spec.versions[0]!.schema!.openAPIV3Schema!.properties!.spec!.properties!;
    assert.equal(props.upgradeProbe?.description, "A field the next version adds.");
    assert.equal(live.metadata!.labels!["helm.sh/chart"], "keycutter-0.1.1", "labels follow the chart");
    // the field is stored now; the object created before is untouched
    await waitFor(
      "the new schema in force",
      async () => {
        await custom
          .deleteNamespacedCustomObject({ ...policy("after-upgrade"), name: "after-upgrade" })
          .catch(() => undefined);
        await custom.createNamespacedCustomObject(policy("after-upgrade"));
        return (await probeOf("after-upgrade")) === "kept";
      },
      { timeoutMs: 20_000 },
    );
    assert.equal(await probeOf("before-upgrade"), undefined);
    // --reset-then-reuse-values kept the values of the previous upgrade
    assert.ok((await agentArgs()).includes("--no-require-imdsv2"));
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
