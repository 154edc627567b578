// Benchmark 1, second variant: the same cached IMDSv2 sequence from inside a pod's network
// namespace, through the agent's real iptables DNAT hook (169.254.169.254:80 → agent), on the
// whole real system (System from test/e2e: servers, Redis, moto, an agent in its node namespace).
// Side by side from the same pod namespace: the bare baseline in the node namespace (routed, no
// DNAT) and the agent through the hook. (The agent addressed directly at node-ip:8180 is no longer
// a target: the hook refuses connections to the pod-facing ports that did not come through its DNAT.) The load generator runs inside the pod namespace (`ip netns exec`).
import { System } from "../test/e2e/system.ts";
import type { ManagedProcess } from "../test/harness/index.ts";
import { NODE, ROOT } from "../test/harness/index.ts";
import { allowBenchRole } from "./lib/storm-policy.ts";
import { join } from "node:path";
import { median, sleep } from "./lib/env.ts";
import { runLoadgen } from "./lib/procs.ts";
import { onAbort } from "./lib/abort.ts";
import type { LoadResult } from "./lib/loadgen.ts";

export interface DnatParams {
  connections: number;
  durationMs: number;
  warmupMs: number;
  rounds: number;
}

export interface DnatResult {
  params: DnatParams;
  summary: Array<{
    target: string;
    seqPerSec: number;
    p50Us: number;
    p99Us: number;
    maxUs: number;
    ratioVsBaseline: number;
    errors: number;
  }>;
  runs: Array<{ target: string; round: number; load: LoadResult }>;
  notes: string[];
}

export async function benchDnat(p: DnatParams): Promise<DnatResult> {
  const sys = new System({
    nodes: ["dnat-node"],
    serverReplicas: 1,
    redis: true,
    // every connection comes from one pod: keep the limiter in the path but out of the way
    agentArgs: ["--rate-limit-rps", "1000000000", "--rate-limit-burst", "1000000000"],
  });
  let baseline: ManagedProcess | undefined;
  // one stop, whether the run ends or is interrupted
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      await baseline?.stop();
      await sys.stop();
    })());
  const unregister = onAbort(stop);
  try {
    await sys.start();
    const roleArn = await allowBenchRole(sys, "dnat", ["dnat"]);
    await sys.kubelet.ensureNamespace("dnat");
    await sys.kubelet.createServiceAccount("dnat", "app");
    await sys.apply({
      apiVersion: "keycutter.dev/v1alpha1",
      kind: "AccessPolicy",
      metadata: { namespace: "dnat", name: "app" },
      spec: { podSelector: { serviceAccountName: "app" }, roleArn, durationSeconds: 3600 },
    });
    const pod = await sys.addPod("dnat-node", "dnat", "client", { serviceAccount: "app" });
    const agent = sys.agents.get("dnat-node")!;
    // credentials cached before measuring
    for (let i = 0; ; i++) {
      const r = await sys.imdsCredentials(pod);
      if (r.status === 200) break;
      if (i > 60) throw new Error(`pod never served through the hook: ${r.status} ${r.body}`);
      await sleep(500);
    }
    const nodeIp = agent.node.ip;
    const basePort = 18_555;
    baseline = sys.net.spawn(
      agent.node.netns,
      NODE,
      [join(ROOT, "bench", "lib", "baseline-main.ts"), nodeIp, String(basePort)],
      { name: "baseline" },
    );
    await baseline.waitForLine(/baseline listening/, 15_000);

    const targets = [
      { name: "baseline (node netns, routed)", host: nodeIp, port: basePort, role: undefined },
      { name: "keycutter via DNAT hook", host: "169.254.169.254", port: 80, role: "dnat-role" },
    ];
    const runs: DnatResult["runs"] = [];
    for (let round = 0; round < p.rounds; round++) {
      const order = round % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) {
        const load = await runLoadgen(
          {
            host: t.host,
            port: t.port,
            connections: p.connections,
            durationMs: p.durationMs,
            warmupMs: p.warmupMs,
            ...(t.role ? { roleName: t.role } : {}),
          },
          pod.net.netns,
        );
        runs.push({ target: t.name, round, load });
      }
    }
    const summary = targets.map((t) => {
      const mine = runs.filter((r) => r.target === t.name);
      const ratios = mine.map((r) => {
        const b = runs.find((x) => x.round === r.round && x.target === targets[0]!.name)!;
        return b.load.sequencesPerSec ? r.load.sequencesPerSec / b.load.sequencesPerSec : 0;
      });
      return {
        target: t.name,
        seqPerSec: Math.round(median(mine.map((r) => r.load.sequencesPerSec))),
        p50Us: Math.round(median(mine.map((r) => r.load.sequence.p50Us))),
        p99Us: Math.round(median(mine.map((r) => r.load.sequence.p99Us))),
        maxUs: Math.round(Math.max(...mine.map((r) => r.load.sequence.maxUs))),
        ratioVsBaseline: Math.round(median(ratios) * 1000) / 1000,
        errors: mine.reduce((a, r) => a + r.load.errors, 0),
      };
    });
    return {
      params: p,
      summary,
      runs,
      notes: [
        "one pod namespace, all connections from the pod's IP (the agent's per-pod rate limit is raised for this run)",
      ],
    };
  } finally {
    unregister();
    await stop();
  }
}
