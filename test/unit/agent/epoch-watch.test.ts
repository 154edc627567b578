// PolicyEpochWatch on its own (a fake server): the poll names the cache's namespaces with the
// epochs known, an answer replaces the known epochs before anyone is told, a new namespace
// restarts the poll, and failures back off.
import { test } from "node:test";
import assert from "node:assert/strict";
import { pino } from "pino";
import { PolicyEpochWatch, type EpochSource } from "../../../src/agent/epoch-watch.ts";
import { KeycutterError } from "../../../src/api/errors.ts";
import type { PolicyEpochsRequest, PolicyEpochsResponse } from "../../../src/api/contract.ts";
import type { Clock } from "../../../src/common/clock.ts";
import { ManualClock } from "../../harness/manual-clock.ts";

const log = pino({ level: "silent" });

/** Answers at once when the request's epochs differ from `epochs`, otherwise holds until cancelled or changed. */
class Server implements EpochSource {
  epochs: Record<string, string> = {};
  requests: PolicyEpochsRequest[] = [];
  fail = 0;
  private wake: (() => void) | undefined;
  change(ns: string, epoch: string): void {
    this.epochs[ns] = epoch;
    this.wake?.();
  }
  async policyEpochs(
    req: PolicyEpochsRequest,
    _timeoutMs: number,
    cancel?: AbortSignal,
  ): Promise<PolicyEpochsResponse> {
    this.requests.push(req);
    if (this.fail > 0) {
      this.fail--;
      throw new KeycutterError("Unavailable", "down");
    }
    const answer = () => ({
      epochs: Object.fromEntries(Object.keys(req.namespaces).map((ns) => [ns, this.epochs[ns] ?? "none"])),
    });
    const differs = () => Object.entries(req.namespaces).some(([ns, e]) => (this.epochs[ns] ?? "none") !== e);
    while (!differs()) {
      if (cancel?.aborted) throw new KeycutterError("Unavailable", "cancelled");
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        cancel?.addEventListener("abort", () => resolve(), { once: true });
      });
    }
    return answer();
  }
}

/** The watch's pauses on a manual clock; what it reads as the time is the test's `nowMs()`. */
function clockReading(nowMs: () => number): { clock: Clock; timers: ManualClock } {
  const timers = new ManualClock();
  return {
    timers,
    clock: {
      now: nowMs,
      random: () => timers.random(),
      setTimeout: (fn, ms) => timers.setTimeout(fn, ms),
      clearTimeout: (handle) => timers.clearTimeout(handle),
    },
  };
}

/** Moves the pauses' clock 5 ms at a time (at most 1 s of it) until `cond` holds. */
const waitUntil = async (timers: ManualClock, what: string, cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await timers.advance(5);
  assert.ok(cond(), what);
};

test("polls the cache's namespaces, learns their epochs, and reports a change before anything else", async () => {
  const server = new Server();
  server.epochs = { "team-a": "a1", "team-b": "b1" };
  const namespaces = new Set(["team-a"]);
  const seen: string[] = [];
  let clock = 1_000;
  const { clock: watchClock, timers } = clockReading(() => clock);
  const watch: PolicyEpochWatch = new PolicyEpochWatch({
    source: server,
    namespaces: () => namespaces,
    onEpochs: (e) => seen.push(`${e.get("team-a")}|${watch.known("team-a")}`),
    log,
    clock: watchClock,
    minIntervalMs: 1,
  });
  assert.equal(watch.known("team-a"), undefined);
  watch.start();
  await waitUntil(timers, "first answer", () => watch.known("team-a") === "a1");
  assert.deepEqual(server.requests[0], { namespaces: { "team-a": "" } });
  assert.equal(watch.confirmedAtMs("team-a"), 1_000);
  assert.equal(watch.confirmedAtMs("team-b"), 0, "not covered");

  clock = 2_000;
  server.change("team-a", "a2");
  await waitUntil(timers, "the change", () => watch.known("team-a") === "a2");
  assert.equal(seen.at(-1), "a2|a2", "the known epoch was replaced before the cache heard of it");
  assert.equal(watch.confirmedAtMs("team-a"), 2_000);

  // a pod of a new namespace: the held poll is restarted to include it
  namespaces.add("team-b");
  watch.cover("team-b");
  await waitUntil(timers, "team-b covered", () => watch.known("team-b") === "b1");
  await waitUntil(
    timers,
    "the next poll names both with their epochs",
    () => server.requests.at(-1)!.namespaces["team-b"] === "b1",
  );
  assert.deepEqual(server.requests.at(-1)!.namespaces, { "team-a": "a2", "team-b": "b1" });
  watch.cover("team-b"); // already covered: no restart
  const n = server.requests.length;
  await timers.advance(20);
  assert.equal(server.requests.length, n);
  await watch.stop();
});

test("a failing channel backs off and stops confirming; it recovers on the next answer", async () => {
  const server = new Server();
  server.epochs = { "team-a": "a1" };
  server.fail = 2;
  let clock = 5_000;
  const { clock: watchClock, timers } = clockReading(() => clock);
  const watch = new PolicyEpochWatch({
    source: server,
    namespaces: () => ["team-a"],
    onEpochs: () => undefined,
    log,
    clock: watchClock,
    minIntervalMs: 1,
    retryInitialMs: 10,
  });
  watch.start();
  await waitUntil(timers, "recovered", () => watch.known("team-a") === "a1");
  assert.deepEqual(
    server.requests.slice(0, 3).map((r) => r.namespaces["team-a"]),
    ["", "", ""],
    "two failures learn nothing, then an answer",
  );
  assert.equal(watch.confirmedAtMs("team-a"), 5_000);
  clock = 9_000;
  assert.equal(watch.ageMs(), 4_000);
  await watch.stop();
});
