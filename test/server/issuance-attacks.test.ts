// Attacks on the server's API and issuance, against real parts: kube-apiserver (the server under
// its chart RBAC), moto as STS with auth enforced, and a real node agent in-process.
//   - a node's root creating mirror (static) pods in a tenant's namespace;
//   - STS error text (the server's own identity) reaching pods and policy status;
//   - one namespace whose AssumeRole fails, with many pods, spending everyone's STS budget.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { V1OwnerReference } from "@kubernetes/client-node";
import { BROKER_USER, waitFor } from "../harness/index.ts";
import { createLogger } from "../../src/common/logger.ts";
import { startAgent, type RunningAgent } from "../../src/agent/agent.ts";
import { agentConfigFrom } from "../../src/cli/commands/agent.ts";
import { toPodInfo } from "../../src/agent/pod-watch.ts";
import {
  ACCOUNT,
  createAllowance,
  createPolicy,
  createWorld,
  post,
  readyConditionOf,
  roleArn,
  startTestServer,
  tenantPolicy,
  type TestServer,
  type World,
} from "./world.ts";

type PodRef = { namespace: string; name: string; uid: string };

/** What STS says about a refused AssumeRole, and what must never leave the server. */
const SERVER_USER_ARN = `arn:aws:iam::${ACCOUNT}:user/${BROKER_USER}`;
function assertNoStsText(text: string, where: string): void {
  assert.ok(!text.includes("arn:aws:"), `${where} names an ARN: ${text}`);
  assert.ok(!text.includes(BROKER_USER), `${where} names the server's identity: ${text}`);
  assert.ok(!/not authorized|AccessDenied/i.test(text), `${where} carries STS's text: ${text}`);
}

describe("attacks on the server's API and issuance (real apiserver, moto)", { timeout: 600_000 }, () => {
  let w: World;
  let srv: TestServer;
  const serverLog: string[] = [];

  const ask = (s: TestServer, pod: PodRef) =>
    post(s.running.apiPort, w.cert.caFile, { token: w.agentToken["node-1"], body: { pod } });

  async function tenantPod(namespace: string, name: string, podIP: string): Promise<PodRef> {
    const p = await w.kubelet.createPod({
      namespace,
      name,
      nodeName: "node-1",
      serviceAccountName: "app",
      labels: { app: "web", team: "blue" },
      podIP,
    });
    return { namespace, name, uid: p.metadata!.uid! };
  }

  before(async () => {
    w = await createWorld();
    for (const ns of ["static", "locked"]) await w.kubelet.ensureNamespace(ns);
    // the ServiceAccount admission gives pods without a mirror annotation "default"
    await w.kubelet.createServiceAccount("static", "default");
    await createAllowance(w, {
      metadata: { name: "static" },
      spec: { namespaces: ["static"], roleArns: [roleArn("tenant-a")], sessionTagKeys: ["team"] },
    });
    // selects by labels only: any pod a node's root writes with these labels would match
    await createPolicy(
      w,
      tenantPolicy("static", "by-label", "app", "tenant-a", "bucket-a", {
        podSelector: { matchLabels: { app: "web" } },
      }),
    );
    await createAllowance(w, {
      metadata: { name: "locked" },
      spec: { namespaces: ["locked"], roleArns: [roleArn("tenant-locked")], sessionTagKeys: ["team"] },
    });
    await createPolicy(w, tenantPolicy("locked", "locked", "app", "tenant-locked", "bucket-a"));
    srv = await startTestServer(w, {
      log: createLogger("server-test", {
        level: "warn",
        hooks: {
          streamWrite: (line) => {
            serverLog.push(line);
            return "";
          },
        },
      }),
    });
    await waitFor(
      "server ready",
      async () => srv.running.ready() && srv.running.informers.accessPolicies().length >= 9,
      { timeoutMs: 30_000 },
    );
  });

  after(async () => {
    await srv?.running.stop();
    await w?.stop();
  });

  it("refuses mirror (static) pods bound to the agent's node: the annotation or a Node owner, whatever the policies select", async () => {
    const core = w.kubelet.core;
    const node = await core.readNode({ name: "node-1" });
    const nodeOwner: V1OwnerReference = {
      apiVersion: "v1",
      kind: "Node",
      name: "node-1",
      uid: node.metadata!.uid!,
      controller: true,
    };
    // What a node's root gets by writing a static-pod manifest naming namespace "static": the
    // kubelet creates the mirror pod as below (here an admin plays the kubelet).
    const mirrorPod = async (
      name: string,
      podIP: string,
      opts: { annotation: boolean; owner: boolean },
    ): Promise<PodRef> => {
      await core.createNamespacedPod({
        namespace: "static",
        body: {
          metadata: {
            name,
            labels: { app: "web", team: "blue" },
            ...(opts.annotation ? { annotations: { "kubernetes.io/config.mirror": "0123abcd" } } : {}),
            ...(opts.owner ? { ownerReferences: [nodeOwner] } : {}),
          },
          spec: { nodeName: "node-1", containers: [{ name: "app", image: "example.invalid/app:1" }] },
        },
      });
      const p = await w.kubelet.setPodIP("static", name, podIP);
      return { namespace: "static", name, uid: p.metadata!.uid! };
    };
    const kubeletMade = await mirrorPod("static-web-node-1", "10.244.1.201", {
      annotation: true,
      owner: true,
    });
    const annotated = await mirrorPod("annotated-only", "10.244.1.202", { annotation: true, owner: false });
    const nodeOwned = await mirrorPod("node-owned-only", "10.244.1.203", { annotation: false, owner: true });
    const real = (await core.readNamespacedPod({ namespace: "static", name: kubeletMade.name })).spec;
    assert.equal(
      real?.serviceAccountName,
      undefined,
      "the apiserver leaves mirror pods without a service account",
    );

    const before = srv.stsCalls.length;
    for (const pod of [kubeletMade, annotated, nodeOwned]) {
      const r = await ask(srv, pod);
      assert.equal(r.status, 403, `${pod.name}: ${r.raw}`);
      assert.equal(r.body.code, "PodNotEligible", pod.name);
      assert.match(String(r.body.message), /mirror \(static\) pod/);
    }
    assert.equal(srv.stsCalls.length, before, "nothing was sent to STS");
    const audited = srv.audit.filter((a) => a.code === "PodNotEligible").map((a) => a.pod?.name);
    assert.deepEqual(audited.sort(), [annotated.name, nodeOwned.name, kubeletMade.name].sort());

    // the agent knows them for what they are and does not prefetch for them
    for (const pod of [kubeletMade, annotated, nodeOwned]) {
      const info = toPodInfo(await core.readNamespacedPod({ namespace: "static", name: pod.name }));
      assert.equal(info?.mirror, true, pod.name);
    }
    // the same policy still serves a pod admitted the ordinary way
    const ordinary = await tenantPod("static", "ordinary", "10.244.1.204");
    const ok = await ask(srv, ordinary);
    assert.equal(ok.status, 200, ok.raw);
  });

  it("STS's error text reaches neither the pod (through a real agent) nor the policy status; the server log has it", async () => {
    // the pod the agent resolves from its source address: the test's own loopback address
    const victim = await tenantPod("locked", "victim", "127.0.0.1");
    const podToken = await w.kubelet.requestToken("locked", "app", {
      podName: victim.name,
      podUID: victim.uid,
      audiences: ["keycutter-pod"],
    });
    const tokenFile = join(w.dir, "agent-node-1.token");
    writeFileSync(tokenFile, w.agentToken["node-1"] as string);
    const agent: RunningAgent = await startAgent(
      agentConfigFrom(
        {
          nodeName: "node-1",
          serverUrl: `https://127.0.0.1:${srv.running.apiPort}`,
          serverCaFile: w.cert.caFile,
          tokenFile,
          kubeconfig: w.cluster.kubeconfigPath,
          imdsListen: "127.0.0.1:0",
          containerListen: "127.0.0.1:0",
          opsListen: "127.0.0.1:0",
          hook: false,
          // not on a real node: the pod's address is the test's own, no runtime records it
          cniStateDir: "",
        },
        {},
      ),
      createLogger("agent-test", { level: "silent" }),
    );
    try {
      await waitFor("agent knows the pod", async () => agent.index.lookup("127.0.0.1").kind === "pod", {
        timeoutMs: 30_000,
      });
      const container = await fetch(`http://127.0.0.1:${agent.container!.port}/v1/credentials`, {
        headers: { authorization: podToken },
      });
      const containerBody = await container.text();
      assert.equal(container.status, 403, containerBody);
      const parsed = JSON.parse(containerBody) as { code: string; message: string };
      assert.equal(parsed.code, "StsDenied");
      assert.match(parsed.message, /\(StsDenied\); see the server log, request id \S+/);
      assertNoStsText(containerBody, "the container-credentials answer");
      const imds = await fetch(
        `http://127.0.0.1:${agent.imds.port}/latest/meta-data/iam/security-credentials/`,
      );
      const imdsBody = await imds.text();
      assert.equal(imds.status, 404, imdsBody);
      assert.match(imdsBody, /StsDenied/);
      assertNoStsText(imdsBody, "the IMDS answer");
    } finally {
      await agent.stop();
    }

    const condition = await readyConditionOf(
      w,
      "locked",
      "locked",
      "StsDenied in the policy's status",
      (ready) => ready.reason === "StsDenied",
    );
    assertNoStsText(condition.message, "the status condition");
    // audit records name the role (that is their job), never STS's text
    const audit = JSON.stringify(srv.audit);
    assert.ok(!audit.includes(SERVER_USER_ARN) && !/not authorized/.test(audit), "no STS text in the audit");

    // the detail, with the request id the pod was given, is in the server log
    const requestId = /request id (\S+)/.exec(condition.message)?.[1] as string;
    const line = serverLog.find((l) => l.includes(requestId));
    assert.ok(line, `a server log line with request id ${requestId}`);
    assert.ok(line.includes(SERVER_USER_ARN), line);
    assert.match(line, /AccessDenied/);
  });

  it("a namespace whose AssumeRole fails, with many pods, neither holds back another namespace's issuance nor costs an STS call per retry", async () => {
    // a small STS budget: 4 calls/s, burst 2, so that 30 pods are a crowd
    const fair = await startTestServer(w, {
      leaderElection: false,
      stsRatePerSecond: 4,
      stsBurst: 2,
      log: createLogger("server-test", { level: "silent" }),
    });
    try {
      await waitFor("budget server ready", async () => fair.running.ready(), { timeoutMs: 30_000 });
      const crowd: PodRef[] = [];
      for (let i = 0; i < 30; i += 10)
        crowd.push(
          ...(await Promise.all(
            Array.from({ length: 10 }, (_, j) =>
              tenantPod("locked", `crowd-${i + j}`, `10.246.0.${i + j + 1}`),
            ),
          )),
        );
      const others = await Promise.all(
        Array.from({ length: 4 }, (_, j) => tenantPod("tenant-b", `fair-${j}`, `10.246.1.${j + 1}`)),
      );

      // every request that passed the caches reaches the STS budget next: a miss per crowd pod
      const misses = async () =>
        (await fair.running.metrics.cacheLookups.get()).values
          .filter((v) => v.labels.result === "miss")
          .reduce((sum, v) => sum + v.value, 0);
      const missesBefore = await misses();
      const crowdRound = Promise.all(crowd.map((pod) => ask(fair, pod)));
      // the whole crowd is at the budget (queued, refused or calling STS) before tenant-b asks
      await waitFor(
        "the crowd at the STS budget",
        async () => (await misses()) - missesBefore >= crowd.length,
        {
          timeoutMs: 30_000,
          intervalMs: 10,
        },
      );
      const othersRound = await Promise.all(
        others.map(async (pod) => {
          const t0 = performance.now();
          const r = await ask(fair, pod);
          return { r, ms: performance.now() - t0 };
        }),
      );
      const crowdFirst = await crowdRound;
      const slowest = Math.max(...othersRound.map((o) => o.ms));
      console.log(
        `tenant-b's 4 first issuances behind 30 refused pods of "locked": slowest ${slowest.toFixed(0)} ms; ` +
          `locked: ${crowdFirst.filter((r) => r.body.code === "StsDenied").length} StsDenied, ` +
          `${crowdFirst.filter((r) => r.body.code === "Throttled").length} Throttled`,
      );
      for (const { r } of othersRound) assert.equal(r.status, 200, `tenant-b is not throttled: ${r.raw}`);
      // its fair share: every other grant at 4/s
      assert.ok(slowest < 3_500, `tenant-b served within its share of the budget: ${slowest.toFixed(0)} ms`);

      // the crowd asks again, twice: a plan STS refused is answered from memory
      await Promise.all(crowd.map((pod) => ask(fair, pod)));
      const again = await Promise.all(crowd.map((pod) => ask(fair, pod)));
      const callsFor = (uid: string) =>
        fair.stsCalls.filter((c) => c.Tags?.some((t) => t.Key === "kubernetes-pod-uid" && t.Value === uid))
          .length;
      for (const pod of crowd)
        assert.ok(callsFor(pod.uid) <= 1, `${pod.name}: ${callsFor(pod.uid)} STS calls`);
      const denied = crowd.filter((_, i) => again[i]?.body.code === "StsDenied");
      assert.ok(denied.length >= 20, `most of the crowd refused from memory: ${denied.length}`);
      for (const r of again) assertNoStsText(r.raw, "a refusal from memory");
    } finally {
      await fair.running.stop();
    }
  });
});
