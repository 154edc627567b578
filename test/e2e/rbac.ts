// The RBAC the end-to-end system runs under: the server's roles from deploy/rbac (the chart
// ships the same rules), bound to the server's and agent's service accounts.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { KubernetesObject } from "@kubernetes/client-node";
import { ROOT, parseYamlObjects } from "../harness/index.ts";

export function chartRbacObjects(ns: string): KubernetesObject[] {
  const dir = join(ROOT, "deploy", "rbac");
  const objs = readdirSync(dir)
    .filter((f) => f.endsWith(".yaml"))
    .flatMap((f) => parseYamlObjects(readFileSync(join(dir, f), "utf8")))
    .map((o) => (o.metadata?.namespace ? { ...o, metadata: { ...o.metadata, namespace: ns } } : o));
  const binding = (kind: "ClusterRoleBinding" | "RoleBinding", role: KubernetesObject, sa: string) => ({
    apiVersion: "rbac.authorization.k8s.io/v1",
    kind,
    metadata: { name: role.metadata!.name!, ...(kind === "RoleBinding" ? { namespace: ns } : {}) },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: role.kind!, name: role.metadata!.name! },
    subjects: [{ kind: "ServiceAccount", name: sa, namespace: ns }],
  });
  const agentRole = {
    apiVersion: "rbac.authorization.k8s.io/v1",
    kind: "ClusterRole",
    metadata: { name: "keycutter-agent" },
    rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["list", "watch"] }],
  };
  const out: KubernetesObject[] = [...objs, agentRole];
  for (const o of objs) {
    if (o.kind === "ClusterRole") out.push(binding("ClusterRoleBinding", o, "keycutter-server"));
    if (o.kind === "Role") out.push(binding("RoleBinding", o, "keycutter-server"));
  }
  out.push(binding("ClusterRoleBinding", agentRole, "keycutter-agent"));
  return out;
}
