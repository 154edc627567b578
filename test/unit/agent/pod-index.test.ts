import { test } from "node:test";
import assert from "node:assert/strict";
import { ManualClock } from "../../harness/manual-clock.ts";
import { PodIndex, type IpHolder, type NodeAttachments, type PodInfo } from "../../../src/agent/pod-index.ts";

function pod(over: Partial<PodInfo> & { uid: string }): PodInfo {
  return {
    namespace: "ns",
    name: over.uid,
    ip: "",
    ips: over.ip ? [over.ip] : [],
    hostNetwork: false,
    phase: "Running",
    terminating: false,
    containersDone: false,
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
  const clock = new ManualClock();
  const idx = new PodIndex({ timers: clock });
  let settled = false;
  const timedOut = idx.waitFor("10.0.0.9", 60).then((lookup) => ((settled = true), lookup));
  await clock.advance(59);
  assert.equal(settled, false, "still waiting 1 ms before the timeout");
  await clock.advance(1);
  assert.equal((await timedOut).kind, "none");
  const p = idx.waitFor("10.0.0.9", 5000);
  assert.equal(idx.waiting, 1);
  await clock.advance(20);
  idx.upsert(pod({ uid: "late", ip: "10.0.0.9" }));
  const l = await p;
  assert.ok(l.kind === "pod" && l.pod.uid === "late");
  assert.equal(idx.waiting, 0);
});

test("a terminating pod whose containers have all stopped no longer answers for its IP", () => {
  const idx = new PodIndex();
  idx.upsert(pod({ uid: "old", ip: "10.0.0.2", terminating: true }));
  assert.equal(idx.lookup("10.0.0.2").kind, "pod", "terminating but running: still served");
  idx.upsert(pod({ uid: "old", ip: "10.0.0.2", terminating: true, containersDone: true }));
  assert.equal(idx.lookup("10.0.0.2").kind, "none", "sandbox may be gone and the IP reused");
});

test("toPodInfo keeps only the needed fields and derives containersDone", async () => {
  const { toPodInfo } = await import("../../../src/agent/pod-watch.ts");
  const raw = {
    metadata: {
      uid: "u",
      name: "p",
      namespace: "n",
      deletionTimestamp: "2026-01-01T00:00:00Z",
      labels: { a: "b" },
    },
    spec: { nodeName: "n1", serviceAccountName: "sa", containers: [{ name: "c" }] },
    status: {
      phase: "Running",
      podIP: "10.0.0.5",
      podIPs: [{ ip: "10.0.0.5" }, { ip: "fd00::5" }],
      containerStatuses: [
        { state: { terminated: { exitCode: 0 } } },
        { state: { terminated: { exitCode: 1 } } },
      ],
    },
  };
  const info = toPodInfo(raw)!;
  assert.deepEqual(info, {
    uid: "u",
    namespace: "n",
    name: "p",
    ip: "10.0.0.5",
    ips: ["10.0.0.5", "fd00::5"],
    hostNetwork: false,
    phase: "Running",
    terminating: true,
    containersDone: true,
    serviceAccountName: "sa",
    nodeName: "n1",
  });
  const running = toPodInfo({
    ...raw,
    status: { ...raw.status, containerStatuses: [{ state: { running: {} } }] },
  })!;
  assert.equal(running.containersDone, false);
  assert.equal(toPodInfo({ metadata: { name: "x" } }), undefined);
});

/** The node's attachments as a plain map (the one-module stand-in for cni-state.ts). */
class FakeAttachments implements NodeAttachments {
  active = true;
  readonly holders = new Map<string, IpHolder>();
  holderOf(ip: string): IpHolder | undefined {
    return this.holders.get(ip);
  }
}

function holder(p: { uid?: string; namespace?: string; name?: string }): IpHolder {
  return { podUid: p.uid, namespace: p.namespace, name: p.name, containerId: `sandbox-${p.uid ?? p.name}` };
}

test("node attachments: a pod answers for its IP only while the node attaches the IP to it", () => {
  const cni = new FakeAttachments();
  const idx = new PodIndex({ attachments: cni });
  cni.holders.set("10.0.0.2", holder({ uid: "a", namespace: "ns", name: "a" }));
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2" }));
  let l = idx.lookup("10.0.0.2");
  assert.ok(l.kind === "pod" && l.pod.uid === "a");
  assert.equal(idx.unconfirmedIps, 0);

  // CNI DEL of a's sandbox while the watch still shows a Running: no longer served
  cni.holders.delete("10.0.0.2");
  idx.attachmentsChanged(["10.0.0.2"]);
  assert.equal(idx.lookup("10.0.0.2").kind, "none");
  assert.equal(idx.unconfirmedIps, 1);

  // the IP handed to b before the watch knows b: still none (the bounded wait), never a
  cni.holders.set("10.0.0.2", holder({ uid: "b", namespace: "ns", name: "b" }));
  idx.attachmentsChanged(["10.0.0.2"]);
  assert.equal(idx.lookup("10.0.0.2").kind, "none");

  // the watch delivers b with a still Running: two live pods on one IP, the node says b
  idx.upsert(pod({ uid: "b", ip: "10.0.0.2" }));
  l = idx.lookup("10.0.0.2");
  assert.ok(l.kind === "pod" && l.pod.uid === "b", JSON.stringify(l));
  // a's terminal status arrives at last: b still, nothing unconfirmed left
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2", phase: "Failed" }));
  l = idx.lookup("10.0.0.2");
  assert.ok(l.kind === "pod" && l.pod.uid === "b");
  assert.equal(idx.unconfirmedIps, 0);
});

test("node attachments: without K8S_POD_UID the namespace and name decide; an anonymous attachment is no pod's", () => {
  const cni = new FakeAttachments();
  const idx = new PodIndex({ attachments: cni });
  cni.holders.set("10.0.0.3", holder({ namespace: "ns", name: "web" }));
  idx.upsert(pod({ uid: "u1", name: "web", ip: "10.0.0.3" }));
  assert.equal(idx.lookup("10.0.0.3").kind, "pod");
  cni.holders.set("10.0.0.3", holder({ namespace: "other", name: "web" }));
  idx.attachmentsChanged();
  assert.equal(idx.lookup("10.0.0.3").kind, "none");
  cni.holders.set("10.0.0.3", { podUid: undefined, namespace: undefined, name: undefined, containerId: "x" });
  idx.attachmentsChanged();
  assert.equal(idx.lookup("10.0.0.3").kind, "none");
  // a UID, where recorded, wins over a matching name (a StatefulSet pod's successor)
  cni.holders.set("10.0.0.3", holder({ uid: "u2", namespace: "ns", name: "web" }));
  idx.attachmentsChanged();
  assert.equal(idx.lookup("10.0.0.3").kind, "none");
});

test("node attachments: unavailable means the watch alone decides; hostNetwork pods are left to the watch", () => {
  const cni = new FakeAttachments();
  cni.active = false;
  const idx = new PodIndex({ attachments: cni });
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2" }));
  assert.equal(idx.lookup("10.0.0.2").kind, "pod", "no CNI state: today's behaviour");
  cni.active = true;
  idx.attachmentsChanged();
  assert.equal(idx.lookup("10.0.0.2").kind, "none", "CNI state appears and does not attach the IP");
  cni.active = false;
  idx.attachmentsChanged();
  assert.equal(idx.lookup("10.0.0.2").kind, "pod");
  cni.active = true;
  idx.upsert(pod({ uid: "h", ip: "10.0.255.10", hostNetwork: true }));
  const l = idx.lookup("10.0.255.10");
  assert.ok(l.kind === "pod" && l.pod.hostNetwork, "the node IP has no attachment, and needs none");
});

test("node attachments: a request waiting for an unconfirmed IP is woken by the new pod, not the old one", async () => {
  const cni = new FakeAttachments();
  const idx = new PodIndex({ attachments: cni });
  cni.holders.set("10.0.0.2", holder({ uid: "a", namespace: "ns", name: "a" }));
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2" }));
  cni.holders.set("10.0.0.2", holder({ uid: "b", namespace: "ns", name: "b" }));
  idx.attachmentsChanged(["10.0.0.2"]);
  const waiting = idx.waitFor("10.0.0.2", 5000);
  idx.upsert(pod({ uid: "a", ip: "10.0.0.2", terminating: true }));
  assert.equal(idx.waiting, 1, "a changing does not wake it");
  idx.upsert(pod({ uid: "b", ip: "10.0.0.2" }));
  const l = await waiting;
  assert.ok(l.kind === "pod" && l.pod.uid === "b");
});

test("toPodInfo: a terminating pod with nothing running is done, whatever its containers' other states", async () => {
  const { toPodInfo } = await import("../../../src/agent/pod-watch.ts");
  const base = {
    metadata: { uid: "u", name: "p", namespace: "n", deletionTimestamp: "2026-01-01T00:00:00Z" },
    spec: { nodeName: "n1", containers: [{ name: "a" }, { name: "b" }] },
  };
  const status = (extra: object) => ({ phase: "Running", podIP: "10.0.0.5", ...extra });
  const done = (p: object) => toPodInfo(p)!.containersDone;
  // one container stopped, the other never started (image pull): nothing can run any more
  const mixed = {
    containerStatuses: [
      { state: { terminated: { exitCode: 0 } } },
      { state: { waiting: { reason: "ImagePullBackOff" } } },
    ],
  };
  assert.equal(done({ ...base, status: status(mixed) }), true);
  assert.equal(done({ ...base, status: status({}) }), true, "terminating, no container status at all");
  assert.equal(
    done({ ...base, status: status({ ...mixed, initContainerStatuses: [{ state: { running: {} } }] }) }),
    false,
    "an init (or sidecar) container still runs",
  );
  assert.equal(
    done({ ...base, status: status({ ...mixed, ephemeralContainerStatuses: [{ state: { running: {} } }] }) }),
    false,
    "an ephemeral container still runs",
  );
  // not terminating: a waiting container will start (or restart) — the pod keeps its IP
  assert.equal(
    done({ ...base, metadata: { ...base.metadata, deletionTimestamp: undefined }, status: status(mixed) }),
    false,
  );
});
