// The self-managed certificates' rules (src/server/tls/plan.ts) with an injected clock, and the
// whole rotation (self-managed.ts) over several CA lifetimes against an in-memory store: at no
// instant does a replica serve a certificate whose CA the agents have not had for the
// propagation time.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { createLogger } from "../../../../src/common/logger.ts";
import {
  BACKDATE_MS,
  checkTlsPlanSettings,
  leafNotAfterMs,
  mergeBundle,
  planTls,
  renewAtMs,
  wantedBundle,
  type CertFacts,
  type StoredTls,
  type TlsPlanSettings,
} from "../../../../src/server/tls/plan.ts";
import {
  certFacts,
  issueServing,
  makeCa,
  signedBy,
  splitPemBundle,
  subjectNames,
} from "../../../../src/server/tls/certificates.ts";
import { SelfManagedTls } from "../../../../src/server/tls/self-managed.ts";
import { ManualClock } from "../../../harness/manual-clock.ts";
import type {
  StoredBundle,
  StoredSecret,
  TlsMaterial,
  WriteOutcome,
} from "../../../../src/server/tls/store.ts";

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 0, 1);
const NAMES = subjectNames(["keycutter-server", "keycutter-server.keycutter-system.svc", "10.0.0.1"]);
const SETTINGS: TlsPlanSettings = {
  leafLifetimeMs: 90 * DAY,
  caLifetimeMs: 365 * DAY,
  renewAtFraction: 2 / 3,
  bundlePropagationMs: 300_000,
  names: NAMES,
};

function facts(fingerprint: string, fromMs: number, lifetimeMs: number, names = NAMES): CertFacts {
  return { fingerprint, notBeforeMs: fromMs - BACKDATE_MS, notAfterMs: fromMs + lifetimeMs, ...names };
}

function stored(over: Partial<StoredTls> = {}): StoredTls {
  return {
    ca: facts("ca0", T0, 365 * DAY),
    leaf: facts("leaf0", T0, 90 * DAY),
    leafSignedByCa: true,
    ...over,
  };
}

const published = (s: StoredTls, at: number) => new Set(wantedBundle(s, at).map((c) => c.fingerprint));

describe("planTls", () => {
  it("creates when nothing is stored, then publishes the bundle before anything else", () => {
    assert.deepEqual(planTls(undefined, undefined, T0, SETTINGS), { kind: "create" });
    assert.deepEqual(planTls(stored(), undefined, T0, SETTINGS), {
      kind: "publish-bundle",
      fingerprints: ["ca0"],
    });
    assert.equal(planTls(stored(), new Set(["other"]), T0, SETTINGS).kind, "publish-bundle");
  });

  it("is idle until the serving certificate's 2/3 point, then renews it", () => {
    const s = stored();
    const due = renewAtMs(s.leaf, 2 / 3);
    assert.equal(due, T0 + 60 * DAY, "2/3 of 90 days, counted from issuance, not the backdated notBefore");
    assert.deepEqual(planTls(s, published(s, T0), T0 + DAY, SETTINGS), { kind: "idle", nextStepAtMs: due });
    assert.deepEqual(planTls(s, published(s, due), due, SETTINGS), {
      kind: "renew-leaf",
      reason: "due for renewal",
    });
  });

  it("renews a serving certificate whose names differ or that the CA did not sign", () => {
    const renamed = stored({ leaf: facts("leaf0", T0, 90 * DAY, subjectNames(["old-name"])) });
    assert.equal(planTls(renamed, published(renamed, T0), T0, SETTINGS).kind, "renew-leaf");
    const foreign = stored({ leafSignedByCa: false });
    assert.deepEqual(planTls(foreign, published(foreign, T0), T0, SETTINGS), {
      kind: "renew-leaf",
      reason: "not signed by the CA",
    });
  });

  it("rotates the CA in order: next CA, bundle with both, propagation, then serve from it", () => {
    const caDue = T0 + Math.floor(365 * DAY * (2 / 3));
    const base = stored({ leaf: facts("leaf9", caDue - DAY, 90 * DAY) });
    assert.equal(planTls(base, published(base, caDue - 1), caDue - 1, SETTINGS).kind, "idle");
    assert.equal(planTls(base, published(base, caDue), caDue, SETTINGS).kind, "prepare-next-ca");

    const withNext = { ...base, nextCa: facts("ca1", caDue, 365 * DAY) };
    // the bundle agents have lacks ca1: publish first, serving stays on ca0
    assert.deepEqual(planTls(withNext, published(base, caDue), caDue, SETTINGS), {
      kind: "publish-bundle",
      fingerprints: ["ca0", "ca1"],
    });
    assert.equal(planTls(withNext, published(withNext, caDue), caDue, SETTINGS).kind, "mark-published");
    const marked = { ...withNext, nextCaPublishedAtMs: caDue + 1000 };
    const ready = caDue + 1000 + SETTINGS.bundlePropagationMs;
    assert.deepEqual(planTls(marked, published(marked, ready - 1), ready - 1, SETTINGS), {
      kind: "idle",
      nextStepAtMs: ready,
    });
    assert.equal(planTls(marked, published(marked, ready), ready, SETTINGS).kind, "promote-next-ca");
  });

  it("replaces everything when the CA itself expired (nothing to rotate smoothly from)", () => {
    const s = stored();
    assert.equal(planTls(s, published(s, T0), T0 + 366 * DAY, SETTINGS).kind, "replace-all");
  });

  it("bundle merge: deduplicated, expired CAs dropped, oldest first", () => {
    const a = facts("a", T0, 10 * DAY);
    const b = facts("b", T0 + DAY, 10 * DAY);
    assert.deepEqual(
      mergeBundle([b, a, undefined, b], T0 + 2 * DAY).map((c) => c.fingerprint),
      ["a", "b"],
    );
    assert.deepEqual(
      mergeBundle([a, b], T0 + 10 * DAY).map((c) => c.fingerprint),
      ["b"],
    );
    const s = stored({ previousCa: a, nextCa: b });
    assert.deepEqual(
      wantedBundle(s, T0 + 2 * DAY).map((c) => c.fingerprint),
      ["a", "ca0", "b"],
      "previous, current and next, by notBefore",
    );
  });

  it("a serving certificate never outlives its CA", () => {
    const ca = facts("ca", T0, 30 * DAY);
    assert.equal(leafNotAfterMs(T0, ca, 90 * DAY), T0 + 30 * DAY);
    assert.equal(leafNotAfterMs(T0, ca, DAY), T0 + DAY);
  });

  it("refuses settings that cannot rotate without a failed call", () => {
    assert.equal(checkTlsPlanSettings(SETTINGS), undefined);
    assert.match(checkTlsPlanSettings({ ...SETTINGS, renewAtFraction: 1 })!, /fraction/);
    assert.match(checkTlsPlanSettings({ ...SETTINGS, caLifetimeMs: DAY })!, /CA's lifetime/);
    assert.match(checkTlsPlanSettings({ ...SETTINGS, bundlePropagationMs: 100 * DAY })!, /propagation/);
    assert.match(checkTlsPlanSettings({ ...SETTINGS, names: subjectNames([]) })!, /DNS name/);
  });
});

describe("certificates", () => {
  it("a serving certificate with the configured names, signed by the CA, verifiable by Node", () => {
    const ca = makeCa(Date.now(), DAY, "test-ca");
    const leaf = issueServing(ca, NAMES, Date.now(), Date.now() + 3_600_000);
    const f = certFacts(leaf.cert);
    assert.deepEqual([...f.dnsNames].sort(), [...NAMES.dnsNames].sort());
    assert.deepEqual(f.ipAddresses, ["10.0.0.1"]);
    assert.ok(signedBy(leaf.cert, ca.cert));
    assert.ok(!signedBy(leaf.cert, makeCa(Date.now(), DAY, "other").cert));
    const x = new X509Certificate(leaf.cert);
    assert.equal(x.ca, false);
    assert.ok(new X509Certificate(ca.cert).ca);
    assert.ok(x.checkHost("keycutter-server.keycutter-system.svc"));
    assert.equal(x.checkHost("evil.example"), undefined);
  });
});

/** The Secret and ConfigMap in memory, with resourceVersions as the apiserver checks them. */
class MemoryStore {
  secret: StoredSecret | undefined;
  bundle: StoredBundle | undefined;
  private version = 0;
  /** Every bundle write, with its time, to check the propagation rule against. */
  bundleHistory: { atMs: number; pem: string }[] = [];
  private readonly now: () => number;
  constructor(now: () => number) {
    this.now = now;
  }
  async readSecret() {
    return this.secret
      ? { present: true, stored: structuredClone(this.secret), resourceVersion: this.secret.resourceVersion }
      : { present: false };
  }
  async readBundle() {
    return this.bundle ? { ...this.bundle } : undefined;
  }
  async writeSecret(
    material: TlsMaterial,
    publishedAt: number | undefined,
    rv: string | undefined,
  ): Promise<WriteOutcome> {
    if ((this.secret?.resourceVersion ?? undefined) !== (rv || undefined)) return "conflict";
    this.secret = {
      material: structuredClone(material),
      ...(publishedAt !== undefined ? { nextCaPublishedAtMs: publishedAt } : {}),
      resourceVersion: String(++this.version),
    };
    return "written";
  }
  async writeBundle(pem: string, rv: string | undefined): Promise<WriteOutcome> {
    if ((this.bundle?.resourceVersion ?? undefined) !== (rv || undefined)) return "conflict";
    this.bundle = { pem, resourceVersion: String(++this.version) };
    this.bundleHistory.push({ atMs: this.now(), pem });
    return "written";
  }
}

/** A 60-day CA and 20-day leaves renewed at 2/3, the bundle given a day to propagate. */
const lifetimes: TlsPlanSettings = {
  leafLifetimeMs: 20 * DAY,
  caLifetimeMs: 60 * DAY,
  renewAtFraction: 2 / 3,
  bundlePropagationMs: DAY,
  names: NAMES,
};
const silentLog = createLogger("test", { level: "silent" });

describe("SelfManagedTls over several CA lifetimes", () => {
  it("two replicas agree, and every served certificate's CA was in the bundle for the propagation time", async () => {
    const clock = new ManualClock(T0);
    const store = new MemoryStore(() => clock.now());
    const replica = (leader: boolean) =>
      new SelfManagedTls({
        store,
        settings: lifetimes,
        syncMs: 3_600_000,
        isLeader: () => leader,
        clock,
        log: silentLog,
      });
    const leader = replica(true);
    const follower = replica(false);
    // both start at once: one creates, the other loads what won
    const [a, b] = await Promise.all([leader.start(), follower.start()]);
    assert.equal(a.cert, b.cert, "both replicas serve the one stored certificate");
    leader.stop();
    follower.stop();

    const servedCas = new Set<string>();
    const swaps = { leader: 0, follower: 0 };
    leader.subscribe(() => swaps.leader++);
    follower.subscribe(() => swaps.follower++);
    const end = T0 + 200 * DAY;
    for (; clock.now() < end; await clock.advance(6 * 3_600_000)) {
      const now = clock.now();
      await leader.tick();
      await follower.tick();
      for (const r of [leader, follower]) {
        const cert = r.current().cert;
        assert.ok(
          new X509Certificate(cert).validToDate.getTime() > now,
          "never serves an expired certificate",
        );
        // the CA that signed the served certificate: in every bundle published during the last
        // propagation period, i.e. every agent trusts it
        const history = store.bundleHistory;
        const signer = [...history]
          .reverse()
          .flatMap((h) => splitPemBundle(h.pem))
          .find((ca) => signedBy(cert, ca));
        assert.ok(signer, "the signing CA is in the bundle");
        servedCas.add(new X509Certificate(signer).fingerprint256);
        const current =
          history.filter((h) => h.atMs <= now - lifetimes.bundlePropagationMs).at(-1) ?? history[0]!;
        const laterOnes = history.filter((h) => h.atMs > now - lifetimes.bundlePropagationMs);
        for (const h of [current, ...laterOnes])
          assert.ok(
            splitPemBundle(h.pem).some((ca) => signedBy(cert, ca)),
            `at day ${(now - T0) / DAY}: a bundle agents may still hold lacks the serving CA`,
          );
      }
    }
    assert.ok(servedCas.size >= 3, `the CA rotated at least twice (${servedCas.size} CAs served)`);
    assert.ok(
      swaps.leader >= 8 && swaps.follower >= 8,
      `certificates swapped in place: ${JSON.stringify(swaps)}`,
    );
    assert.ok(splitPemBundle(store.bundle!.pem).length <= 3, "the bundle stays bounded");
  });
});

describe("SelfManagedTls sync timer", () => {
  it("syncs every syncMs on its clock; stop leaves no timer", async () => {
    const clock = new ManualClock(T0);
    let reads = 0;
    const store = new (class extends MemoryStore {
      override async readSecret() {
        reads++;
        return super.readSecret();
      }
    })(() => clock.now());
    const tls = new SelfManagedTls({
      store,
      settings: lifetimes,
      syncMs: 3_600_000,
      isLeader: () => true,
      clock,
      log: silentLog,
    });
    await tls.start();
    const afterStart = reads;
    assert.equal(clock.pending, 1, "the next sync is scheduled");
    await clock.advance(3_599_999);
    assert.equal(reads, afterStart, "not before syncMs");
    await clock.advance(1);
    assert.ok(reads > afterStart, "synced at syncMs");
    assert.equal(clock.pending, 1, "and scheduled again");
    tls.stop();
    assert.equal(clock.pending, 0);
    const stopped = reads;
    await clock.advance(10 * 3_600_000);
    assert.equal(reads, stopped, "no sync after stop");
  });
});
