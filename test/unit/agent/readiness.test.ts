import { test } from "node:test";
import assert from "node:assert/strict";
import { notReadyReasons, type ReadinessState } from "../../../src/agent/readiness.ts";

const READY: ReadinessState = {
  hookInPlace: true,
  watchSynced: true,
  watchStale: false,
  serverReachable: true,
};

test("readiness: ready only when every condition holds", () => {
  assert.deepEqual(notReadyReasons(READY), []);
});

test("readiness: each condition has its own message; a missing hook is not an unreachable service", () => {
  assert.deepEqual(notReadyReasons({ ...READY, hookInPlace: false }), ["iptables hook not installed"]);
  assert.deepEqual(notReadyReasons({ ...READY, watchSynced: false }), ["pod watch not synced"]);
  assert.deepEqual(notReadyReasons({ ...READY, watchStale: true }), ["pod watch stale"]);
  assert.deepEqual(notReadyReasons({ ...READY, serverReachable: false }), ["credential service unreachable"]);
});

test("readiness: every failing condition is named, not only the first", () => {
  assert.deepEqual(
    notReadyReasons({ hookInPlace: false, watchSynced: false, watchStale: false, serverReachable: false }),
    ["iptables hook not installed", "pod watch not synced", "credential service unreachable"],
  );
});
