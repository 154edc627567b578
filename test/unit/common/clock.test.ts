// The clock seam's helpers on a manual clock: repeat() is a setInterval that stops for good.
import { test } from "node:test";
import assert from "node:assert/strict";
import { repeat, sleep } from "../../../src/common/clock.ts";
import { ManualClock } from "../../harness/manual-clock.ts";

test("repeat: runs every interval on the clock, and never again after stop", async () => {
  const clock = new ManualClock();
  const runs: number[] = [];
  const start = clock.now();
  const stop = repeat(clock, 1000, () => runs.push(clock.now() - start));
  await clock.advance(999);
  assert.deepEqual(runs, []);
  await clock.advance(2001);
  assert.deepEqual(runs, [1000, 2000, 3000]);
  stop();
  assert.equal(clock.pending, 0);
  await clock.advance(10_000);
  assert.equal(runs.length, 3);
});

test("repeat: a job that stops its own repetition is not re-armed", async () => {
  const clock = new ManualClock();
  let runs = 0;
  const stop: () => void = repeat(clock, 10, () => {
    runs++;
    stop();
  });
  await clock.advance(100);
  assert.equal(runs, 1);
  assert.equal(clock.pending, 0);
});

test("sleep: resolves when the clock passes its time, not before", async () => {
  const clock = new ManualClock();
  let done = false;
  void sleep(clock, 500).then(() => (done = true));
  await clock.advance(499);
  assert.equal(done, false);
  await clock.advance(1);
  assert.equal(done, true);
});
