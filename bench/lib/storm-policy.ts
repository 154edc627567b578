// The tenant the storms run as: a role in moto, a RoleAllowance for the namespace, and an
// AccessPolicy for its `app` service account whose session policy narrows the role to the pod's
// namespace — so every issuance in a storm is the full server path (templates, session policy).
import type { System } from "../../test/e2e/system.ts";
import { MOTO_ACCOUNT_ID } from "../../test/harness/index.ts";

/**
 * A benchmark tenant's AWS side: the role `<name>-role` (reads bucket `name`) and the
 * RoleAllowance `name` letting `namespaces` use `<name>-*` roles. Returns the role's ARN.
 */
export async function allowBenchRole(sys: System, name: string, namespaces: string[]): Promise<string> {
  const roleArn = await sys.moto.createRole(`${name}-role`, {
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${name}/*`] }],
  });
  await sys.apply({
    apiVersion: "keycutter.dev/v1alpha1",
    kind: "RoleAllowance",
    metadata: { name },
    spec: {
      namespaces,
      roleArns: [`arn:aws:iam::${MOTO_ACCOUNT_ID}:role/${name}-*`],
      maxDurationSeconds: 3600,
    },
  });
  return roleArn;
}

/** `name` names the role (`<name>-role`), the allowance and the bucket; `ns` is the tenant. */
export async function setUpStormTenant(sys: System, name: string, ns: string): Promise<void> {
  const roleArn = await allowBenchRole(sys, name, [ns]);
  await sys.kubelet.ensureNamespace(ns);
  await sys.kubelet.createServiceAccount(ns, "app");
  await sys.apply({
    apiVersion: "keycutter.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { namespace: ns, name: "app" },
    spec: {
      podSelector: { serviceAccountName: "app" },
      roleArn,
      sessionPolicy: {
        Version: "2012-10-17",
        Statement: [
          { Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${name}/\${namespace}/*`] },
        ],
      },
      durationSeconds: 3600,
    },
  });
}
