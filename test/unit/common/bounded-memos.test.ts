// The bounded memos hostile input can reach: the LRU (the lru-cache package, as configured here) and the per-source
// token buckets (src/common/keyed-token-buckets.ts), with an injected clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LRUCache } from "lru-cache";
import { KeyedTokenBuckets } from "../../../src/common/keyed-token-buckets.ts";

test("LRU: bounded, evicts the least recently used one (never all), entries expire", () => {
  let clock = 5000; // lru-cache treats a start time of 0 as "no TTL"
  const lru = new LRUCache<string, number>({
    max: 3,
    ttl: 1000,
    ttlResolution: 0,
    perf: { now: () => clock },
  });
  lru.set("a", 1).set("b", 2).set("c", 3);
  assert.equal(lru.get("a"), 1); // a is now the most recent
  lru.set("d", 4);
  assert.equal(lru.size, 3);
  assert.equal(lru.has("b"), false, "b was the least recently used");
  assert.deepEqual(
    ["a", "c", "d"].map((k) => lru.get(k)),
    [1, 3, 4],
  );
  clock = 5999;
  assert.equal(lru.get("a"), 1);
  clock = 6001;
  assert.equal(lru.get("a"), undefined, "expired");
  lru.set("e", 5, { ttl: 10 });
  clock = 6012;
  assert.equal(lru.has("e"), false, "per-entry ttl");
  assert.throws(() => new LRUCache({ max: 0 }));
});

test("per-source buckets: one source's spending leaves another's untouched; the map is bounded", () => {
  let clock = 0;
  const buckets = new KeyedTokenBuckets({ ratePerSecond: 2, burst: 3, maxKeys: 100, now: () => clock });
  const taken = (key: string, n: number) =>
    Array.from({ length: n }, () => buckets.take(key)).filter(Boolean).length;
  assert.equal(taken("attacker", 50), 3, "a burst, then nothing");
  assert.equal(taken("agent", 3), 3, "another source is unaffected");
  clock = 1000;
  assert.equal(taken("attacker", 50), 2, "refilled at the rate");
  for (let i = 0; i < 1000; i++) buckets.take(`spoof-${i}`);
  assert.ok(buckets.keys <= 100);
});
