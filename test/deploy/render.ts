// Renders the Helm chart (deploy/helm/keycutter) with the helm binary that
// scripts/setup-deploy-tools.sh builds. Used by the chart tests and by any test that wants to run
// keycutter under the chart's RBAC (renderChart(values) → objects, then clusterRole(...)).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { CACHE, ROOT, versions } from "../harness/paths.ts";

export const CHART_DIR = join(ROOT, "deploy", "helm", "keycutter");
/** The Kubernetes version the chart is rendered for (the test cluster's). */
export const KUBE_VERSION = versions().K8S_VERSION ?? "v1.36.3";

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [key: string]: unknown;
}

export interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  verbs: string[];
}

export interface RenderOptions {
  releaseName?: string;
  namespace?: string;
  /** Also render crds/ (helm template --include-crds). */
  includeCrds?: boolean;
  /** Extra values files, applied before `values`. */
  valuesFiles?: string[];
  /** Leave out TEST_REQUIRED_VALUES (to see what the chart says without them). */
  withoutRequiredValues?: boolean;
}

/**
 * The values the chart cannot default and every render here supplies first (a profile or the
 * caller's values override them): the node CIDRs the server's NetworkPolicy admits.
 */
export const TEST_REQUIRED_VALUES = { networkPolicy: { nodeCidrs: ["10.0.0.0/8"] } };

export function helmBinary(): string {
  const v = versions().HELM_VERSION;
  const bin = join(CACHE, "bin", `helm-${v}`);
  if (!v || !existsSync(bin)) {
    throw new Error(`${bin} is missing: run scripts/setup.sh (scripts/setup-deploy-tools.sh builds helm)`);
  }
  return bin;
}

/** `helm template` output (a multi-document YAML string). */
export function renderChartText(values: object = {}, opts: RenderOptions = {}): string {
  const dir = mkdtempSync(join(tmpdir(), "kc-helm-"));
  try {
    const valuesFile = join(dir, "values.json");
    writeFileSync(valuesFile, JSON.stringify(values));
    const requiredFile = join(dir, "required.json");
    writeFileSync(requiredFile, JSON.stringify(TEST_REQUIRED_VALUES));
    const args = [
      "template",
      opts.releaseName ?? "keycutter",
      CHART_DIR,
      "--namespace",
      opts.namespace ?? "keycutter-system",
      "--kube-version",
      KUBE_VERSION,
      ...(opts.includeCrds ? ["--include-crds"] : []),
      ...(opts.withoutRequiredValues ? [] : ["--values", requiredFile]),
      ...(opts.valuesFiles ?? []).flatMap((f) => ["--values", f]),
      "--values",
      valuesFile,
    ];
    // helm keeps caches and config in these; point them into the temp dir (no $HOME writes)
    const env = {
      ...process.env,
      HELM_CACHE_HOME: join(dir, "cache"),
      HELM_CONFIG_HOME: join(dir, "config"),
      HELM_DATA_HOME: join(dir, "data"),
    };
    return execFileSync(helmBinary(), args, { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The rendered objects (hooks included), in helm's order. */
export function renderChart(values: object = {}, opts: RenderOptions = {}): K8sObject[] {
  return parseObjects(renderChartText(values, opts));
}

export function parseObjects(text: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`rendered YAML: ${doc.errors[0]!.message}`);
    const obj = doc.toJS() as K8sObject | null;
    if (obj && typeof obj === "object") out.push(obj);
  }
  return out;
}

export function findObject(objects: K8sObject[], kind: string, name: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} in the rendered chart`);
  return o;
}

/** The rules of a rendered ClusterRole or Role, e.g. clusterRoleRules(objs, "keycutter-agent"). */
export function roleRules(objects: K8sObject[], kind: "ClusterRole" | "Role", name: string): PolicyRule[] {
  return (findObject(objects, kind, name) as unknown as { rules: PolicyRule[] }).rules;
}

const RBAC_KINDS = new Set([
  "ServiceAccount",
  "ClusterRole",
  "ClusterRoleBinding",
  "Role",
  "RoleBinding",
  "ValidatingAdmissionPolicy",
  "ValidatingAdmissionPolicyBinding",
]);

/**
 * The chart's ServiceAccounts, RBAC and admission policies for the server and the agent (no
 * hooks), ready to create in a test cluster, so that keycutter runs under exactly the chart's
 * permissions. Tokens of `<namespace>/keycutter-server` and `<namespace>/keycutter-agent` then
 * carry those permissions (release "keycutter"; the server is told
 * `--agent-service-account=<namespace>/keycutter-agent`). With
 * `{ agent: { startupTaint: { enabled: true } } }` the agent may also remove its node's startup
 * taint (and nothing else: the ValidatingAdmissionPolicy is included).
 */
export function chartRbacObjects(namespace: string, values: object = {}): K8sObject[] {
  return renderChart(values, { namespace }).filter((o) => RBAC_KINDS.has(o.kind) && !isHook(o));
}

/** Whether a Helm hook (e.g. the uninstall cleanup). */
export function isHook(o: K8sObject): boolean {
  return Boolean(o.metadata.annotations?.["helm.sh/hook"]);
}

/** The args of the named container of a rendered workload. */
export function containerArgs(workload: K8sObject, container: string): string[] {
  const spec = (workload as { spec?: { template?: { spec?: PodSpecLike } } }).spec?.template?.spec;
  const all = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])];
  const c = all.find((x) => x.name === container);
  if (!c) throw new Error(`no container ${container} in ${workload.kind} ${workload.metadata.name}`);
  return c.args ?? [];
}

interface PodSpecLike {
  initContainers?: { name: string; args?: string[] }[];
  containers?: { name: string; args?: string[] }[];
}
