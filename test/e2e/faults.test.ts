// Faults with clients running the whole time: what the clients saw, and that nothing wrong was
// served. Needs root (network namespaces, iptables); starts every part itself.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { CoreV1Api } from "@kubernetes/client-node";
import { NODE, waitFor, type ManagedProcess } from "../harness/index.ts";
import { System, IMDS, type TestPod } from "./system.ts";
import { startFakeImds, NODE_ACCESS_KEY } from "../harness/fake-imds.ts";
import { BUCKET_A, BUCKET_B, startWithTenants } from "./fixtures.ts";

interface Line {
  t: number;
  ok: boolean;
  ms: number;
  key?: string;
  err?: string;
  tokenRefused?: boolean;
}
interface Client {
  pod: TestPod;
  holder: ManagedProcess;
  poller: ManagedProcess;
}

const clientsDir = join(import.meta.dirname, "clients");
const lines = (p: ManagedProcess): Line[] =>
  p
    .logs()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Line);

describe("e2e: faults with clients running", () => {
  const sys = new System({ nodes: ["node-a", "node-b"], serverReplicas: 2, stsFaults: true });
  const clients: Client[] = [];
  const report: Array<Record<string, unknown>> = [];
  let podCounter = 0;

  const startClients = (pod: TestPod, bucket: string, key: string): Client => {
    const env = sys.awsEnv();
    const holder = sys.net.spawn(pod.net.netns, NODE, [join(clientsDir, "holder.ts"), bucket, key, "250"], {
      env,
      name: `holder ${pod.namespace}/${pod.name}`,
    });
    const poller = sys.net.spawn(pod.net.netns, NODE, [join(clientsDir, "poller.ts"), "250", "keep-token"], {
      env,
      name: `poller ${pod.namespace}/${pod.name}`,
    });
    const c = { pod, holder, poller };
    clients.push(c);
    return c;
  };

  /** Runs a fault, then summarises what every client saw while it lasted. */
  const during = async (name: string, fault: () => Promise<void>): Promise<Record<string, unknown>> => {
    const t0 = Date.now();
    await fault();
    await new Promise((r) => setTimeout(r, 1000));
    const t1 = Date.now();
    const inWindow = (ls: Line[]) => ls.filter((l) => l.t >= t0 && l.t <= t1);
    const holders = clients.flatMap((c) => inWindow(lines(c.holder)));
    const pollers = clients.flatMap((c) => inWindow(lines(c.poller)));
    const pct = (xs: number[], q: number) =>
      xs.sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))] ?? 0;
    const summary = {
      fault: name,
      seconds: (t1 - t0) / 1000,
      holderCalls: holders.length,
      holderErrors: holders.filter((l) => !l.ok).length,
      holderErrorSamples: [...new Set(holders.filter((l) => !l.ok).map((l) => l.err))].slice(0, 3),
      endpointCalls: pollers.length,
      endpointErrors: pollers.filter((l) => !l.ok).length,
      endpointTokensRefused: pollers.filter((l) => l.tokenRefused).length,
      endpointErrorKinds: [...new Set(pollers.filter((l) => !l.ok).map((l) => l.err))].slice(0, 4),
      endpointP99ms: Math.round(
        pct(
          pollers.map((l) => l.ms),
          0.99,
        ),
      ),
      endpointMaxMs: Math.round(Math.max(0, ...pollers.map((l) => l.ms))),
    };
    report.push(summary);
    console.log(`# ${JSON.stringify(summary)}`);
    return summary;
  };

  /** A pod that starts during or after a fault: how long until its credentials arrive, if ever. */
  const newPodGetsCredentials = async (node: string, timeoutMs = 20_000) => {
    const pod = await sys.addPod(node, "tenant-a", `late-${podCounter++}`, { serviceAccount: "reader" });
    const t0 = Date.now();
    const r = await waitFor(
      `credentials for ${pod.name}`,
      async () => {
        const c = await sys.imdsCredentials(pod);
        return c.status === 200 ? c : false;
      },
      { timeoutMs, intervalMs: 250 },
    );
    return { pod, ms: Date.now() - t0, key: r.creds!.AccessKeyId! };
  };

  before(async () => {
    await startWithTenants(sys);
    const a1 = await sys.addPod("node-a", "tenant-a", "steady-a1", { serviceAccount: "reader" });
    const b1 = await sys.addPod("node-a", "tenant-b", "steady-b1", { serviceAccount: "reader" });
    const a2 = await sys.addPod("node-b", "tenant-a", "steady-a2", { serviceAccount: "reader" });
    startClients(a1, BUCKET_A, "tenant-a/report.csv");
    startClients(b1, BUCKET_B, "tenant-b/secret.csv");
    startClients(a2, BUCKET_A, "tenant-a/report.csv");
    await waitFor(
      "every client served",
      async () => clients.every((c) => lines(c.holder).some((l) => l.ok)),
      {
        timeoutMs: 60_000,
        onTimeout: () => clients.map((c) => c.holder.tail(5)).join("\n"),
      },
    );
  });

  after(async () => {
    console.log(`# fault report: ${JSON.stringify(report)}`);
    await sys.stop();
  });

  it("a server replica is killed", async () => {
    const s = await during("kill a server replica", async () => {
      await sys.servers[0]!.process.kill();
      await new Promise((r) => setTimeout(r, 2000)); // kube-proxy notices the failed probe
      await sys.syncService();
    });
    assert.equal(s.holderErrors, 0);
    const late = await newPodGetsCredentials("node-b");
    assert.ok(late.ms < 5000, `new pod served after ${late.ms} ms`);
  });

  it("the apiserver restarts", async () => {
    const s = await during("restart the apiserver", () => sys.cluster.restartApiserver());
    assert.equal(s.holderErrors, 0);
    const late = await newPodGetsCredentials("node-a");
    assert.ok(late.ms < 10_000, `new pod served after ${late.ms} ms`);
  });

  it("the agents' pod watch expires (410 Gone) and they relist", async () => {
    const before_ = sys.agents.get("node-a")!.process.logs().split("\n").length;
    const s = await during("watch expiry (etcd compaction + apiserver restart)", async () => {
      // pods change on the other node only, so node-a's watch falls behind; then history goes
      const core = sys.cluster.kc.makeApiClient(CoreV1Api);
      await sys.kubelet.ensureNamespace("churn");
      for (let i = 0; i < 20; i++) {
        await core.createNamespacedConfigMap({
          namespace: "churn",
          body: { metadata: { generateName: "churn-" } },
        });
      }
      const rev = await fetch(`${sys.cluster.etcdUrl}/v3/kv/range`, {
        method: "POST",
        body: JSON.stringify({ key: Buffer.from("/").toString("base64") }),
      }).then((r) => r.json() as Promise<{ header: { revision: string } }>);
      await fetch(`${sys.cluster.etcdUrl}/v3/kv/compaction`, {
        method: "POST",
        body: JSON.stringify({ revision: rev.header.revision, physical: true }),
      });
      await sys.cluster.restartApiserver();
    });
    assert.equal(s.holderErrors, 0);
    const late = await newPodGetsCredentials("node-a");
    assert.ok(late.ms < 10_000, `new pod served after ${late.ms} ms`);
    const newLogs = sys.agents
      .get("node-a")!
      .process.logs()
      .split("\n")
      .slice(before_ - 1)
      .join("\n");
    assert.match(newLogs, /expired \(410\), relisting/, "the agent saw 410 Gone and relisted");
  });

  it("Redis stops", async () => {
    const s = await during("stop Redis", async () => {
      await sys.redis!.kill();
    });
    assert.equal(s.holderErrors, 0);
    const late = await newPodGetsCredentials("node-b");
    assert.ok(late.ms < 5000, `new pod served without the shared cache after ${late.ms} ms`);
    await sys.redis!.restart();
  });

  it("STS throttles for a while", async () => {
    let late: Awaited<ReturnType<typeof newPodGetsCredentials>> | undefined;
    const s = await during("STS throttling for 4 s", async () => {
      sys.stsProxy!.mode = "throttle";
      const pending = newPodGetsCredentials("node-a", 30_000);
      await new Promise((r) => setTimeout(r, 4000));
      sys.stsProxy!.mode = "pass";
      late = await pending;
    });
    assert.equal(s.holderErrors, 0);
    assert.ok(sys.stsProxy!.counts.throttle > 0, "STS was asked and throttled");
    assert.ok(late, "the pod that started during throttling got credentials once it ended");
  });

  it("STS fails: a new pod gets a clear error, never anything else, then recovers", async () => {
    let during_: { status: number; body: string } | undefined;
    const s = await during("STS failing", async () => {
      sys.stsProxy!.mode = "fail";
      const pod = await sys.addPod("node-a", "tenant-a", `late-${podCounter++}`, {
        serviceAccount: "reader",
      });
      during_ = await sys.imdsCredentials(pod);
      sys.stsProxy!.mode = "pass";
    });
    assert.equal(s.holderErrors, 0);
    assert.notEqual(during_!.status, 200);
    assert.ok(!during_!.body.includes("AccessKeyId"));
    const late = await newPodGetsCredentials("node-a");
    assert.ok(late.ms < 10_000);
  });

  /** Credential answers the server replicas gave so far (keycutter_server_decisions_total{outcome="issued"}). */
  const serverIssued = async (): Promise<number> => {
    let total = 0;
    for (const r of sys.servers) {
      if (!r.process.running) continue;
      const text = await (await fetch(`http://127.0.0.1:${r.opsPort}/metrics`)).text();
      const m = /^keycutter_server_decisions_total\{outcome="issued"\} (\d+)/m.exec(text);
      total += Number(m?.[1] ?? 0);
    }
    return total;
  };

  it("an agent rolls over (surge + hand-over): no call fails, tokens and credentials carried over", async () => {
    const issuedBefore = await serverIssued();
    let takeOverMs = 0;
    const s = await during("roll the agent on node-a", async () => {
      takeOverMs = (await sys.rolloutAgent("node-a")).takeOverMs;
    });
    const issuedDuring = (await serverIssued()) - issuedBefore;
    console.log(
      `# agent roll-over: successor took over after ${takeOverMs} ms; server answers ${issuedDuring}`,
    );
    assert.equal(s.holderErrors, 0, "clients holding credentials see nothing");
    assert.equal(s.endpointErrors, 0, "no metadata call fails during the roll-over");
    assert.equal(s.endpointTokensRefused, 0, "IMDSv2 tokens of the old agent work with the new one");
    assert.equal(issuedDuring, 0, "the new agent asked the server for nothing the old one held");
    const late = await newPodGetsCredentials("node-a");
    assert.ok(late.ms < 5000);
  });

  it("an agent rolls over while the old one is already SIGTERMed: it serves until the new one took over", async () => {
    const issuedBefore = await serverIssued();
    const s = await during("roll the agent on node-a, SIGTERM at the start", async () => {
      await sys.rolloutAgent("node-a", { sigtermAtStart: true });
    });
    assert.equal(s.endpointErrors, 0, "no metadata call fails");
    assert.equal(s.endpointTokensRefused, 0, "the token key was handed over");
    assert.equal((await serverIssued()) - issuedBefore, 0, "nothing fetched again");
  });

  it("an agent crashes (SIGKILL): pods are refused meanwhile, never the node's credentials", async () => {
    // a stand-in real IMDS with the node's credentials: what a pod would get without the hook
    const nodeImds = await startFakeImds(sys.net, sys.agents.get("node-a")!.node.netns);
    try {
      const t0 = Date.now();
      let restart = { listeningAfterMs: 0, readyAfterMs: 0 };
      const s = await during("SIGKILL the agent on node-a", async () => {
        restart = await sys.crashAgent("node-a");
      });
      const nodeA = clients.filter((c) => c.pod.node === "node-a").map((c) => lines(c.poller));
      const after = nodeA.map((ls) => ls.filter((l) => l.t >= t0));
      // the window: from the kill to each poller's first successful call after its first failure
      const windows = after.map((ls) => {
        const firstFail = ls.find((l) => !l.ok);
        if (!firstFail) return 0;
        const back = ls.find((l) => l.ok && l.t > firstFail.t);
        return (back?.t ?? Date.now()) - t0;
      });
      console.log(
        `# agent crash: refused for at most ${Math.max(...windows)} ms; restarted agent listening after ${restart.listeningAfterMs} ms, ready after ${restart.readyAfterMs} ms; errors ${JSON.stringify(s.endpointErrorKinds)}`,
      );
      assert.ok(
        after.flat().every((l) => l.key !== NODE_ACCESS_KEY),
        "no pod ever receives the node's credentials",
      );
      assert.ok(
        after
          .flat()
          .every(
            (l) =>
              l.ok ||
              /ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET|TimeoutError|token 401|role 401/.test(l.err ?? ""),
          ),
        // refused before the restarted agent listens; unanswered in time while it starts
        `failures are refusals or time-outs, no answer from elsewhere: ${JSON.stringify(s.endpointErrorKinds)}`,
      );
      assert.equal(s.holderErrors, 0, "clients holding credentials see nothing");
      const late = await newPodGetsCredentials("node-a");
      assert.ok(late.ms < 5000);
    } finally {
      await nodeImds.stop();
    }
  });

  it("every server is down: cached credentials keep being served, a new pod gets a clear error", async () => {
    let fresh: { status: number; body: string } | undefined;
    const s = await during("all server replicas down", async () => {
      for (const r of sys.servers) await r.process.stop();
      const pod = await sys.addPod("node-b", "tenant-a", `late-${podCounter++}`, {
        serviceAccount: "reader",
      });
      fresh = await sys.imdsCredentials(pod);
    });
    assert.equal(s.holderErrors, 0);
    assert.equal(s.endpointErrors, 0, "pods with cached credentials are still served by their agent");
    assert.ok(
      fresh!.status >= 500 && fresh!.status < 600,
      `clear server-side error: ${fresh!.status} ${fresh!.body}`,
    );
    assert.ok(!fresh!.body.includes("AccessKeyId"));
    await sys.startServer("server-restarted");
    await sys.syncService();
    const late = await newPodGetsCredentials("node-b");
    assert.ok(late.ms < 10_000);
  });

  it("through all of it, no pod was ever served another pod's credentials", async () => {
    const owner = new Map<string, string>();
    for (const c of clients) {
      for (const l of lines(c.poller)) {
        if (!l.key) continue;
        const who = `${c.pod.namespace}/${c.pod.name}`;
        assert.equal(owner.get(l.key) ?? who, who, `key ${l.key} seen by two pods`);
        owner.set(l.key, who);
      }
    }
    assert.ok(owner.size >= clients.length);
    const r = await sys.curl(clients[0]!.pod, `${IMDS}/latest/meta-data/iam/security-credentials/`);
    assert.equal(r.status, 200);
  });
});
