// The one servable-pod check (src/agent/servable-pod.ts) and the per-pod token memo
// (src/agent/pod-token-memo.ts), each on its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { httpStatus } from "../../../src/api/errors.ts";
import { isRefusal, servablePod } from "../../../src/agent/servable-pod.ts";
import { PodTokenMemo, hashToken } from "../../../src/agent/pod-token-memo.ts";
import type { PodInfo } from "../../../src/agent/pod-index.ts";

const pod = (hostNetwork: boolean): PodInfo => ({ uid: "uid-1", hostNetwork }) as PodInfo;

test("servable pod: one pod of the IP is served; hostNetwork, ambiguous and unknown IPs each refused with their code", () => {
  const ip = "10.0.0.7";
  const served = servablePod({ kind: "pod", pod: pod(false) }, ip, false);
  assert.ok(!isRefusal(served) && served.uid === "uid-1");
  const cases: Array<[Parameters<typeof servablePod>[0], boolean, string, number]> = [
    [{ kind: "pod", pod: pod(true) }, false, "HostNetworkRefused", 403],
    [{ kind: "hostNetwork" }, true, "HostNetworkRefused", 403],
    [{ kind: "ambiguous" }, false, "PodIpAmbiguous", 409],
    [{ kind: "none" }, false, "PodNotFound", 404],
  ];
  for (const [lookup, allowHostNetwork, code, status] of cases) {
    const r = servablePod(lookup, ip, allowHostNetwork);
    assert.ok(isRefusal(r), `${lookup.kind} is refused`);
    assert.equal(r.code, code);
    assert.equal(httpStatus(r.code), status);
  }
  const allowed = servablePod({ kind: "pod", pod: pod(true) }, ip, true);
  assert.ok(!isRefusal(allowed), "a hostNetwork pod is served where allowed");
});

test("pod token memo: accepted until its time, refusals remembered, one validation in flight, bounded", async () => {
  const memo = new PodTokenMemo<string>(2);
  const [a, b, c] = ["a", "b", "c"].map(hashToken) as [string, string, string];
  memo.accept(a, 1000);
  assert.ok(memo.isAccepted(a, 999));
  assert.ok(!memo.isAccepted(a, 1000), "not past its time");
  memo.accept(b, 1000);
  memo.accept(c, 1000);
  assert.ok(!memo.isAccepted(a, 0), "the least recently used token went first");
  assert.ok(memo.isAccepted(b, 0) && memo.isAccepted(c, 0));
  memo.forgetAccepted();
  assert.ok(!memo.isAccepted(c, 0));

  memo.refuse(a, { code: "PodTokenMismatch", message: "names another pod" }, 500);
  assert.deepEqual(memo.refusalOf(a, 499), { code: "PodTokenMismatch", message: "names another pod" });
  assert.equal(memo.refusalOf(a, 500), undefined);

  let starts = 0;
  let finish!: (v: string) => void;
  const start = (): Promise<string> => {
    starts++;
    return new Promise((resolve) => (finish = resolve));
  };
  const first = memo.flight(b, start);
  const second = memo.flight(b, start);
  assert.equal(first, second);
  finish("ok");
  assert.equal(await first, "ok");
  await memo.flight(b, () => Promise.resolve("again"));
  assert.equal(starts, 1, "a settled validation is not joined");
});
