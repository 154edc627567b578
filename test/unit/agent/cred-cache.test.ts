import { test } from "node:test";
import assert from "node:assert/strict";
import { pino } from "pino";
import { CredCache, type CredentialsSource, type ServeWindow } from "../../../src/agent/cred-cache.ts";
import { KeycutterError, httpStatus } from "../../../src/api/errors.ts";
import type { CredentialsResponse, PodRef } from "../../../src/api/contract.ts";
import { sleep } from "../../../src/common/clock.ts";
import { ManualClock, settle } from "../../harness/manual-clock.ts";

const log = pino({ level: "silent" });
const podA: PodRef = { namespace: "ns", name: "a", uid: "uid-a" };

/** The cache's mechanics on millisecond lifetimes: serve while `minMs` is left, refresh `leadMs` before expiry. */
function scaledWindow(minMs: (lifetimeMs: number) => number, leadMs: number): ServeWindow {
  return {
    minServeRemainingMs: (_path, lifetimeMs) => minMs(lifetimeMs),
    staleFloorMs: (_path, configuredMs) => configuredMs,
    refreshAtMs: (expirationMs) => expirationMs - leadMs,
  };
}

/** The credential service on the test's clock: answers a turn of the event loop later, or after `delayMs` on the clock. */
class FakeSource implements CredentialsSource {
  calls: { pod: PodRef; podToken?: string }[] = [];
  lifetimeMs = 3600_000;
  delayMs = 0;
  fail: KeycutterError | undefined;
  readonly clock = new ManualClock();
  async credentials(req: { pod: PodRef; podToken?: string }): Promise<CredentialsResponse> {
    this.calls.push(req);
    const n = this.calls.length;
    if (this.delayMs > 0) await sleep(this.clock, this.delayMs);
    else await settle(1);
    if (this.fail) throw this.fail;
    if (req.podToken?.startsWith("bad"))
      throw new KeycutterError("PodTokenMismatch", "token names another pod");
    return {
      credentials: {
        accessKeyId: `AKIA${req.pod.uid}${n}`,
        secretAccessKey: "secret",
        sessionToken: "session",
        expiration: new Date(this.clock.now() + this.lifetimeMs).toISOString(),
      },
      roleArn: "arn:aws:iam::123456789012:role/team-a",
      roleName: "team-a",
      sessionName: "s",
      policy: { namespace: "ns", name: "p", generation: 1 },
    };
  }
}

test("prefetch + single flight: concurrent callers share one request; documents are pre-serialised", async () => {
  const src = new FakeSource();
  const c = new CredCache({ source: src, clock: src.clock, log });
  c.prefetch(podA);
  const results = await Promise.all([1, 2, 3, 4, 5].map(() => c.obtain(podA, 1000)));
  assert.equal(src.calls.length, 1);
  for (const r of results) assert.ok(r.ok);
  const fresh = c.fresh("uid-a");
  assert.ok(fresh);
  const doc = JSON.parse(fresh.imdsBody.toString());
  assert.equal(doc.Code, "Success");
  assert.equal(doc.Type, "AWS-HMAC");
  assert.match(doc.Expiration, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.match(doc.LastUpdated, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.equal(JSON.parse(fresh.imdsExtBody.toString()).AccountId, "123456789012");
  assert.equal(JSON.parse(fresh.containerBody.toString()).AccountId, "123456789012");
  assert.equal(fresh.roleNameBody.toString(), "team-a");
  c.dropAll();
});

test("refreshes ahead of expiry in the background", async () => {
  const src = new FakeSource();
  src.lifetimeMs = 3000;
  const c = new CredCache({ source: src, clock: src.clock, log, window: scaledWindow(() => 1000, 2000) });
  const r1 = await c.obtain(podA, 1000);
  assert.ok(r1.ok);
  await src.clock.advance(1900);
  assert.equal(src.calls.length, 2, "refreshed once before expiry");
  const r2 = c.fresh("uid-a");
  assert.ok(r2 && r1.ok && r2.imdsBody.toString() !== r1.creds.imdsBody.toString());
  c.dropAll();
});

/**
 * Credentials of a 2.5 s lifetime, fresh for half of it (then a demand refresh is tried first),
 * fetched; then the server starts failing with `failure` and the clock moves past the half.
 */
async function cachedThenFailing(failure: KeycutterError, extra: { staleFloorMs?: number } = {}) {
  const src = new FakeSource();
  src.lifetimeMs = 2500;
  const c = new CredCache({
    source: src,
    clock: src.clock,
    log,
    ...extra,
    window: scaledWindow((lifetime) => lifetime / 2, 100),
  });
  assert.ok((await c.obtain(podA, 1000)).ok);
  src.fail = failure;
  await src.clock.advance(1300);
  return c;
}

test("server down: still-valid credentials keep being served (stale), none when nothing cached", async () => {
  const c = await cachedThenFailing(new KeycutterError("Unavailable", "down"), { staleFloorMs: 500 });
  const r = await c.obtain(podA, 1000);
  assert.ok(r.ok && r.stale, "stale but valid");
  const podB: PodRef = { namespace: "ns", name: "b", uid: "uid-b" };
  const rb = await c.obtain(podB, 1000);
  assert.ok(!rb.ok && rb.code === "Unavailable");
  c.dropAll();
});

test("a definite denial drops cached credentials", async () => {
  const c = await cachedThenFailing(new KeycutterError("NoPolicy", "no policy selects this pod"));
  const r = await c.obtain(podA, 1000);
  assert.ok(!r.ok && r.code === "NoPolicy" && httpStatus(r.code) === 404);
  assert.equal(c.fresh("uid-a"), undefined);
  c.dropAll();
});

test("a pod dropped while its fetch is in flight never gets an entry back", async () => {
  const src = new FakeSource();
  src.delayMs = 100;
  const c = new CredCache({ source: src, clock: src.clock, log });
  c.prefetch(podA);
  c.drop("uid-a");
  await src.clock.advance(150);
  assert.equal(c.fresh("uid-a"), undefined);
  assert.equal(c.size, 0);
});

test("pod tokens: validated once by the server, mismatches passed through", async () => {
  const src = new FakeSource();
  const c = new CredCache({ source: src, clock: src.clock, log });
  const r1 = await c.obtainWithToken(podA, "tok-a", 1000);
  assert.ok(r1.ok);
  assert.equal(src.calls[0]!.podToken, "tok-a");
  assert.ok(c.tokenValid("uid-a", "tok-a"));
  const r2 = await c.obtainWithToken(podA, "tok-a", 1000);
  assert.ok(r2.ok);
  assert.equal(src.calls.length, 1, "second call served from cache");
  const r3 = await c.obtainWithToken(podA, "bad", 1000);
  assert.ok(!r3.ok && r3.code === "PodTokenMismatch" && httpStatus(r3.code) === 403);
  const before = src.calls.length;
  const r4 = await c.obtainWithToken(podA, "bad", 1000);
  assert.ok(!r4.ok && r4.code === "PodTokenMismatch");
  assert.equal(src.calls.length, before, "a replayed bad token is refused without asking the server again");
  assert.ok(!c.tokenValid("uid-a", "bad"));
  c.dropAll();
});

test("bad pod tokens: an LRU per pod, so a 17th bad token does not make the first 16 forgotten; bounded", async () => {
  const src = new FakeSource();
  src.delayMs = 0;
  const c = new CredCache({ source: src, clock: src.clock, log, maxTokensPerPod: 64 });
  const present = async (token: string) => {
    const r = await c.obtainWithToken(podA, token, 1000);
    assert.ok(!r.ok && r.code === "PodTokenMismatch", token);
  };
  for (let i = 0; i < 17; i++) await present(`bad-${i}`);
  assert.equal(src.calls.length, 17, "each new bad token is asked once");
  for (let i = 0; i < 17; i++) await present(`bad-${i}`);
  assert.equal(src.calls.length, 17, "replaying any of the 17 asks the server again for none of them");
  // the bound: 100 distinct bad tokens keep the 64 most recent; the oldest are the ones forgotten
  for (let i = 17; i < 100; i++) await present(`bad-${i}`);
  assert.equal(src.calls.length, 100);
  for (let i = 36; i < 100; i++) await present(`bad-${i}`);
  assert.equal(src.calls.length, 100, "the 64 most recent are remembered");
  await present("bad-0");
  assert.equal(src.calls.length, 101, "the least recently used was evicted: memory stays bounded");
  c.dropAll();
});
