// Agent upgrades and restarts on a real node, with pods polling through the hook the whole time:
// a `helm upgrade` that changes the agent's pod template and a `kubectl rollout restart` (the
// chart's default surge strategy with the hand-over) must fail no call and serve nothing wrong;
// a SIGKILL of the agent must keep pods fail closed (refused, never the node's credentials).
// Prints one line per case: `rollout <case>: <n> calls, <failed> failed, <wrong> wrong, max
// latency <ms>`. `npm run test:node` runs it (under the machine's real-node lock).
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, rmSync } from "node:fs";
import { AppsV1Api, CoreV1Api, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { applyObjects, waitFor } from "../harness/index.ts";
import type { RealNode } from "../harness/realnode.ts";
import { NODE_ACCESS_KEY } from "../harness/fake-imds.ts";
import {
  killContainerProcess,
  parsePollLines,
  pollerConfigMap,
  pollerPodSpec,
  summarise,
  waitDaemonSetRolledOut,
  type PollLine,
} from "../harness/node-rollout.ts";
import {
  KEYCUTTER_NAMESPACE as NS,
  describeOnNode,
  TENANTS,
  installKeycutter,
  startNodeSuite,
  setUpTenants,
  type NodeSuite,
} from "../harness/node-suite.ts";
import { CHART_DIR } from "../deploy/render.ts";

const STEADY_PER_TENANT = 10;
/** A new poller pod starts this often while a case runs. */
const LATE_POD_EVERY_MS = 3000;
/** The chart's agent.handover.dir: a host directory the kubelet creates for the agent pods. */
const HANDOVER_DIR = "/run/keycutter";

describeOnNode("a real node: agent rollouts and crashes with pods polling", () => {
  let suite: NodeSuite | undefined;
  let node: RealNode | undefined;
  let values: Record<string, unknown> = {};
  let lateCounter = 0;
  const handoverDirExisted = existsSync(HANDOVER_DIR);
  const report: string[] = [];

  const core = () => node!.cluster.kc.makeApiClient(CoreV1Api);
  const apps = () => node!.cluster.kc.makeApiClient(AppsV1Api);

  const agentPods = async () =>
    (await core().listNamespacedPod({ namespace: NS, labelSelector: "app.kubernetes.io/component=agent" }))
      .items;

  /** Every poller pod's lines, by pod name, with its tenant. */
  const pollLines = async (): Promise<Map<string, { tenant: string; lines: PollLine[] }>> => {
    const out = new Map<string, { tenant: string; lines: PollLine[] }>();
    for (const tenant of TENANTS) {
      const pods = await core().listNamespacedPod({ namespace: tenant, labelSelector: "app=poller" });
      for (const p of pods.items) {
        if (p.status?.phase !== "Running") continue;
        const name = p.metadata!.name!;
        out.set(`${tenant}/${name}`, {
          tenant,
          lines: parsePollLines(node!.containerLogs(tenant, name, "poller")),
        });
      }
    }
    return out;
  };

  const inWindow = (all: Map<string, { tenant: string; lines: PollLine[] }>, t0: number, t1: number) =>
    new Map([...all].map(([k, v]) => [k, { ...v, lines: v.lines.filter((l) => l.t >= t0 && l.t <= t1) }]));

  /** Credential answers the server gave (keycutter_server_decisions_total{outcome="issued"}). */
  const serverIssued = async (): Promise<number> => {
    const pods = await core().listNamespacedPod({
      namespace: NS,
      labelSelector: "app.kubernetes.io/component=server",
    });
    let total = 0;
    for (const p of pods.items) {
      if (!p.status?.podIP) continue;
      const text = await (await fetch(`http://${p.status.podIP}:9090/metrics`)).text();
      const m = /^keycutter_server_decisions_total\{outcome="issued"\} (\d+)/m.exec(text);
      total += Number(m?.[1] ?? 0);
    }
    return total;
  };

  /**
   * The server's audit records in [t0, t1] for pods that are not late ones: what the agents
   * asked again for pods the old agent already held (the hand-over should make it zero).
   */
  const steadyAudits = async (t0: number, t1: number): Promise<number> => {
    const pods = await core().listNamespacedPod({
      namespace: NS,
      labelSelector: "app.kubernetes.io/component=server",
    });
    let n = 0;
    for (const p of pods.items) {
      for (const line of node!.containerLogs(NS, p.metadata!.name!, "server").split("\n")) {
        if (!line.includes('"kind":"audit"')) continue;
        let rec: { time?: string; decision?: string; pod?: { namespace: string; name: string } };
        try {
          rec = JSON.parse(line) as typeof rec;
        } catch {
          continue; // a line cut at the log's end
        }
        const t = Date.parse(rec.time ?? "");
        // credentials issued again; a pod without a policy (CoreDNS, the server) is refused
        // again after the denial's 5 s memory, which is not handed over
        if (t >= t0 && t <= t1 && rec.decision === "allowed" && rec.pod && !rec.pod.name.startsWith("late-"))
          n++;
      }
    }
    return n;
  };

  const startLatePod = async (): Promise<{ namespace: string; name: string; createdAt: number }> => {
    const namespace = TENANTS[lateCounter % 2]!;
    const name = `late-${lateCounter++}`;
    await applyObjects(node!.cluster.kc, [
      {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name, namespace, labels: { app: "poller", late: "true" } },
        spec: { ...pollerPodSpec(node!.images.awsClients.ref), restartPolicy: "Never" },
      },
    ] as never);
    return { namespace, name, createdAt: Date.now() };
  };

  /**
   * Runs `action` while a new poller pod starts every few seconds; then summarises every
   * poller's calls from the action's start to a few seconds after its end.
   */
  const runCase = async (name: string, action: () => Promise<void>) => {
    const late: Array<{ namespace: string; name: string; createdAt: number }> = [];
    let starting = true;
    const starter = (async () => {
      while (starting) {
        late.push(await startLatePod());
        await new Promise((r) => setTimeout(r, LATE_POD_EVERY_MS));
      }
    })();
    const issuedBefore = await serverIssued();
    const t0 = Date.now();
    await action();
    await new Promise((r) => setTimeout(r, 5000));
    starting = false;
    await starter;
    const t1 = Date.now();
    // the late pods' first calls: each must have been served on its first try
    await waitFor(
      "every late pod polled",
      async () => {
        for (const p of late) {
          const lines = parsePollLines(node!.containerLogs(p.namespace, p.name, "poller"));
          if (!lines.some((l) => l.path === "imds") || !lines.some((l) => l.path === "container"))
            return false;
        }
        return true;
      },
      { timeoutMs: 120_000, intervalMs: 1000, onTimeout: () => "" },
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}\n${await node!.describePods("tenant-a")}`, { cause: err });
    });
    const issued = (await serverIssued()) - issuedBefore;
    const steadyAsked = await steadyAudits(t0, t1);
    const all = await pollLines();
    const window = inWindow(all, t0, t1);
    const s = summarise(
      window,
      (tenant) => (tenant === "tenant-a" ? "tenant-a-reader" : "tenant-b-reader"),
      new Set([NODE_ACCESS_KEY]),
    );
    const line = `rollout ${name}: ${s.calls} calls, ${s.failed} failed, ${s.wrong} wrong, max latency ${s.maxLatencyMs} ms`;
    console.log(line);
    report.push(line);
    const firstTries = late.map((p) => {
      const lines = parsePollLines(node!.containerLogs(p.namespace, p.name, "poller"));
      return {
        pod: p.name,
        imds: lines.find((l) => l.path === "imds"),
        container: lines.find((l) => l.path === "container"),
      };
    });
    console.log(
      `# ${name}: ${late.length} pods started during it; server credential answers ${issued}, ${steadyAsked} of them for pods running before; tokens refused ${s.tokensRefused}; ${Math.round((t1 - t0) / 1000)} s`,
    );
    return { s, window, late, firstTries, issued, steadyAsked, t0, t1 };
  };

  const cleanLatePods = async (): Promise<void> => {
    for (const tenant of TENANTS)
      await core().deleteCollectionNamespacedPod({
        namespace: tenant,
        labelSelector: "late=true",
        gracePeriodSeconds: 0,
      });
  };

  before(async () => {
    const started = Date.now();
    suite = await startNodeSuite();
    node = suite.node;
    // only what a user sets; the update strategy and the hand-over are the chart's defaults
    ({ values } = await installKeycutter(suite));
    await setUpTenants(suite);
    const objects: object[] = TENANTS.map((namespace) => pollerConfigMap(namespace));
    for (const namespace of TENANTS) {
      objects.push({
        apiVersion: "apps/v1",
        kind: "Deployment",
        metadata: { name: "poller", namespace },
        spec: {
          replicas: STEADY_PER_TENANT,
          selector: { matchLabels: { app: "poller" } },
          template: {
            metadata: { labels: { app: "poller" } },
            spec: pollerPodSpec(node.images.awsClients.ref),
          },
        },
      });
    }
    await applyObjects(node.cluster.kc, objects as never);
    await waitFor(
      `${2 * STEADY_PER_TENANT} poller pods served on both paths`,
      async () => {
        const all = await pollLines();
        if (all.size < 2 * STEADY_PER_TENANT) return false;
        return [...all.values()].every(
          (p) =>
            p.lines.some((l) => l.path === "imds" && l.ok) &&
            p.lines.some((l) => l.path === "container" && l.ok),
        );
      },
      { timeoutMs: 600_000, intervalMs: 2000, onTimeout: () => "" },
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}\n${await node!.describePods("tenant-a")}`, { cause: err });
    });
    console.log(
      `# node, keycutter and ${2 * STEADY_PER_TENANT} pollers up in ${Math.round((Date.now() - started) / 1000)} s`,
    );
  });

  after(async () => {
    console.log(`# rollout report:\n# ${report.join("\n# ")}`);
    const left = (await suite?.stop()) ?? [];
    // the agents' hand-over socket stays behind their SIGKILL at teardown
    if (!handoverDirExisted) rmSync(HANDOVER_DIR, { recursive: true, force: true });
    assert.deepEqual(left, [], "teardown leaves nothing behind");
  });

  const assertPlanned = (r: Awaited<ReturnType<typeof runCase>>): void => {
    assert.ok(r.s.calls >= 2 * STEADY_PER_TENANT * 20, `enough calls in the window: ${r.s.calls}`);
    assert.equal(r.s.failed, 0, "no call fails, no IMDSv2 token is refused");
    assert.equal(r.s.wrong, 0, "no wrong credentials");
    for (const p of r.firstTries) {
      assert.equal(p.imds?.ok, true, `${p.pod}: first IMDS call ${JSON.stringify(p.imds)}`);
      assert.equal(
        p.container?.ok,
        true,
        `${p.pod}: first container-credentials call ${JSON.stringify(p.container)}`,
      );
    }
    // the steady pods' credentials and token validations were handed over: never asked again
    assert.equal(r.steadyAsked, 0, "the server was asked again for pods the old agent held");
  };

  it("helm upgrade that changes the agent's pod template: zero failed, zero wrong", async () => {
    const before = new Set((await agentPods()).map((p) => p.metadata!.uid!));
    const r = await runCase("helm-upgrade", async () => {
      const agent = (values.agent ?? {}) as Record<string, unknown>;
      suite!.helm.run(["upgrade", "keycutter", CHART_DIR, "--namespace", NS], {
        values: { ...values, agent: { ...agent, env: [{ name: "KEYCUTTER_RELEASE_NOTE", value: "2" }] } },
        timeoutMs: 300_000,
      });
      await waitDaemonSetRolledOut(node!, NS, "keycutter-agent");
    });
    const afterPods = await agentPods();
    assert.equal(afterPods.length, 1);
    assert.ok(!before.has(afterPods[0]!.metadata!.uid!), "the agent pod was replaced");
    assertPlanned(r);
    await cleanLatePods();
  });

  it("rollout restart (the template's restartedAt annotation): zero failed, zero wrong", async () => {
    const before = new Set((await agentPods()).map((p) => p.metadata!.uid!));
    const r = await runCase("restart", async () => {
      await apps().patchNamespacedDaemonSet(
        {
          name: "keycutter-agent",
          namespace: NS,
          body: {
            spec: {
              template: {
                metadata: {
                  annotations: { "kubectl.kubernetes.io/restartedAt": new Date().toISOString() },
                },
              },
            },
          },
        },
        setHeaderOptions("Content-Type", PatchStrategy.StrategicMergePatch),
      );
      await waitDaemonSetRolledOut(node!, NS, "keycutter-agent");
    });
    const afterPods = await agentPods();
    assert.ok(!before.has(afterPods[0]!.metadata!.uid!), "the agent pod was replaced");
    assertPlanned(r);
    await cleanLatePods();
  });

  it("SIGKILL of the agent: pods refused meanwhile, never the node's credentials; the window", async () => {
    const [pod] = await agentPods();
    const restarts = pod!.status?.containerStatuses?.[0]?.restartCount ?? 0;
    let killedAt = 0;
    const r = await runCase("crash", async () => {
      killedAt = Date.now();
      await killContainerProcess(node!, pod!.metadata!.name!, "agent");
      await waitFor(
        "the kubelet restarted the agent and it is Ready",
        async () => {
          const p = await core().readNamespacedPod({ name: pod!.metadata!.name!, namespace: NS });
          const st = p.status?.containerStatuses?.[0];
          return (st?.restartCount ?? 0) > restarts && st?.ready === true;
        },
        { timeoutMs: 120_000, intervalMs: 200 },
      );
    });
    const readyAfterMs = Date.now() - killedAt;
    assert.equal(r.s.wrong, 0, "never the node's credentials, never another tenant's");
    const failures = [...r.window.values()].flatMap((p) => p.lines.filter((l) => !l.ok));
    const kinds = [...new Set(failures.map((l) => l.err))];
    for (const l of failures)
      assert.match(
        l.err ?? "",
        /ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET|other side closed|TimeoutError|aborted| (401|404|503)$/,
        `fail closed: ${JSON.stringify(l)}`,
      );
    // the window: the kill to each steady poller's first success after its first failure
    const windows = [...r.window.values()].map(({ lines }) => {
      const firstFail = lines.find((l) => !l.ok && l.t >= killedAt);
      if (!firstFail) return 0;
      return (lines.find((l) => l.ok && !l.tokenRefused && l.t > firstFail.t)?.t ?? r.t1) - killedAt;
    });
    console.log(
      `# crash: pods refused for at most ${Math.max(...windows)} ms after the SIGKILL (agent Ready again after ${readyAfterMs} ms); failures ${failures.length}: ${JSON.stringify(kinds)}`,
    );
    await cleanLatePods();
  });
});
