// What issued credentials and remembered refusals are keyed by.
import { createHash } from "node:crypto";
import type { IssuePlan } from "../../policy/decide.ts";

/**
 * The cache key is the pod UID and what the decision says, the exact AssumeRole inputs (role,
 * rendered session policy with the allowances' denies, managed policies, tags, duration capped
 * by the allowances, names), never which objects or generations led there: a policy edit that
 * leaves a pod's decision as it was finds the credentials already issued, and one that changes
 * anything the credentials carry misses and forces a new AssumeRole.
 */
export function cacheKey(plan: IssuePlan, podUID: string): string {
  const inputs = createHash("sha256")
    .update(
      JSON.stringify([
        plan.roleArn,
        plan.sessionPolicy ?? "",
        plan.policyArns,
        plan.tags,
        plan.durationSeconds,
        plan.sessionName,
        plan.sourceIdentity,
      ]),
    )
    .digest("hex");
  return `${podUID}|${inputs}`;
}

/**
 * Refusals are remembered per decision *and* per object generation: any edit of the policy or an
 * allowance (also one that leaves the decision as it was, after the role's trust policy was fixed
 * outside the cluster) asks STS again at once, while credentials are shared across such edits.
 */
export function failureKey(key: string, plan: IssuePlan): string {
  const allow = plan.allowances.map((a) => `${a.uid}:${a.generation}`).join(",");
  return `${key}|${plan.policy.uid}:${plan.policy.generation}|${allow}`;
}
