// The serve/refresh rules (src/api/serve-window.ts) against the SDKs' windows, for every session
// duration keycutter can issue, and the agent's cache serving by them (injected clock, no sleeps).
import { test } from "node:test";
import assert from "node:assert/strict";
import { pino } from "pino";
import {
  BOTOCORE_EXTENSION_JITTER_MAX_SECONDS,
  BOTOCORE_EXTENSION_MAX_SECONDS,
  imdsDurationWarning,
  minServeRemainingMs,
  refreshAtMs,
  serverReuseMinRemainingSeconds,
  staleFloorMs,
} from "../../../src/api/serve-window.ts";
import { CredCache, type CredentialsSource } from "../../../src/agent/cred-cache.ts";
import type { CredentialsResponse, PodRef } from "../../../src/api/contract.ts";
import { systemClock } from "../../../src/common/clock.ts";

/** STS: 900 s to 12 h. */
const DURATIONS = Array.from({ length: (43200 - 900) / 60 + 1 }, (_, i) => 900 + i * 60);

test("IMDS: every credential served is either never extended by botocore, or replaced by it before it expires", () => {
  for (const d of DURATIONS) {
    const floorS = minServeRemainingMs("imds", d * 1000) / 1000;
    assert.ok(floorS < d, `${d}s: something can be served`);
    if (d >= 2700) assert.ok(floorS > BOTOCORE_EXTENSION_MAX_SECONDS, `${d}s: never extended`);
    // extended: botocore's next refresh comes at most 600 s after the fetch; the credential must outlive it
    else assert.ok(floorS >= BOTOCORE_EXTENSION_JITTER_MAX_SECONDS + 60, `${d}s: refreshed before expiry`);
  }
});

test("container path: every SDK's window is left (Go and JS 5 min, Java 1 min stale), botocore's 15 min where it fits", () => {
  for (const d of DURATIONS) {
    const floorS = minServeRemainingMs("container", d * 1000) / 1000;
    assert.ok(floorS >= 360 && floorS < d, `${d}s: ${floorS}`);
    if (d >= 1920) assert.ok(floorS > 900, `${d}s: botocore does not refetch on every call`);
  }
});

test("background refresh: after the fetch, ahead of both floors, for every duration and jitter", () => {
  for (const d of DURATIONS) {
    for (const random of [0, 0.5, 0.999]) {
      const at = refreshAtMs(d * 1000, 0, random);
      const floor = Math.max(
        minServeRemainingMs("imds", d * 1000),
        minServeRemainingMs("container", d * 1000),
      );
      assert.ok(at > 0, `${d}s: not before the fetch`);
      assert.ok(d * 1000 - at > floor, `${d}s: the refresh starts before the floor is reached`);
    }
  }
});

test("server reuse: a refreshing agent never gets back the credentials it replaces", () => {
  for (const d of DURATIONS) {
    const reuse = serverReuseMinRemainingSeconds(d);
    assert.ok(reuse <= d);
    // whatever the agent was handed (a fresh session, or one the server already held), it
    // refreshes with less left than the server reuses
    for (let leftAtFetch = reuse; leftAtFetch <= d; leftAtFetch += 60) {
      const at = refreshAtMs(leftAtFetch * 1000, 0, 0.999);
      const leftAtRefresh = (leftAtFetch * 1000 - at) / 1000;
      assert.ok(
        leftAtRefresh < reuse,
        `${d}s handed with ${leftAtFetch}s: refresh at ${leftAtRefresh}s left`,
      );
    }
  }
});

test("stale serving while the server fails: never below the IMDS floor botocore's extension outlives", () => {
  assert.equal(staleFloorMs("imds", 120_000), 660_000);
  assert.equal(staleFloorMs("container", 120_000), 120_000);
});

test("durations below 45 minutes carry a warning for IMDS; 45 minutes and above none", () => {
  assert.match(imdsDurationWarning(900)!, /900s sessions .*every 4 min.*container-credentials/);
  assert.match(imdsDurationWarning(1800)!, /1800s sessions/);
  assert.equal(imdsDurationWarning(2700), undefined);
  assert.equal(imdsDurationWarning(3600), undefined);
});

class ClockedSource implements CredentialsSource {
  calls = 0;
  private readonly clock: { nowMs: number };
  private readonly lifetimeS: number;
  constructor(clock: { nowMs: number }, lifetimeS: number) {
    this.clock = clock;
    this.lifetimeS = lifetimeS;
  }
  async credentials(req: { pod: PodRef }): Promise<CredentialsResponse> {
    this.calls++;
    return {
      credentials: {
        accessKeyId: `AKIA${req.pod.uid}${this.calls}`,
        secretAccessKey: "secret",
        sessionToken: "session",
        expiration: new Date(this.clock.nowMs + this.lifetimeS * 1000).toISOString(),
      },
      roleArn: "arn:aws:iam::123456789012:role/team-a",
      roleName: "team-a",
      sessionName: "s",
      policy: { namespace: "ns", name: "p", generation: 1 },
    };
  }
}

const pod: PodRef = { namespace: "ns", name: "a", uid: "uid-a" };

test("the agent's cache: a 15-minute session is not served on IMDS with 10 minutes left, still on the container path", async () => {
  const clock = { nowMs: Date.UTC(2030, 0, 1) };
  const src = new ClockedSource(clock, 900);
  const cache = new CredCache({
    source: src,
    log: pino({ level: "silent" }),
    clock: { ...systemClock, now: () => clock.nowMs },
  });
  assert.ok((await cache.obtain(pod, 1000)).ok);
  clock.nowMs += 200_000; // 700 s left
  assert.ok(cache.fresh(pod.uid, "imds"));
  clock.nowMs += 100_000; // 600 s left: botocore would extend it and use it up to 10 minutes too long
  assert.equal(cache.fresh(pod.uid, "imds"), undefined);
  assert.ok(cache.fresh(pod.uid, "container"));
  const again = await cache.obtain(pod, 1000, "imds");
  assert.ok(again.ok && !again.stale && again.creds.expirationMs - clock.nowMs === 900_000, "a new session");
  cache.dropAll();
});

test("the agent's cache: a 45-minute session is served on IMDS only while botocore would not extend it", async () => {
  const clock = { nowMs: Date.UTC(2030, 0, 1) };
  const cache = new CredCache({
    source: new ClockedSource(clock, 2700),
    log: pino({ level: "silent" }),
    clock: { ...systemClock, now: () => clock.nowMs },
  });
  assert.ok((await cache.obtain(pod, 1000)).ok);
  clock.nowMs += 1100_000; // 1600 s left
  assert.ok(cache.fresh(pod.uid, "imds"));
  clock.nowMs += 200_000; // 1400 s left: within botocore's 1020–1500 s extension offset
  assert.equal(cache.fresh(pod.uid, "imds"), undefined);
  cache.dropAll();
});
