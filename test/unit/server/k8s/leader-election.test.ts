// LeaderElector's timing on a manual clock: the retry timer, renewals, take-over after a lease
// duration of silence, the renew deadline and the release on stop, against an in-memory Lease with
// the apiserver's optimistic concurrency (resourceVersion). No test here sleeps; the real
// apiserver's behaviour is test/server/k8s/leader-election.test.ts's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { KubeConfig, type V1Lease } from "@kubernetes/client-node";
import { createLogger } from "../../../../src/common/logger.ts";
import { LeaderElector, type LeaseApi } from "../../../../src/server/k8s/leader-election.ts";
import { ManualClock } from "../../../harness/manual-clock.ts";

const NS = "keycutter";
const NAME = "keycutter-leader";

class ApiError extends Error {
  readonly code: number;
  constructor(code: number) {
    super(`HTTP ${code}`);
    this.code = code;
  }
}

/** One Lease with resourceVersion checks, as the apiserver keeps it; `down` fails every call. */
class InMemoryLease implements LeaseApi {
  lease: V1Lease | undefined;
  down = false;
  writes = 0;
  private version = 0;

  private check(): void {
    if (this.down) throw new ApiError(503);
  }

  private store(body: V1Lease): V1Lease {
    this.writes++;
    this.lease = structuredClone({
      ...body,
      metadata: { ...body.metadata, resourceVersion: String(++this.version) },
    });
    return structuredClone(this.lease);
  }

  readNamespacedLease = async (): Promise<V1Lease> => {
    this.check();
    if (!this.lease) throw new ApiError(404);
    return structuredClone(this.lease);
  };

  createNamespacedLease = async (req: { body: V1Lease }): Promise<V1Lease> => {
    this.check();
    if (this.lease) throw new ApiError(409);
    return this.store(req.body);
  };

  replaceNamespacedLease = async (req: { body: V1Lease }): Promise<V1Lease> => {
    this.check();
    if (req.body.metadata?.resourceVersion !== this.lease?.metadata?.resourceVersion) throw new ApiError(409);
    return this.store(req.body);
  };

  /** The other replica renewing (or first taking) the Lease. */
  holderRenews(identity: string, atMs: number): void {
    const spec = { holderIdentity: identity, leaseDurationSeconds: 15, renewTime: new Date(atMs) };
    this.store({ metadata: { name: NAME, namespace: NS }, spec: { ...this.lease?.spec, ...spec } });
  }

  get holder(): string | undefined {
    return this.lease?.spec?.holderIdentity;
  }
}

function elector(api: InMemoryLease, clock: ManualClock, identity = "me") {
  const transitions: string[] = [];
  const le = new LeaderElector(new KubeConfig(), createLogger("le-test", { level: "silent" }), {
    namespace: NS,
    name: NAME,
    identity,
    api: api as unknown as LeaseApi,
    clock,
    onStartedLeading: () => transitions.push("started"),
    onStoppedLeading: () => transitions.push("stopped"),
  });
  return { le, transitions };
}

/** An elector campaigning on a manual clock, after `prepare` (the other replica's moves) and its first round. */
async function campaigning(prepare: (api: InMemoryLease, clock: ManualClock) => void = () => undefined) {
  const clock = new ManualClock();
  const api = new InMemoryLease();
  prepare(api, clock);
  const { le, transitions } = elector(api, clock);
  le.start();
  await clock.advance(0);
  return { clock, api, le, transitions };
}

test("leader election: takes an absent Lease at once and renews it every retry period", async () => {
  const { clock, api, le, transitions } = await campaigning();
  assert.equal(le.isLeader, true);
  assert.equal(api.holder, "me");
  assert.deepEqual(transitions, ["started"]);
  const created = api.writes;
  await clock.advance(2_000);
  assert.equal(api.writes, created + 1, "one renewal at the retry period");
  assert.equal(new Date(api.lease?.spec?.renewTime as Date).getTime(), clock.now());
  await clock.advance(10_000);
  assert.equal(api.writes, created + 6, "a renewal every 2 s");
  assert.deepEqual(transitions, ["started"]);
  await le.stop();
});

test("leader election: a live holder keeps the Lease; taken over a lease duration after its last change", async () => {
  const { clock, api, le, transitions } = await campaigning((lease, at) =>
    lease.holderRenews("other", at.now()),
  );
  for (let s = 0; s < 60; s += 5) {
    await clock.advance(5_000);
    api.holderRenews("other", clock.now());
  }
  assert.equal(le.isLeader, false, "a minute of renewals: never stolen");
  assert.equal(api.holder, "other");
  // the holder dies; its last change was seen at the next retry (2 s on), so expiry is 15 s after that
  const diedAt = clock.now();
  await clock.advance(16_000);
  assert.equal(le.isLeader, false, `16 s after it died: ${api.holder}`);
  await clock.advance(2_000);
  assert.equal(le.isLeader, true, "taken over once 15 s passed since the Lease last changed");
  assert.equal(api.holder, "me");
  assert.equal(api.lease?.spec?.leaseTransitions, 1);
  assert.ok(clock.now() - diedAt <= 15_000 + 2 * 2_000, "within a lease duration plus two retries");
  assert.deepEqual(transitions, ["started"]);
  await le.stop();
});

test("leader election: the holder's renewTime does not decide expiry, only the local clock", async () => {
  // written by a clock an hour behind
  const { clock, le } = await campaigning((lease, at) => lease.holderRenews("other", at.now() - 3_600_000));
  await clock.advance(14_000);
  assert.equal(le.isLeader, false, "an hour-old renewTime seen 14 s ago is not yet expired");
  await clock.advance(2_000);
  assert.equal(le.isLeader, true);
  await le.stop();
});

test("leader election: keeps leading through failed renewals until the renew deadline", async () => {
  const { clock, api, le, transitions } = await campaigning();
  assert.equal(le.isLeader, true);
  api.down = true;
  await clock.advance(10_000);
  assert.equal(le.isLeader, true, "10 s of failed renewals: within the deadline");
  await clock.advance(2_000);
  assert.equal(le.isLeader, false, "past the 10 s renew deadline: steps down");
  assert.deepEqual(transitions, ["started", "stopped"]);
  api.down = false;
  await clock.advance(2_000);
  assert.equal(le.isLeader, true, "its own Lease again once the apiserver answers");
  assert.deepEqual(transitions, ["started", "stopped", "started"]);
  await le.stop();
});

test("leader election: a concurrent take-over loses on the resourceVersion conflict", async () => {
  const clock = new ManualClock();
  const api = new InMemoryLease();
  const a = elector(api, clock, "a");
  const b = elector(api, clock, "b");
  a.le.start();
  b.le.start();
  await clock.advance(0);
  assert.equal([a.le.isLeader, b.le.isLeader].filter(Boolean).length, 1, "exactly one leader");
  await clock.advance(60_000);
  assert.equal([a.le.isLeader, b.le.isLeader].filter(Boolean).length, 1, "still one, a minute on");
  assert.equal(api.holder, a.le.isLeader ? "a" : "b");
  await a.le.stop();
  await b.le.stop();
});

test("leader election: stop releases the Lease and leaves no timer behind", async () => {
  const { clock, api, le, transitions } = await campaigning();
  await le.stop();
  assert.equal(clock.pending, 0, "no retry timer left");
  assert.equal(api.holder, "", "released: another replica takes over at once");
  assert.equal(le.isLeader, false);
  assert.deepEqual(transitions, ["started", "stopped"]);
  const writes = api.writes;
  await clock.advance(60_000);
  assert.equal(api.writes, writes, "no campaigning after stop");
});
