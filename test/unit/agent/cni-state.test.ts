// The node's CNI result cache (src/agent/cni-state.ts), one module: the parser on good, hostile
// and malformed files, and the IP → attachment map kept from a real directory through fs.watch
// and rescans. The agent with the real hook is exercised in agent-netns.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import {
  CniState,
  MAX_FILE_BYTES,
  MAX_FILES,
  parseCniCache,
  type CniStateOptions,
} from "../../../src/agent/cni-state.ts";
import { waitFor } from "../../harness/process.ts";
import { ManualClock, untilTrue } from "../../harness/manual-clock.ts";

const log = pino({ level: "silent" });

/** A result cache file as libcni's cacheAdd writes it for containerd's CRI (CNI 1.0 result). */
function cacheFile(o: {
  containerId: string;
  ip: string;
  uid?: string;
  namespace?: string;
  name?: string;
  ifName?: string;
}): string {
  const args: [string, string][] = [
    ["IgnoreUnknown", "1"],
    ["K8S_POD_NAMESPACE", o.namespace ?? "team-a"],
    ["K8S_POD_NAME", o.name ?? "web"],
    ["K8S_POD_INFRA_CONTAINER_ID", o.containerId],
  ];
  if (o.uid !== undefined) args.push(["K8S_POD_UID", o.uid]);
  return JSON.stringify({
    kind: "cniCacheV1",
    containerId: o.containerId,
    config: Buffer.from(
      '{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"bridge"}]}',
    ).toString("base64"),
    ifName: o.ifName ?? "eth0",
    networkName: "k8s-pod-network",
    netns: `/var/run/netns/cni-${o.containerId.slice(0, 8)}`,
    cniArgs: args,
    capabilityArgs: { portMappings: [] },
    result: {
      cniVersion: "1.0.0",
      interfaces: [{ name: "eth0", mac: "0a:58:0a:00:00:05", sandbox: "/var/run/netns/x" }],
      ips: [{ interface: 0, address: `${o.ip}/24`, gateway: "10.0.0.1" }],
      routes: [{ dst: "0.0.0.0/0" }],
      dns: {},
    },
  });
}

test("parser: containerd's and CRI-O's records, with and without K8S_POD_UID; old result formats", () => {
  const full = parseCniCache(cacheFile({ containerId: "c1", ip: "10.0.0.5", uid: "uid-1" }));
  assert.deepEqual(full, {
    ok: true,
    attachment: {
      containerId: "c1",
      networkName: "k8s-pod-network",
      ifName: "eth0",
      podUid: "uid-1",
      namespace: "team-a",
      name: "web",
      ips: ["10.0.0.5"],
    },
  });
  const noUid = parseCniCache(cacheFile({ containerId: "c2", ip: "10.0.0.6" }));
  assert.ok(noUid.ok && noUid.attachment.podUid === undefined && noUid.attachment.name === "web");
  const emptyUid = parseCniCache(cacheFile({ containerId: "c2", ip: "10.0.0.6", uid: "" }));
  assert.ok(emptyUid.ok && emptyUid.attachment.podUid === undefined, "an empty UID is no UID");
  const legacy = parseCniCache(
    JSON.stringify({
      kind: "cniCacheV1",
      containerId: "c3",
      ifName: "eth0",
      networkName: "n",
      result: { cniVersion: "0.2.0", ip4: { ip: "10.0.0.7/24" }, ip6: { ip: "fd00::7/64" } },
    }),
  );
  assert.ok(legacy.ok);
  assert.deepEqual(legacy.attachment.ips, ["10.0.0.7", "fd00::7"]);
  const dual = parseCniCache(
    JSON.stringify({
      kind: "cniCacheV1",
      containerId: "c4",
      ifName: "eth0",
      networkName: "n",
      result: { ips: [{ address: "10.0.0.8/24" }, { address: "fd00::8/64" }] },
    }),
  );
  assert.ok(dual.ok);
  assert.deepEqual(dual.attachment.ips, ["10.0.0.8", "fd00::8"]);
});

test("parser: malformed, hostile or unknown records attach nothing", () => {
  const good = JSON.parse(cacheFile({ containerId: "c1", ip: "10.0.0.5", uid: "u" })) as Record<
    string,
    unknown
  >;
  const variants: [string, string | Buffer][] = [
    ["empty (a file caught while being written)", ""],
    ["truncated", cacheFile({ containerId: "c1", ip: "10.0.0.5" }).slice(0, 100)],
    ["not an object", "[1,2,3]"],
    ["null", "null"],
    ["unknown kind", JSON.stringify({ ...good, kind: "cniCacheV2" })],
    ["legacy (kind-less) record", JSON.stringify({ ...good, kind: undefined })],
    ["no containerId", JSON.stringify({ ...good, containerId: "" })],
    ["no ifName", JSON.stringify({ ...good, ifName: undefined })],
    ["cniArgs not pairs", JSON.stringify({ ...good, cniArgs: [["K8S_POD_UID"]] })],
    ["cniArgs with a number", JSON.stringify({ ...good, cniArgs: [["K8S_POD_UID", 5]] })],
    ["cniArgs too many", JSON.stringify({ ...good, cniArgs: Array.from({ length: 65 }, () => ["a", "b"]) })],
    ["overlong value", JSON.stringify({ ...good, cniArgs: [["K8S_POD_UID", "u".repeat(300)]] })],
    [
      "an address that is no IP",
      JSON.stringify({ ...good, result: { ips: [{ address: "10.0.0.300/24" }] } }),
    ],
    ["an address of another type", JSON.stringify({ ...good, result: { ips: [{ address: 10 }] } })],
    [
      "too many IPs",
      JSON.stringify({
        ...good,
        result: { ips: Array.from({ length: 33 }, () => ({ address: "10.0.0.1" })) },
      }),
    ],
    ["deeply nested", "[".repeat(100_000) + "]".repeat(100_000)],
    ["binary", Buffer.from([0xff, 0xfe, 0x00, 0x7b])],
  ];
  for (const [what, text] of variants) {
    const r = parseCniCache(text);
    assert.equal(r.ok, false, what);
  }
  // a huge file is refused on its size, before any parsing
  const huge = "x".repeat(MAX_FILE_BYTES + 1);
  const t0 = performance.now();
  const r = parseCniCache(huge);
  assert.ok(!r.ok && /larger/.test(r.problem));
  assert.ok(performance.now() - t0 < 50);
  // a record with no IP at all is well-formed but holds nothing
  const none = parseCniCache(JSON.stringify({ ...good, result: {} }));
  assert.ok(none.ok && none.attachment.ips.length === 0);
});

function state(dir: string, changes: (string[] | undefined)[] = [], extra: Partial<CniStateOptions> = {}) {
  return new CniState({ dir, log, rescanMs: 0, onChange: (ips) => changes.push(ips), ...extra });
}

test("the periodic rescan runs on its clock: a directory that appears later is found at the next rescan", async () => {
  const root = mkdtempSync(join(tmpdir(), "kc-cni-"));
  const dir = join(root, "results");
  const clock = new ManualClock();
  const cni = state(dir, [], { rescanMs: 30_000, timers: clock });
  try {
    await cni.start();
    assert.equal(cni.status().state, "absent");
    assert.equal(clock.pending, 1, "the next rescan is scheduled");
    mkdirSync(dir);
    writeFileSync(
      join(dir, "k8s-pod-network-aaa-eth0"),
      cacheFile({ containerId: "aaa", ip: "10.0.0.5", uid: "ua" }),
    );
    await clock.advance(29_999);
    assert.equal(cni.active, false, "not before the rescan period");
    await clock.advance(1);
    await untilTrue(() => cni.active, "rescanned at 30 s");
    assert.equal(cni.holderOf("10.0.0.5")?.podUid, "ua");
  } finally {
    await cni.stop();
    assert.equal(clock.pending, 0, "no rescan after stop");
    rmSync(root, { recursive: true, force: true });
  }
});

test("the map follows the directory: files written and removed (fs.watch), the newest of two claims, absence", async () => {
  const root = mkdtempSync(join(tmpdir(), "kc-cni-"));
  const dir = join(root, "results");
  const changes: (string[] | undefined)[] = [];
  const cni = state(dir, changes);
  try {
    await cni.start();
    assert.equal(cni.active, false);
    assert.equal(cni.status().state, "absent");

    // the runtime's first attachment creates the directory; the next rescan finds it
    mkdirSync(dir);
    writeFileSync(
      join(dir, "k8s-pod-network-aaa-eth0"),
      cacheFile({ containerId: "aaa", ip: "10.0.0.5", uid: "ua" }),
    );
    await cni.rescan();
    assert.equal(cni.active, true);
    assert.equal(changes.at(-1), undefined, "becoming available: every IP may have changed");
    assert.equal(cni.holderOf("10.0.0.5")?.podUid, "ua");
    assert.equal(cni.holderOf("10.0.0.6"), undefined);

    // CNI ADD of another pod, seen through the watch without a rescan
    writeFileSync(
      join(dir, "k8s-pod-network-bbb-eth0"),
      cacheFile({ containerId: "bbb", ip: "10.0.0.6", uid: "ub" }),
    );
    await waitFor("watch saw the new file", async () => cni.holderOf("10.0.0.6")?.podUid === "ub", {
      timeoutMs: 5000,
      intervalMs: 5,
    });
    assert.ok(changes.some((c) => c?.includes("10.0.0.6")));

    // CNI DEL of the first
    unlinkSync(join(dir, "k8s-pod-network-aaa-eth0"));
    await waitFor("watch saw the removal", async () => cni.holderOf("10.0.0.5") === undefined, {
      timeoutMs: 5000,
      intervalMs: 5,
    });

    // a stale file (a DEL that never ran) and a newer attachment with the same IP: the newer holds it
    const stale = join(dir, "k8s-pod-network-old-eth0");
    writeFileSync(stale, cacheFile({ containerId: "old", ip: "10.0.0.6", uid: "uold" }));
    utimesSync(stale, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000));
    await cni.rescan();
    assert.equal(cni.holderOf("10.0.0.6")?.podUid, "ub");
    unlinkSync(join(dir, "k8s-pod-network-bbb-eth0"));
    await cni.rescan();
    assert.equal(cni.holderOf("10.0.0.6")?.podUid, "uold", "only the stale claim is left");

    const s = cni.status();
    assert.ok(s.state === "active" && s.attachments === 1 && s.ignored === 0, JSON.stringify(s));

    // the directory goes away: no evidence (fall back), announced as a change of every IP
    rmSync(dir, { recursive: true });
    await cni.rescan();
    assert.equal(cni.active, false);
    assert.equal(changes.at(-1), undefined);
  } finally {
    await cni.stop();
    rmSync(root, { recursive: true, force: true });
  }
});

test("hostile directory contents are bounded and attach nothing: huge files, symlinks, FIFOs, directories, garbage", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-cni-"));
  const cni = state(dir);
  try {
    writeFileSync(join(dir, "good"), cacheFile({ containerId: "good", ip: "10.0.0.5", uid: "u" }));
    // a huge file claiming an IP: never read past the bound, never attached
    writeFileSync(
      join(dir, "huge"),
      cacheFile({ containerId: "huge", ip: "10.0.0.9", uid: "h" }) + " ".repeat(8 << 20),
    );
    writeFileSync(join(dir, "garbage"), "{not json");
    const target = join(dir, "..", `kc-cni-target-${process.pid}`);
    writeFileSync(target, cacheFile({ containerId: "link", ip: "10.0.0.10", uid: "l" }));
    symlinkSync(target, join(dir, "link"));
    execFileSync("mkfifo", [join(dir, "fifo")]);
    mkdirSync(join(dir, "subdir"));
    const t0 = performance.now();
    await cni.start();
    assert.ok(performance.now() - t0 < 2000, "a FIFO does not block the scan");
    assert.equal(cni.holderOf("10.0.0.5")?.podUid, "u");
    assert.equal(cni.holderOf("10.0.0.9"), undefined, "too large");
    assert.equal(cni.holderOf("10.0.0.10"), undefined, "symlinks are not followed");
    const s = cni.status();
    assert.ok(s.state === "active" && s.ignored === 2, JSON.stringify(s)); // huge, garbage
    rmSync(target);

    // a path that is not a directory: unreadable, so no evidence at all (and said so)
    const file = join(dir, "good");
    const notDir = state(file);
    await notDir.start();
    assert.equal(notDir.status().state, "unreadable");
    await notDir.stop();
  } finally {
    await cni.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test(`at most ${MAX_FILES} attachments are kept, the most recently written ones`, async () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-cni-"));
  const cni = state(dir);
  try {
    const old = new Date(Date.now() - 3600_000);
    for (let i = 0; i < MAX_FILES + 10; i++) {
      const f = join(dir, `net-c${i}-eth0`);
      writeFileSync(
        f,
        cacheFile({ containerId: `c${i}`, ip: `10.${(i >> 8) & 255}.${i & 255}.1`, uid: `u${i}` }),
      );
      if (i < 10) utimesSync(f, old, old);
    }
    await cni.start();
    const s = cni.status();
    assert.ok(s.state === "active" && s.attachments === MAX_FILES && s.ignored === 10, JSON.stringify(s));
    assert.equal(cni.holderOf("10.0.0.1"), undefined, "one of the oldest is left out");
    assert.equal(cni.holderOf("10.0.20.1")?.podUid, "u20");
    // an unchanged directory is not read again
    const before = cni.status();
    await cni.rescan();
    assert.deepEqual(cni.status(), before);
  } finally {
    await cni.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
