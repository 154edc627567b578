// The tenants, roles, buckets and policies the end-to-end suites and the demo share.
import { MOTO_ACCOUNT_ID } from "../harness/index.ts";
import type { System } from "./system.ts";

export const ROLE_A = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-a-reader`;
export const ROLE_B = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-b-reader`;
export const BUCKET_A = "tenant-a-data";
export const BUCKET_B = "tenant-b-data";

const readBucket = (bucket: string) => ({
  Version: "2012-10-17",
  Statement: [
    { Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${bucket}/*`] },
    { Effect: "Allow", Action: ["s3:ListBucket"], Resource: [`arn:aws:s3:::${bucket}`] },
  ],
});

/** The tenants' buckets and roles in moto (only `sys.moto` is used: the real node's suites pass theirs). */
export async function createTenantAws(sys: Pick<System, "moto">): Promise<void> {
  await sys.moto.createBucket(BUCKET_A, { "tenant-a/report.csv": "a,1\n", "tenant-a/other/x.txt": "x" });
  await sys.moto.createBucket(BUCKET_B, { "tenant-b/secret.csv": "b,2\n" });
  await sys.moto.createRole("tenant-a-reader", readBucket(BUCKET_A));
  await sys.moto.createRole("tenant-b-reader", readBucket(BUCKET_B));
}

export function roleAllowance(): object {
  return {
    apiVersion: "keycutter.dev/v1alpha1",
    kind: "RoleAllowance",
    metadata: { name: "tenants" },
    spec: {
      namespaces: ["tenant-*"],
      roleArns: [`arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-*`],
      maxDurationSeconds: 3600,
      // the tenants' policies set a `team` tag: the platform permits that key, and only it
      sessionTagKeys: ["team"],
      denyStatements: [{ Effect: "Deny", Action: ["iam:*", "sts:*"], Resource: "*" }],
    },
  };
}

export function accessPolicy(
  namespace: string,
  name: string,
  roleArn: string,
  bucket: string,
  sa = "reader",
): object {
  return {
    apiVersion: "keycutter.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { namespace, name },
    spec: {
      podSelector: { serviceAccountName: sa },
      roleArn,
      sessionPolicy: {
        Version: "2012-10-17",
        Statement: [
          { Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${bucket}/\${namespace}/*`] },
          { Effect: "Allow", Action: ["s3:ListBucket"], Resource: [`arn:aws:s3:::${bucket}`] },
        ],
      },
      sessionTags: { team: "${namespace}" },
      durationSeconds: 3600,
    },
  };
}

export async function applyTenantPolicies(sys: System): Promise<void> {
  await sys.apply(roleAllowance());
  await sys.kubelet.ensureNamespace("tenant-a");
  await sys.kubelet.ensureNamespace("tenant-b");
  await sys.apply(accessPolicy("tenant-a", "readers", ROLE_A, BUCKET_A));
  await sys.apply(accessPolicy("tenant-b", "readers", ROLE_B, BUCKET_B));
}

/**
 * Starts `sys` with both tenants as most suites want them: buckets and roles in moto, which checks
 * every request's signature and the caller's policies from then on, and applyTenantPolicies().
 */
export async function startWithTenants(sys: System): Promise<void> {
  await sys.start((m) => console.log(`# ${m}`));
  await createTenantAws(sys);
  await sys.moto.enableAuth();
  await applyTenantPolicies(sys);
}
