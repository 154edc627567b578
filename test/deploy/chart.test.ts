// The Helm chart (deploy/helm/keycutter): golden renders of several value profiles, the
// properties the issue asks for, the RBAC the server's own tests run under, the CRDs in sync
// with deploy/crds, and every render validated by a real kube-apiserver (server-side dry-run,
// strict field validation), plus the RBAC applied for real and checked with
// SubjectAccessReviews. UPDATE_GOLDEN=1 rewrites the golden files.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, basename } from "node:path";
import { spawnSync } from "node:child_process";
import { parse } from "yaml";
import { CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { ROOT, startCluster, Kubelet, waitFor, type Cluster } from "../harness/index.ts";
import { removeNodeTaint } from "../../src/agent/ready-taint.ts";
import { ApiClient } from "../../src/k8s/api-client.ts";
import { kubeconfigFromFile } from "../../src/k8s/rest-config.ts";
import {
  CHART_DIR,
  chartRbacObjects,
  containerArgs,
  findObject,
  helmBinary,
  isHook,
  parseObjects,
  renderChart,
  renderChartText,
  roleRules,
  type K8sObject,
  type PolicyRule,
} from "./render.ts";
import { apiCall, createObject } from "./api.ts";

const PROFILES_DIR = join(ROOT, "test", "deploy", "profiles");
const GOLDEN_DIR = join(ROOT, "test", "golden", "chart");
const PROFILES = readdirSync(PROFILES_DIR)
  .filter((f) => f.endsWith(".yaml"))
  .map((f) => basename(f, ".yaml"))
  .sort();
const NS = "keycutter-system";

function renderProfile(profile: string, namespace = NS): string {
  return renderChartText({}, { namespace, valuesFiles: [join(PROFILES_DIR, `${profile}.yaml`)] });
}

type Container = {
  name: string;
  args?: string[];
  env?: { name: string; value?: string }[];
  ports?: { name: string; containerPort: number }[];
  securityContext?: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    privileged?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
  };
  resizePolicy?: { resourceName: string; restartPolicy: string }[];
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
};
type PodSpec = {
  hostNetwork?: boolean;
  dnsPolicy?: string;
  priorityClassName?: string;
  serviceAccountName?: string;
  securityContext?: { runAsNonRoot?: boolean };
  tolerations?: { operator?: string; key?: string }[];
  affinity?: { podAntiAffinity?: Record<string, unknown> };
  containers: Container[];
  initContainers?: Container[];
  volumes?: {
    name: string;
    projected?: { sources: { serviceAccountToken?: { audience?: string; path: string } }[] };
    hostPath?: { path: string; type?: string };
  }[];
};
const podSpec = (o: K8sObject): PodSpec =>
  (o as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
const flag = (args: string[], name: string): string | undefined => {
  const a = args.find((x) => x.startsWith(`${name}=`));
  return a?.slice(name.length + 1);
};

function normRules(rules: PolicyRule[]): string[] {
  const out: string[] = [];
  for (const r of rules)
    for (const g of r.apiGroups ?? [""])
      for (const res of r.resources ?? [])
        for (const v of r.verbs) out.push(`${g}|${res}|${v}|${(r.resourceNames ?? []).join(",")}`);
  return [...new Set(out)].sort();
}

describe("helm chart: renders", () => {
  for (const profile of PROFILES) {
    it(`profile ${profile} matches test/golden/chart/${profile}.yaml`, () => {
      const text = renderProfile(profile);
      const file = join(GOLDEN_DIR, `${profile}.yaml`);
      if (process.env.UPDATE_GOLDEN === "1" || !existsSync(file)) {
        mkdirSync(GOLDEN_DIR, { recursive: true });
        writeFileSync(file, text);
        if (process.env.UPDATE_GOLDEN !== "1") assert.fail(`${file} was missing: written, check it in`);
      }
      assert.equal(
        text,
        readFileSync(file, "utf8"),
        `render of ${profile} differs: UPDATE_GOLDEN=1 to accept`,
      );
    });
  }

  it("helm lint --strict passes", () => {
    const r = spawnSync(helmBinary(), ["lint", "--strict", CHART_DIR], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  it("the chart's crds/ are identical to deploy/crds/ (scripts/sync-chart-crds.sh)", () => {
    const src = join(ROOT, "deploy", "crds");
    const dst = join(CHART_DIR, "crds");
    const names = readdirSync(src)
      .filter((f) => f.endsWith(".yaml"))
      .sort();
    assert.ok(names.length >= 2, "deploy/crds has the CRDs");
    assert.deepEqual(
      readdirSync(dst)
        .filter((f) => f.endsWith(".yaml"))
        .sort(),
      names,
    );
    for (const n of names)
      assert.equal(
        readFileSync(join(dst, n), "utf8"),
        readFileSync(join(src, n), "utf8"),
        `${n} differs: run scripts/sync-chart-crds.sh`,
      );
  });

  it("the server's ClusterRole is deploy/rbac/server-clusterrole.yaml, the one its tests run under", () => {
    const objs = renderChart();
    const fromFile = parse(readFileSync(join(ROOT, "deploy", "rbac", "server-clusterrole.yaml"), "utf8")) as {
      rules: PolicyRule[];
    };
    assert.deepEqual(
      normRules(roleRules(objs, "ClusterRole", "keycutter-server")),
      normRules(fromFile.rules),
    );
    // and the Lease Role is deploy/rbac/server-role.yaml (create; get/update on our Lease only)
    const roleFile = parse(readFileSync(join(ROOT, "deploy", "rbac", "server-role.yaml"), "utf8")) as {
      rules: PolicyRule[];
    };
    assert.deepEqual(
      normRules(roleRules(objs, "Role", "keycutter-server-leader-election")),
      normRules(roleFile.rules),
    );
  });

  it("default values: the server Deployment is highly available, hardened and resizable", () => {
    const objs = renderChart();
    const dep = findObject(objs, "Deployment", "keycutter-server");
    assert.ok(((dep as unknown as { spec: { replicas: number } }).spec.replicas ?? 0) >= 2);
    const pdb = findObject(objs, "PodDisruptionBudget", "keycutter-server") as unknown as {
      spec: { minAvailable: number };
    };
    assert.equal(pdb.spec.minAvailable, 1);
    const spec = podSpec(dep);
    assert.ok(spec.affinity?.podAntiAffinity, "anti-affinity");
    assert.equal(spec.securityContext?.runAsNonRoot, true);
    const c = spec.containers[0]!;
    assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
    assert.deepEqual(c.securityContext?.capabilities?.drop, ["ALL"]);
    assert.equal(c.securityContext?.capabilities?.add, undefined);
    const ops = c.ports?.find((p) => p.name === "ops");
    assert.equal(ops?.containerPort, 9090);
    assert.equal(flag(c.args!, "--ops-listen"), "0.0.0.0:9090");
    assert.deepEqual(c.livenessProbe?.httpGet, { path: "/healthz", port: "ops" });
    assert.deepEqual(c.readinessProbe?.httpGet, { path: "/readyz", port: "ops" });
    assert.ok(c.resources?.requests?.cpu && c.resources.limits?.memory);
    assert.equal(flag(c.args!, "--tls-cert"), "/etc/keycutter/tls/tls.crt");
    assert.ok(c.volumeMounts?.some((m) => m.mountPath === "/etc/keycutter/tls"));
  });

  it("default values: the agent DaemonSet runs on every node with NET_ADMIN only", () => {
    const objs = renderChart();
    const ds = findObject(objs, "DaemonSet", "keycutter-agent");
    const spec = podSpec(ds);
    assert.equal(spec.hostNetwork, true);
    assert.equal(spec.dnsPolicy, "ClusterFirstWithHostNet");
    assert.equal(spec.priorityClassName, "system-node-critical");
    assert.deepEqual(spec.tolerations, [{ operator: "Exists" }]);
    const c = spec.containers[0]!;
    assert.deepEqual(c.securityContext?.capabilities, { drop: ["ALL"], add: ["NET_ADMIN"] });
    assert.equal(c.securityContext?.privileged, false);
    assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
    assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
    assert.deepEqual(c.livenessProbe?.httpGet, { path: "/healthz", port: 8182 });
    assert.deepEqual(c.readinessProbe?.httpGet, { path: "/readyz", port: 8182 });
    assert.equal(flag(c.args!, "--ops-listen"), "$(NODE_IP):8182", "every listener on the node IP only");
    assert.equal(flag(c.args!, "--imds-listen"), "$(NODE_IP):8180");
    assert.ok(c.args!.includes("--require-imdsv2"), "IMDSv2 required by default");
    assert.ok(
      renderChart({ agent: { requireImdsV2: false } })
        .filter((o) => o.kind === "DaemonSet" && !isHook(o))
        .every((o) => containerArgs(o, "agent").includes("--no-require-imdsv2")),
      "IMDSv1 only as an explicit opt-in",
    );
    assert.ok(c.args!.includes("--hook"));
    assert.equal(flag(c.args!, "--hook-agent-ip"), "$(NODE_IP)");
    assert.equal(flag(c.args!, "--hook-pod-interface"), "eni+,veth+,cni0,cbr0");
    assert.match(
      c.env!.find((e) => e.name === "PATH")!.value!,
      /^\/usr\/local\/lib\/keycutter\/iptables-nft:/,
    );
    // the agent's RBAC: pods list/watch, nothing else
    assert.deepEqual(normRules(roleRules(objs, "ClusterRole", "keycutter-agent")), [
      "|pods|list|",
      "|pods|watch|",
    ]);
  });

  it("agent and server agree: token audience, service account, server URL and port", () => {
    for (const profile of PROFILES) {
      const objs = parseObjects(renderProfile(profile));
      const dep = objs.find((o) => o.kind === "Deployment")!;
      const ds = objs.find((o) => o.kind === "DaemonSet" && !isHook(o))!;
      const sargs = containerArgs(dep, "server");
      const aargs = containerArgs(ds, "agent");
      const tokenVol = podSpec(ds).volumes!.find((v) => v.name === "keycutter-token")!;
      const aud = tokenVol.projected!.sources[0]!.serviceAccountToken!.audience;
      assert.equal(flag(sargs, "--agent-audience"), aud, `${profile}: audience`);
      assert.equal(flag(aargs, "--token-file"), "/var/run/secrets/keycutter/token");
      assert.equal(
        flag(sargs, "--agent-service-account"),
        `${NS}/${podSpec(ds).serviceAccountName}`,
        profile,
      );
      const svc = objs.find((o) => o.kind === "Service" && o.metadata.name === dep.metadata.name)!;
      const port = (svc as unknown as { spec: { ports: { name: string; port: number }[] } }).spec.ports.find(
        (p) => p.name === "api",
      )!.port;
      const tls = !sargs.includes("--insecure-http");
      assert.equal(
        flag(aargs, "--server-url"),
        `${tls ? "https" : "http"}://${svc.metadata.name}.${NS}.svc:${port}`,
        `${profile}: server URL`,
      );
      assert.equal(flag(sargs, "--listen"), `0.0.0.0:${port}`);
      assert.equal(Boolean(flag(aargs, "--server-ca-file")), tls, `${profile}: CA with TLS`);
    }
  });

  it("every container of every profile declares in-place resizePolicy for cpu and memory", () => {
    for (const profile of PROFILES) {
      for (const o of parseObjects(renderProfile(profile))) {
        if (!["Deployment", "DaemonSet"].includes(o.kind) || isHook(o)) continue;
        for (const c of podSpec(o).containers)
          assert.deepEqual(
            c.resizePolicy,
            [
              { resourceName: "cpu", restartPolicy: "NotRequired" },
              { resourceName: "memory", restartPolicy: "NotRequired" },
            ],
            `${profile}: ${o.kind}/${c.name}`,
          );
      }
    }
  });

  it("legacy iptables adds NET_RAW and puts iptables-legacy first in PATH, for the agent and the cleanup", () => {
    const objs = renderChart({ agent: { hook: { iptablesMode: "legacy" } } });
    for (const [kind, name, container] of [
      ["DaemonSet", "keycutter-agent", "agent"],
      ["DaemonSet", "keycutter-hook-cleanup", "uninstall-hook"],
    ] as const) {
      const spec = podSpec(findObject(objs, kind, name));
      const c = [...(spec.initContainers ?? []), ...spec.containers].find((x) => x.name === container)!;
      assert.deepEqual(c.securityContext?.capabilities?.add, ["NET_ADMIN", "NET_RAW"]);
      assert.match(
        c.env!.find((e) => e.name === "PATH")!.value!,
        /^\/usr\/local\/lib\/keycutter\/iptables-legacy:/,
      );
    }
  });

  it("without the hook the agent gets no capability and the chart no cleanup hooks", () => {
    const objs = renderChart({ agent: { hook: { enabled: false } } });
    const c = podSpec(findObject(objs, "DaemonSet", "keycutter-agent")).containers[0]!;
    assert.deepEqual(c.securityContext?.capabilities, { drop: ["ALL"] });
    assert.ok(c.args!.includes("--no-hook"));
    assert.equal(objs.filter(isHook).length, 0);
  });

  it("agent upgrades: surge by default, the hand-over socket's host directory, no host ports to conflict", () => {
    const ds = findObject(renderChart(), "DaemonSet", "keycutter-agent") as unknown as {
      spec: { updateStrategy: unknown };
    };
    assert.deepEqual(ds.spec.updateStrategy, {
      type: "RollingUpdate",
      rollingUpdate: { maxSurge: 1, maxUnavailable: 0 },
    });
    const spec = podSpec(ds as unknown as K8sObject);
    const c = spec.containers[0]!;
    assert.equal(flag(c.args!, "--handover-dir"), "/run/keycutter");
    assert.equal(flag(c.args!, "--handover-port-offset"), "10");
    assert.equal(c.ports, undefined, "a surge pod's host ports would conflict with the old pod's");
    assert.deepEqual(
      c.volumeMounts!.find((m) => m.name === "handover"),
      {
        name: "handover",
        mountPath: "/run/keycutter",
      },
    );
    assert.deepEqual(spec.volumes!.find((v) => v.name === "handover")?.hostPath, {
      path: "/run/keycutter",
      type: "DirectoryOrCreate",
    });
    const off = podSpec(
      findObject(renderChart({ agent: { handover: { enabled: false } } }), "DaemonSet", "keycutter-agent"),
    );
    assert.ok(!off.containers[0]!.args!.some((a) => a.startsWith("--handover-dir")));
    assert.ok(off.containers[0]!.ports?.some((p) => p.name === "imds"));
    assert.ok(!off.volumes!.some((v) => v.name === "handover"));
  });

  it("the agent reads the node's CNI result cache from a read-only mount of its parent; empty: neither", () => {
    const spec = podSpec(findObject(renderChart(), "DaemonSet", "keycutter-agent"));
    const c = spec.containers[0]!;
    assert.equal(flag(c.args!, "--cni-state-dir"), "/var/lib/cni/results");
    assert.deepEqual(
      c.volumeMounts!.find((m) => m.name === "cni-state"),
      { name: "cni-state", mountPath: "/var/lib/cni", readOnly: true },
    );
    assert.deepEqual(spec.volumes!.find((v) => v.name === "cni-state")?.hostPath, {
      path: "/var/lib/cni",
      type: "DirectoryOrCreate",
    });
    const off = podSpec(
      findObject(renderChart({ agent: { cniStateDir: "" } }), "DaemonSet", "keycutter-agent"),
    );
    assert.equal(flag(off.containers[0]!.args!, "--cni-state-dir"), "");
    assert.ok(!off.volumes!.some((v) => v.name === "cni-state"));
    assert.ok(!off.containers[0]!.volumeMounts!.some((m) => m.name === "cni-state"));
  });

  it("uninstall: post-delete hooks remove the hook on every node with `keycutter hook uninstall`", () => {
    const objs = renderChart();
    const hooks = objs.filter(isHook);
    assert.deepEqual(hooks.map((h) => `${h.kind}/${h.metadata.name}`).sort(), [
      "DaemonSet/keycutter-hook-cleanup",
      "Job/keycutter-hook-cleanup-wait",
      "Role/keycutter-hook-cleanup",
      "RoleBinding/keycutter-hook-cleanup",
      "ServiceAccount/keycutter-hook-cleanup",
    ]);
    for (const h of hooks) assert.equal(h.metadata.annotations!["helm.sh/hook"], "post-delete");
    const ds = findObject(objs, "DaemonSet", "keycutter-hook-cleanup");
    assert.deepEqual(containerArgs(ds, "uninstall-hook"), ["hook", "uninstall", "--hook-chain=KEYCUTTER"]);
    const agent = podSpec(findObject(objs, "DaemonSet", "keycutter-agent"));
    // same placement as the agent: every node the agent ran on
    assert.deepEqual(podSpec(ds).tolerations, agent.tolerations);
    assert.equal(podSpec(ds).hostNetwork, true);
    const w = Number(ds.metadata.annotations!["helm.sh/hook-weight"]);
    const job = findObject(objs, "Job", "keycutter-hook-cleanup-wait");
    assert.ok(
      Number(job.metadata.annotations!["helm.sh/hook-weight"]) > w,
      "the Job runs after the DaemonSet",
    );
  });

  it("the NetworkPolicy limits the API port to the node CIDRs by default; without them the chart says how to find them", () => {
    const policy = (values: object) =>
      findObject(renderChart(values), "NetworkPolicy", "keycutter-server") as unknown as {
        spec: { ingress: { ports: { port: string }[]; from?: { ipBlock?: { cidr: string } }[] }[] };
      };
    const api = (values: object) => policy(values).spec.ingress.find((r) => r.ports[0]?.port === "api");
    assert.deepEqual(api({ networkPolicy: { nodeCidrs: ["10.1.0.0/16", "10.2.0.0/16"] } })?.from, [
      { ipBlock: { cidr: "10.1.0.0/16" } },
      { ipBlock: { cidr: "10.2.0.0/16" } },
    ]);
    assert.throws(
      () => renderChart({}, { withoutRequiredValues: true }),
      (err: Error & { stderr?: string }) =>
        /networkPolicy\.nodeCidrs is required/.test(String(err.stderr)) &&
        /kubectl get nodes -o jsonpath=.*InternalIP/.test(String(err.stderr)) &&
        /allowApiFromAnyAddress/.test(String(err.stderr)),
    );
    // the explicit opt-out admits any address to the API port, and the notes say so
    const open = renderChartText(
      { networkPolicy: { nodeCidrs: [], allowApiFromAnyAddress: true } },
      { withoutRequiredValues: true },
    );
    const openApi = (
      findObject(parseObjects(open), "NetworkPolicy", "keycutter-server") as unknown as {
        spec: { ingress: { ports: { port: string }[]; from?: unknown[] }[] };
      }
    ).spec.ingress.find((r) => r.ports[0]?.port === "api");
    assert.equal(openApi?.from, undefined);
    // the ops port keeps its own rule (metricsNamespaces), as before
    const ops = policy({ networkPolicy: { metricsNamespaces: ["monitoring"] } }).spec.ingress.find(
      (r) => r.ports[0]?.port === "ops",
    );
    assert.ok(ops);
    assert.ok(renderChart({ networkPolicy: { enabled: false } }, { withoutRequiredValues: true }).length > 0);
  });

  it("refuses inconsistent values", () => {
    const bad: [object, RegExp][] = [
      [{ store: { url: "redis://r:6379" } }, /encryptionKeySecret is required/],
      [{ agent: { hook: { podInterfaces: [], podCidrs: [] } } }, /podInterfaces or podCidrs/],
      // values.schema.json catches these before the templates do
      [{ agent: { hook: { iptablesMode: "bpf" } } }, /iptablesMode': value must be one of 'nft', 'legacy'/],
      [{ agent: { hook: { chain: "x; rm -rf /" } } }, /chain': .* does not match pattern/],
      [{ agent: { hookk: {} } }, /additional properties 'hookk' not allowed/],
      [{ store: { url: "http://redis:6379" } }, /store\/url': .* does not match pattern/],
      [{ server: { replicas: 0 } }, /replicas': minimum: got 0, want 1/],
      // its parent is mounted from the host: never "/" (or a path that cleans to it)
      [{ agent: { cniStateDir: "/results" } }, /cniStateDir': .* does not match pattern/],
      [{ agent: { cniStateDir: "/var/../results" } }, /cniStateDir': .* does not match pattern/],
      [{ agent: { cniStateDir: "relative/results" } }, /cniStateDir': .* does not match pattern/],
      [{ networkPolicy: { nodeCidrs: ["nodes"] } }, /nodeCidrs\/0': .* does not match pattern/],
    ];
    for (const [values, re] of bad) {
      assert.throws(
        () => renderChart(values),
        (err: Error & { stderr?: string }) => re.test(String(err.stderr ?? err.message)),
        JSON.stringify(values),
      );
    }
  });
});

// A minimal ServiceMonitor CRD (monitoring.coreos.com/v1), so that the custom profile's
// ServiceMonitors are admitted by a cluster without the Prometheus Operator. Its schema
// preserves unknown fields: the apiserver checks group, version, kind and metadata, not the
// operator's schema.
const SERVICE_MONITOR_CRD = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: "servicemonitors.monitoring.coreos.com" },
  spec: {
    group: "monitoring.coreos.com",
    scope: "Namespaced",
    names: {
      plural: "servicemonitors",
      singular: "servicemonitor",
      kind: "ServiceMonitor",
      listKind: "ServiceMonitorList",
    },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        schema: { openAPIV3Schema: { type: "object", "x-kubernetes-preserve-unknown-fields": true } },
      },
    ],
  },
};

describe("helm chart: a real kube-apiserver validates every render", () => {
  let cluster: Cluster;
  let kubelet: Kubelet;

  before(async () => {
    cluster = await startCluster();
    kubelet = new Kubelet(cluster.kc);
    // CRDs for real (the chart's crds/ dir, as helm install applies them), then wait until served
    const crds = readdirSync(join(CHART_DIR, "crds")).map((f) =>
      parse(readFileSync(join(CHART_DIR, "crds", f), "utf8")),
    );
    for (const crd of [...crds, SERVICE_MONITOR_CRD]) {
      const r = await createObject(cluster, crd as K8sObject, { dryRun: false });
      assert.equal(r.status, 201, `CRD ${(crd as K8sObject).metadata.name}: ${JSON.stringify(r.body)}`);
    }
    await waitFor(
      "CRDs established",
      async () => {
        for (const crd of [...crds, SERVICE_MONITOR_CRD] as K8sObject[]) {
          const r = await apiCall(
            cluster,
            "GET",
            `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata.name}`,
          );
          const conds =
            (r.body as { status?: { conditions?: { type: string; status: string }[] } }).status?.conditions ??
            [];
          if (!conds.some((c) => c.type === "Established" && c.status === "True")) return false;
        }
        return true;
      },
      { timeoutMs: 20_000 },
    );
  });
  after(async () => cluster?.stop());

  for (const profile of PROFILES) {
    it(`profile ${profile}: every object passes server-side dry-run with strict field validation`, async () => {
      const ns = `kc-${profile}`;
      await kubelet.ensureNamespace(ns);
      const objs = parseObjects(renderProfile(profile, ns));
      assert.ok(objs.length > 10);
      const failures: string[] = [];
      for (const o of objs) {
        const r = await createObject(cluster, o, { dryRun: true, namespace: ns });
        if (r.status !== 201 || r.warnings.length > 0)
          failures.push(
            `${o.kind}/${o.metadata.name}: HTTP ${r.status} ${r.warnings.join("; ")} ${JSON.stringify(r.body).slice(0, 400)}`,
          );
      }
      assert.deepEqual(failures, []);
    });
  }

  it("Pod Security admission: the server's pod passes `restricted`; the agent's needs `privileged`", async () => {
    const core = cluster.kc.makeApiClient(CoreV1Api);
    const podFrom = (o: K8sObject, ns: string): K8sObject => {
      const t = (
        o as unknown as { spec: { template: { metadata: { labels: Record<string, string> }; spec: object } } }
      ).spec.template;
      return {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: `${o.metadata.name}-x`, namespace: ns, labels: t.metadata.labels },
        spec: t.spec,
      } as K8sObject;
    };
    const outcomes: Record<string, string> = {};
    for (const level of ["restricted", "baseline", "privileged"]) {
      const ns = `kc-pss-${level}`;
      await core.createNamespace({
        body: { metadata: { name: ns, labels: { "pod-security.kubernetes.io/enforce": level } } },
      });
      const objs = renderChart({}, { namespace: ns });
      for (const o of objs)
        if (o.kind === "ServiceAccount") await createObject(cluster, o, { dryRun: false });
      for (const [kind, name] of [
        ["Deployment", "keycutter-server"],
        ["DaemonSet", "keycutter-agent"],
      ] as const) {
        const r = await createObject(cluster, podFrom(findObject(objs, kind, name), ns), { dryRun: true });
        outcomes[`${name}@${level}`] = r.status === 201 ? "admitted" : `refused ${r.status}`;
      }
    }
    assert.deepEqual(outcomes, {
      "keycutter-server@restricted": "admitted",
      "keycutter-server@baseline": "admitted",
      "keycutter-server@privileged": "admitted",
      "keycutter-agent@restricted": "refused 403",
      "keycutter-agent@baseline": "refused 403",
      "keycutter-agent@privileged": "admitted",
    });
  });

  it("the dry-run does validate: a wrong field and a bad value are rejected", async () => {
    await kubelet.ensureNamespace("kc-negative");
    const dep = findObject(renderChart({}, { namespace: "kc-negative" }), "Deployment", "keycutter-server");
    const unknownField = structuredClone(dep) as K8sObject & { spec: Record<string, unknown> };
    unknownField.spec.replicaz = 2;
    const r1 = await createObject(cluster, unknownField, { dryRun: true });
    assert.equal(r1.status, 400, JSON.stringify(r1.body));
    const badResize = structuredClone(dep) as unknown as { spec: { template: { spec: PodSpec } } };
    badResize.spec.template.spec.containers[0]!.resizePolicy = [
      { resourceName: "cpu", restartPolicy: "Sometimes" },
    ];
    const r2 = await createObject(cluster, badResize as unknown as K8sObject, { dryRun: true });
    assert.equal(r2.status, 422, JSON.stringify(r2.body));
  });

  it("the RBAC, applied for real: each service account can do what it needs and nothing more", async () => {
    const ns = "kc-rbac";
    await kubelet.ensureNamespace(ns);
    const objs = chartRbacObjects(ns);
    assert.deepEqual(objs.map((o) => o.kind).sort(), [
      "ClusterRole",
      "ClusterRole",
      "ClusterRoleBinding",
      "ClusterRoleBinding",
      "Role",
      "Role",
      "RoleBinding",
      "RoleBinding",
      "ServiceAccount",
      "ServiceAccount",
    ]);
    for (const o of objs) {
      const r = await createObject(cluster, o, { dryRun: false, namespace: ns });
      assert.equal(r.status, 201, `${o.kind}/${o.metadata.name}: ${JSON.stringify(r.body).slice(0, 300)}`);
    }
    const can = async (
      sa: string,
      attrs: {
        verb: string;
        resource: string;
        group?: string;
        namespace?: string;
        name?: string;
        subresource?: string;
      },
    ): Promise<boolean> => {
      const body = {
        apiVersion: "authorization.k8s.io/v1",
        kind: "SubjectAccessReview",
        spec: {
          user: `system:serviceaccount:${ns}:${sa}`,
          groups: ["system:serviceaccounts", `system:serviceaccounts:${ns}`, "system:authenticated"],
          resourceAttributes: { group: attrs.group ?? "", ...attrs },
        },
      };
      const r = await apiCall(cluster, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body);
      assert.equal(r.status, 201, JSON.stringify(r.body));
      return (r.body as { status: { allowed: boolean } }).status.allowed;
    };
    const agent = "keycutter-agent";
    const server = "keycutter-server";
    // any authenticated user (a tenant running explain) reads the published server settings:
    // that one ConfigMap, by name, and nothing else
    const config = { resource: "configmaps", namespace: ns };
    assert.equal(await can("a-tenant", { ...config, verb: "get", name: "keycutter-config" }), true);
    assert.equal(await can("a-tenant", { ...config, verb: "get", name: "other" }), false);
    assert.equal(await can("a-tenant", { ...config, verb: "list" }), false);
    assert.equal(await can("a-tenant", { ...config, verb: "update", name: "keycutter-config" }), false);
    // agent: watch pods anywhere (its field selector is per node), nothing else
    assert.equal(await can(agent, { verb: "list", resource: "pods" }), true);
    assert.equal(await can(agent, { verb: "watch", resource: "pods", namespace: "tenant-a" }), true);
    assert.equal(await can(agent, { verb: "get", resource: "secrets", namespace: ns }), false);
    assert.equal(
      await can(agent, { verb: "create", resource: "tokenreviews", group: "authentication.k8s.io" }),
      false,
    );
    assert.equal(
      await can(agent, { verb: "list", resource: "accesspolicies", group: "keycutter.dev" }),
      false,
    );
    assert.equal(await can(agent, { verb: "update", resource: "pods", namespace: "tenant-a" }), false);
    // server
    assert.equal(
      await can(server, { verb: "create", resource: "tokenreviews", group: "authentication.k8s.io" }),
      true,
    );
    assert.equal(await can(server, { verb: "get", resource: "pods", namespace: "tenant-a" }), true);
    assert.equal(
      await can(server, { verb: "watch", resource: "roleallowances", group: "keycutter.dev" }),
      true,
    );
    assert.equal(
      await can(server, {
        verb: "update",
        resource: "accesspolicies",
        subresource: "status",
        group: "keycutter.dev",
        namespace: "tenant-a",
      }),
      true,
    );
    assert.equal(
      await can(server, {
        verb: "update",
        resource: "accesspolicies",
        group: "keycutter.dev",
        namespace: "tenant-a",
      }),
      false,
    );
    assert.equal(
      await can(server, {
        verb: "update",
        resource: "leases",
        group: "coordination.k8s.io",
        namespace: ns,
        name: "keycutter-server",
      }),
      true,
    );
    assert.equal(
      await can(server, {
        verb: "update",
        resource: "leases",
        group: "coordination.k8s.io",
        namespace: ns,
        name: "kube-scheduler",
      }),
      false,
    );
    assert.equal(
      await can(server, {
        verb: "get",
        resource: "leases",
        group: "coordination.k8s.io",
        namespace: "kube-system",
        name: "keycutter-server",
      }),
      false,
    );
    assert.equal(await can(server, { verb: "get", resource: "secrets", namespace: ns }), false);
    assert.equal(await can(server, { verb: "create", resource: "pods", namespace: ns }), false);
  });
});

describe("helm chart: the agent's startup taint, enforced by the real apiserver", () => {
  const NS = "kc-taint";
  const KEY = "keycutter.dev/agent-not-ready";
  let cluster: Cluster;
  let kubelet: Kubelet;
  let agentKc: KubeConfig;
  let agentApi: ApiClient; // what the agent itself uses

  const taints = [
    { key: KEY, effect: "NoSchedule" },
    { key: "example.com/other", effect: "NoSchedule" },
  ];

  before(async () => {
    cluster = await startCluster();
    kubelet = new Kubelet(cluster.kc);
    await kubelet.ensureNamespace(NS);
    const wanted = chartRbacObjects(NS, { agent: { startupTaint: { enabled: true } } });
    assert.deepEqual(
      wanted.filter((o) => o.kind.startsWith("ValidatingAdmissionPolicy")).map((o) => o.metadata.name),
      ["keycutter-agent-node-patch", "keycutter-agent-node-patch"],
    );
    for (const o of wanted) {
      const r = await createObject(cluster, o, { dryRun: false, namespace: NS });
      assert.equal(r.status, 201, `${o.kind}/${o.metadata.name}: ${JSON.stringify(r.body).slice(0, 300)}`);
    }
    const core = cluster.kc.makeApiClient(CoreV1Api);
    for (const name of ["node-1", "node-2"]) {
      await core.createNode({ body: { metadata: { name, labels: { a: "b" } }, spec: { taints } } });
    }
    // the agent's API token is bound to its pod on node-1, as the kubelet's projected token is
    const pod = await kubelet.createPod({
      namespace: NS,
      name: "keycutter-agent-node-1",
      nodeName: "node-1",
      serviceAccountName: "keycutter-agent",
      hostNetwork: true,
    });
    const token = await kubelet.requestToken(NS, "keycutter-agent", {
      podName: pod.metadata!.name!,
      podUID: pod.metadata!.uid!,
      audiences: [cluster.issuer],
    });
    const kubeconfig = cluster.kubeconfigFor("127.0.0.1", token);
    agentKc = new KubeConfig();
    agentKc.loadFromFile(kubeconfig);
    agentApi = new ApiClient(kubeconfigFromFile(kubeconfig));
  });
  after(async () => {
    agentApi?.close();
    await cluster?.stop();
  });

  // (the apiserver adds node.kubernetes.io/not-ready itself; only ours are compared)
  const nodeTaints = async (name: string) =>
    ((await cluster.kc.makeApiClient(CoreV1Api).readNode({ name })).spec?.taints ?? [])
      .map((t) => t.key)
      .filter((k) => k === KEY || k === "example.com/other");

  const patchAsAgent = (name: string, ops: object[]) =>
    agentKc
      .makeApiClient(CoreV1Api)
      .patchNode({ name, body: ops }, setHeaderOptions("Content-Type", PatchStrategy.JsonPatch));

  it("another node's taint: refused by the admission policy", async () => {
    // the policy is enforced once the apiserver has loaded it: probe with a patch that changes
    // nothing (a JSON-patch test op) until it is refused
    await waitFor(
      "the admission policy is in force",
      async () => {
        try {
          await patchAsAgent("node-2", [{ op: "test", path: "/metadata/name", value: "node-2" }]);
          return false;
        } catch (err) {
          return /only change the node it runs on/.test(String(err));
        }
      },
      { timeoutMs: 20_000 },
    );
    await assert.rejects(removeNodeTaint(agentApi, "node-2", KEY), /only change the node it runs on/);
    assert.deepEqual(await nodeTaints("node-2"), [KEY, "example.com/other"]);
  });

  it("its own node: other taints, labels and schedulability cannot be touched", async () => {
    await assert.rejects(
      patchAsAgent("node-1", [{ op: "replace", path: "/spec/taints", value: [] }]),
      /may only remove the keycutter.dev\/agent-not-ready taint/,
    );
    await assert.rejects(
      patchAsAgent("node-1", [{ op: "add", path: "/metadata/labels/evil", value: "1" }]),
      /may not change the node's labels/,
    );
    await assert.rejects(
      patchAsAgent("node-1", [{ op: "add", path: "/spec/unschedulable", value: true }]),
      /may not change the node's labels, annotations or schedulability/,
    );
    assert.deepEqual(await nodeTaints("node-1"), [KEY, "example.com/other"]);
  });

  it("its own node: owner references and finalizers cannot be touched", async () => {
    const owner = {
      apiVersion: "v1",
      kind: "Namespace",
      name: NS,
      uid: "00000000-0000-0000-0000-000000000001",
    };
    await assert.rejects(
      patchAsAgent("node-1", [{ op: "add", path: "/metadata/ownerReferences", value: [owner] }]),
      /may not change the node's owner references or finalizers/,
    );
    await assert.rejects(
      patchAsAgent("node-1", [{ op: "add", path: "/metadata/finalizers", value: ["example.com/hold"] }]),
      /may not change the node's owner references or finalizers/,
    );
    // nor along with the one change it may make
    const current = await cluster.kc.makeApiClient(CoreV1Api).readNode({ name: "node-1" });
    const withoutStartupTaint = (current.spec?.taints ?? []).filter((t) => t.key !== KEY);
    await assert.rejects(
      patchAsAgent("node-1", [
        { op: "replace", path: "/spec/taints", value: withoutStartupTaint },
        { op: "add", path: "/metadata/finalizers", value: ["example.com/hold"] },
      ]),
      /may not change the node's owner references or finalizers/,
    );
    const n = await cluster.kc.makeApiClient(CoreV1Api).readNode({ name: "node-1" });
    assert.equal(n.metadata?.ownerReferences, undefined);
    assert.equal(n.metadata?.finalizers, undefined);
    assert.deepEqual(await nodeTaints("node-1"), [KEY, "example.com/other"]);
  });

  it("its own node's startup taint: removed by the agent's own code", async () => {
    assert.equal(await removeNodeTaint(agentApi, "node-1", KEY), true);
    assert.deepEqual(await nodeTaints("node-1"), ["example.com/other"]);
  });

  it("without the RBAC the chart adds for it, the agent could not read nodes at all", async () => {
    const objs = renderChart({}, { namespace: NS });
    assert.deepEqual(normRules(roleRules(objs, "ClusterRole", "keycutter-agent")), [
      "|pods|list|",
      "|pods|watch|",
    ]);
    const on = renderChart({ agent: { startupTaint: { enabled: true } } }, { namespace: NS });
    assert.deepEqual(normRules(roleRules(on, "ClusterRole", "keycutter-agent")), [
      "|nodes|get|",
      "|nodes|patch|",
      "|pods|list|",
      "|pods|watch|",
    ]);
    assert.ok(
      containerArgs(findObject(on, "DaemonSet", "keycutter-agent"), "agent").includes(`--ready-taint=${KEY}`),
    );
    // every node may start tainted: the server must schedule there, or no agent ever gets ready
    const tolerationsOf = (objs: ReturnType<typeof renderChart>) =>
      (
        findObject(objs, "Deployment", "keycutter-server") as unknown as {
          spec: {
            template: { spec: { tolerations?: { key?: string; operator?: string; effect?: string }[] } };
          };
        }
      ).spec.template.spec.tolerations ?? [];
    assert.deepEqual(tolerationsOf(on), [{ key: KEY, operator: "Exists", effect: "NoSchedule" }]);
    assert.deepEqual(tolerationsOf(objs), []);
  });
});
