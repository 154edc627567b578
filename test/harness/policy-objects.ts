// Policy objects as the server's informers hold them, for unit tests of what reads them: one
// AccessPolicy (uid "pu") and one RoleAllowance (uid "au") at generation 1, account 123456789012.
import type { AccessPolicy, RoleAllowance } from "../../src/policy/types.ts";

export function accessPolicyObject(o: {
  namespace: string;
  name: string;
  role: string;
  durationSeconds: number;
}): AccessPolicy {
  return {
    metadata: { name: o.name, namespace: o.namespace, uid: "pu", generation: 1 },
    spec: {
      podSelector: {},
      roleArn: `arn:aws:iam::123456789012:role/${o.role}`,
      durationSeconds: o.durationSeconds,
    },
  };
}

/** Lets `namespaces` use every role of the account. */
export function roleAllowanceObject(name: string, namespaces: string[]): RoleAllowance {
  return {
    metadata: { name, uid: "au", generation: 1 },
    spec: { namespaces, roleArns: ["arn:aws:iam::123456789012:role/*"] },
  };
}
