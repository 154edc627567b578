// One unit test per step of the issuance chain (src/server/issue/): each against a recording
// next step, so that what a step does is seen on its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { KeycutterError } from "../../../src/api/errors.ts";
import { RateLimitTimeout, type Priority } from "../../../src/server/fair-queue.ts";
import { StsError, type AssumeRoleRequest } from "../../../src/aws/sts.ts";
import { createLogger } from "../../../src/common/logger.ts";
import type { IssuePlan } from "../../../src/policy/decide.ts";
import { MemoryCache, type CachedCredentials, type SharedStore } from "../../../src/server/cache.ts";
import { FailureCache } from "../../../src/server/failure-cache.ts";
import { AssumeRoleIssuer } from "../../../src/server/issue/assume-role.ts";
import type { IssueContext, Issued, Issuer } from "../../../src/server/issue/issuer.ts";
import { IssuedHistory } from "../../../src/server/issue/issued-history.ts";
import { cacheKey } from "../../../src/server/issue/keys.ts";
import { MemoryCacheIssuer } from "../../../src/server/issue/memory.ts";
import { RateLimitedIssuer } from "../../../src/server/issue/rate-limit.ts";
import { RefusalCacheIssuer } from "../../../src/server/issue/refusals.ts";
import { SharedCacheIssuer } from "../../../src/server/issue/shared.ts";
import { SingleFlightIssuer } from "../../../src/server/issue/single-flight.ts";
import { ManualClock } from "../../harness/manual-clock.ts";

const log = createLogger("test", { level: "silent" });
const NOW = Date.parse("2026-12-01T12:00:00Z");
const atNow = { now: () => NOW };

const plan: IssuePlan = {
  roleArn: "arn:aws:iam::123456789012:role/app",
  roleName: "app",
  sessionPolicy: undefined,
  policyArns: [],
  tags: [],
  durationSeconds: 3600,
  sessionName: "team-a.app",
  sourceIdentity: "",
  policy: { namespace: "team-a", name: "app", uid: "p-1", generation: 1 },
  allowances: [{ name: "team-a", uid: "a-1", generation: 1 }],
  policySha256: "",
  bindings: [],
};
const ctx: IssueContext = { podUID: "uid-1", cacheKey: cacheKey(plan, "uid-1") };

function creds(expiresInMs: number): CachedCredentials {
  return {
    accessKeyId: "ASIA",
    secretAccessKey: "secret",
    sessionToken: "token",
    expiration: new Date(NOW + expiresInMs).toISOString().replace(/\.\d{3}Z$/, "Z"),
  };
}

/** The next step: answers (or fails) as told and counts its calls. */
class Recorder implements Issuer {
  calls = 0;
  answer: () => Promise<Issued> = () => Promise.resolve({ creds: creds(3_600_000), source: "sts" });
  issue(): Promise<Issued> {
    this.calls++;
    return this.answer();
  }
}

function lookups() {
  const seen: string[] = [];
  return { seen, metrics: { cacheLookups: { inc: (l: { result: string }) => void seen.push(l.result) } } };
}

test("memory step: a fresh hit costs the next step nothing; a miss is kept on the way back", async () => {
  const next = new Recorder();
  const memory = new MemoryCache();
  const history = new IssuedHistory();
  const { seen, metrics } = lookups();
  const step = new MemoryCacheIssuer(next, {
    memory,
    history,
    minRemainingSeconds: 2700,
    metrics: metrics as never,
    clock: atNow,
  });
  assert.equal((await step.issue(plan, ctx)).source, "sts");
  assert.equal((await step.issue(plan, ctx)).source, "memory");
  assert.equal(next.calls, 1);
  assert.deepEqual(seen, ["hit_memory"]);
  assert.ok(history.holdsValid("uid-1", NOW));
  // credentials below the freshness bound are not served from memory
  memory.set(ctx.cacheKey, creds(60_000));
  assert.equal((await step.issue(plan, ctx)).source, "sts");
  assert.equal(next.calls, 2);
});

test("refusal step: a definite refusal is remembered, a retryable one is not, an edit asks again", async () => {
  const next = new Recorder();
  const { seen, metrics } = lookups();
  const step = new RefusalCacheIssuer(next, {
    failures: new FailureCache({ ttlMs: 30_000, maxEntries: 10 }),
    metrics: metrics as never,
  });
  next.answer = () => Promise.reject(new KeycutterError("Throttled", "slow down"));
  await assert.rejects(step.issue(plan, ctx), { code: "Throttled" });
  await assert.rejects(step.issue(plan, ctx), { code: "Throttled" });
  assert.equal(next.calls, 2, "throttling is never remembered");
  next.answer = () => Promise.reject(new KeycutterError("StsDenied", "refused (request id r-1)"));
  await assert.rejects(step.issue(plan, ctx), { code: "StsDenied" });
  await assert.rejects(step.issue(plan, ctx), { code: "StsDenied", message: "refused (request id r-1)" });
  assert.equal(next.calls, 3, "the second StsDenied came from memory");
  assert.deepEqual(seen, ["hit_failure"]);
  const edited = { ...plan, policy: { ...plan.policy, generation: 2 } };
  await assert.rejects(step.issue(edited, ctx), { code: "StsDenied" });
  assert.equal(next.calls, 4, "a new generation of the policy asks STS again");
});

test("single-flight step: concurrent asks share one issuance, success or failure, then it is gone", async () => {
  const next = new Recorder();
  const step = new SingleFlightIssuer(next);
  let release!: () => void;
  next.answer = () =>
    new Promise((resolve) => {
      release = () => resolve({ creds: creds(3_600_000), source: "sts" });
    });
  const both = Promise.all([step.issue(plan, ctx), step.issue(plan, ctx)]);
  assert.equal(step.size, 1);
  release();
  const [a, b] = await both;
  assert.equal(a, b);
  assert.equal(next.calls, 1);
  assert.equal(step.size, 0);
  next.answer = () => Promise.reject(new KeycutterError("Unavailable", "down"));
  const failing = [step.issue(plan, ctx), step.issue(plan, ctx)];
  for (const f of failing) await assert.rejects(f, { code: "Unavailable" });
  assert.equal(next.calls, 2);
  assert.equal(step.size, 0);
});

/** A shared store in memory, with a lock another replica may hold. */
function fakeShared(): SharedStore & {
  values: Map<string, CachedCredentials>;
  held: boolean;
  unlocked: number;
} {
  const values = new Map<string, CachedCredentials>();
  const store = {
    values,
    held: false,
    unlocked: 0,
    ready: true,
    get: (key: string) => Promise.resolve(values.get(key)),
    set: (key: string, value: CachedCredentials) => {
      values.set(key, value);
      return Promise.resolve();
    },
    lock: () => Promise.resolve(store.held ? undefined : "lock-token"),
    unlock: () => {
      store.unlocked++;
      return Promise.resolve();
    },
  };
  return store as never;
}

/** The shared-cache step as the chain builds it: 2700 s freshness, a 3 s lock wait. */
function sharedStep(
  next: Issuer,
  shared: SharedStore | undefined,
  metrics: ReturnType<typeof lookups>["metrics"],
  clock: ManualClock,
): SharedCacheIssuer {
  return new SharedCacheIssuer(next, {
    shared,
    minRemainingSeconds: 2700,
    lockWaitMs: 3000,
    metrics: metrics as never,
    clock,
  });
}

test("shared step: a hit skips STS; a miss takes the lock, stores and unlocks; a held lock waits for its holder", async () => {
  const next = new Recorder();
  const shared = fakeShared();
  const { seen, metrics } = lookups();
  const clock = new ManualClock(NOW);
  const step = sharedStep(next, shared, metrics, clock);
  assert.equal((await step.issue(plan, ctx)).source, "sts");
  assert.ok(shared.values.has(ctx.cacheKey), "stored for the other replicas");
  assert.equal(shared.unlocked, 1);
  assert.equal((await step.issue(plan, ctx)).source, "shared");
  assert.equal(next.calls, 1);

  shared.values.clear();
  shared.held = true;
  const waiting = step.issue(plan, ctx);
  await clock.advance(100); // two polls, 50 ms apart, find nothing
  assert.equal(clock.pending, 1, "still polling");
  shared.values.set(ctx.cacheKey, creds(3_600_000)); // the other replica's result lands
  await clock.advance(50);
  assert.equal((await waiting).source, "shared", "the lock holder's result");
  assert.equal(next.calls, 1, "no STS call while another replica makes it");
  assert.equal(clock.pending, 0);
  assert.deepEqual(seen, ["miss", "hit_shared", "miss"]);

  const alone = sharedStep(next, undefined, metrics, clock);
  assert.equal((await alone.issue(plan, ctx)).source, "sts");
  assert.equal(next.calls, 2);
});

test("shared step: a lock holder that never answers is waited for lockWaitMs, then STS is called", async () => {
  const next = new Recorder();
  const shared = fakeShared();
  shared.held = true;
  const { metrics } = lookups();
  const clock = new ManualClock(NOW);
  const step = sharedStep(next, shared, metrics, clock);
  const issued = step.issue(plan, ctx);
  await clock.advance(2950);
  assert.equal(next.calls, 0, "within the lock wait: no STS call");
  await clock.advance(50);
  assert.equal((await issued).source, "sts", "the holder's result never came: asked STS itself");
  assert.equal(next.calls, 1);
  assert.equal(clock.pending, 0, "no poll left behind");
  assert.ok(shared.values.has(ctx.cacheKey), "stored for the other replicas");
});

test("rate-limit step: refreshes queue behind first issuances; a spent budget is Throttled", async () => {
  const next = new Recorder();
  const history = new IssuedHistory();
  const asked: Array<[Priority, string]> = [];
  let timeout = false;
  const limiter = {
    acquire: (priority: Priority, tenant: string) => {
      asked.push([priority, tenant]);
      return timeout ? Promise.reject(new RateLimitTimeout("STS")) : Promise.resolve();
    },
  };
  const step = new RateLimitedIssuer(next, { limiter, history, clock: atNow });
  await step.issue(plan, ctx);
  history.record("uid-1", NOW + 60_000);
  await step.issue(plan, ctx);
  assert.deepEqual(asked, [
    ["first", "team-a"],
    ["refresh", "team-a"],
  ]);
  timeout = true;
  await assert.rejects(step.issue(plan, ctx), (err: unknown) => {
    assert.ok(err instanceof KeycutterError && err.code === "Throttled");
    assert.ok(err.cause instanceof RateLimitTimeout);
    return true;
  });
  assert.equal(next.calls, 2);
});

test("STS step: a role's lower MaxSessionDuration is retried at 3600; a refusal keeps STS's text out", async () => {
  const calls: AssumeRoleRequest[] = [];
  const observed: string[] = [];
  let refuse = false;
  const sts = {
    assumeRole: (req: AssumeRoleRequest) => {
      calls.push(req);
      if (refuse)
        return Promise.reject(
          new StsError("StsDenied", "AccessDenied", "User arn:aws:iam::1:role/server is not authorized"),
        );
      if (req.durationSeconds > 3600)
        return Promise.reject(
          new StsError(
            "PolicyInvalid",
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration",
          ),
        );
      return Promise.resolve({
        accessKeyId: "ASIA",
        secretAccessKey: "s",
        sessionToken: "t",
        expiration: new Date(NOW + 3_600_500),
      });
    },
  };
  const step = new AssumeRoleIssuer({ sts, log, observe: (_policy, reason) => void observed.push(reason) });
  const issued = await step.issue({ ...plan, durationSeconds: 7200 }, ctx);
  assert.deepEqual(
    calls.map((c) => c.durationSeconds),
    [7200, 3600],
  );
  assert.equal(issued.source, "sts");
  assert.equal(issued.creds.expiration, new Date(NOW + 3_600_000).toISOString().replace(/\.\d{3}Z$/, "Z"));
  refuse = true;
  await assert.rejects(step.issue(plan, ctx), (err: unknown) => {
    assert.ok(err instanceof KeycutterError && err.code === "StsDenied");
    assert.ok(!err.message.includes("not authorized"), "STS's text stays in the server log");
    assert.ok(err.cause instanceof StsError);
    return true;
  });
  assert.deepEqual(observed, ["StsDenied"]);
});
