// Helpers for tests that run the keycutter server against the real apiserver: install the CRDs
// from deploy/crds, apply the server's RBAC from deploy/rbac bound to a service account, and write
// a shared cache key. Serving certificates: tls.ts.

import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  ApiextensionsV1Api,
  CustomObjectsApi,
  RbacAuthorizationV1Api,
  type KubeConfig,
  type KubernetesObject,
  type V1ClusterRole,
  type V1CustomResourceDefinition,
  type V1Role,
} from "@kubernetes/client-node";
import { parse } from "yaml";
import { ROOT } from "./paths.ts";
import { waitFor } from "./process.ts";
import { applyObjects } from "./apply.ts";

function isConflict(e: unknown): boolean {
  return (e as { code?: number }).code === 409;
}

/** Creates (or updates) every CRD in deploy/crds and waits until they are Established. */
export async function installCrds(kc: KubeConfig): Promise<void> {
  const api = kc.makeApiClient(ApiextensionsV1Api);
  const dir = join(ROOT, "deploy", "crds");
  const crds = readdirSync(dir)
    .filter((x) => x.endsWith(".yaml"))
    .map((f) => parse(readFileSync(join(dir, f), "utf8")) as V1CustomResourceDefinition);
  const names = crds.map((c) => c.metadata?.name ?? "");
  await applyObjects(kc, crds as KubernetesObject[]);
  await waitFor(
    "CRDs established",
    async () => {
      for (const name of names) {
        const c = await api.readCustomResourceDefinition({ name });
        if (!c.status?.conditions?.some((x) => x.type === "Established" && x.status === "True")) return false;
      }
      return true;
    },
    { timeoutMs: 30_000 },
  );
  // the discovery cache of the apiserver needs a moment before custom objects can be created
  const custom = kc.makeApiClient(CustomObjectsApi);
  await waitFor(
    "CRDs served",
    async () => {
      try {
        await custom.listClusterCustomObject({
          group: "keycutter.dev",
          version: "v1alpha1",
          plural: "roleallowances",
        });
        await custom.listClusterCustomObject({
          group: "keycutter.dev",
          version: "v1alpha1",
          plural: "accesspolicies",
        });
        return true;
      } catch {
        return false;
      }
    },
    { timeoutMs: 30_000 },
  );
}

/** Applies deploy/rbac/server-clusterrole.yaml and server-role.yaml bound to namespace/sa. */
export async function applyServerRbac(kc: KubeConfig, namespace: string, sa: string): Promise<void> {
  const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
  const cr = parse(
    readFileSync(join(ROOT, "deploy", "rbac", "server-clusterrole.yaml"), "utf8"),
  ) as V1ClusterRole;
  const role = parse(readFileSync(join(ROOT, "deploy", "rbac", "server-role.yaml"), "utf8")) as V1Role;
  role.metadata = { ...role.metadata, namespace };
  const ignore = (e: unknown) => {
    if (!isConflict(e)) throw e;
  };
  await rbac.createClusterRole({ body: cr }).catch(ignore);
  await rbac
    .createClusterRoleBinding({
      body: {
        metadata: { name: `keycutter-server-${namespace}-${sa}` },
        roleRef: {
          apiGroup: "rbac.authorization.k8s.io",
          kind: "ClusterRole",
          name: cr.metadata?.name ?? "",
        },
        subjects: [{ kind: "ServiceAccount", name: sa, namespace }],
      },
    })
    .catch(ignore);
  await rbac.createNamespacedRole({ namespace, body: role }).catch(ignore);
  await rbac
    .createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: `keycutter-server-leader-election-${sa}`, namespace },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: role.metadata?.name ?? "" },
        subjects: [{ kind: "ServiceAccount", name: sa, namespace }],
      },
    })
    .catch(ignore);
}

/** Writes a 32-byte AES key file (hex) for the shared cache: `<dir>/cache.key`. */
export function cacheKeyFile(dir: string): string {
  const p = join(dir, "cache.key");
  writeFileSync(p, randomBytes(32).toString("hex"), { mode: 0o600 });
  return p;
}
