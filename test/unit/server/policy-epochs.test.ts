// PolicyEpochs on its own (fake informer contents, fake timers): what moves an epoch and what
// does not, and the bounds on held polls and memoised names.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PolicyEpochs } from "../../../src/server/policy-epochs.ts";
import { POLICY_EPOCH_HOLD_MS } from "../../../src/api/contract.ts";
import { ManualClock } from "../../harness/manual-clock.ts";
import type { AccessPolicy, RoleAllowance } from "../../../src/policy/types.ts";

const policy = (ns: string, name: string, uid: string, generation: number): AccessPolicy =>
  ({ metadata: { namespace: ns, name, uid, generation }, spec: {} }) as unknown as AccessPolicy;
const allowance = (name: string, uid: string, generation: number): RoleAllowance =>
  ({ metadata: { name, uid, generation }, spec: {} }) as unknown as RoleAllowance;

class Objects {
  policies: AccessPolicy[] = [policy("a", "p", "u1", 1), policy("b", "p", "u2", 1)];
  allowances: RoleAllowance[] = [allowance("all", "r1", 1)];
  accessPolicies(ns?: string): AccessPolicy[] {
    return this.policies.filter((p) => ns === undefined || p.metadata.namespace === ns);
  }
  roleAllowances(): RoleAllowance[] {
    return this.allowances;
  }
}

const tick = () => new Promise((r) => setImmediate(r));

test("an epoch moves with its namespace's policies and with any allowance, not with another namespace", () => {
  const objects = new Objects();
  const epochs = new PolicyEpochs(objects);
  const a0 = epochs.epochOf("a");
  const b0 = epochs.epochOf("b");
  assert.notEqual(a0, b0);
  assert.equal(new PolicyEpochs(objects).epochOf("a"), a0, "deterministic: another replica agrees");

  objects.policies[1] = policy("b", "p", "u2", 2);
  epochs.changed();
  assert.equal(epochs.epochOf("a"), a0, "b's change leaves a");
  assert.notEqual(epochs.epochOf("b"), b0);

  objects.allowances = [allowance("all", "r1", 2)];
  epochs.changed();
  assert.notEqual(epochs.epochOf("a"), a0, "an allowance bounds every namespace");

  // deleted and recreated under the same name: a new uid, never the old epoch again
  const a1 = epochs.epochOf("a");
  objects.policies[0] = policy("a", "p", "u9", 1);
  epochs.changed();
  assert.notEqual(epochs.epochOf("a"), a1);
  assert.notEqual(epochs.epochOf("a"), a0);
  // the order the informer lists objects in does not matter
  objects.policies.reverse();
  const before = epochs.epochOf("a");
  epochs.changed();
  assert.equal(epochs.epochOf("a"), before);
});

test("a poll is held while nothing it names moves, answered on a change, and at the hold time otherwise", async () => {
  const objects = new Objects();
  const timers = new ManualClock();
  const epochs = new PolicyEpochs(objects, { timers });
  const known = epochs.epochsOf(["a", "b"]);

  // stale knowledge: answered at once
  assert.deepEqual(await epochs.wait("node-1", { a: "old", b: known.b! }), known);
  // current: held; a change elsewhere does not answer it
  let answer: Record<string, string> | undefined;
  void epochs.wait("node-1", { a: known.a! }).then((e) => (answer = e));
  objects.policies[1] = policy("b", "p", "u2", 5);
  epochs.changed();
  await tick();
  assert.equal(answer, undefined);
  assert.equal(epochs.waiting, 1);
  objects.policies[0] = policy("a", "p", "u1", 5);
  epochs.changed();
  await tick();
  await tick();
  const got = answer as Record<string, string> | undefined;
  assert.ok(got);
  assert.notEqual(got.a, known.a);
  assert.equal(epochs.waiting, 0);

  let quiet: Record<string, string> | undefined;
  const current = epochs.epochsOf(["a"]);
  void epochs.wait("node-1", current).then((e) => (quiet = e));
  await timers.advance(POLICY_EPOCH_HOLD_MS - 1);
  assert.equal(quiet, undefined, "held until the hold time");
  await timers.advance(1);
  assert.deepEqual(quiet, current);
});

test("held polls are bounded per holder and in total; a client that goes away is forgotten", async () => {
  const objects = new Objects();
  const timers = new ManualClock();
  const epochs = new PolicyEpochs(objects, { timers, maxWaiters: 6, maxWaitersPerHolder: 2 });
  const current = epochs.epochsOf(["a"]);
  const gone = new AbortController();
  void epochs.wait("node-1", current, gone.signal);
  void epochs.wait("node-1", current);
  // a third from the same node is answered at once instead of being held
  assert.deepEqual(await epochs.wait("node-1", current), current);
  assert.equal(epochs.waiting, 2);
  gone.abort();
  assert.equal(epochs.waiting, 1);
  for (let i = 0; i < 10; i++) void epochs.wait(`node-${i + 2}`, current);
  assert.equal(epochs.waiting, 6, "at most maxWaiters held");
  epochs.close();
  assert.equal(epochs.waiting, 0);
});

test("memoised epochs stay bounded whatever names agents ask about", () => {
  const objects = new Objects();
  const epochs = new PolicyEpochs(objects, { maxMemo: 100 });
  const a = epochs.epochOf("a");
  for (let i = 0; i < 10_000; i++) epochs.epochOf(`junk-${i}`);
  assert.ok((epochs as unknown as { memo: Map<string, string> }).memo.size <= 100);
  assert.equal(epochs.epochOf("a"), a, "recomputed the same");
});
