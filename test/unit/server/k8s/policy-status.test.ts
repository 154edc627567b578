// PolicyStatusWriter's timing on a manual clock: the reconcile loop's interval, the kick's 300 ms
// debounce after an issuance-time observation, how long that observation is shown (10 minutes),
// the condition's transition time, and no timer after stop. The informers, pod lookup and status
// API are stand-ins (one module under test); no test here sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { KubeConfig } from "@kubernetes/client-node";
import { createLogger } from "../../../../src/common/logger.ts";
import type { PodLookup } from "../../../../src/server/k8s/pod-lookup.ts";
import type { PolicyInformers } from "../../../../src/server/k8s/policy-informers.ts";
import { PolicyStatusWriter, type StatusApi } from "../../../../src/server/k8s/policy-status.ts";
import type { AccessPolicy, Condition } from "../../../../src/policy/types.ts";
import { ManualClock } from "../../../harness/manual-clock.ts";
import { accessPolicyObject, roleAllowanceObject } from "../../../harness/policy-objects.ts";

const policy = accessPolicyObject({ namespace: "team", name: "app", role: "app", durationSeconds: 3600 });
const allowance = roleAllowanceObject("team", ["team"]);
const ref = { namespace: "team", name: "app", uid: "pu", generation: 1 };

function writer(clock: ManualClock) {
  const written: { name: string; ready: Condition }[] = [];
  const record = async (req: { body: object }) => {
    const body = req.body as AccessPolicy;
    const ready = body.status?.conditions?.find((c) => c.type === "Ready") as Condition;
    written.push({ name: body.metadata.name ?? "", ready });
    return {};
  };
  const api = {
    replaceNamespacedCustomObjectStatus: record,
    replaceClusterCustomObjectStatus: record,
  } as unknown as StatusApi;
  const informers = {
    synced: true,
    accessPolicies: () => [policy],
    roleAllowances: () => [allowance],
  } as unknown as PolicyInformers;
  const pods = {
    listPods: async () => [],
    namespace: async () => ({ name: "team", labels: {} }),
  } as unknown as PodLookup;
  const status = new PolicyStatusWriter(
    new KubeConfig(),
    informers,
    pods,
    createLogger("t", { level: "silent" }),
    {
      clusterName: "c",
      maxDurationSeconds: 43200,
      intervalMs: 60_000,
      clock,
      api,
    },
  );
  const policyWrites = () => written.filter((w) => w.name === "app");
  return { status, policyWrites };
}

test("policy status: reconciles every interval on the clock; stop leaves no timer", async () => {
  const clock = new ManualClock();
  const { status, policyWrites } = writer(clock);
  status.start();
  await clock.advance(0);
  assert.equal(policyWrites().length, 1, "the first round at start");
  assert.equal(policyWrites()[0]!.ready.status, "True");
  assert.equal(policyWrites()[0]!.ready.lastTransitionTime, "2026-01-01T00:00:00Z", "the clock's time");
  await clock.advance(59_999);
  assert.equal(policyWrites().length, 1);
  await clock.advance(1);
  assert.equal(policyWrites().length, 2, "the next round at the interval");
  status.stop();
  assert.equal(clock.pending, 0);
  await clock.advance(600_000);
  assert.equal(policyWrites().length, 2);
});

test("policy status: an STS refusal seen at issuance is written 300 ms later, once, and shown for 10 minutes", async () => {
  const clock = new ManualClock();
  const { status, policyWrites } = writer(clock);
  status.start();
  await clock.advance(1_000);
  const before = policyWrites().length;
  status.observe(ref, "StsDenied", "STS refused the AssumeRole request");
  status.observe(ref, "StsDenied", "STS refused the AssumeRole request");
  await clock.advance(299);
  assert.equal(policyWrites().length, before, "debounced");
  await clock.advance(1);
  assert.equal(policyWrites().length, before + 1, "one write for the kick");
  assert.equal(policyWrites().at(-1)!.ready.reason, "StsDenied");
  const seenAt = clock.now() - 300;
  // still shown by the rounds within 10 minutes of the observation
  await clock.advance(seenAt + 599_999 - clock.now());
  assert.equal(policyWrites().at(-1)!.ready.reason, "StsDenied");
  // the first round after it: Ready again
  await clock.advance(60_000);
  assert.equal(policyWrites().at(-1)!.ready.status, "True", "the observation aged out");
  status.stop();
  assert.equal(clock.pending, 0);
});
