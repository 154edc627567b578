import { test } from "node:test";
import assert from "node:assert/strict";
import { FairQueue, RateLimitTimeout } from "../../../src/server/fair-queue.ts";
import { ManualClock } from "../../harness/manual-clock.ts";

/** A queue on a manual clock: its refill and its timers move only with clock.advance(). */
function onClock(opts: { ratePerSecond: number; burst: number; maxWaitMs: number }) {
  const clock = new ManualClock();
  return { clock, rl: new FairQueue({ label: "STS", ...opts, now: () => clock.now(), timers: clock }) };
}

test("rate limiter: burst, then first issuances go before refreshes", async () => {
  const { clock, rl } = onClock({ ratePerSecond: 50, burst: 2, maxWaitMs: 2000 });
  await rl.acquire("refresh");
  await rl.acquire("refresh");
  const order: string[] = [];
  const waits = [
    rl.acquire("refresh").then(() => order.push("r1")),
    rl.acquire("refresh").then(() => order.push("r2")),
    rl.acquire("first").then(() => order.push("f1")),
  ];
  await clock.advance(60); // three tokens at 50/s
  await Promise.all(waits);
  assert.equal(order[0], "f1", `first issuance jumps the queue: ${order.join(",")}`);
});

test("rate limiter: a waiter past maxWaitMs is refused", async () => {
  const { clock, rl } = onClock({ ratePerSecond: 1, burst: 1, maxWaitMs: 50 });
  await rl.acquire("first");
  const refused = assert.rejects(rl.acquire("refresh"), RateLimitTimeout);
  await clock.advance(50);
  await refused;
});

/** A limiter on a clock the test moves; drain() hands out what the clock has refilled. */
function stepped(opts: {
  ratePerSecond: number;
  burst: number;
  maxWaitersPerTenant?: number;
  refreshEvery?: number;
}) {
  let now = 0;
  const limiter = new FairQueue({ label: "STS", maxWaitMs: 60_000, ...opts, now: () => now });
  const order: string[] = [];
  const settle = () => new Promise<void>((resolve) => setImmediate(resolve));
  return {
    limiter,
    order,
    ask(label: string, tenant: string, priority: "first" | "refresh" = "first") {
      return limiter.acquire(priority, tenant).then(() => {
        order.push(label);
      });
    },
    /** Moves the clock by one token's worth and lets the limiter hand it out. */
    async tick(tokens = 1) {
      now += (tokens * 1000) / opts.ratePerSecond;
      limiter.drain();
      await settle();
    },
  };
}

test("rate limiter: namespaces take turns; a crowd in one does not hold back another", async () => {
  const s = stepped({ ratePerSecond: 10, burst: 1 });
  await s.ask("a0", "tenant-a");
  const crowd = ["a1", "a2", "a3", "a4", "a5"].map((l) => s.ask(l, "tenant-a"));
  const others = ["b1", "b2"].map((l) => s.ask(l, "tenant-b"));
  for (let i = 0; i < 7; i++) await s.tick();
  await Promise.all([...crowd, ...others]);
  assert.deepEqual(s.order, ["a0", "a1", "b1", "a2", "b2", "a3", "a4", "a5"]);
});

test("rate limiter: a namespace past its waiter cap is refused at once, others still queue", async () => {
  const s = stepped({ ratePerSecond: 10, burst: 1, maxWaitersPerTenant: 2 });
  await s.ask("a0", "tenant-a");
  const queued = [s.ask("a1", "tenant-a"), s.ask("a2", "tenant-a")];
  await assert.rejects(s.limiter.acquire("first", "tenant-a"), { name: "RateLimitQueueFull" });
  assert.equal(s.limiter.waitersOf("tenant-a"), 2);
  const other = s.ask("b1", "tenant-b");
  for (let i = 0; i < 3; i++) await s.tick();
  await Promise.all([...queued, other]);
  assert.deepEqual(s.order, ["a0", "a1", "b1", "a2"]);
  assert.equal(s.limiter.queued, 0);
});

test("rate limiter: first issuances lead, but a share of the grants goes to refreshes", async () => {
  const s = stepped({ ratePerSecond: 10, burst: 1, refreshEvery: 2 });
  await s.ask("f0", "tenant-a");
  const waits = [
    s.ask("r1", "tenant-b", "refresh"),
    s.ask("r2", "tenant-b", "refresh"),
    ...["f1", "f2", "f3", "f4"].map((l) => s.ask(l, "tenant-a")),
  ];
  for (let i = 0; i < 6; i++) await s.tick();
  await Promise.all(waits);
  assert.deepEqual(s.order, ["f0", "f1", "r1", "f2", "r2", "f3", "f4"]);
});
