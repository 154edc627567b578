import { test } from "node:test";
import assert from "node:assert/strict";
import { formatExplanation, type Explanation } from "../../../src/server/explain.ts";

function explanation(durationSeconds: number): Explanation {
  return {
    pod: {
      namespace: "tenant-a",
      name: "p",
      uid: "u",
      serviceAccount: "app",
      node: "n1",
      phase: "Running",
      terminating: false,
      labels: {},
      podIPs: ["10.0.0.5"],
      hostIPs: ["10.0.0.1"],
    },
    policies: [],
    allowances: [],
    settings: { clusterName: "c", maxDurationSeconds: 3600 },
    decision: {
      ok: true,
      policy: "readers",
      roleArn: "arn:aws:iam::123456789012:role/tenant-a",
      sessionName: "tenant-a.p",
      durationSeconds,
      policyArns: [],
      policySha256: "x",
    },
  } as Explanation;
}

test("explain: a session too short for IMDS clients says so under the decision", () => {
  assert.match(
    formatExplanation(explanation(900)),
    /duration 900s\n {2}warning: 900s sessions are shorter than 2700s: on IMDS/,
  );
  assert.doesNotMatch(formatExplanation(explanation(3600)), /warning/);
});
