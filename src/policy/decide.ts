// The decision: which AccessPolicy applies to a pod, whether a RoleAllowance permits its role for
// the pod's namespace, and the exact AssumeRole inputs (rendered + minified session policy,
// managed policy ARNs, session tags, duration, session name, source identity).
//
// Rule (documented in docs/POLICIES.md):
//  1. Candidates: AccessPolicies in the pod's namespace whose podSelector matches the pod.
//     None → NoPolicy.
//  2. The highest spec.priority (default 0) wins; several at that priority → AmbiguousPolicy
//     (nothing is issued; the policies are named in the message).
//  3. The winner must be valid (validate.ts) → else PolicyInvalid.
//  4. RoleAllowances that cover the pod's namespace AND the role ARN all apply; none → RoleNotAllowed.
//     Every applicable allowance's denyStatements are appended; the duration cap is the smallest
//     maxDurationSeconds among them and the server's own cap (role chaining: 3600).
//     Every key of spec.sessionTags must be permitted by every applicable allowance's
//     sessionTagKeys → else RoleNotAllowed (reason TagKeyNotAllowed). An invalid allowance that
//     covers the namespace and role refuses (reason AllowanceInvalid) rather than being skipped.
//  5. Templates are rendered for the pod (template.ts); a failure → PolicyInvalid.
//     Every applicable allowance's session binding (binding.ts) is appended after the denies; a
//     binding that cannot be made for the pod → no credentials, never credentials without it:
//     no address in its status yet → Unavailable (reason PodAddressUnknown, transient: the agent
//     may ask before the CNI has given the pod an address; ${pod.ip} / ${node.ip} likewise), an
//     address that is not a plain IP → PolicyInvalid (reason BindingUnresolved).
//  6. The minified session policy plus managed policy ARNs must fit STS's 2048 characters →
//     else PolicyInvalid (reason PolicyTooLarge); a binding is never dropped to make room.

import { createHash } from "node:crypto";
import type { ErrorCode } from "../api/contract.ts";
import {
  allowanceCoversNamespace,
  allowanceCoversRole,
  allowancePermitsTagKey,
  podSelectorMismatch,
} from "./match.ts";
import { BindingError, bindingStatement, bindingValues, PodAddressUnknownError } from "./binding.ts";
import { renderDocument, renderString, TemplateError } from "./template.ts";
import {
  DEFAULT_DURATION,
  IAM_POLICY_VERSION,
  STS_MAX_POLICY_CHARS,
  STS_MIN_DURATION,
  type AccessPolicy,
  type IamStatement,
  type NamespaceFacts,
  type PodFacts,
  type RoleAllowance,
  type SessionBinding,
} from "./types.ts";
import { TAG_VALUE, validateAccessPolicy, validateRoleAllowance } from "./validate.ts";

export interface Tag {
  Key: string;
  Value: string;
}

export interface PolicyRef {
  namespace: string;
  name: string;
  uid: string;
  generation: number;
}

export interface AllowanceRef {
  name: string;
  uid: string;
  generation: number;
}

/** A session binding in force for one issuance: whose, what, and the values it compares with. */
export interface BoundSession {
  allowance: string;
  binding: SessionBinding;
  values: string[];
}

export interface IssuePlan {
  roleArn: string;
  roleName: string;
  /** Minified JSON, or undefined when neither the policy nor an allowance adds one. */
  sessionPolicy: string | undefined;
  policyArns: string[];
  tags: Tag[];
  durationSeconds: number;
  sessionName: string;
  sourceIdentity: string;
  policy: PolicyRef;
  allowances: AllowanceRef[];
  /** sha256 of the session policy JSON sent (hex), "" when none. */
  policySha256: string;
  /** The applicable allowances' session bindings, in the order their statements were appended. */
  bindings: BoundSession[];
}

export interface PolicyEvaluation {
  name: string;
  priority: number;
  selected: boolean;
  reason: string;
}

export type ReasonCode =
  | "NoPolicy"
  | "AmbiguousPolicy"
  | "PolicyInvalid"
  | "TemplateInvalid"
  | "PolicyTooLarge"
  | "RoleNotAllowed"
  | "TagKeyNotAllowed"
  | "AllowanceInvalid"
  | "BindingUnresolved"
  | "PodAddressUnknown";

export type Decision =
  | { ok: true; plan: IssuePlan; evaluations: PolicyEvaluation[] }
  | {
      ok: false;
      code: Extract<
        ErrorCode,
        "NoPolicy" | "AmbiguousPolicy" | "PolicyInvalid" | "RoleNotAllowed" | "Unavailable"
      >;
      reason: ReasonCode;
      message: string;
      evaluations: PolicyEvaluation[];
      policy?: PolicyRef;
      /** Rendered but rejected (too large) policy, for explain. */
      sessionPolicy?: string;
    };

export interface DecideOptions {
  clusterName: string;
  /** The server's cap on DurationSeconds (3600 when the server's own credentials are a role session). */
  maxDurationSeconds: number;
  /** Set SourceIdentity on sessions (needs sts:SetSourceIdentity in the role's trust policy). */
  sourceIdentity?: boolean;
}

export interface DecideInput {
  pod: PodFacts;
  namespace: NamespaceFacts;
  /** AccessPolicies in the pod's namespace (others are ignored). */
  policies: AccessPolicy[];
  allowances: RoleAllowance[];
}

const SESSION_CHARS = /[^\w+=,.@-]/g;

/** RoleSessionName: `<ns>.<pod>` trimmed, plus '-' and 12 hex chars of sha256(uid); ≤ 64 chars. */
export function sessionNameFor(pod: { namespace: string; name: string; uid: string }): string {
  const suffix = createHash("sha256").update(pod.uid).digest("hex").slice(0, 12);
  const base = `${pod.namespace}.${pod.name}`.replace(SESSION_CHARS, "_").slice(0, 64 - 13);
  return `${base}-${suffix}`;
}

export function roleNameOf(roleArn: string): string {
  const i = roleArn.lastIndexOf("/");
  return i >= 0 ? roleArn.slice(i + 1) : roleArn;
}

function ref(p: AccessPolicy): PolicyRef {
  return {
    namespace: p.metadata.namespace ?? "",
    name: p.metadata.name ?? "",
    uid: p.metadata.uid ?? "",
    generation: p.metadata.generation ?? 0,
  };
}

function byName(a: { metadata: { name?: string } }, b: { metadata: { name?: string } }): number {
  return (a.metadata.name ?? "").localeCompare(b.metadata.name ?? "");
}

export function decide(input: DecideInput, opts: DecideOptions): Decision {
  const { pod } = input;
  const evaluations: PolicyEvaluation[] = [];
  const candidates: AccessPolicy[] = [];
  for (const p of [...input.policies].sort(byName)) {
    const priority = typeof p.spec?.priority === "number" ? p.spec.priority : 0;
    if (p.metadata.namespace !== pod.namespace) {
      evaluations.push({
        name: p.metadata.name ?? "",
        priority,
        selected: false,
        reason: `in namespace ${p.metadata.namespace}`,
      });
      continue;
    }
    const mismatch = p.spec?.podSelector
      ? podSelectorMismatch(p.spec.podSelector, pod)
      : "spec.podSelector is missing";
    if (mismatch)
      evaluations.push({ name: p.metadata.name ?? "", priority, selected: false, reason: mismatch });
    else {
      candidates.push(p);
      evaluations.push({ name: p.metadata.name ?? "", priority, selected: true, reason: "selector matches" });
    }
  }
  if (candidates.length === 0) {
    return {
      ok: false,
      code: "NoPolicy",
      reason: "NoPolicy",
      message: `no AccessPolicy in namespace ${pod.namespace} selects pod ${pod.name}`,
      evaluations,
    };
  }
  const prio = (p: AccessPolicy) => (typeof p.spec.priority === "number" ? p.spec.priority : 0);
  const top = Math.max(...candidates.map(prio));
  const winners = candidates.filter((p) => prio(p) === top);
  for (const e of evaluations) {
    if (e.selected && e.priority < top) {
      e.selected = false;
      e.reason = `selector matches, but priority ${e.priority} < ${top}`;
    }
  }
  if (winners.length > 1) {
    const names = winners.map((p) => p.metadata.name).join(", ");
    for (const e of evaluations) if (e.selected) e.reason = `selector matches; tied at priority ${top}`;
    return {
      ok: false,
      code: "AmbiguousPolicy",
      reason: "AmbiguousPolicy",
      message: `AccessPolicies ${names} in namespace ${pod.namespace} all select pod ${pod.name} at priority ${top}; set spec.priority or narrow the selectors`,
      evaluations,
    };
  }
  const policy = winners[0] as AccessPolicy;
  const pref = ref(policy);
  const v = validateAccessPolicy({ ...policy, kind: "AccessPolicy" });
  if (v.errors.length > 0) {
    return {
      ok: false,
      code: "PolicyInvalid",
      reason: "PolicyInvalid",
      message: `AccessPolicy ${pref.name} is invalid: ${v.errors.join("; ")}`,
      evaluations,
      policy: pref,
    };
  }
  const roleArn = policy.spec.roleArn;

  // Allowances
  const covers = (a: RoleAllowance) =>
    allowanceCoversNamespace(a, input.namespace) && allowanceCoversRole(a, roleArn);
  const valid = (a: RoleAllowance) =>
    validateRoleAllowance({ ...a, kind: "RoleAllowance" }).errors.length === 0;
  // An invalid allowance that still covers this namespace and role may be the one carrying the
  // deny statements or limits: skipping it would let the others apply without them (fail open).
  const brokenCovering = input.allowances
    .filter((a) => !valid(a) && coversIfReadable(covers, a))
    .sort(byName);
  if (brokenCovering.length > 0) {
    return {
      ok: false,
      code: "RoleNotAllowed",
      reason: "AllowanceInvalid",
      message: `RoleAllowance ${brokenCovering.map((a) => a.metadata.name).join(", ")} covers namespace ${pod.namespace} and role ${roleArn} but is invalid; nothing is issued under it until it is fixed`,
      evaluations,
      policy: pref,
    };
  }
  const applicable = input.allowances.filter((a) => valid(a) && covers(a)).sort(byName);
  if (applicable.length === 0) {
    return {
      ok: false,
      code: "RoleNotAllowed",
      reason: "RoleNotAllowed",
      message: `no RoleAllowance lets namespace ${pod.namespace} use role ${roleArn}`,
      evaluations,
      policy: pref,
    };
  }
  const refusedKeys = refusedTagKeys(policy, applicable, pod.namespace);
  if (refusedKeys.length > 0) {
    // RoleNotAllowed, not PolicyInvalid: the policy is well-formed; what it asks for is outside
    // what the platform's allowances grant this namespace, exactly as a role outside them is.
    const detail = refusedKeys.map((r) => `"${r.key}" (RoleAllowance ${r.allowances.join(", ")})`).join(", ");
    return {
      ok: false,
      code: "RoleNotAllowed",
      reason: "TagKeyNotAllowed",
      message: `AccessPolicy ${pref.name}: session tag keys not permitted by the platform: ${detail}; each key must be in spec.sessionTagKeys of every RoleAllowance that applies`,
      evaluations,
      policy: pref,
    };
  }

  const ctx = { pod, clusterName: opts.clusterName };
  let statements: IamStatement[] = [];
  let tags: Tag[];
  let bindings: BoundSession[];
  try {
    if (policy.spec.sessionPolicy) {
      const rendered = renderDocument(policy.spec.sessionPolicy, ctx, "spec.sessionPolicy");
      statements = Array.isArray(rendered.Statement) ? [...rendered.Statement] : [rendered.Statement];
    }
    const denies: IamStatement[] = [];
    for (const a of applicable) {
      for (const s of renderDocument(
        a.spec.denyStatements ?? [],
        ctx,
        `RoleAllowance ${a.metadata.name}.spec.denyStatements`,
      ))
        denies.push(s);
    }
    // After the tenant's statements and the denies, so nothing in the tenant's document can
    // precede or reshape them; an explicit Deny wins over any Allow whatever the order.
    bindings = resolveBindings(applicable, pod);
    const bindingStatements = bindings.map((b) => bindingStatement(b.binding, pod));
    if (denies.length > 0 || bindingStatements.length > 0) {
      // A session policy with only Deny statements would allow nothing: without a tenant policy
      // the session keeps the role's permissions minus the denies. Not with managed session
      // policies: IAM combines the session policies as one set (an Allow in any of them counts),
      // so an inline Allow-all would undo the narrowing they exist for; the inline document then
      // carries only the denies, which hold whatever the managed ones allow.
      if (statements.length === 0 && (policy.spec.managedPolicyArns ?? []).length === 0)
        statements.push({ Effect: "Allow", Action: "*", Resource: "*" });
      statements.push(...denies, ...bindingStatements);
    }
    tags = systemTags(pod, opts.clusterName);
    for (const [k, raw] of Object.entries(policy.spec.sessionTags ?? {})) {
      const val = renderString(raw, ctx);
      if (!TAG_VALUE.test(val))
        throw new TemplateError(`spec.sessionTags.${k}: rendered value is not a valid tag value`);
      tags.push({ Key: k, Value: val });
    }
  } catch (e) {
    if (e instanceof PodAddressUnknownError) {
      return {
        ok: false,
        code: "Unavailable",
        reason: "PodAddressUnknown",
        message: `AccessPolicy ${pref.name}: ${e.message}; credentials are issued once it has one`,
        evaluations,
        policy: pref,
      };
    }
    if (e instanceof BindingError) {
      return {
        ok: false,
        code: "PolicyInvalid",
        reason: "BindingUnresolved",
        message: `sessions under RoleAllowance ${bindingOwners(applicable)} are bound to their origin, and the binding cannot be made: ${e.message}; no credentials are issued without it`,
        evaluations,
        policy: pref,
      };
    }
    if (e instanceof TemplateError) {
      return {
        ok: false,
        code: "PolicyInvalid",
        reason: "TemplateInvalid",
        message: `AccessPolicy ${pref.name}: ${e.message}`,
        evaluations,
        policy: pref,
      };
    }
    throw e;
  }

  // Minified with keys in a canonical (sorted) order: the same policy gives the same bytes and
  // hash whether it came from the apiserver (which sorts), a file, or a test.
  const sessionPolicy =
    statements.length > 0 ? canonicalJson({ Version: IAM_POLICY_VERSION, Statement: statements }) : undefined;
  const policyArns = policy.spec.managedPolicyArns ?? [];
  const size = (sessionPolicy?.length ?? 0) + policyArns.reduce((n, a) => n + a.length, 0);
  if (size > STS_MAX_POLICY_CHARS) {
    const bindingChars = bindings.length > 0 ? bindingsSize(bindings, pod) : 0;
    const r: Decision = {
      ok: false,
      code: "PolicyInvalid",
      reason: "PolicyTooLarge",
      message: `AccessPolicy ${pref.name}: rendered session policy is ${size} characters after minification; STS allows ${STS_MAX_POLICY_CHARS}${bindingChars > 0 ? ` (about ${bindingChars} of them are the session bindings of RoleAllowance ${bindingOwners(applicable)}, which are never left out)` : ""}`,
      evaluations,
      policy: pref,
    };
    if (sessionPolicy !== undefined) r.sessionPolicy = sessionPolicy;
    return r;
  }

  const cap = Math.min(
    opts.maxDurationSeconds,
    ...applicable.map((a) => a.spec.maxDurationSeconds ?? Number.POSITIVE_INFINITY),
  );
  const wanted = policy.spec.durationSeconds ?? DEFAULT_DURATION;
  const durationSeconds = Math.max(STS_MIN_DURATION, Math.min(wanted, cap));
  const sessionName = sessionNameFor(pod);
  return {
    ok: true,
    evaluations,
    plan: {
      roleArn,
      roleName: roleNameOf(roleArn),
      sessionPolicy,
      policyArns,
      tags,
      durationSeconds,
      sessionName,
      sourceIdentity: opts.sourceIdentity === false ? "" : sessionName,
      policy: pref,
      allowances: applicable.map((a) => ({
        name: a.metadata.name ?? "",
        uid: a.metadata.uid ?? "",
        generation: a.metadata.generation ?? 0,
      })),
      policySha256: sessionPolicy ? createHash("sha256").update(sessionPolicy).digest("hex") : "",
      bindings,
    },
  };
}

/** Whether a (possibly malformed) allowance covers; one too malformed to read covers nothing. */
function coversIfReadable(covers: (a: RoleAllowance) => boolean, a: RoleAllowance): boolean {
  try {
    return covers(a);
  } catch {
    return false;
  }
}

function resolveBindings(applicable: RoleAllowance[], pod: PodFacts): BoundSession[] {
  const out: BoundSession[] = [];
  for (const a of applicable) {
    const binding = a.spec.bindSessions;
    if (binding) out.push({ allowance: a.metadata.name ?? "", binding, values: bindingValues(binding, pod) });
  }
  return out;
}

function bindingOwners(applicable: RoleAllowance[]): string {
  return applicable
    .filter((a) => a.spec.bindSessions)
    .map((a) => a.metadata.name ?? "")
    .join(", ");
}

/** Characters the binding statements add to the minified policy (each plus its comma). */
function bindingsSize(bindings: BoundSession[], pod: PodFacts): number {
  return bindings.reduce((n, b) => n + canonicalJson(bindingStatement(b.binding, pod)).length + 1, 0);
}

/** The policy's session tag keys that some applicable allowance does not permit, with those allowances. */
export function refusedTagKeys(
  policy: AccessPolicy,
  applicable: RoleAllowance[],
  namespace: string,
): { key: string; allowances: string[] }[] {
  const refused: { key: string; allowances: string[] }[] = [];
  for (const key of Object.keys(policy.spec.sessionTags ?? {})) {
    const refusing = applicable
      .filter((a) => !allowancePermitsTagKey(a, key, namespace))
      .map((a) => a.metadata.name ?? "");
    if (refusing.length > 0) refused.push({ key, allowances: refusing });
  }
  return refused;
}

export function systemTags(pod: PodFacts, clusterName: string): Tag[] {
  const tags: Tag[] = [
    { Key: "kubernetes-namespace", Value: pod.namespace },
    { Key: "kubernetes-service-account", Value: pod.serviceAccountName },
    { Key: "kubernetes-pod-name", Value: pod.name },
    { Key: "kubernetes-pod-uid", Value: pod.uid },
    { Key: "kubernetes-node-name", Value: pod.nodeName },
  ];
  if (clusterName) tags.push({ Key: "kubernetes-cluster-name", Value: clusterName });
  return tags;
}

/** JSON with object keys sorted recursively, no whitespace. */
export function canonicalJson(v: unknown): string {
  return JSON.stringify(sortKeys(v));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) {
      Object.defineProperty(out, k, {
        value: sortKeys((v as Record<string, unknown>)[k]),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return v;
}
