// The logic of `keycutter explain`: reads the pod, its namespace, the AccessPolicies of the
// namespace and the RoleAllowances from the apiserver, runs the server's decision, and optionally
// evaluates an action with the IAM simulator over the role's policies ∩ the session policy.

import { CoreV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { ineligibility, podFacts } from "./k8s/pod-lookup.ts";
import { bindingCondition, describeBinding } from "../policy/binding.ts";
import { decide, refusedTagKeys, type BoundSession, type Decision } from "../policy/decide.ts";
import { allowanceCoversNamespace, allowanceCoversRole } from "../policy/match.ts";
import { simulate, type SimulationOutcome } from "../policy/simulate.ts";
import {
  ACCESS_POLICIES,
  ROLE_ALLOWANCES,
  type AccessPolicy,
  type Condition,
  type PodFacts,
  type RoleAllowance,
} from "../policy/types.ts";
import { imdsDurationWarning } from "../api/serve-window.ts";

export interface ExplainInput {
  namespace: string;
  pod: string;
  kc: KubeConfig;
  clusterName: string;
  maxDurationSeconds: number;
  /** Where the cluster name and duration cap came from (flags or the installed server's ConfigMap). */
  settingsFrom?: string;
  action?: string;
  resource?: string;
  region: string;
  iamEndpoint?: string;
  readRole: boolean;
}

export interface Explanation {
  /** The server settings the decision was made with. */
  settings: { clusterName: string; maxDurationSeconds: number; from?: string };
  pod: {
    namespace: string;
    name: string;
    uid: string;
    serviceAccount: string;
    node: string;
    phase: string;
    terminating: boolean;
    labels: Record<string, string>;
    podIPs: string[];
    hostIPs: string[];
  };
  policies: { name: string; priority: number; selected: boolean; reason: string; ready?: Condition }[];
  allowances: {
    name: string;
    applies: boolean;
    reason: string;
    maxDurationSeconds?: number;
    denyStatements: number;
    /** The winning policy's session tag keys this allowance does not permit (it applies, so it refuses them). */
    refusedTagKeys?: string[];
    /** The allowance's spec.bindSessions.to, when it binds sessions. */
    bindsSessionsTo?: string;
  }[];
  /** The session bindings in the policy sent: appended Deny statements the AccessPolicy cannot change. */
  bindings?: {
    allowance: string;
    to: string;
    conditionKey: string;
    values: string[];
    exemptAwsServiceCalls: boolean;
    summary: string;
  }[];
  decision:
    | {
        ok: true;
        policy: string;
        roleArn: string;
        sessionName: string;
        durationSeconds: number;
        policyArns: string[];
        policySha256: string;
      }
    | { ok: false; code: string; reason: string; message: string };
  sessionPolicy?: unknown;
  sessionPolicyChars?: number;
  tags?: Record<string, string>;
  simulation?: SimulationOutcome & {
    action: string;
    resource: string;
    note?: string;
    rolePolicies?: string[];
  };
}

async function rolePolicies(
  roleArn: string,
  region: string,
  endpoint?: string,
): Promise<{ name: string; policy: unknown }[]> {
  const iam = await import("@aws-sdk/client-iam");
  const client = new iam.IAMClient({ region, ...(endpoint ? { endpoint } : {}), maxAttempts: 2 });
  const RoleName = roleArn.slice(roleArn.lastIndexOf("/") + 1);
  const out: { name: string; policy: unknown }[] = [];
  try {
    const inline = await client.send(new iam.ListRolePoliciesCommand({ RoleName }));
    for (const PolicyName of inline.PolicyNames ?? []) {
      const p = await client.send(new iam.GetRolePolicyCommand({ RoleName, PolicyName }));
      out.push({
        name: `inline:${PolicyName}`,
        policy: JSON.parse(decodeURIComponent(p.PolicyDocument ?? "{}")),
      });
    }
    const attached = await client.send(new iam.ListAttachedRolePoliciesCommand({ RoleName }));
    for (const a of attached.AttachedPolicies ?? []) {
      if (!a.PolicyArn) continue;
      const pol = await client.send(new iam.GetPolicyCommand({ PolicyArn: a.PolicyArn }));
      const ver = await client.send(
        new iam.GetPolicyVersionCommand({
          PolicyArn: a.PolicyArn,
          VersionId: pol.Policy?.DefaultVersionId ?? "v1",
        }),
      );
      out.push({
        name: `managed:${a.PolicyArn}`,
        policy: JSON.parse(decodeURIComponent(ver.PolicyVersion?.Document ?? "{}")),
      });
    }
  } finally {
    client.destroy();
  }
  return out;
}

export async function explain(input: ExplainInput): Promise<Explanation> {
  const kc = input.kc;
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const rec = podFacts(await core.readNamespacedPod({ namespace: input.namespace, name: input.pod }));
  const ns = await core.readNamespace({ name: input.namespace });
  const nsFacts = { name: input.namespace, labels: { ...(ns.metadata?.labels ?? {}) } };
  const policies = (
    (await custom.listNamespacedCustomObject({ ...ACCESS_POLICIES, namespace: input.namespace })) as {
      items: AccessPolicy[];
    }
  ).items;
  const allowances = ((await custom.listClusterCustomObject(ROLE_ALLOWANCES)) as { items: RoleAllowance[] })
    .items;
  const pod: PodFacts = rec.facts;
  const d: Decision = decide(
    { pod, namespace: nsFacts, policies, allowances },
    { clusterName: input.clusterName, maxDurationSeconds: input.maxDurationSeconds },
  );

  const res: Explanation = {
    settings: {
      clusterName: input.clusterName,
      maxDurationSeconds: input.maxDurationSeconds,
      ...(input.settingsFrom ? { from: input.settingsFrom } : {}),
    },
    pod: {
      namespace: pod.namespace,
      name: pod.name,
      uid: pod.uid,
      serviceAccount: pod.serviceAccountName,
      node: pod.nodeName,
      phase: rec.phase,
      terminating: rec.terminating,
      labels: pod.labels,
      podIPs: pod.podIPs ?? [],
      hostIPs: pod.hostIPs ?? [],
    },
    policies: d.evaluations.map((e) => {
      const ready = policies
        .find((p) => p.metadata.name === e.name)
        ?.status?.conditions?.find((c) => c.type === "Ready");
      return { ...e, ...(ready ? { ready } : {}) };
    }),
    allowances: [],
    decision: d.ok
      ? {
          ok: true,
          policy: d.plan.policy.name,
          roleArn: d.plan.roleArn,
          sessionName: d.plan.sessionName,
          durationSeconds: d.plan.durationSeconds,
          policyArns: d.plan.policyArns,
          policySha256: d.plan.policySha256,
        }
      : { ok: false, code: d.code, reason: d.reason, message: d.message },
  };
  // The server refuses such a pod before any policy is consulted; the evaluations above still
  // show what the policies would have done.
  const ineligible = ineligibility(rec);
  if (ineligible)
    res.decision = {
      ok: false,
      code: "PodNotEligible",
      reason: "PodNotEligible",
      message: `not served: ${ineligible}`,
    };
  const winner = d.ok
    ? policies.find((p) => p.metadata.name === d.plan.policy.name)
    : d.policy
      ? policies.find((p) => p.metadata.name === d.policy?.name)
      : undefined;
  for (const a of allowances) {
    const nsOk = allowanceCoversNamespace(a, nsFacts);
    const roleOk = winner ? allowanceCoversRole(a, winner.spec.roleArn) : false;
    const refused =
      winner && nsOk && roleOk ? refusedTagKeys(winner, [a], input.namespace).map((r) => r.key) : [];
    const reason = !nsOk
      ? `does not cover namespace ${input.namespace}`
      : !winner
        ? "covers the namespace (no policy selected)"
        : !roleOk
          ? `does not allow role ${winner.spec.roleArn}`
          : refused.length > 0
            ? `covers namespace and role, but does not permit session tag key(s) ${refused.map((k) => `"${k}"`).join(", ")} (spec.sessionTagKeys: ${a.spec.sessionTagKeys?.length ? a.spec.sessionTagKeys.join(", ") : "none"})`
            : "covers namespace and role";
    res.allowances.push({
      name: a.metadata.name ?? "",
      applies: nsOk && roleOk,
      reason,
      ...(refused.length > 0 ? { refusedTagKeys: refused } : {}),
      ...(a.spec.maxDurationSeconds ? { maxDurationSeconds: a.spec.maxDurationSeconds } : {}),
      denyStatements: a.spec.denyStatements?.length ?? 0,
      ...(a.spec.bindSessions ? { bindsSessionsTo: a.spec.bindSessions.to } : {}),
    });
  }
  if (d.ok) {
    if (d.plan.sessionPolicy) {
      res.sessionPolicy = JSON.parse(d.plan.sessionPolicy) as unknown;
      res.sessionPolicyChars = d.plan.sessionPolicy.length;
    }
    res.tags = Object.fromEntries(d.plan.tags.map((t) => [t.Key, t.Value]));
    if (d.plan.bindings.length > 0)
      res.bindings = d.plan.bindings.map((b) => ({
        allowance: b.allowance,
        to: b.binding.to,
        conditionKey: bindingCondition(b.binding).key,
        values: b.values,
        exemptAwsServiceCalls: b.binding.exemptAwsServiceCalls !== false,
        summary: describeBinding(b.binding, b.values),
      }));
  } else if (d.sessionPolicy) {
    res.sessionPolicy = JSON.parse(d.sessionPolicy) as unknown;
    res.sessionPolicyChars = d.sessionPolicy.length;
  }

  if (input.action && input.resource && d.ok) {
    const account = d.plan.roleArn.split(":")[4] ?? "";
    let identity: { name: string; policy: unknown }[] | undefined;
    let note: string | undefined;
    if (input.readRole) {
      try {
        identity = await rolePolicies(d.plan.roleArn, input.region, input.iamEndpoint);
      } catch (e) {
        note = `the role's policies could not be read from IAM (${(e as Error).name}: ${(e as Error).message.slice(0, 160)}); evaluated the session policy alone`;
      }
    } else note = "--no-role: evaluated the session policy alone";
    const out = await simulate({
      action: input.action,
      resource: input.resource,
      accountId: account,
      principalArn: `arn:aws:sts::${account}:assumed-role/${d.plan.roleName}/${d.plan.sessionName}`,
      ...(identity ? { identityPolicies: identity } : {}),
      ...(d.plan.sessionPolicy ? { sessionPolicy: d.plan.sessionPolicy } : {}),
      contextVariables: {
        ...Object.fromEntries(d.plan.tags.map((t) => [`aws:PrincipalTag/${t.Key}`, t.Value])),
        ...originContext(d.plan.bindings),
      },
    });
    if (d.plan.bindings.length > 0)
      note = `${note ? `${note}; ` : ""}evaluated as a request from the session's bound origin (${Object.entries(
        originContext(d.plan.bindings),
      )
        .map(([k, v]) => `${k}=${v}`)
        .join(", ")}); from anywhere else the binding denies it`;
    if (d.plan.policyArns.length > 0)
      note = `${note ? `${note}; ` : ""}managed session policies (${d.plan.policyArns.join(", ")}) are not evaluated`;
    res.simulation = {
      ...out,
      action: input.action,
      resource: input.resource,
      ...(note ? { note } : {}),
      ...(identity ? { rolePolicies: identity.map((i) => i.name) } : {}),
    };
  } else if (input.action && input.resource) {
    res.simulation = {
      result: "ImplicitlyDenied",
      basis: "session-only",
      action: input.action,
      resource: input.resource,
      note: "no credentials would be issued to this pod",
    };
  }
  return res;
}

/**
 * The request context of a call from where the bindings allow (the pod's first address, the first
 * VPC or endpoint): without it the simulator would find every bound request denied, the key being
 * absent.
 */
function originContext(bindings: BoundSession[]): Record<string, string> {
  const context: Record<string, string> = {};
  for (const b of bindings) {
    const first = b.values[0];
    if (first !== undefined) context[bindingCondition(b.binding).key] = first.replace(/\/\d+$/, "");
  }
  return context;
}

export function formatExplanation(e: Explanation): string {
  const L: string[] = [];
  const p = e.pod;
  L.push(`Pod ${p.namespace}/${p.name} (uid ${p.uid})`);
  L.push(
    `  service account ${p.serviceAccount}, node ${p.node || "(unscheduled)"}, phase ${p.phase || "?"}${p.terminating ? ", terminating" : ""}`,
  );
  const labels = Object.entries(p.labels).map(([k, v]) => `${k}=${v}`);
  if (labels.length) L.push(`  labels ${labels.join(", ")}`);
  L.push(`  pod IP ${p.podIPs.join(", ") || "(none)"}, node IP ${p.hostIPs.join(", ") || "(none)"}`);
  const st = e.settings;
  L.push(
    `  decided with cluster name "${st.clusterName}", duration cap ${st.maxDurationSeconds}s${st.from ? ` (from ${st.from})` : ""}`,
  );
  L.push("", "AccessPolicies in the namespace:");
  if (e.policies.length === 0) L.push("  (none)");
  for (const x of e.policies) {
    const ready = x.ready ? ` [Ready=${x.ready.status}${x.ready.reason ? ` ${x.ready.reason}` : ""}]` : "";
    L.push(`  ${x.selected ? "✔" : "✘"} ${x.name} (priority ${x.priority})${ready}: ${x.reason}`);
  }
  L.push("", "RoleAllowances:");
  if (e.allowances.length === 0) L.push("  (none)");
  for (const a of e.allowances) {
    L.push(
      `  ${a.applies ? "✔" : "✘"} ${a.name}: ${a.reason}${a.maxDurationSeconds ? `, max ${a.maxDurationSeconds}s` : ""}${a.denyStatements ? `, ${a.denyStatements} mandatory Deny statement(s)` : ""}${a.bindsSessionsTo ? `, binds sessions to ${a.bindsSessionsTo}` : ""}`,
    );
  }
  L.push("");
  if (e.decision.ok) {
    L.push(`Decision: credentials issued under ${e.decision.policy}`);
    L.push(`  role ${e.decision.roleArn}`);
    L.push(`  session name ${e.decision.sessionName}, duration ${e.decision.durationSeconds}s`);
    const short = imdsDurationWarning(e.decision.durationSeconds);
    if (short !== undefined) L.push(`  warning: ${short}`);
    if (e.decision.policyArns.length)
      L.push(`  managed session policies ${e.decision.policyArns.join(", ")}`);
  } else {
    L.push(
      `Decision: REFUSED (${e.decision.code}${e.decision.reason !== e.decision.code ? `/${e.decision.reason}` : ""})`,
    );
    L.push(`  ${e.decision.message}`);
  }
  if (e.bindings) {
    L.push(
      "",
      "Session bindings (Deny statements appended to the session policy; the AccessPolicy cannot change them):",
    );
    for (const b of e.bindings) L.push(`  ${b.allowance}: ${b.summary}`);
  }
  if (e.sessionPolicy !== undefined) {
    L.push("", `Session policy (${e.sessionPolicyChars} of 2048 characters minified):`);
    for (const line of JSON.stringify(e.sessionPolicy, null, 2).split("\n")) L.push(`  ${line}`);
  }
  if (e.tags) {
    L.push("", "Session tags:");
    for (const [k, v] of Object.entries(e.tags)) L.push(`  ${k} = ${v}`);
  }
  if (e.simulation) {
    const s = e.simulation;
    L.push("", `Simulation: ${s.action} on ${s.resource}`);
    L.push(
      `  result: ${s.result} (evaluated: ${s.basis === "role+session" ? "role policies ∩ session policy" : s.basis === "session-only" ? "session policy alone" : "role policies"})`,
    );
    if (s.rolePolicies) L.push(`  role policies: ${s.rolePolicies.join(", ") || "(none)"}`);
    if (s.detail) L.push(`  ${s.detail}`);
    if (s.note) L.push(`  note: ${s.note}`);
  }
  return `${L.join("\n")}\n`;
}
