import { test } from "node:test";
import assert from "node:assert/strict";
import { PodIndex, type PodInfo } from "../../src/agent/pod-index.ts";

function pod(over: Partial<PodInfo> & { uid: string }): PodInfo {
  return {
    namespace: "ns",
    name: over.uid,
    ip: "",
    ips: over.ip ? [over.ip] : [],
    hostNetwork: false,
    phase: "Running",
    terminating: false,
    serviceAccountName: "default",
    nodeName: "n1",
    ...over,
  };
}

test("lookup by IP, change of IP, removal", () => {
  const idx = new PodIndex();
  const gone: string[] = [];
  idx.addListener({ podChanged() {}, podGone: (p) => gone.push(p.uid) });
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2" }));
  assert.equal(idx.lookup("10.0.0.2").kind, "pod");
  idx.upsert(pod({ uid: "a", ip: "10.0.0.3" }));
  assert.equal(idx.lookup("10.0.0.2").kind, "none");
  const l = idx.lookup("10.0.0.3");
  assert.ok(l.kind === "pod" && l.pod.uid === "a");
  idx.remove("a");
  assert.equal(idx.lookup("10.0.0.3").kind, "none");
  assert.deepEqual(gone, ["a"]);
});

test("IP reuse: terminating old pod and live new pod → the new one; two live pods → ambiguous", () => {
  const idx = new PodIndex();
  idx.upsert(pod({ uid: "old", ip: "10.0.0.2", terminating: true }));
  idx.upsert(pod({ uid: "new", ip: "10.0.0.2" }));
  const l = idx.lookup("10.0.0.2");
  assert.ok(l.kind === "pod" && l.pod.uid === "new");
  idx.upsert(pod({ uid: "other", ip: "10.0.0.2" }));
  assert.equal(idx.lookup("10.0.0.2").kind, "ambiguous");
});

test("finished pods do not hold their IP", () => {
  const idx = new PodIndex();
  idx.upsert(pod({ uid: "job", ip: "10.0.0.2", phase: "Succeeded" }));
  assert.equal(idx.lookup("10.0.0.2").kind, "none");
  idx.upsert(pod({ uid: "new", ip: "10.0.0.2" }));
  const l = idx.lookup("10.0.0.2");
  assert.ok(l.kind === "pod" && l.pod.uid === "new");
});

test("several hostNetwork pods on the node IP → hostNetwork", () => {
  const idx = new PodIndex();
  idx.upsert(pod({ uid: "h1", ip: "10.0.255.10", hostNetwork: true }));
  const l = idx.lookup("10.0.255.10");
  assert.ok(l.kind === "pod" && l.pod.hostNetwork);
  idx.upsert(pod({ uid: "h2", ip: "10.0.255.10", hostNetwork: true }));
  assert.equal(idx.lookup("10.0.255.10").kind, "hostNetwork");
});

test("resync removes pods missing from the list and reports them gone", () => {
  const idx = new PodIndex();
  const gone: string[] = [];
  idx.addListener({ podChanged() {}, podGone: (p) => gone.push(p.uid) });
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2" }));
  idx.upsert(pod({ uid: "b", ip: "10.0.0.3" }));
  idx.resync([pod({ uid: "b", ip: "10.0.0.3" }), pod({ uid: "c", ip: "10.0.0.4" })]);
  assert.deepEqual(gone, ["a"]);
  assert.equal(idx.size, 2);
  assert.equal(idx.lookup("10.0.0.2").kind, "none");
  assert.equal(idx.lookup("10.0.0.4").kind, "pod");
});

test("waitFor resolves when the pod appears, or after the timeout", async () => {
  const idx = new PodIndex();
  const t0 = Date.now();
  const none = await idx.waitFor("10.0.0.9", 60);
  assert.equal(none.kind, "none");
  assert.ok(Date.now() - t0 >= 50);
  const p = idx.waitFor("10.0.0.9", 5000);
  assert.equal(idx.waiting, 1);
  setTimeout(() => idx.upsert(pod({ uid: "late", ip: "10.0.0.9" })), 20);
  const l = await p;
  assert.ok(l.kind === "pod" && l.pod.uid === "late");
  assert.equal(idx.waiting, 0);
});
