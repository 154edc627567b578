// What the apiserver knows: the installation (its published configuration), the server's and the
// agents' rollout, the TLS Secrets' certificates, and every policy that is not Ready, with why.
import { AppsV1Api, CoreV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { ACCESS_POLICIES, ROLE_ALLOWANCES, type Condition } from "../../policy/types.ts";
import { apiStatusMessage, errorLine } from "../errors.ts";
import type { ServerConfig } from "../server-config.ts";
import { result, type CheckResult } from "./report.ts";
import { certificatesOf, expiryCheck, type ExpiryPolicy } from "./tls-expiry.ts";

/** Not-Ready policies listed one per line, at most this many (the rest counted). */
const MAX_POLICY_LINES = 20;

const forbidden = (err: unknown): boolean =>
  (err as { code?: unknown }).code === 403 && apiStatusMessage(err) !== undefined;
const notFound = (err: unknown): boolean =>
  (err as { code?: unknown }).code === 404 && apiStatusMessage(err) !== undefined;

export async function checkRollout(kc: KubeConfig, cfg: ServerConfig): Promise<CheckResult[]> {
  const apps = kc.makeApiClient(AppsV1Api);
  const out: CheckResult[] = [];
  const ns = cfg.namespace;
  const deployment = cfg.data.serverDeployment;
  if (deployment) {
    try {
      const d = await apps.readNamespacedDeployment({ namespace: ns, name: deployment });
      const want = d.spec?.replicas ?? 1;
      const ready = d.status?.readyReplicas ?? 0;
      out.push(
        ready >= want
          ? result("server replicas", "ok", `${ready} of ${want} ready (deployment ${ns}/${deployment})`)
          : result(
              "server replicas",
              ready === 0 ? "fail" : "warn",
              `${ready} of ${want} ready (deployment ${ns}/${deployment})`,
              `kubectl -n ${ns} describe deployment ${deployment}; kubectl -n ${ns} logs deployment/${deployment}`,
            ),
      );
    } catch (err) {
      out.push(rolloutError("server replicas", `deployment ${ns}/${deployment}`, err));
    }
  }
  const daemonSet = cfg.data.agentDaemonSet;
  if (daemonSet) {
    try {
      const ds = await apps.readNamespacedDaemonSet({ namespace: ns, name: daemonSet });
      const want = ds.status?.desiredNumberScheduled ?? 0;
      const ready = ds.status?.numberReady ?? 0;
      out.push(
        ready >= want
          ? result("agents", "ok", `${ready} of ${want} nodes ready (daemonset ${ns}/${daemonSet})`)
          : result(
              "agents",
              ready === 0 ? "fail" : "warn",
              `${ready} of ${want} nodes ready (daemonset ${ns}/${daemonSet})`,
              `kubectl -n ${ns} get pods -l app.kubernetes.io/component=agent -o wide; on a node whose agent is not ready run keycutter doctor there`,
            ),
      );
    } catch (err) {
      out.push(rolloutError("agents", `daemonset ${ns}/${daemonSet}`, err));
    }
  }
  return out;
}

function rolloutError(check: string, what: string, err: unknown): CheckResult {
  if (forbidden(err)) return result(check, "skip", `cannot read ${what} (forbidden)`);
  if (notFound(err))
    return result(
      check,
      "fail",
      `${what} not found`,
      "is the chart installed completely? helm status <release>",
    );
  return result(check, "fail", `cannot read ${what}: ${errorLine(err)}`);
}

/** The certificates in the serving and CA Secrets the chart mounts. */
export async function checkTlsSecrets(
  kc: KubeConfig,
  cfg: ServerConfig,
  expiry: ExpiryPolicy,
): Promise<CheckResult[]> {
  const core = kc.makeApiClient(CoreV1Api);
  const wanted: Array<{ check: string; secret: string; key: string; what: string }> = [];
  if (cfg.data.tlsSecretName)
    wanted.push({
      check: "server certificate",
      secret: cfg.data.tlsSecretName,
      key: "tls.crt",
      what: "server certificate",
    });
  if (cfg.data.caSecretName)
    wanted.push({
      check: "server CA",
      secret: cfg.data.caSecretName,
      key: cfg.data.caKey || "ca.crt",
      what: "CA",
    });
  const out: CheckResult[] = [];
  for (const w of wanted) {
    const where = `Secret ${cfg.namespace}/${w.secret} ${w.key}`;
    let pem: string | undefined;
    try {
      const s = await core.readNamespacedSecret({ namespace: cfg.namespace, name: w.secret });
      const data = s.data?.[w.key];
      pem = data === undefined ? undefined : Buffer.from(data, "base64").toString("utf8");
    } catch (err) {
      if (forbidden(err)) {
        out.push(
          result(
            w.check,
            "skip",
            `cannot read ${where} (forbidden)`,
            "run with a kubeconfig that may read Secrets there, or on a node with --server-url",
          ),
        );
        continue;
      }
      if (notFound(err)) {
        out.push(
          result(
            w.check,
            "fail",
            `Secret ${cfg.namespace}/${w.secret} not found`,
            cfg.data.tlsMode === "selfManaged"
              ? "the server creates it when it starts (self-managed TLS): is a server replica running? kubectl logs deploy/<release>-server"
              : cfg.data.tlsMode === "certManager"
                ? "cert-manager has not issued it yet: kubectl describe certificate -n <namespace>"
                : "the server cannot start without it: see docs/OPERATIONS.md, Install, TLS",
          ),
        );
        continue;
      }
      throw err;
    }
    const certs = pem === undefined ? [] : certificatesOf(pem);
    if (certs.length === 0) {
      out.push(result(w.check, "fail", `${where}: no certificate`));
      continue;
    }
    // the first certificate of a chain is the server's; every certificate of a CA bundle counts
    for (const c of w.key === "tls.crt" ? certs.slice(0, 1) : certs)
      out.push(expiryCheck(w.check, `${w.what} (${where})`, c, expiry));
  }
  return out;
}

interface PolicyObject {
  metadata: { name?: string; namespace?: string; generation?: number };
  status?: { conditions?: Condition[] };
}

/** Policies whose Ready condition is not True, and why; ones the server has not looked at yet. */
export async function checkPolicies(kc: KubeConfig, namespace?: string): Promise<CheckResult[]> {
  const custom = kc.makeApiClient(CustomObjectsApi);
  const lists: Array<{ kind: string; items: PolicyObject[] }> = [];
  const accessPolicies = namespace
    ? custom.listNamespacedCustomObject({ ...ACCESS_POLICIES, namespace })
    : custom.listClusterCustomObject(ACCESS_POLICIES);
  const out: CheckResult[] = [];
  for (const [kind, request] of [
    ["AccessPolicy", accessPolicies],
    ["RoleAllowance", custom.listClusterCustomObject(ROLE_ALLOWANCES)],
  ] as const) {
    try {
      lists.push({ kind, items: ((await request) as { items: PolicyObject[] }).items });
    } catch (err) {
      if (forbidden(err)) out.push(result("policies", "skip", `cannot list ${kind} objects (forbidden)`));
      else if (notFound(err))
        out.push(
          result(
            "policies",
            "fail",
            `the ${kind} CRD is not installed`,
            "install the chart (it installs the CRDs unless crds.enabled=false) or kubectl apply --server-side -f deploy/crds/",
          ),
        );
      else throw err;
    }
  }
  let ready = 0;
  const problems: CheckResult[] = [];
  for (const { kind, items } of lists) {
    for (const item of items) {
      const name = `${kind} ${item.metadata.namespace ? `${item.metadata.namespace}/` : ""}${item.metadata.name ?? ""}`;
      const cond = item.status?.conditions?.find((c) => c.type === "Ready");
      if (!cond) {
        problems.push(
          result(
            "policies",
            "warn",
            `${name}: no Ready condition yet`,
            "the server's leader writes it within seconds: is a server replica running and leading?",
          ),
        );
      } else if (cond.status !== "True") {
        problems.push(
          result(
            "policies",
            "fail",
            `${name} is not Ready: ${cond.reason}${cond.message ? `: ${cond.message}` : ""}`,
            "pods it selects get no credentials; keycutter explain <namespace>/<pod> shows the decision",
          ),
        );
      } else if (
        cond.observedGeneration !== undefined &&
        item.metadata.generation !== undefined &&
        cond.observedGeneration < item.metadata.generation
      ) {
        problems.push(
          result(
            "policies",
            "warn",
            `${name}: Ready is for generation ${cond.observedGeneration}, the object is at ${item.metadata.generation}`,
            "the server has not judged the latest change yet",
          ),
        );
      } else ready++;
    }
  }
  const failuresFirst = [
    ...problems.filter((p) => p.status === "fail"),
    ...problems.filter((p) => p.status !== "fail"),
  ];
  out.push(...failuresFirst.slice(0, MAX_POLICY_LINES));
  if (failuresFirst.length > MAX_POLICY_LINES)
    out.push(
      result(
        "policies",
        failuresFirst.some((p) => p.status === "fail") ? "fail" : "warn",
        `… and ${failuresFirst.length - MAX_POLICY_LINES} more not Ready`,
      ),
    );
  if (lists.length > 0 && problems.length === 0)
    out.push(
      result(
        "policies",
        "ok",
        `all ${ready} Ready${namespace ? ` (the AccessPolicies in ${namespace} and every RoleAllowance)` : ""}`,
      ),
    );
  return out;
}
