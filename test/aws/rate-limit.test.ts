import { test } from "node:test";
import assert from "node:assert/strict";
import { RateLimiter, RateLimitTimeout } from "../../src/aws/rate-limit.ts";

test("rate limiter: burst, then first issuances go before refreshes", async () => {
  const rl = new RateLimiter({ ratePerSecond: 50, burst: 2, maxWaitMs: 2000 });
  await rl.acquire("refresh");
  await rl.acquire("refresh");
  const order: string[] = [];
  const waits = [
    rl.acquire("refresh").then(() => order.push("r1")),
    rl.acquire("refresh").then(() => order.push("r2")),
    rl.acquire("first").then(() => order.push("f1")),
  ];
  await Promise.all(waits);
  assert.equal(order[0], "f1", `first issuance jumps the queue: ${order.join(",")}`);
});

test("rate limiter: a waiter past maxWaitMs is refused", async () => {
  const rl = new RateLimiter({ ratePerSecond: 1, burst: 1, maxWaitMs: 50 });
  await rl.acquire("first");
  await assert.rejects(rl.acquire("refresh"), RateLimitTimeout);
});
