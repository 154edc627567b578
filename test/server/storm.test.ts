// A burst of pods starting on one node: every pod is served, one STS call per pod, no errors,
// duplicate requests coalesced (the agent and a retry asking at once).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { waitFor } from "../harness/index.ts";
import { createWorld, post, startTestServer, type TestServer, type World } from "./world.ts";

const PODS = Number(process.env.KEYCUTTER_STORM_PODS ?? 80);

describe("pod storm", { timeout: 300_000 }, () => {
  let w: World;
  let srv: TestServer;
  const pods: { namespace: string; name: string; uid: string }[] = [];

  before(async () => {
    w = await createWorld();
    srv = await startTestServer(w, { leaderElection: false });
    await waitFor(
      "ready",
      async () => srv.running.ready() && srv.running.informers.accessPolicies().length >= 7,
      { timeoutMs: 30_000 },
    );
    for (let i = 0; i < PODS; i += 20) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(20, PODS - i) }, (_, j) =>
          w.kubelet.createPod({
            namespace: "tenant-a",
            name: `storm-${i + j}`,
            nodeName: "node-1",
            serviceAccountName: "app",
            labels: { team: "blue" },
            podIP: `10.245.${Math.floor((i + j) / 250)}.${((i + j) % 250) + 1}`,
          }),
        ),
      );
      for (const p of batch)
        pods.push({ namespace: "tenant-a", name: p.metadata!.name!, uid: p.metadata!.uid! });
    }
  });
  after(async () => {
    await srv?.running.stop();
    await w?.stop();
  });

  it(`serves ${PODS} pods asking at once (each twice), one STS call per pod`, async () => {
    const t0 = performance.now();
    const lat: number[] = [];
    const results = await Promise.all(
      [...pods, ...pods].map(async (pod) => {
        const s = performance.now();
        const r = await post(srv.running.apiPort, w.cert.caFile, {
          token: w.agentToken["node-1"],
          body: { pod },
        });
        lat.push(performance.now() - s);
        return r;
      }),
    );
    const total = performance.now() - t0;
    const bad = results.filter((r) => r.status !== 200);
    assert.equal(
      bad.length,
      0,
      bad
        .slice(0, 3)
        .map((r) => r.raw)
        .join("\n"),
    );
    assert.equal(srv.stsCalls.length, PODS, "one AssumeRole per pod");
    lat.sort((a, b) => a - b);
    const p50 = lat[Math.floor(lat.length * 0.5)] as number;
    const p99 = lat[Math.floor(lat.length * 0.99)] as number;
    console.log(
      `storm: ${PODS} pods x2 requests in ${total.toFixed(0)} ms; p50 ${p50.toFixed(0)} ms, p99 ${p99.toFixed(0)} ms`,
    );
    const lat2: number[] = srv.audit.map((a) => a.latencyMs ?? 0).sort((a, b) => a - b);
    console.log(
      `server-side latency p50 ${lat2[Math.floor(lat2.length / 2)]} p99 ${lat2[Math.floor(lat2.length * 0.99)]}`,
    );
    // and a second round is all cache hits
    const again = await Promise.all(
      pods.map((pod) =>
        post(srv.running.apiPort, w.cert.caFile, { token: w.agentToken["node-1"], body: { pod } }),
      ),
    );
    assert.ok(again.every((r) => r.status === 200));
    assert.equal(srv.stsCalls.length, PODS);
  });
});
