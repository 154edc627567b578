import { test } from "node:test";
import assert from "node:assert/strict";
import {
  credentialWaitLeftMs,
  DEFAULT_CREDENTIAL_WAIT_MS,
  DEFAULT_UNKNOWN_POD_WAIT_MS,
} from "../../../src/agent/answer-budget.ts";

test("defaults: every request is answered within 800 ms, inside the 1 s of a single-attempt SDK", () => {
  const cfg = { unknownPodWaitMs: DEFAULT_UNKNOWN_POD_WAIT_MS, credentialWaitMs: DEFAULT_CREDENTIAL_WAIT_MS };
  for (const waitedForPod of [0, 100, 799, 800]) {
    assert.ok(waitedForPod + credentialWaitLeftMs(cfg, waitedForPod) <= 800, `after ${waitedForPod} ms`);
  }
});

test("a late pod's wait and the server's wait do not add up", () => {
  const cfg = { unknownPodWaitMs: 800, credentialWaitMs: 900 };
  assert.equal(credentialWaitLeftMs(cfg, 0), 900);
  assert.equal(credentialWaitLeftMs(cfg, 700), 200);
  assert.equal(credentialWaitLeftMs(cfg, 1000), 0);
});
