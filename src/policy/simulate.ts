// Evaluates an action on a resource for a pod's session: the role's identity policies ∩ the
// session policy, with @cloud-copilot/iam-simulate. When the role's policies are unknown, the
// session policy is evaluated alone (as if the role allowed everything) and the result says so.

import { runSimulation } from "@cloud-copilot/iam-simulate";

export interface SimulationInput {
  action: string;
  resource: string;
  accountId: string;
  principalArn: string;
  /** undefined: the role's policies are unknown. */
  identityPolicies?: { name: string; policy: unknown }[];
  sessionPolicy?: string;
  contextVariables?: Record<string, string | string[]>;
}

export interface SimulationOutcome {
  result: "Allowed" | "ExplicitlyDenied" | "ImplicitlyDenied" | "Error";
  /** What was evaluated. */
  basis: "role+session" | "session-only" | "role-only";
  detail?: string;
}

const ALLOW_ALL = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "*", Resource: "*" }] };

export async function simulate(input: SimulationInput): Promise<SimulationOutcome> {
  const identity = input.identityPolicies ?? [
    { name: "assumed-allow-all (role policies unknown)", policy: ALLOW_ALL },
  ];
  const basis: SimulationOutcome["basis"] = input.identityPolicies
    ? input.sessionPolicy
      ? "role+session"
      : "role-only"
    : "session-only";
  const r = await runSimulation(
    {
      request: {
        principal: input.principalArn,
        action: input.action,
        resource: { resource: input.resource, accountId: input.accountId },
        contextVariables: input.contextVariables ?? {},
      },
      identityPolicies: identity,
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      ...(input.sessionPolicy ? { sessionPolicy: JSON.parse(input.sessionPolicy) as unknown } : {}),
    },
    {},
  );
  if (r.resultType === "error") return { result: "Error", basis, detail: r.errors.message };
  return { result: r.overallResult, basis };
}
