// Selectors and patterns: label selectors (Kubernetes semantics), pod selectors, namespace and
// role-ARN globs (glob.ts), session tag key patterns.

import { globMatches } from "./glob.ts";
import type { LabelSelector, NamespaceFacts, PodFacts, PodSelector, RoleAllowance } from "./types.ts";
import { NAMESPACE_VARIABLE, roleArnBoundsProblem } from "./validate.ts";

export function labelSelectorMatches(
  sel: LabelSelector | undefined,
  labels: Record<string, string>,
): boolean {
  if (!sel) return true;
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) {
    if (!Object.hasOwn(labels, k) || labels[k] !== v) return false;
  }
  for (const req of sel.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, req.key);
    const val = has ? labels[req.key] : undefined;
    switch (req.operator) {
      case "In":
        if (!has || !(req.values ?? []).includes(val as string)) return false;
        break;
      case "NotIn":
        if (has && (req.values ?? []).includes(val as string)) return false;
        break;
      case "Exists":
        if (!has) return false;
        break;
      case "DoesNotExist":
        if (has) return false;
        break;
      default:
        return false; // unknown operator: never matches (validation reports it)
    }
  }
  return true;
}

/** Why a pod selector does not match, or null when it matches. */
export function podSelectorMismatch(sel: PodSelector, pod: PodFacts): string | null {
  if (sel.serviceAccountName !== undefined && sel.serviceAccountName !== pod.serviceAccountName) {
    return `service account is "${pod.serviceAccountName}", policy selects "${sel.serviceAccountName}"`;
  }
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) {
    if (!Object.hasOwn(pod.labels, k)) return `pod has no label "${k}" (policy wants "${v}")`;
    if (pod.labels[k] !== v) return `label "${k}" does not equal "${v}"`;
  }
  for (const req of sel.matchExpressions ?? []) {
    if (!labelSelectorMatches({ matchExpressions: [req] }, pod.labels)) {
      return `label expression ${req.key} ${req.operator}${req.values ? ` [${req.values.join(",")}]` : ""} does not hold`;
    }
  }
  return null;
}

export function allowanceCoversNamespace(a: RoleAllowance, ns: NamespaceFacts): boolean {
  const byName = (a.spec.namespaces ?? []).some((p) => globMatches(p, ns.name));
  const bySel =
    a.spec.namespaceSelector !== undefined && labelSelectorMatches(a.spec.namespaceSelector, ns.labels);
  return byName || bySel;
}

/** A roleArn outside IAM's (and keycutter's) bounds is covered by nothing: fail closed, and cheap. */
export function allowanceCoversRole(a: RoleAllowance, roleArn: string): boolean {
  if (roleArnBoundsProblem(roleArn) !== null) return false;
  return (a.spec.roleArns ?? []).some((p) => globMatches(p, roleArn));
}

/**
 * Whether the allowance lets a policy set this session tag key for a pod of `namespace`. STS tag
 * keys are case-insensitive (so are IAM's `aws:PrincipalTag/<key>` lookups), hence the lowercase
 * comparison; `${namespace}` in a pattern is the pod's namespace (a DNS label: never a wildcard
 * or separator). No `sessionTagKeys` permits no key.
 */
export function allowancePermitsTagKey(a: RoleAllowance, key: string, namespace: string): boolean {
  const wanted = key.toLowerCase();
  return (a.spec.sessionTagKeys ?? []).some((pattern) =>
    globMatches(pattern.replaceAll(NAMESPACE_VARIABLE, namespace).toLowerCase(), wanted),
  );
}
