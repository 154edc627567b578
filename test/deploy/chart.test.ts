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
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import {
  CACHE,
  ROOT,
  ManagedProcess,
  freePort,
  startCluster,
  Kubelet,
  versions,
  waitFor,
  type Cluster,
} from "../harness/index.ts";
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
import { apiCall, applyObjectDryRun, createObject } from "./api.ts";

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
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
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
    secret?: { secretName: string; optional?: boolean; items?: { key: string; path: string }[] };
    configMap?: { name: string; optional?: boolean; items?: { key: string; path: string }[] };
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

  it("the chart's files/crds/ are identical to deploy/crds/ (scripts/sync-chart-crds.sh)", () => {
    const src = join(ROOT, "deploy", "crds");
    const dst = join(CHART_DIR, "files", "crds");
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
    // self-managed TLS by default: no certificate files to mount
    assert.equal(flag(c.args!, "--tls-secret"), "keycutter-server-managed-tls");
    assert.equal(flag(c.args!, "--tls-cert"), undefined);
    assert.ok(!c.volumeMounts?.some((m) => m.mountPath === "/etc/keycutter/tls"));
  });

  it("default install: no Secret or ConfigMap to make by hand (self-managed TLS)", () => {
    const objs = renderChart();
    const rendered = new Set(objs.map((o) => `${o.kind}/${o.metadata.name}`));
    const missing: string[] = [];
    for (const o of objs) {
      const spec = (o as unknown as { spec?: { template?: { spec?: PodSpec } } }).spec?.template?.spec;
      if (!spec) continue;
      for (const v of spec.volumes ?? []) {
        if (v.secret && !v.secret.optional && !rendered.has(`Secret/${v.secret.secretName}`))
          missing.push(`${o.kind}/${o.metadata.name}: Secret ${v.secret.secretName}`);
        if (v.configMap && !v.configMap.optional && !rendered.has(`ConfigMap/${v.configMap.name}`))
          missing.push(`${o.kind}/${o.metadata.name}: ConfigMap ${v.configMap.name}`);
      }
      for (const c of spec.containers)
        for (const e of c.env ?? [])
          if (e.valueFrom?.secretKeyRef) missing.push(`${o.kind}/${o.metadata.name}: env ${e.name}`);
    }
    assert.deepEqual(missing, [], "every object a pod needs is rendered or optional");
    const server = podSpec(findObject(objs, "Deployment", "keycutter-server")).containers[0]!;
    const sans = flag(server.args!, "--tls-san")!.split(",");
    assert.deepEqual(sans, [
      "keycutter-server",
      "keycutter-server.keycutter-system",
      "keycutter-server.keycutter-system.svc",
      "keycutter-server.keycutter-system.svc.cluster.local",
    ]);
    const agentUrl = flag(
      podSpec(findObject(objs, "DaemonSet", "keycutter-agent")).containers[0]!.args!,
      "--server-url",
    )!;
    assert.ok(sans.includes(new URL(agentUrl).hostname), "the agents' URL is one of the certificate's names");
    // the agents mount the bundle the server publishes, optional until it exists
    const agentSpec = podSpec(findObject(objs, "DaemonSet", "keycutter-agent"));
    const ca = agentSpec.volumes?.find((v) => v.name === "server-ca");
    assert.deepEqual(ca?.configMap, {
      name: "keycutter-server-ca",
      optional: true,
      items: [{ key: "ca.crt", path: "ca.crt" }],
    });
    // and the server may touch its own Secret and ConfigMap only
    const rules = normRules(roleRules(objs, "Role", "keycutter-server-tls"));
    assert.deepEqual(
      rules,
      normRules([
        { apiGroups: [""], resources: ["secrets", "configmaps"], verbs: ["create"] },
        {
          apiGroups: [""],
          resources: ["secrets"],
          resourceNames: ["keycutter-server-managed-tls"],
          verbs: ["get", "update"],
        },
        {
          apiGroups: [""],
          resources: ["configmaps"],
          resourceNames: ["keycutter-server-ca"],
          verbs: ["get", "update"],
        },
      ]),
    );
  });

  it("cert-manager: a Certificate from the issuerRef; the server mounts its Secret, agents its ca.crt", () => {
    const values = {
      server: {
        tls: { certManager: { enabled: true, issuerRef: { name: "keycutter-ca", kind: "ClusterIssuer" } } },
      },
    };
    const objs = renderChart(values);
    const cert = findObject(objs, "Certificate", "keycutter-server") as unknown as {
      apiVersion: string;
      spec: {
        secretName: string;
        dnsNames: string[];
        issuerRef: unknown;
        duration: string;
        renewBefore: string;
      };
    };
    assert.equal(cert.apiVersion, "cert-manager.io/v1");
    assert.equal(cert.spec.secretName, "keycutter-server-tls");
    assert.ok(cert.spec.dnsNames.includes("keycutter-server.keycutter-system.svc"));
    assert.deepEqual(cert.spec.issuerRef, {
      name: "keycutter-ca",
      kind: "ClusterIssuer",
      group: "cert-manager.io",
    });
    assert.deepEqual([cert.spec.duration, cert.spec.renewBefore], ["2160h", "720h"]);
    const server = podSpec(findObject(objs, "Deployment", "keycutter-server"));
    assert.equal(flag(server.containers[0]!.args!, "--tls-cert"), "/etc/keycutter/tls/tls.crt");
    assert.equal(flag(server.containers[0]!.args!, "--tls-secret"), undefined);
    assert.equal(server.volumes?.find((v) => v.name === "tls")?.secret?.secretName, "keycutter-server-tls");
    const agent = podSpec(findObject(objs, "DaemonSet", "keycutter-agent"));
    const ca = agent.volumes?.find((v) => v.name === "server-ca")?.secret;
    assert.equal(ca?.secretName, "keycutter-server-tls");
    assert.equal(ca?.optional, true, "the agent starts (and hooks) before cert-manager issued");
    assert.equal(
      objs.filter((o) => o.kind === "Role" && o.metadata.name === "keycutter-server-tls").length,
      0,
    );
    assert.throws(
      () => renderChart({ server: { tls: { certManager: { enabled: true } } } }),
      /issuerRef.name is required/,
    );
  });

  it("an existing Secret (server.tls.secretName) is mounted as before", () => {
    const objs = renderChart({ server: { tls: { secretName: "my-tls", caSecretName: "my-ca" } } });
    const server = podSpec(findObject(objs, "Deployment", "keycutter-server"));
    assert.equal(server.volumes?.find((v) => v.name === "tls")?.secret?.secretName, "my-tls");
    assert.equal(flag(server.containers[0]!.args!, "--tls-key"), "/etc/keycutter/tls/tls.key");
    const agent = podSpec(findObject(objs, "DaemonSet", "keycutter-agent"));
    assert.equal(agent.volumes?.find((v) => v.name === "server-ca")?.secret?.secretName, "my-ca");
    assert.equal(objs.filter((o) => o.kind === "Certificate").length, 0);
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

  it("every container of every profile declares in-place resizePolicy: memory restarts the server, not the agent", () => {
    // V8 sizes its heap at start (test/node/lifecycle.test.ts measures it): the server restarts
    // on a memory resize, the agent (whose heap limit is V8's floor below 512 Mi) does not
    const expected = (memory: string) => [
      { resourceName: "cpu", restartPolicy: "NotRequired" },
      { resourceName: "memory", restartPolicy: memory },
    ];
    for (const profile of PROFILES) {
      for (const o of parseObjects(renderProfile(profile))) {
        if (!["Deployment", "DaemonSet"].includes(o.kind) || isHook(o)) continue;
        for (const c of podSpec(o).containers)
          assert.deepEqual(
            c.resizePolicy,
            expected(o.kind === "Deployment" ? "RestartContainer" : "NotRequired"),
            `${profile}: ${o.kind}/${c.name}`,
          );
      }
    }
    const custom = renderChart({
      agent: { resizePolicy: [{ resourceName: "memory", restartPolicy: "RestartContainer" }] },
      server: { resizePolicy: [] },
    });
    assert.deepEqual(
      podSpec(findObject(custom, "DaemonSet", "keycutter-agent")).containers[0]!.resizePolicy,
      [{ resourceName: "memory", restartPolicy: "RestartContainer" }],
    );
    assert.equal(
      podSpec(findObject(custom, "Deployment", "keycutter-server")).containers[0]!.resizePolicy,
      undefined,
    );
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
    assert.deepEqual(
      objs.filter(isHook).map((h) => h.metadata.annotations!["helm.sh/hook"]),
      ["test"],
      "only the helm test",
    );
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
    const hooks = objs.filter(isHook).filter((h) => h.metadata.annotations!["helm.sh/hook"] !== "test");
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

type CrdSchema = {
  description?: string;
  type?: string;
  properties?: Record<string, CrdSchema>;
  items?: CrdSchema;
  additionalProperties?: CrdSchema | boolean;
  pattern?: string;
  maxLength?: number;
  minLength?: number;
};
type Crd = K8sObject & {
  spec: {
    versions: {
      name: string;
      additionalPrinterColumns: { name: string; jsonPath: string; priority?: number }[];
      schema: { openAPIV3Schema: CrdSchema };
    }[];
  };
};

/** Paths of properties (and object-typed array items) without a description: what kubectl explain would show bare. */
function undocumented(schema: CrdSchema, path: string): string[] {
  const out: string[] = [];
  if (!schema.description) out.push(path);
  for (const [name, child] of Object.entries(schema.properties ?? {}))
    // metadata is the apiserver's ObjectMeta, described there (a description here is refused)
    if (path.split(".").length > 1 || name !== "metadata")
      out.push(...undocumented(child, `${path}.${name}`));
  if (schema.items && (schema.items.type === "object" || schema.items.properties))
    out.push(...undocumented(schema.items, `${path}[]`));
  return out;
}

const crdsOf = (objs: K8sObject[]): Crd[] =>
  objs.filter((o) => o.kind === "CustomResourceDefinition") as Crd[];
const CONDITION_REASON = /^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/;

describe("helm chart: CRDs as templates (upgraded by helm upgrade)", () => {
  it("both CRDs are rendered with the chart's labels and the keep policy; crds.keep=false and crds.enabled=false", () => {
    const crds = crdsOf(renderChart());
    assert.deepEqual(crds.map((c) => c.metadata.name).sort(), [
      "accesspolicies.keycutter.dev",
      "roleallowances.keycutter.dev",
    ]);
    for (const c of crds) {
      assert.equal(c.metadata.labels!["app.kubernetes.io/managed-by"], "Helm");
      assert.equal(c.metadata.labels!["app.kubernetes.io/instance"], "keycutter");
      assert.equal(c.metadata.labels!["helm.sh/chart"], "keycutter-0.1.0");
      assert.equal(c.metadata.annotations!["helm.sh/resource-policy"], "keep");
    }
    const withLabels = crdsOf(renderChart({ commonLabels: { team: "platform" } }));
    assert.ok(
      withLabels.every((c) => c.metadata.labels!.team === "platform"),
      "commonLabels reach the CRDs",
    );
    assert.ok(crdsOf(renderChart({ crds: { keep: false } })).every((c) => !c.metadata.annotations));
    const argo = { "argocd.argoproj.io/sync-options": "Delete=false,ServerSideApply=true" };
    assert.ok(
      crdsOf(renderChart({ crds: { annotations: argo } })).every(
        (c) =>
          c.metadata.annotations!["argocd.argoproj.io/sync-options"] ===
            argo["argocd.argoproj.io/sync-options"] &&
          c.metadata.annotations!["helm.sh/resource-policy"] === "keep",
      ),
    );
    assert.deepEqual(crdsOf(renderChart({ crds: { enabled: false } })), []);
  });

  it("the rendered CRDs are deploy/crds/ plus labels and annotations, nothing lost", () => {
    const rendered = crdsOf(renderChart());
    for (const f of readdirSync(join(ROOT, "deploy", "crds"))) {
      const source = parse(readFileSync(join(ROOT, "deploy", "crds", f), "utf8")) as Crd;
      const r = structuredClone(rendered.find((c) => c.metadata.name === source.metadata.name)!);
      delete r.metadata.labels;
      delete r.metadata.annotations;
      assert.deepEqual(r, source, f);
    }
  });

  it("every field is described (kubectl explain), and the status follows metav1.Condition", () => {
    for (const crd of crdsOf(renderChart())) {
      const v = crd.spec.versions[0]!;
      assert.deepEqual(
        undocumented(v.schema.openAPIV3Schema, crd.spec.versions[0]!.name),
        [],
        crd.metadata.name,
      );
      const cond = v.schema.openAPIV3Schema.properties!.status!.properties!.conditions!.items!.properties!;
      assert.equal(cond.reason!.pattern, CONDITION_REASON.source);
      assert.equal(cond.reason!.maxLength, 1024);
      assert.equal(cond.reason!.minLength, 1);
      assert.equal(cond.message!.maxLength, 32768);
      assert.equal(cond.type!.maxLength, 316);
      const message = v.additionalPrinterColumns.find((c) => c.name === "Message");
      assert.deepEqual(message, {
        name: "Message",
        type: "string",
        priority: 1,
        jsonPath: '.status.conditions[?(@.type=="Ready")].message',
      });
    }
  });

  it("the checker finds an undescribed field (it is not vacuous)", () => {
    assert.deepEqual(
      undocumented({ description: "x", properties: { a: { type: "string" }, b: { description: "b" } } }, "s"),
      ["s.a"],
    );
  });
});

describe("helm chart: knobs", () => {
  const server = (values: object) =>
    podSpec(findObject(renderChart(values), "Deployment", "keycutter-server"));
  const agent = (values: object) => podSpec(findObject(renderChart(values), "DaemonSet", "keycutter-agent"));
  type Affinity = Record<string, Record<string, unknown[]>>;
  const affinityOf = (spec: PodSpec) => (spec as unknown as { affinity?: Affinity }).affinity;

  it("server.affinity is rendered in full: the user's podAffinity and podAntiAffinity terms with the chart's spread", () => {
    const userAnti = {
      weight: 50,
      podAffinityTerm: {
        topologyKey: "topology.kubernetes.io/zone",
        labelSelector: { matchLabels: { app: "db" } },
      },
    };
    const userPod = {
      requiredDuringSchedulingIgnoredDuringExecution: [
        { topologyKey: "kubernetes.io/hostname", labelSelector: { matchLabels: { app: "cache" } } },
      ],
    };
    const nodeAffinity = {
      requiredDuringSchedulingIgnoredDuringExecution: {
        nodeSelectorTerms: [{ matchExpressions: [{ key: "pool", operator: "In", values: ["system"] }] }],
      },
    };
    const a = affinityOf(
      server({
        server: {
          affinity: {
            nodeAffinity,
            podAffinity: userPod,
            podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [userAnti] },
          },
        },
      }),
    )!;
    assert.deepEqual(a.nodeAffinity, nodeAffinity);
    assert.deepEqual(a.podAffinity, userPod);
    const preferred = a.podAntiAffinity!.preferredDuringSchedulingIgnoredDuringExecution!;
    assert.equal(preferred.length, 2);
    assert.deepEqual(preferred[0], userAnti, "the user's term kept");
    assert.deepEqual(
      (preferred[1] as { podAffinityTerm: { topologyKey: string } }).podAffinityTerm.topologyKey,
      "kubernetes.io/hostname",
    );
    // hard: the spread is required, the user's preferred terms stay
    const hard = affinityOf(
      server({
        server: {
          podAntiAffinity: "hard",
          affinity: { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [userAnti] } },
        },
      }),
    )!;
    assert.equal(hard.podAntiAffinity!.requiredDuringSchedulingIgnoredDuringExecution!.length, 1);
    assert.deepEqual(hard.podAntiAffinity!.preferredDuringSchedulingIgnoredDuringExecution, [userAnti]);
    // none: no affinity at all unless the user gives one
    assert.equal(affinityOf(server({ server: { podAntiAffinity: "none" } })), undefined);
  });

  it("the agent (and the server) run on Linux nodes only by default; the selector merges and can be removed", () => {
    assert.deepEqual((agent({}) as unknown as { nodeSelector: object }).nodeSelector, {
      "kubernetes.io/os": "linux",
    });
    assert.deepEqual((server({}) as unknown as { nodeSelector: object }).nodeSelector, {
      "kubernetes.io/os": "linux",
    });
    assert.deepEqual(
      (agent({ agent: { nodeSelector: { pool: "a" } } }) as unknown as { nodeSelector: object }).nodeSelector,
      { "kubernetes.io/os": "linux", pool: "a" },
    );
    assert.deepEqual(
      (
        agent({ agent: { nodeSelector: { "kubernetes.io/os": null, pool: "a" } } }) as unknown as {
          nodeSelector: object;
        }
      ).nodeSelector,
      { pool: "a" },
    );
    // the uninstall cleanup runs where the agent ran
    const cleanup = podSpec(findObject(renderChart().filter(isHook), "DaemonSet", "keycutter-hook-cleanup"));
    assert.deepEqual((cleanup as unknown as { nodeSelector: object }).nodeSelector, {
      "kubernetes.io/os": "linux",
    });
  });

  it("a PDB that would block every drain is refused at render, with what to do", () => {
    for (const values of [
      { server: { replicas: 1 } },
      { server: { replicas: 2, pdb: { minAvailable: 2 } } },
      { server: { replicas: 2, pdb: { minAvailable: "100%" } } },
      { server: { replicas: 3, pdb: { minAvailable: "70%" } } }, // rounds up to 3
    ])
      assert.throws(
        () => renderChart(values),
        (err: Error & { stderr?: string }) =>
          /would block every node drain/.test(String(err.stderr)) &&
          /server.replicas to 2 or more/.test(String(err.stderr)),
        JSON.stringify(values),
      );
    for (const values of [
      { server: { replicas: 1, pdb: { enabled: false } } },
      { server: { replicas: 1, pdb: { minAvailable: 0 } } },
      { server: { replicas: 3, pdb: { minAvailable: "60%" } } }, // 2 of 3
    ])
      assert.ok(
        renderChart(values).some((o) => o.kind === "Deployment"),
        JSON.stringify(values),
      );
  });

  it("probes, security contexts and log levels are values", () => {
    const probe = { httpGet: { path: "/readyz", port: "ops" }, periodSeconds: 17 };
    const values = {
      server: {
        logLevel: "debug",
        readinessProbe: probe,
        // values merge with the defaults: another handler needs the default's httpGet nulled
        livenessProbe: { httpGet: null, tcpSocket: { port: "ops" } },
        startupProbe: null,
        podSecurityContext: { runAsNonRoot: true, runAsUser: 20002, fsGroup: 20002 },
        securityContext: { readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, runAsUser: 20002 },
      },
      agent: {
        logLevel: "warn",
        readinessProbe: probe,
        podSecurityContext: { seccompProfile: { type: "Localhost", localhostProfile: "keycutter.json" } },
        securityContext: {
          runAsUser: 0,
          readOnlyRootFilesystem: true,
          allowPrivilegeEscalation: false,
          seLinuxOptions: { type: "spc_t" },
        },
      },
    };
    const s = server(values) as unknown as PodSpec & { securityContext: object };
    const sc = s.containers[0]! as Container & {
      startupProbe?: unknown;
      livenessProbe?: unknown;
      readinessProbe?: unknown;
    };
    assert.deepEqual(sc.readinessProbe, { ...probe, timeoutSeconds: 2, failureThreshold: 2 });
    assert.deepEqual(sc.livenessProbe, {
      tcpSocket: { port: "ops" },
      periodSeconds: 10,
      timeoutSeconds: 2,
      failureThreshold: 3,
    });
    assert.equal(sc.startupProbe, undefined);
    // merged into the defaults (Helm's value merge): the changed fields, the rest kept
    assert.deepEqual(s.securityContext, {
      runAsNonRoot: true,
      runAsUser: 20002,
      runAsGroup: 10001,
      fsGroup: 20002,
      seccompProfile: { type: "RuntimeDefault" },
    });
    assert.equal(sc.securityContext?.runAsUser, 20002);
    assert.deepEqual(sc.securityContext?.capabilities, { drop: ["ALL"] });
    assert.equal(sc.env!.find((e) => e.name === "KEYCUTTER_LOG_LEVEL")?.value, "debug");
    const a = agent(values) as unknown as PodSpec & { securityContext: object };
    const ac = a.containers[0]! as Container & { readinessProbe?: unknown };
    // the agent's `port: ops` is its number: with the hand-over the pod declares no ports
    assert.deepEqual(ac.readinessProbe, {
      ...probe,
      httpGet: { ...probe.httpGet, port: 8182 },
      timeoutSeconds: 2,
      failureThreshold: 2,
    });
    assert.deepEqual(a.securityContext, {
      seccompProfile: { type: "Localhost", localhostProfile: "keycutter.json" },
    });
    // the capabilities stay the chart's
    assert.deepEqual(ac.securityContext, {
      runAsUser: 0,
      runAsNonRoot: false,
      privileged: false,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      seLinuxOptions: { type: "spc_t" },
      capabilities: { drop: ["ALL"], add: ["NET_ADMIN"] },
    } as never);
    assert.equal(ac.env!.find((e) => e.name === "KEYCUTTER_LOG_LEVEL")?.value, "warn");
    // defaults: info on both
    assert.equal(server({}).containers[0]!.env!.find((e) => e.name === "KEYCUTTER_LOG_LEVEL")?.value, "info");
    assert.equal(agent({}).containers[0]!.env!.find((e) => e.name === "KEYCUTTER_LOG_LEVEL")?.value, "info");
    for (const [bad, re] of [
      [
        { agent: { securityContext: { capabilities: { add: ["SYS_ADMIN"] } } } },
        /agent\/securityContext': 'not' failed/,
      ],
      [{ server: { logLevel: "verbose" } }, /logLevel': value must be one of/],
    ] as const)
      assert.throws(
        () => renderChart(bad),
        (err: Error & { stderr?: string }) => re.test(String(err.stderr)),
        JSON.stringify(bad),
      );
  });

  it("commonLabels reach every object and pod template; extraObjects are rendered as templates", () => {
    const objs = renderChart({
      commonLabels: { "example.com/team": "platform" },
      extraObjects: [
        {
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name: '{{ include "keycutter.fullname" . }}-extra' },
        },
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra-{{ .Release.Namespace }}\n",
      ],
    });
    const extras = objs.filter((o) => o.kind === "ConfigMap" && o.metadata.name.includes("extra"));
    assert.deepEqual(extras.map((o) => o.metadata.name).sort(), [
      "extra-keycutter-system",
      "keycutter-extra",
    ]);
    const mine = objs.filter((o) => !extras.includes(o));
    const unlabelled = mine.filter((o) => o.metadata.labels?.["example.com/team"] !== "platform");
    assert.deepEqual(
      unlabelled.map((o) => `${o.kind}/${o.metadata.name}`),
      [],
    );
    for (const o of mine.filter((x) => ["Deployment", "DaemonSet", "Job"].includes(x.kind))) {
      const labels = (
        o as unknown as { spec: { template: { metadata: { labels: Record<string, string> } } } }
      ).spec.template.metadata.labels;
      assert.equal(labels["example.com/team"], "platform", `${o.kind}/${o.metadata.name} pods`);
    }
  });

  it("the agent's maxUnavailable and maxSurge take a percentage or a number, not both zero", () => {
    const ds = (v: unknown) =>
      (
        findObject(
          renderChart({
            agent: {
              updateStrategy: {
                type: "RollingUpdate",
                rollingUpdate: { maxSurge: v === 0 ? 1 : 0, maxUnavailable: v },
              },
            },
          }),
          "DaemonSet",
          "keycutter-agent",
        ) as unknown as { spec: { updateStrategy: { rollingUpdate: { maxUnavailable: unknown } } } }
      ).spec.updateStrategy.rollingUpdate.maxUnavailable;
    assert.equal(ds("10%"), "10%");
    assert.equal(ds(3), 3);
    // 0 is the default beside maxSurge 1 (the hand-over's surge)
    assert.equal(ds(0), 0);
    for (const bad of ["ten", "101%", -1])
      assert.throws(
        () => ds(bad),
        (err: Error & { stderr?: string }) => /maxUnavailable/.test(String(err.stderr)),
        String(bad),
      );
    // a DaemonSet takes one of the two: a clear message at render, not the apiserver's 422
    assert.throws(
      () =>
        renderChart({
          agent: { updateStrategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 1 } } },
        }),
      (err: Error & { stderr?: string }) => /set maxSurge: 0/.test(String(err.stderr)),
    );
    // a rollout that may neither add nor remove a pod never progresses
    assert.throws(
      () =>
        renderChart({
          agent: {
            updateStrategy: { type: "RollingUpdate", rollingUpdate: { maxSurge: 0, maxUnavailable: "0%" } },
          },
        }),
      (err: Error & { stderr?: string }) => /rollingUpdate/.test(String(err.stderr)),
    );
  });

  it("Chart.yaml names home, sources and maintainers", () => {
    const chart = parse(readFileSync(join(CHART_DIR, "Chart.yaml"), "utf8")) as {
      home?: string;
      sources?: string[];
      maintainers?: { name: string }[];
    };
    assert.match(chart.home ?? "", /^https:\/\//);
    assert.ok((chart.sources ?? []).length > 0);
    assert.ok((chart.maintainers ?? []).every((m) => m.name.length > 0) && chart.maintainers!.length > 0);
  });

  it("helm test: a pod with the chart's image runs keycutter doctor against the server's Service and its node's agent", () => {
    const objs = renderChart({ server: { opsPort: 9999 }, agent: { opsPort: 8888 } });
    const pod = findObject(objs, "Pod", "keycutter-test") as unknown as K8sObject & {
      spec: PodSpec & { restartPolicy: string; automountServiceAccountToken: boolean };
    };
    assert.equal(pod.metadata.annotations!["helm.sh/hook"], "test");
    const c = pod.spec.containers[0]!;
    assert.equal((c as unknown as { image: string }).image, "keycutter:0.1.0", "the chart's own image");
    assert.deepEqual(c.args, [
      "doctor",
      "--no-cluster",
      "--no-hook",
      "--agent-ops-url=http://$(NODE_IP):8888",
      "--server-ops-url=http://keycutter-server.keycutter-system.svc:9999",
    ]);
    assert.equal(pod.spec.restartPolicy, "Never");
    // placed as the agent is, so that its node has one
    const agentSpec = podSpec(findObject(objs, "DaemonSet", "keycutter-agent"));
    assert.deepEqual(pod.spec.tolerations, agentSpec.tolerations);
    assert.deepEqual(
      (pod.spec as unknown as { nodeSelector: object }).nodeSelector,
      (agentSpec as unknown as { nodeSelector: object }).nodeSelector,
    );
    assert.equal(pod.spec.automountServiceAccountToken, false, "it needs no API access");
    // the NetworkPolicy lets this pod (and only it, by label) read the server's ops port
    const np = findObject(objs, "NetworkPolicy", "keycutter-server") as unknown as {
      spec: {
        ingress: {
          ports: { port: string }[];
          from?: { podSelector?: { matchLabels: Record<string, string> } }[];
        }[];
      };
    };
    const rule = np.spec.ingress.find((r) => r.from?.some((f) => f.podSelector));
    assert.deepEqual(rule?.ports, [{ port: "ops", protocol: "TCP" }] as never);
    assert.equal(rule?.from?.[0]?.podSelector?.matchLabels["app.kubernetes.io/component"], "test");
    const off = renderChart({ tests: { enabled: false } });
    assert.ok(!off.some((o) => o.kind === "Pod"));
    const offNp = findObject(off, "NetworkPolicy", "keycutter-server") as unknown as typeof np;
    assert.ok(!offNp.spec.ingress.some((r) => r.from?.some((f) => f.podSelector)));
  });

  it("rbac.aggregateToDefaultRoles renders AccessPolicy rules labelled for view and edit (off by default)", () => {
    assert.ok(!renderChart().some((o) => o.metadata.name.startsWith("keycutter-accesspolicies-")));
    const objs = renderChart({ rbac: { aggregateToDefaultRoles: true } });
    const view = findObject(objs, "ClusterRole", "keycutter-accesspolicies-view");
    const edit = findObject(objs, "ClusterRole", "keycutter-accesspolicies-edit");
    assert.equal(view.metadata.labels!["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    assert.equal(edit.metadata.labels!["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert.deepEqual(normRules(roleRules(objs, "ClusterRole", "keycutter-accesspolicies-view")), [
      "keycutter.dev|accesspolicies/status|get|",
      "keycutter.dev|accesspolicies/status|list|",
      "keycutter.dev|accesspolicies/status|watch|",
      "keycutter.dev|accesspolicies|get|",
      "keycutter.dev|accesspolicies|list|",
      "keycutter.dev|accesspolicies|watch|",
    ]);
    const editRules = normRules(roleRules(objs, "ClusterRole", "keycutter-accesspolicies-edit"));
    assert.ok(editRules.includes("keycutter.dev|accesspolicies|create|"));
    assert.ok(!editRules.some((r) => r.includes("status")), "tenants never write the server's status");
    assert.ok(!editRules.some((r) => r.includes("roleallowances")), "RoleAllowances stay the platform's");
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

// The same for the custom profile's PrometheusRule (the alerts of monitoring/alerts.yaml, which
// promtool checks in test/deploy/monitoring.test.ts).
const PROMETHEUS_RULE_CRD = {
  ...SERVICE_MONITOR_CRD,
  metadata: { name: "prometheusrules.monitoring.coreos.com" },
  spec: {
    ...SERVICE_MONITOR_CRD.spec,
    names: {
      plural: "prometheusrules",
      singular: "prometheusrule",
      kind: "PrometheusRule",
      listKind: "PrometheusRuleList",
    },
  },
};
/** cert-manager's own CRDs (scripts/setup-deploy-tools.sh takes them from its Go module). */
function certManagerCrds(): K8sObject[] {
  const dir = join(CACHE, `cert-manager-crds-${versions().CERT_MANAGER_VERSION}`);
  if (!existsSync(dir)) throw new Error(`${dir} is missing: run scripts/setup-deploy-tools.sh`);
  return readdirSync(dir).map((f) => parse(readFileSync(join(dir, f), "utf8")) as K8sObject);
}

describe("helm chart: a real kube-apiserver validates every render", () => {
  let cluster: Cluster;
  let kubelet: Kubelet;

  before(async () => {
    cluster = await startCluster();
    kubelet = new Kubelet(cluster.kc);
    // CRDs for real (as the chart renders them), then wait until served
    const crds = crdsOf(renderChart());
    for (const crd of [...crds, SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD, ...certManagerCrds()]) {
      const r = await createObject(cluster, crd as K8sObject, { dryRun: false });
      assert.equal(r.status, 201, `CRD ${(crd as K8sObject).metadata.name}: ${JSON.stringify(r.body)}`);
    }
    await waitFor(
      "CRDs established",
      async () => {
        for (const crd of [
          ...crds,
          SERVICE_MONITOR_CRD,
          PROMETHEUS_RULE_CRD,
          ...certManagerCrds(),
        ] as K8sObject[]) {
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

  // what the controller-manager (not run here) makes in every namespace; the helm test pod uses it
  const createDefaultServiceAccount = async (ns: string) => {
    const sa = { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "default", namespace: ns } };
    const r = await createObject(cluster, sa, { dryRun: false });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  };

  for (const profile of PROFILES) {
    it(`profile ${profile}: every object passes server-side dry-run with strict field validation`, async () => {
      const ns = `kc-${profile}`;
      await kubelet.ensureNamespace(ns);
      await createDefaultServiceAccount(ns);
      const objs = parseObjects(renderProfile(profile, ns));
      assert.ok(objs.length > 10);
      const failures: string[] = [];
      assert.equal(crdsOf(objs).length, 2);
      for (const o of objs) {
        // the CRDs exist (created above): validated as the update helm upgrade makes
        const r =
          o.kind === "CustomResourceDefinition"
            ? await applyObjectDryRun(cluster, o)
            : await createObject(cluster, o, { dryRun: true, namespace: ns });
        if (o.kind === "CustomResourceDefinition" && r.status === 200 && r.warnings.length === 0) continue;
        if (r.status !== 201 || r.warnings.length > 0)
          failures.push(
            `${o.kind}/${o.metadata.name}: HTTP ${r.status} ${r.warnings.join("; ")} ${JSON.stringify(r.body).slice(0, 400)}`,
          );
      }
      assert.deepEqual(failures, []);
    });
  }

  it("cert-manager: the Certificate passes dry-run against cert-manager's own CRDs", async () => {
    const ns = "kc-cert-manager";
    await kubelet.ensureNamespace(ns);
    const objs = renderChart(
      { server: { tls: { certManager: { enabled: true, issuerRef: { name: "keycutter-ca" } } } } },
      { namespace: ns },
    );
    const failures: string[] = [];
    for (const o of objs) {
      // the CRDs exist (created above): validated as the update helm upgrade makes
      if (o.kind === "CustomResourceDefinition") {
        const applied = await applyObjectDryRun(cluster, o);
        if (applied.status !== 200 || applied.warnings.length > 0)
          failures.push(`${o.kind}/${o.metadata.name}: HTTP ${applied.status}`);
        continue;
      }
      const r = await createObject(cluster, o, { dryRun: true, namespace: ns });
      if (r.status !== 201 || r.warnings.length > 0)
        failures.push(
          `${o.kind}/${o.metadata.name}: HTTP ${r.status} ${JSON.stringify(r.body).slice(0, 400)}`,
        );
    }
    assert.deepEqual(failures, []);
    // the CRD's schema is really applied: a value outside its enum is refused
    const cert = structuredClone(findObject(objs, "Certificate", "keycutter-server")) as unknown as {
      spec: { privateKey: { rotationPolicy: string } };
    };
    cert.spec.privateKey.rotationPolicy = "Sometimes";
    const bad = await createObject(cluster, cert as unknown as K8sObject, { dryRun: true, namespace: ns });
    assert.equal(bad.status, 422, JSON.stringify(bad.body).slice(0, 300));
  });

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
      await createDefaultServiceAccount(ns);
      for (const o of objs)
        if (o.kind === "ServiceAccount") await createObject(cluster, o, { dryRun: false });
      for (const [kind, name] of [
        ["Deployment", "keycutter-server"],
        ["DaemonSet", "keycutter-agent"],
      ] as const) {
        const r = await createObject(cluster, podFrom(findObject(objs, kind, name), ns), { dryRun: true });
        outcomes[`${name}@${level}`] = r.status === 201 ? "admitted" : `refused ${r.status}`;
      }
      const testPod = findObject(objs, "Pod", "keycutter-test");
      const r = await createObject(cluster, testPod, { dryRun: true });
      outcomes[`keycutter-test@${level}`] = r.status === 201 ? "admitted" : `refused ${r.status}`;
    }
    assert.deepEqual(outcomes, {
      "keycutter-test@restricted": "admitted",
      "keycutter-test@baseline": "admitted",
      "keycutter-test@privileged": "admitted",
      "keycutter-server@restricted": "admitted",
      "keycutter-server@baseline": "admitted",
      "keycutter-server@privileged": "admitted",
      "keycutter-agent@restricted": "refused 403",
      "keycutter-agent@baseline": "refused 403",
      "keycutter-agent@privileged": "admitted",
    });
  });

  it("rbac.aggregateToDefaultRoles: the aggregation controller adds the rules to edit and view; a user bound to edit may create an AccessPolicy", async () => {
    const ns = "kc-tenant-rbac";
    await kubelet.ensureNamespace(ns);
    const roles = renderChart({ rbac: { aggregateToDefaultRoles: true } }, { namespace: ns }).filter((o) =>
      o.metadata.name.startsWith("keycutter-accesspolicies-"),
    );
    assert.equal(roles.length, 2);
    for (const o of roles) assert.equal((await createObject(cluster, o, { dryRun: false })).status, 201);
    const bind = (user: string, role: string) => ({
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "RoleBinding",
      metadata: { name: `${user}-${role}`, namespace: ns },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: role },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: user }],
    });
    for (const b of [bind("alice", "edit"), bind("bob", "view")])
      assert.equal((await createObject(cluster, b as K8sObject, { dryRun: false })).status, 201);
    const policy = (name: string) =>
      ({
        apiVersion: "keycutter.dev/v1alpha1",
        kind: "AccessPolicy",
        metadata: { name, namespace: ns },
        spec: { podSelector: {}, roleArn: "arn:aws:iam::123456789012:role/tenant" },
      }) as K8sObject;
    const asUser = (user: string, o: K8sObject, dryRun = true) =>
      createObject(cluster, o, { dryRun, impersonateUser: user });
    // the built-in roles alone do not cover the CRD: refused before the controller aggregates
    assert.equal((await asUser("alice", policy("p0"))).status, 403);

    // the ClusterRole aggregation controller (the controller-manager's, alone)
    const dir = mkdtempSync(join(tmpdir(), "kc-kcm-"));
    const kcm = new ManagedProcess(
      "kube-controller-manager",
      join(CACHE, "bin", `kube-controller-manager-${versions().K8S_VERSION}`),
      [
        `--kubeconfig=${cluster.kubeconfigPath}`,
        `--authentication-kubeconfig=${cluster.kubeconfigPath}`,
        `--authorization-kubeconfig=${cluster.kubeconfigPath}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${await freePort()}`,
        `--cert-dir=${dir}`,
        "--leader-elect=false",
        "--controllers=clusterrole-aggregation",
      ],
    );
    try {
      await waitFor(
        "edit aggregates the AccessPolicy rules",
        async () => {
          if (!kcm.running) throw new Error(`kube-controller-manager exited:\n${kcm.logs()}`);
          return (await asUser("alice", policy("p0"))).status === 201;
        },
        { timeoutMs: 60_000, onTimeout: () => kcm.logs() },
      );
    } finally {
      await kcm.stop();
      rmSync(dir, { recursive: true, force: true });
    }
    assert.equal((await asUser("alice", policy("p1"), false)).status, 201, "alice (edit) creates one");
    const list = await apiCall(
      cluster,
      "GET",
      `/apis/keycutter.dev/v1alpha1/namespaces/${ns}/accesspolicies`,
      undefined,
      {
        impersonateUser: "bob",
      },
    );
    assert.equal(list.status, 200, "bob (view) reads them");
    assert.equal((await asUser("bob", policy("p2"))).status, 403, "bob (view) cannot write");
    const status = await apiCall(
      cluster,
      "PUT",
      `/apis/keycutter.dev/v1alpha1/namespaces/${ns}/accesspolicies/p1/status`,
      { ...policy("p1"), status: { conditions: [] } },
      { impersonateUser: "alice" },
    );
    assert.equal(status.status, 403, "the status stays the server's");
    const allowance = {
      apiVersion: "keycutter.dev/v1alpha1",
      kind: "RoleAllowance",
      metadata: { name: "alice-wants-more" },
      spec: { namespaces: [ns], roleArns: ["arn:aws:iam::123456789012:role/*"] },
    } as K8sObject;
    assert.equal((await asUser("alice", allowance)).status, 403, "RoleAllowances stay the platform's");
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
      "Role",
      "RoleBinding",
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
      await can(agent, {
        verb: "get",
        resource: "secrets",
        namespace: ns,
        name: "keycutter-server-managed-tls",
      }),
      false,
      "the agents never read the CA key",
    );
    // server, self-managed TLS: its own Secret and bundle by name; no other Secret
    const tls = { resource: "secrets", namespace: ns };
    assert.equal(await can(server, { ...tls, verb: "get", name: "keycutter-server-managed-tls" }), true);
    assert.equal(await can(server, { ...tls, verb: "update", name: "keycutter-server-managed-tls" }), true);
    assert.equal(await can(server, { ...tls, verb: "get", name: "someone-elses" }), false);
    assert.equal(await can(server, { ...tls, verb: "list" }), false);
    assert.equal(
      await can(server, { ...tls, verb: "get", namespace: "tenant-a", name: "keycutter-server-managed-tls" }),
      false,
    );
    assert.equal(await can(server, { ...config, verb: "update", name: "keycutter-server-ca" }), true);
    assert.equal(await can(server, { ...config, verb: "update", name: "keycutter-config" }), false);
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
