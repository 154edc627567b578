// LeaderElector against a real kube-apiserver, with a holder whose clock is skewed: the holder is
// played by writing the Lease directly (renewTime from its wrong clock), the follower runs on a
// clock the test steps. Expiry must follow the follower's own observation of the Lease changing,
// never the holder's renewTime.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { CoordinationV1Api, V1MicroTime } from "@kubernetes/client-node";
import { startCluster, Kubelet, type Cluster } from "../../harness/index.ts";
import { createLogger } from "../../../src/common/logger.ts";
import { LeaderElector } from "../../../src/server/k8s/leader-election.ts";
import { ManualClock } from "../../harness/manual-clock.ts";

const NS = "lease-test";
const HOUR_MS = 3_600_000;

describe("leader election on the local clock (real apiserver)", { timeout: 300_000 }, () => {
  let cluster: Cluster;
  let coordination: CoordinationV1Api;

  before(async () => {
    cluster = await startCluster();
    coordination = cluster.kc.makeApiClient(CoordinationV1Api);
    await new Kubelet(cluster.kc).ensureNamespace(NS);
  });
  after(async () => {
    await cluster?.stop();
  });

  /** The other replica: holds the Lease and renews it with its own (skewed) clock. */
  async function holderWrites(name: string, renewTime: Date): Promise<void> {
    const spec = {
      holderIdentity: "skewed-holder",
      leaseDurationSeconds: 15,
      renewTime: new V1MicroTime(renewTime.getTime()),
    };
    try {
      const lease = await coordination.readNamespacedLease({ namespace: NS, name });
      await coordination.replaceNamespacedLease({
        namespace: NS,
        name,
        body: { ...lease, spec: { ...lease.spec, ...spec } },
      });
    } catch (e) {
      if ((e as { code?: number }).code !== 404) throw e;
      await coordination.createNamespacedLease({
        namespace: NS,
        body: { metadata: { name, namespace: NS }, spec: { ...spec, acquireTime: spec.renewTime } },
      });
    }
  }

  function follower(name: string, clock: ManualClock): LeaderElector {
    return new LeaderElector(cluster.kc, createLogger("le-test", { level: "silent" }), {
      namespace: NS,
      name,
      identity: "follower",
      leaseDurationSeconds: 15,
      clock,
      onStartedLeading: () => undefined,
      onStoppedLeading: () => undefined,
    });
  }

  const holderOf = async (name: string) =>
    (await coordination.readNamespacedLease({ namespace: NS, name })).spec?.holderIdentity;

  it("a holder whose clock runs an hour behind keeps the Lease while it renews; taken over a local lease duration after it stops", async () => {
    const name = "behind";
    const holderClock = Date.now() - HOUR_MS;
    await holderWrites(name, new Date(holderClock));
    const clock = new ManualClock(Date.now());
    const elector = follower(name, clock);
    for (let i = 1; i <= 6; i++) {
      await elector.tick();
      assert.equal(elector.isLeader, false, `renewal ${i}: the follower does not steal a live lease`);
      await clock.advance(5_000);
      await holderWrites(name, new Date(holderClock + i * 5_000));
    }
    // renewals stop: the last change was seen at the next tick
    await elector.tick();
    assert.equal(elector.isLeader, false);
    await clock.advance(14_000);
    await elector.tick();
    assert.equal(elector.isLeader, false, "14 s of silence on the local clock: not expired yet");
    assert.equal(await holderOf(name), "skewed-holder");
    await clock.advance(1_500);
    await elector.tick();
    assert.equal(elector.isLeader, true, "15 s of silence on the local clock: taken over");
    assert.equal(await holderOf(name), "follower");
  });

  it("a holder whose clock runs an hour ahead is replaced a local lease duration after it stops renewing", async () => {
    const name = "ahead";
    await holderWrites(name, new Date(Date.now() + HOUR_MS));
    const clock = new ManualClock(Date.now());
    const elector = follower(name, clock);
    await elector.tick();
    assert.equal(elector.isLeader, false);
    await clock.advance(10_000);
    await elector.tick();
    assert.equal(elector.isLeader, false, "10 s: within the lease duration");
    await clock.advance(6_000);
    await elector.tick();
    assert.equal(
      elector.isLeader,
      true,
      "16 s without a change: the holder is gone, whatever its renewTime says",
    );
    assert.equal(await holderOf(name), "follower");
  });
});
