// AccessPolicy (namespaced, written by tenants) and RoleAllowance (cluster-scoped, written by
// platform admins). The CRD schemas live in deploy/crds/; these types mirror them. Everything the
// server reads from these objects is validated again here (validate.ts): the apiserver's schema is
// a first line, not a guarantee (older CRD versions, objects written before a schema change).

export const GROUP = "keycutter.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const ACCESS_POLICY_PLURAL = "accesspolicies";
export const ROLE_ALLOWANCE_PLURAL = "roleallowances";
/** Where the custom objects API finds each kind. */
export const ACCESS_POLICIES = { group: GROUP, version: VERSION, plural: ACCESS_POLICY_PLURAL } as const;
export const ROLE_ALLOWANCES = { group: GROUP, version: VERSION, plural: ROLE_ALLOWANCE_PLURAL } as const;

export interface LabelSelectorRequirement {
  key: string;
  operator: "In" | "NotIn" | "Exists" | "DoesNotExist";
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface PodSelector extends LabelSelector {
  /** Only pods running as this service account. */
  serviceAccountName?: string;
}

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  creationTimestamp?: string | Date;
}

export interface Condition {
  type: string;
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

export interface PolicyStatus {
  observedGeneration?: number;
  conditions?: Condition[];
}

/** An IAM policy statement, kept loose: IAM itself is the judge of the fine structure. */
export type IamStatement = Record<string, unknown>;
export interface IamPolicyDocument {
  /** Only "2012-10-17": the older version reads ${aws:...} policy variables as literal text. */
  Version?: string;
  Statement: IamStatement[] | IamStatement;
  Id?: string;
}

export interface AccessPolicySpec {
  podSelector: PodSelector;
  roleArn: string;
  /** IAM policy document; string values may contain template variables (template.ts). */
  sessionPolicy?: IamPolicyDocument;
  /** Managed policies passed as session policies (PolicyArns, at most 10). */
  managedPolicyArns?: string[];
  /** Extra session tags; values may contain template variables. Keys need a RoleAllowance's permission. */
  sessionTags?: Record<string, string>;
  durationSeconds?: number;
  /** Higher wins when several policies select the same pod; a tie is ambiguous. Default 0. */
  priority?: number;
}

export interface AccessPolicy {
  apiVersion?: string;
  kind?: "AccessPolicy";
  metadata: ObjectMeta;
  spec: AccessPolicySpec;
  status?: PolicyStatus;
}

export interface RoleAllowanceSpec {
  /** Namespace names (exact, or glob with * and ?). */
  namespaces?: string[];
  /** Namespaces whose labels match. A namespace matches if it matches either field. */
  namespaceSelector?: LabelSelector;
  /** Role ARN patterns (glob with * and ?, neither ever matching '/' or ':'; glob.ts). */
  roleArns: string[];
  /**
   * Session tag keys AccessPolicies may set under this allowance: exact keys or globs, matched
   * case-insensitively, `${namespace}` standing for the pod's namespace. None when absent. Where
   * several allowances apply, a key must be permitted by every one of them.
   */
  sessionTagKeys?: string[];
  /** Upper bound on DurationSeconds for sessions issued under this allowance. */
  maxDurationSeconds?: number;
  /** Deny statements appended to every session policy issued under this allowance. */
  denyStatements?: IamStatement[];
  /** Binds every session issued under this allowance to where it was issued (binding.ts). */
  bindSessions?: SessionBinding;
}

/** Where a bound session's requests must come from. */
export type SessionBindingTarget = "PodIP" | "NodeIP" | "SourceVpc" | "SourceVpce";
/** The IAM condition key an address binding is checked against. */
export type SessionBindingAddressKey = "SourceIp" | "VpcSourceIp";
export const SESSION_BINDING_TARGETS: readonly SessionBindingTarget[] = [
  "PodIP",
  "NodeIP",
  "SourceVpc",
  "SourceVpce",
];
export const SESSION_BINDING_ADDRESS_KEYS: readonly SessionBindingAddressKey[] = ["SourceIp", "VpcSourceIp"];

export interface SessionBinding {
  to: SessionBindingTarget;
  /**
   * PodIP and NodeIP only (required there): `SourceIp` where the store sees the address directly,
   * `VpcSourceIp` where requests reach AWS through VPC endpoints.
   */
  via?: SessionBindingAddressKey;
  /** SourceVpc only (required there): the VPCs requests may come from. */
  vpcIds?: string[];
  /** SourceVpce only (required there): the VPC endpoints requests may come through. */
  vpceIds?: string[];
  /**
   * The actions bound (IAM action patterns); every action ("*") when absent. Narrower lists are for
   * bindings only some services can meet, e.g. VpcSourceIp where only S3 and DynamoDB have VPC
   * endpoints; actions outside the list are then not bound.
   */
  actions?: string[];
  /**
   * Whether calls an AWS service makes on the session's behalf (aws:ViaAWSService, e.g. S3 calling
   * KMS for SSE-KMS) are exempt from the binding. Default true. false binds those too, and leaves
   * out a condition key some S3-compatible stores (MinIO) refuse to parse.
   */
  exemptAwsServiceCalls?: boolean;
}

export interface RoleAllowance {
  apiVersion?: string;
  kind?: "RoleAllowance";
  metadata: ObjectMeta;
  spec: RoleAllowanceSpec;
  status?: PolicyStatus;
}

/** The facts about a pod that policies can select on and templates can use. */
export interface PodFacts {
  namespace: string;
  name: string;
  uid: string;
  serviceAccountName: string;
  nodeName: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** The pod's addresses from its live status (status.podIPs, else status.podIP); primary first. */
  podIPs?: string[];
  /** The node's addresses from the pod's live status (status.hostIPs, else status.hostIP). */
  hostIPs?: string[];
}

export interface NamespaceFacts {
  name: string;
  labels: Record<string, string>;
}

export const STS_MAX_POLICY_CHARS = 2048;
export const STS_MAX_POLICY_ARNS = 10;
export const STS_MAX_TAGS = 50;
export const STS_MIN_DURATION = 900;
export const STS_MAX_DURATION = 43200;
export const DEFAULT_DURATION = 3600;
/** The only IAM policy language version accepted, and the one every session policy is sent with. */
export const IAM_POLICY_VERSION = "2012-10-17";
/** IAM's limits on a role ARN (whole ARN, path, role name) and keycutter's on the path's depth. */
export const IAM_MAX_ARN_CHARS = 2048;
export const IAM_MAX_ROLE_PATH_CHARS = 512;
export const IAM_MAX_ROLE_NAME_CHARS = 64;
export const MAX_ROLE_PATH_DEPTH = 32;
