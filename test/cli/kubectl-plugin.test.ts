// `kubectl keycutter`: the CLI run as kubectl runs a plugin (bin/kubectl-keycutter executed from
// PATH with the user's environment), against a real kube-apiserver with the CRDs and the chart's
// published server settings (the ConfigMap and its reader RBAC, as `helm install` creates them).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import {
  CoreV1Api,
  CustomObjectsApi,
  RbacAuthorizationV1Api,
  type KubernetesObject,
} from "@kubernetes/client-node";
import { parse as parseYaml, stringify } from "yaml";
import { applyObjects, freePort, Kubelet, NODE, ROOT, startCluster, type Cluster } from "../harness/index.ts";
import { installCrds } from "../harness/keycutter-server.ts";
import { createAccessPolicy, createRoleAllowance } from "../harness/policies.ts";
import { containerArgs, renderChart, type K8sObject } from "../deploy/render.ts";

const PLUGIN = join(ROOT, "bin", "kubectl-keycutter");
const SYSTEM_NS = "keycutter-system";
const ROLE = "arn:aws:iam::123456789012:role/tenant-a";

let cluster: Cluster;
let kubelet: Kubelet;
let tmp: string;
/** Clusters, users and a context "admin" (namespace tenant-a), current-context admin. */
let goodFile: string;
/** A context "broken" to a cluster where nothing listens, current-context broken. */
let brokenFile: string;
/** Where nothing listens. */
let deadPort: number;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The plugin as kubectl starts it: the executable found on PATH, the user's environment. */
function plugin(args: string[], env: Record<string, string | undefined> = {}): Run {
  const r = spawnSync(PLUGIN, args, {
    encoding: "utf8",
    env: {
      PATH: `${dirname(NODE)}${delimiter}${process.env.PATH ?? ""}`,
      HOME: join(tmp, "home-empty"),
      KUBECONFIG: `${goodFile}${delimiter}${join(tmp, "absent.yaml")}${delimiter}${brokenFile}`,
      ...env,
    },
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function oneErrorLine(r: Run): string {
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, /^error: /);
  return lines[0]!;
}

const flag = (args: string[], name: string): string | undefined =>
  args.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);

function chartObjects(values: object, valuesFiles: string[] = []): K8sObject[] {
  return renderChart(values, { namespace: SYSTEM_NS, valuesFiles });
}

function serverConfigObjects(values: object): K8sObject[] {
  return chartObjects(values).filter(
    (o) => o.metadata.labels?.["app.kubernetes.io/component"] === "server-config",
  );
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "kc-plugin-"));
  mkdirSync(join(tmp, "home-empty"));
  cluster = await startCluster();
  kubelet = new Kubelet(cluster.kc);
  await installCrds(cluster.kc);
  await kubelet.ensureNamespace(SYSTEM_NS);
  await applyObjects(
    cluster.kc,
    serverConfigObjects({
      clusterName: "prod-eu",
      server: { maxDurationSeconds: 1800 },
    }) as KubernetesObject[],
  );

  const admin = parseYaml(readFileSync(cluster.kubeconfigPath, "utf8")) as {
    clusters: unknown[];
    users: unknown[];
  };
  goodFile = join(tmp, "good.yaml");
  writeFileSync(
    goodFile,
    stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: admin.clusters,
      users: admin.users,
      contexts: [{ name: "admin", context: { cluster: "test", user: "user", namespace: "tenant-a" } }],
      "current-context": "admin",
    }),
  );
  brokenFile = join(tmp, "broken.yaml");
  deadPort = await freePort();
  writeFileSync(
    brokenFile,
    stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        {
          name: "dead",
          cluster: { server: `https://127.0.0.1:${deadPort}`, "insecure-skip-tls-verify": true },
        },
      ],
      users: [{ name: "nobody", user: { token: "not-a-token" } }],
      contexts: [{ name: "broken", context: { cluster: "dead", user: "nobody" } }],
      "current-context": "broken",
    }),
  );

  await kubelet.createPod({
    namespace: "tenant-a",
    name: "web-1",
    nodeName: "node-1",
    serviceAccountName: "app",
  });
  await kubelet.createPod({
    namespace: "tenant-a",
    name: "lonely",
    nodeName: "node-1",
    serviceAccountName: "nobody",
  });
  await createRoleAllowance(cluster.kc, "tenants", {
    namespaces: ["tenant-*"],
    roleArns: ["arn:aws:iam::123456789012:role/tenant-*"],
  });
  await createAccessPolicy(cluster.kc, "tenant-a", "reader", {
    podSelector: { serviceAccountName: "app" },
    roleArn: ROLE,
    durationSeconds: 3600,
    sessionPolicy: {
      Statement: [
        {
          Effect: "Allow",
          Action: "s3:GetObject",
          Resource: "arn:aws:s3:::data-${clusterName}/${namespace}/*",
        },
      ],
    },
  });
});

after(async () => {
  await cluster?.stop().catch(() => undefined);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe("the chart publishes the server's settings", () => {
  it("its ConfigMap carries exactly the values of the server's flags, for every profile", () => {
    const profilesDir = join(ROOT, "test", "deploy", "profiles");
    const renders = [
      ...readdirSync(profilesDir).map((f) => chartObjects({}, [join(profilesDir, f)])),
      chartObjects({
        clusterName: "prod-eu",
        aws: { region: "eu-west-1" },
        server: { maxDurationSeconds: 900 },
      }),
    ];
    for (const objs of renders) {
      const server = objs.find((o) => o.kind === "Deployment")!;
      const config = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.endsWith("-config"))!;
      const args = containerArgs(server, "server");
      const data = (config as unknown as { data: Record<string, string> }).data;
      assert.equal(data.serverDeployment, server.metadata.name);
      assert.equal(data.clusterName, flag(args, "--cluster-name") ?? "");
      assert.equal(data.maxDurationSeconds, flag(args, "--max-duration"));
      assert.equal(data.region, flag(args, "--region"));
    }
  });
});

describe("kubectl keycutter explain", () => {
  it("takes the cluster name and duration cap from the installed server; flags override", () => {
    const r = plugin(["explain", "web-1", "-o", "json"]);
    assert.equal(r.status, 0, r.stderr);
    const e = JSON.parse(r.stdout);
    assert.deepEqual(e.settings, {
      clusterName: "prod-eu",
      maxDurationSeconds: 1800,
      from: "ConfigMap keycutter-system/keycutter-config",
    });
    assert.equal(e.decision.durationSeconds, 1800, "the policy's 3600 s capped by the server's 1800");
    assert.equal(e.tags["kubernetes-cluster-name"], "prod-eu");
    assert.equal(e.sessionPolicy.Statement[0].Resource, "arn:aws:s3:::data-prod-eu/tenant-a/*");

    const o = plugin([
      "explain",
      "tenant-a/web-1",
      "-o",
      "yaml",
      "--cluster-name",
      "other",
      "--max-duration",
      "900",
    ]);
    assert.equal(o.status, 0, o.stderr);
    const y = parseYaml(o.stdout);
    assert.deepEqual(y.settings, { clusterName: "other", maxDurationSeconds: 900, from: "flags" });
    assert.equal(y.decision.durationSeconds, 900);
  });

  it("kubectl's precedence: --kubeconfig > KUBECONFIG (merged, first wins) > ~/.kube/config; --context; -n", () => {
    // the broken file first: its current-context wins, and nothing listens there
    const broken = plugin(["explain", "tenant-a/web-1"], {
      KUBECONFIG: `${brokenFile}${delimiter}${goodFile}`,
    });
    assert.equal(broken.status, 1);
    assert.match(oneErrorLine(broken), /ECONNREFUSED/);
    // --context picks the good file's context from the same merged list
    const ctx = plugin(["explain", "tenant-a/web-1", "--context", "admin"], {
      KUBECONFIG: `${brokenFile}${delimiter}${goodFile}`,
    });
    assert.equal(ctx.status, 0, ctx.stderr);
    // --kubeconfig wins over KUBECONFIG
    const file = plugin(["explain", "web-1", "--kubeconfig", goodFile], { KUBECONFIG: brokenFile });
    assert.equal(file.status, 0, file.stderr);
    // no KUBECONFIG: ~/.kube/config
    const home = join(tmp, "home");
    mkdirSync(join(home, ".kube"), { recursive: true });
    writeFileSync(join(home, ".kube", "config"), readFileSync(goodFile));
    const fromHome = plugin(["explain", "web-1", "-o", "json"], { KUBECONFIG: undefined, HOME: home });
    assert.equal(fromHome.status, 0, fromHome.stderr);
    assert.equal(JSON.parse(fromHome.stdout).pod.name, "web-1");
    const none = plugin(["explain", "web-1"], { KUBECONFIG: undefined });
    assert.equal(none.status, 1);
    assert.match(oneErrorLine(none), /no kubeconfig/);
    const unknownContext = plugin(["explain", "web-1", "--context", "nope"]);
    assert.equal(unknownContext.status, 2);
    assert.match(oneErrorLine(unknownContext), /--context nope: no such context/);
    // -n: the pod's namespace; a different one in the argument is a usage error
    const ns = plugin(["explain", "web-1", "-n", "tenant-b"]);
    assert.equal(ns.status, 1);
    assert.equal(oneErrorLine(ns), 'error: pods "web-1" not found');
    const clash = plugin(["explain", "tenant-a/web-1", "--namespace", "tenant-b"]);
    assert.equal(clash.status, 2);
    oneErrorLine(clash);
  });

  it("errors are one line (a stack only with --debug / KEYCUTTER_DEBUG=1); exit 1 error, 2 usage, 3 refused", () => {
    const missing = plugin(["explain", "tenant-a/nope"]);
    assert.equal(missing.status, 1);
    assert.equal(oneErrorLine(missing), 'error: pods "nope" not found');
    const debug = plugin(["explain", "tenant-a/nope"], { KEYCUTTER_DEBUG: "1" });
    assert.equal(debug.status, 1);
    assert.match(debug.stderr, /^error: pods "nope" not found\n/);
    assert.match(debug.stderr, /\n\s+at /, "the stack follows");
    assert.match(plugin(["explain", "tenant-a/nope", "--debug"]).stderr, /\n\s+at /);

    for (const args of [
      ["explain", "web-1", "-o", "wide"],
      ["explain", "web-1", "--output=xml"],
      ["explain", "web-1", "--no-such-flag"],
      ["explain", "a/b/c"],
      ["explain"],
      ["explain", "web-1", "--action", "s3:GetObject"],
      ["explain", "web-1", "--max-duration", "soon"],
      ["policy", "validate", "x.yaml", "-o", "table"],
      ["doctor", "-o", "wide"],
    ]) {
      const r = plugin(args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout, "", `${args.join(" ")}: nothing on stdout`);
      oneErrorLine(r);
    }

    const refused = plugin(["explain", "tenant-a/lonely"]);
    assert.equal(refused.status, 3, refused.stderr);
    assert.match(refused.stdout, /Decision: REFUSED \(NoPolicy/);
    assert.match(refused.stdout, /decided with cluster name "prod-eu", duration cap 1800s/);
    // usage lines name the plugin as kubectl users type it
    assert.match(plugin(["--help"]).stdout, /^Usage: kubectl keycutter /);
  });

  it("a tenant who may only read its namespace finds the published settings by name (the chart's RBAC)", async () => {
    await kubelet.createServiceAccount("tenant-a", "dev");
    const rbac = cluster.kc.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createClusterRole({
      body: {
        metadata: { name: "explain-reader" },
        rules: [
          { apiGroups: [""], resources: ["pods", "namespaces"], verbs: ["get"] },
          { apiGroups: ["keycutter.dev"], resources: ["accesspolicies", "roleallowances"], verbs: ["list"] },
        ],
      },
    });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: "explain-reader" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "explain-reader" },
        subjects: [{ kind: "ServiceAccount", name: "dev", namespace: "tenant-a" }],
      },
    });
    const token = await kubelet.requestToken("tenant-a", "dev", { audiences: [] });
    const r = plugin(["explain", "tenant-a/web-1", "-o", "json"], {
      KUBECONFIG: cluster.kubeconfigFor("127.0.0.1", token),
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).settings.clusterName, "prod-eu");
  });

  it("two installations: it says so and asks for --server-namespace", async () => {
    const core = cluster.kc.makeApiClient(CoreV1Api);
    await kubelet.ensureNamespace("second");
    const copy = serverConfigObjects({ clusterName: "second" }).find((o) => o.kind === "ConfigMap")!;
    await core.createNamespacedConfigMap({
      namespace: "second",
      body: { ...copy, metadata: { ...copy.metadata, namespace: "second" } } as never,
    });
    try {
      const both = plugin(["explain", "tenant-a/web-1"]);
      assert.equal(both.status, 1);
      assert.match(
        oneErrorLine(both),
        /more than one keycutter installation found .*second\/keycutter-config.*--server-namespace/,
      );
      const chosen = plugin(["explain", "tenant-a/web-1", "-o", "json", "--server-namespace", "second"]);
      assert.equal(chosen.status, 0, chosen.stderr);
      assert.equal(JSON.parse(chosen.stdout).settings.clusterName, "second");
    } finally {
      await core.deleteNamespacedConfigMap({ namespace: "second", name: "keycutter-config" });
    }
  });
});

describe("kubectl keycutter policy validate --server", () => {
  it("a dry run through the apiserver: the CRDs' CEL rules and strict fields apply, nothing is stored", async () => {
    const good = join(tmp, "good-policies.yaml");
    writeFileSync(
      good,
      [
        // exists already: a dry-run update
        `apiVersion: keycutter.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: reader}\nspec:\n  podSelector: {serviceAccountName: app}\n  roleArn: ${ROLE}\n  durationSeconds: 900\n`,
        `apiVersion: keycutter.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: validated-only, namespace: tenant-a}\nspec:\n  podSelector: {}\n  roleArn: ${ROLE}\n`,
      ].join("---\n"),
    );
    const ok = plugin(["policy", "validate", "--server", good, "-o", "json"]);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
    const okRes = JSON.parse(ok.stdout) as {
      valid: boolean;
      findings: { name: string; namespace?: string }[];
    };
    assert.equal(okRes.valid, true);
    assert.equal(
      okRes.findings.find((f) => f.name === "reader")?.namespace,
      "tenant-a",
      "-n from the context",
    );
    const custom = cluster.kc.makeApiClient(CustomObjectsApi);
    const stored = (await custom.listNamespacedCustomObject({
      group: "keycutter.dev",
      version: "v1alpha1",
      namespace: "tenant-a",
      plural: "accesspolicies",
    })) as { items: { metadata: { name: string }; spec: { durationSeconds?: number } }[] };
    assert.deepEqual(
      stored.items.map((i) => i.metadata.name),
      ["reader"],
      "the dry run stored nothing",
    );
    assert.equal(stored.items[0]?.spec.durationSeconds, 3600, "nor changed anything");

    const bad = join(tmp, "bad-policies.yaml");
    writeFileSync(
      bad,
      [
        `apiVersion: keycutter.dev/v1alpha1\nkind: RoleAllowance\nmetadata: {name: widen}\nspec:\n  namespaces: [x]\n  roleArns: ["arn:aws:iam::123456789012:role/x"]\n  denyStatements: [{Effect: Allow, Action: "*", Resource: "*"}]\n`,
        `apiVersion: keycutter.dev/v1alpha1\nkind: RoleAllowance\nmetadata: {name: nowhere}\nspec:\n  roleArns: ["arn:aws:iam::123456789012:role/x"]\n`,
      ].join("---\n"),
    );
    const r = plugin(["policy", "validate", "--server", bad, "-o", "json"]);
    assert.equal(r.status, 3, r.stderr);
    const res = JSON.parse(r.stdout) as { valid: boolean; findings: { name: string; errors: string[] }[] };
    const errs = (n: string) => res.findings.find((f) => f.name === n)?.errors.join(" | ") ?? "";
    assert.match(
      errs("widen"),
      /apiserver: .*only Deny statements may be mandatory \(an Allow would widen access\)/,
    );
    assert.match(errs("nowhere"), /apiserver: .*one of namespaces or namespaceSelector is required/);
    // offline alone (no --server) never talks to the apiserver
    const offline = plugin(["policy", "validate", bad, "-o", "json"], { KUBECONFIG: brokenFile });
    assert.equal(offline.status, 3);
    assert.doesNotMatch(offline.stdout, /apiserver:/);
  });
});
