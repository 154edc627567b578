// The RBAC the end-to-end system runs under is the Helm chart's own: its ServiceAccounts,
// ClusterRoles, Roles and bindings for the server and the agent, rendered by helm.
import type { KubernetesObject } from "@kubernetes/client-node";
import { chartRbacObjects as renderChartRbac } from "../deploy/render.ts";

export function chartRbacObjects(ns: string): KubernetesObject[] {
  return renderChartRbac(ns) as KubernetesObject[];
}
