// Static readiness of AccessPolicy/RoleAllowance objects: the Ready condition the server writes,
// `policy validate` prints and `explain` shows. Pure: no Kubernetes client.

import { decide } from "./decide.ts";
import { checkTemplate } from "./template.ts";
import type { AccessPolicy, PodFacts, RoleAllowance } from "./types.ts";
import { validateAccessPolicy, validateRoleAllowance } from "./validate.ts";
import { imdsDurationWarning } from "../api/serve-window.ts";

export interface ReadyState {
  status: "True" | "False";
  reason: string;
  message: string;
}

/** Static readiness of one AccessPolicy (also used by `policy validate` and `explain`). */
export function accessPolicyReadiness(
  p: AccessPolicy,
  allowances: RoleAllowance[],
  nsLabels: Record<string, string>,
  clusterName: string,
  maxDurationSeconds: number,
): ReadyState {
  const v = validateAccessPolicy({ ...p, kind: "AccessPolicy" });
  if (v.errors.length > 0) {
    const tmpl = v.errors.some((e) => /variable|unterminated/.test(e));
    return {
      status: "False",
      reason: tmpl ? "TemplateInvalid" : "Invalid",
      message: v.errors.join("; ").slice(0, 1000),
    };
  }
  const pod = standInPod(p, 1);
  const d = decide(
    { pod, namespace: { name: pod.namespace, labels: nsLabels }, policies: [p], allowances },
    { clusterName: clusterName || "c", maxDurationSeconds },
  );
  if (!d.ok) {
    if (
      d.reason === "RoleNotAllowed" ||
      d.reason === "TagKeyNotAllowed" ||
      d.reason === "AllowanceInvalid" ||
      d.reason === "PolicyTooLarge" ||
      d.reason === "TemplateInvalid" ||
      d.reason === "PolicyInvalid"
    ) {
      return { status: "False", reason: d.reason, message: d.message };
    }
  }
  const big = decide(
    {
      pod: standInPod(p, 63),
      namespace: { name: pod.namespace, labels: nsLabels },
      policies: [p],
      allowances,
    },
    { clusterName: clusterName || "c".repeat(63), maxDurationSeconds },
  );
  const warnings: string[] = [];
  if (!big.ok && big.reason === "PolicyTooLarge")
    warnings.push(
      `with long names or label values the rendered policy can exceed the STS limit (${big.message})`,
    );
  const short = d.ok ? imdsDurationWarning(d.plan.durationSeconds) : undefined;
  if (short !== undefined) warnings.push(short);
  return inForce(warnings);
}

/** Ready=True; warnings go into the message, as metav1.Condition has no severity of its own. */
function inForce(warnings: string[]): ReadyState {
  const message = ["in force", ...warnings.map((w) => `warning: ${w}`)].join("; ");
  return { status: "True", reason: "Valid", message };
}

// Stand-in addresses: a short one, and for the size check the longest a dual-stack pod can have.
const SHORT_ADDRESSES = ["10.0.0.1"];
const LONGEST_ADDRESSES = ["255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"];

/**
 * A pod the policy selects, with every referenced label/annotation set to an n-character value
 * and, for n > 1, the longest addresses (a session binding lists every address of the pod).
 */
export function standInPod(p: AccessPolicy, n: number): PodFacts {
  const x = "x".repeat(n);
  const addresses = n > 1 ? LONGEST_ADDRESSES : SHORT_ADDRESSES;
  const labels: Record<string, string> = { ...(p.spec.podSelector?.matchLabels ?? {}) };
  const annotations: Record<string, string> = {};
  for (const e of p.spec.podSelector?.matchExpressions ?? []) {
    if ((e.operator === "In" || e.operator === "Exists") && !(e.key in labels))
      labels[e.key] = e.values?.[0] ?? x;
  }
  let refs: ReturnType<typeof checkTemplate> = [];
  try {
    refs = [...checkTemplate(p.spec.sessionPolicy ?? {}), ...checkTemplate(p.spec.sessionTags ?? {})];
  } catch {
    // reported by validation
  }
  for (const r of refs) {
    if (r.kind === "label" && !(r.key in labels)) labels[r.key] = x;
    if (r.kind === "annotation") annotations[r.key] = x;
  }
  return {
    namespace: p.metadata.namespace ?? "default",
    name: x,
    uid: "00000000-0000-0000-0000-000000000000",
    serviceAccountName: p.spec.podSelector?.serviceAccountName ?? x,
    nodeName: x,
    labels,
    annotations,
    podIPs: [...addresses],
    hostIPs: [...addresses],
  };
}

export function roleAllowanceReadiness(a: RoleAllowance): ReadyState {
  const v = validateRoleAllowance({ ...a, kind: "RoleAllowance" });
  if (v.errors.length > 0)
    return { status: "False", reason: "Invalid", message: v.errors.join("; ").slice(0, 1000) };
  const cap = a.spec.maxDurationSeconds;
  const short = cap === undefined ? undefined : imdsDurationWarning(cap);
  return inForce(short === undefined ? [] : [`spec.maxDurationSeconds: ${short}`]);
}
