// Policies created through the apiserver as a user would apply them: a cluster RoleAllowance, a
// namespaced AccessPolicy (the CRDs must be installed, keycutter-server.ts's installCrds).
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";

const API = { group: "keycutter.dev", version: "v1alpha1" };
const API_VERSION = `${API.group}/${API.version}`;

export async function createRoleAllowance(kc: KubeConfig, name: string, spec: object): Promise<void> {
  await kc.makeApiClient(CustomObjectsApi).createClusterCustomObject({
    ...API,
    plural: "roleallowances",
    body: { apiVersion: API_VERSION, kind: "RoleAllowance", metadata: { name }, spec },
  });
}

export async function createAccessPolicy(
  kc: KubeConfig,
  namespace: string,
  name: string,
  spec: object,
): Promise<void> {
  await kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
    ...API,
    namespace,
    plural: "accesspolicies",
    body: { apiVersion: API_VERSION, kind: "AccessPolicy", metadata: { name, namespace }, spec },
  });
}
