// The credential cache against policy epochs (one module, a fake server and a fake epoch view):
// credentials are served only under the epoch known for their namespace, a lagging replica's
// answer is asked again, and a silent epoch channel makes credentials revalidate on next use.
import { test } from "node:test";
import assert from "node:assert/strict";
import { pino } from "pino";
import { CredCache, type CredentialsSource } from "../../../src/agent/cred-cache.ts";
import type { EpochView } from "../../../src/agent/epoch-watch.ts";
import { KeycutterError } from "../../../src/api/errors.ts";
import type { CredentialsResponse, PodRef } from "../../../src/api/contract.ts";
import { ManualClock, settle } from "../../harness/manual-clock.ts";

const log = pino({ level: "silent" });
const podA: PodRef = { namespace: "team-a", name: "a", uid: "uid-a" };
const podB: PodRef = { namespace: "team-b", name: "b", uid: "uid-b" };

class Epochs implements EpochView {
  epochs = new Map<string, string>();
  confirmedAt = 0;
  known(ns: string): string | undefined {
    return this.epochs.get(ns);
  }
  confirmedAtMs(ns: string): number {
    return this.epochs.has(ns) ? this.confirmedAt : 0;
  }
}

/** Answers with the epoch the "replica" currently has for the namespace. */
class Server implements CredentialsSource {
  private readonly clock: ManualClock;
  constructor(clock: ManualClock) {
    this.clock = clock;
  }
  calls = 0;
  replicaEpoch = new Map<string, string>();
  fail: KeycutterError | undefined;
  async credentials(req: { pod: PodRef }): Promise<CredentialsResponse> {
    this.calls++;
    const n = this.calls;
    await settle(1);
    if (this.fail) throw this.fail;
    const epoch = this.replicaEpoch.get(req.pod.namespace);
    return {
      credentials: {
        accessKeyId: `AKIA-${req.pod.uid}-${epoch}-${n}`,
        secretAccessKey: "secret",
        sessionToken: "session",
        expiration: new Date(this.clock.now() + 3600_000).toISOString(),
      },
      roleArn: "arn:aws:iam::123456789012:role/team",
      roleName: "team",
      sessionName: "s",
      policy: { namespace: req.pod.namespace, name: "p", generation: 1 },
      ...(epoch !== undefined ? { policyEpoch: epoch } : {}),
    };
  }
}

/** The replica and the agent's channel agree that team-a is at `epoch`, confirmed at `atMs`. */
function agreeOn(epochs: Epochs, server: Server, epoch: string, atMs: number): void {
  server.replicaEpoch.set("team-a", epoch);
  epochs.epochs.set("team-a", epoch);
  epochs.confirmedAt = atMs;
}

function setUp(over: Partial<ConstructorParameters<typeof CredCache>[0]> = {}) {
  const epochs = new Epochs();
  const clock = new ManualClock();
  const server = new Server(clock);
  const cache = new CredCache({
    source: server,
    log,
    epochs,
    epochRetryMs: 1,
    epochRefetchSpreadMs: 0,
    clock,
    ...over,
  });
  return {
    epochs,
    server,
    cache,
    advance: (ms: number) => clock.advance(ms),
    now: () => clock.now(),
  };
}

test("an epoch change makes the cached credentials unservable at once; the next request waits for the new decision", async () => {
  const { epochs, server, cache, now } = setUp();
  agreeOn(epochs, server, "e1", now());
  const first = await cache.obtain(podA, 1000);
  assert.ok(first.ok);
  assert.equal(cache.fresh(podA.uid)?.imdsBody, first.creds.imdsBody);

  // the channel says team-a moved: from this moment the old answer is never served
  epochs.epochs.set("team-a", "e2");
  server.replicaEpoch.set("team-a", "e2");
  assert.equal(cache.fresh(podA.uid), undefined);
  const next = await cache.obtain(podA, 1000);
  assert.ok(next.ok);
  assert.notEqual(next.creds.imdsBody.toString(), first.creds.imdsBody.toString());
  assert.match(JSON.parse(next.creds.imdsBody.toString()).AccessKeyId, /-e2-/);
  assert.equal(cache.fresh(podA.uid)?.policyEpoch, "e2");
  cache.dropAll();
});

test("a replica still behind the change is asked again; its old decision is never served", async () => {
  const { epochs, server, cache, now, advance } = setUp();
  agreeOn(epochs, server, "e1", now());
  assert.ok((await cache.obtain(podA, 1000)).ok);
  epochs.epochs.set("team-a", "e2");
  const before = server.calls;
  // the replica catches up after two more answers
  const realCredentials = server.credentials.bind(server);
  server.credentials = async (req) => {
    if (server.calls - before >= 2) server.replicaEpoch.set("team-a", "e2");
    return realCredentials(req);
  };
  const asked = cache.obtain(podA, 1000);
  await advance(10); // the retries, 1 ms apart
  const r = await asked;
  assert.ok(r.ok);
  assert.equal(r.creds.policyEpoch, "e2");
  assert.equal(server.calls - before, 3);

  // a replica that never catches up: no credentials, a retryable error
  epochs.epochs.set("team-a", "e3");
  const askedAgain = cache.obtain(podA, 1000);
  await advance(10);
  const stuck = await askedAgain;
  assert.equal(stuck.ok, false);
  assert.equal(!stuck.ok && stuck.code, "PolicyChangePropagating");
  cache.dropAll();
});

test("after a known change, a failing server does not bring the old credentials back (no stale serving)", async () => {
  const { epochs, server, cache, now } = setUp();
  agreeOn(epochs, server, "e1", now());
  assert.ok((await cache.obtain(podA, 1000)).ok);
  epochs.epochs.set("team-a", "e2");
  server.fail = new KeycutterError("Unavailable", "down");
  for (let i = 0; i < 3; i++) {
    const r = await cache.obtain(podA, 200);
    assert.equal(r.ok, false, "refused, not served the superseded credentials");
  }
  cache.dropAll();
});

test("a refusal after the change drops the credentials", async () => {
  const { epochs, server, cache, now } = setUp();
  agreeOn(epochs, server, "e1", now());
  assert.ok((await cache.obtain(podA, 1000)).ok);
  epochs.epochs.set("team-a", "e2");
  server.fail = new KeycutterError("NoPolicy", "no AccessPolicy selects the pod");
  const r = await cache.obtain(podA, 1000);
  assert.equal(!r.ok && r.code, "NoPolicy");
  epochs.epochs.set("team-a", "e1"); // even a (hypothetical) return to the old epoch finds nothing
  assert.equal(cache.fresh(podA.uid), undefined);
  cache.dropAll();
});

test("confirmEpochs re-fetches the pods of moved namespaces only", async () => {
  const { epochs, server, cache, now, advance } = setUp();
  server.replicaEpoch.set("team-a", "a1");
  server.replicaEpoch.set("team-b", "b1");
  epochs.epochs.set("team-a", "a1");
  epochs.epochs.set("team-b", "b1");
  epochs.confirmedAt = now();
  assert.ok((await cache.obtain(podA, 1000)).ok);
  assert.ok((await cache.obtain(podB, 1000)).ok);
  assert.deepEqual([...cache.namespaces()].sort(), ["team-a", "team-b"]);
  const before = server.calls;
  server.replicaEpoch.set("team-a", "a2");
  epochs.epochs.set("team-a", "a2");
  cache.confirmEpochs(epochs.epochs);
  await advance(50);
  assert.equal(server.calls - before, 1, "only team-a's pod was asked about");
  assert.equal(cache.fresh(podA.uid)?.policyEpoch, "a2");
  assert.equal(cache.fresh(podB.uid)?.policyEpoch, "b1");
  cache.dropAll();
});

test("a silent epoch channel: credentials older than the bound revalidate on next use; a failing server then serves them without waiting", async () => {
  const { epochs, server, cache, now, advance } = setUp({ epochMaxAgeMs: 60_000 });
  agreeOn(epochs, server, "e1", now());
  assert.ok((await cache.obtain(podA, 1000)).ok);
  await advance(30_000);
  assert.ok(cache.fresh(podA.uid), "within the bound");
  await advance(31_000);
  assert.equal(cache.fresh(podA.uid), undefined, "the channel has not confirmed for 61 s");
  const before = server.calls;
  const revalidated = await cache.obtain(podA, 1000);
  assert.ok(revalidated.ok);
  assert.equal(server.calls - before, 1, "asked the server");
  assert.ok(cache.fresh(podA.uid), "fresh again: just fetched");

  // with the server down too, nothing says the policy changed: still-valid credentials are
  // served (as while the server fails), and only the first request waits for the attempt
  await advance(61_000);
  server.fail = new KeycutterError("Unavailable", "down");
  const stale = await cache.obtain(podA, 1000);
  assert.ok(stale.ok && stale.stale);
  const t = Date.now();
  const again = await cache.obtain(podA, 1000);
  assert.ok(again.ok && again.stale);
  assert.ok(Date.now() - t < 100, "no wait once the server is known to be failing");
  cache.dropAll();
});

test("without an epoch view (or for namespaces it does not cover) nothing changes", async () => {
  const { server, cache } = setUp({ epochs: undefined });
  server.replicaEpoch.set("team-a", "e1");
  const r = await cache.obtain(podA, 1000);
  assert.ok(r.ok);
  assert.ok(cache.fresh(podA.uid));
  cache.dropAll();
});
