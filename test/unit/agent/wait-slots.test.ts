import { test } from "node:test";
import assert from "node:assert/strict";
import { WaitSlots } from "../../../src/agent/wait-slots.ts";

test("wait slots: capped per source and in total; a release frees exactly one slot, once", () => {
  const slots = new WaitSlots(6, 2);
  const a1 = slots.acquire("10.0.0.1");
  const a2 = slots.acquire("10.0.0.1");
  assert.equal(typeof a1, "function");
  assert.equal(typeof a2, "function");
  assert.equal(slots.acquire("10.0.0.1"), "per_source", "a third wait from one source is refused");
  const others = ["10.0.0.2", "10.0.0.2", "10.0.0.3", "10.0.0.3"].map((ip) => slots.acquire(ip));
  assert.ok(others.every((r) => typeof r === "function"));
  assert.equal(slots.size, 6);
  assert.equal(slots.acquire("10.0.0.4"), "total");
  (a1 as () => void)();
  (a1 as () => void)();
  assert.equal(slots.size, 5, "a second release of the same slot changes nothing");
  assert.equal(typeof slots.acquire("10.0.0.4"), "function");
  assert.equal(slots.acquire("10.0.0.1"), "total");
});
