// Benchmark 3 (and 4, agent side): a pod-start storm on one node against the whole real system —
// etcd + kube-apiserver with the CRDs and the chart's RBAC, moto as STS, Redis, keycutter server
// replicas (real processes, TLS) and the real agent process, authenticated with a token bound to
// its own pod on the node. Pods use loopback addresses (127.0.0.x) so that one client process can
// speak from every pod's address without spawning 250 processes on a 2-core machine.
//
// The storm: all pods exist Pending (no IP), then the "kubelet" sets every pod's IP at once; each
// pod's SDK-like client (fresh connection, PUT token, GET role, GET credentials, 1 s timeout, no
// retry) starts the moment its IP update returns. Failed clients keep retrying every 50 ms to find
// when every pod finally has credentials.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { System } from "../test/e2e/system.ts";
import { agentOnNode } from "../test/harness/world.ts";
import { metricSum, podStatusPatcher, pool, percentile, sleep, type SdkResult } from "./lib/env.ts";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { NODE, ROOT } from "../test/harness/index.ts";
import {
  cpuMs,
  deployedApp,
  importWeightMiB,
  rssBytes,
  runLoadgen,
  startAgentProcess,
  type AgentProc,
} from "./lib/procs.ts";
import { createEnv } from "./lib/env.ts";
import { onAbort } from "./lib/abort.ts";
import { startContractServer } from "./lib/contract-server.ts";
import { patchedAgentMain } from "./lib/patched.ts";
import { setUpStormTenant } from "./lib/storm-policy.ts";
import type { Cluster, Kubelet } from "../test/harness/index.ts";

export interface StormParams {
  pods: number;
  /** "real": the whole system with moto; "contract": the agent against the contract test server. */
  server: "real" | "contract";
  /** Run the agent from src/ with bench/patches/*.patch applied (before/after of a proposed fix). */
  patchedAgent?: boolean;
  /** Extra env of the agent process (e.g. NODE_OPTIONS other than the chart's). */
  agentEnv?: NodeJS.ProcessEnv;
  /** contract mode: the test server answers after this delay (a stand-in for STS latency). */
  contractDelayMs?: number;
  /** Server replicas. */
  replicas: number;
  /** Extra server flags, e.g. a higher --sts-rate. */
  serverArgs?: string[];
  /** After the storm: sustained load from every pod for the agent-memory figure. */
  memory?: { durationMs: number; sampleEveryMs: number; connections: number; ratePerConnection: number };
}

/** The storm's outcome, as storm.ts and storm-dnat.ts both report it. */
export interface StormSummary {
  pods: number;
  allServedMs: number;
  /** Pods still without credentials after 60 s of retrying. */
  neverServed: number;
  firstTryOk: number;
  clientErrors: number;
  slowestFirstTryMs: number;
  p50FirstTryMs: number;
  p99FirstTryMs: number;
  slowestUntilServedMs: number;
  withinOneSecond: number;
  ipUpdatesSpreadMs: number;
  stsCalls: number;
  agentFetches: number;
}

export interface StormResult {
  params: StormParams;
  server: string;
  summary: StormSummary;
  errorSamples: string[];
  memory?: {
    summary: {
      pods: number;
      seconds: number;
      rssStartMiB: number;
      rssEndMiB: number;
      rssMaxMiB: number;
      /** RSS change over the second half of the run: ~0 when flat. */
      growthSecondHalfMiB: number;
      sequences: number;
      errors: number;
      cpuPct: number;
    };
    samples: Array<{ t: number; rssMiB: number }>;
    /** RSS of a process that only imported the agent's modules: the code's weight, no pods. */
    importWeightMiB: { emptyNode: number; agentCompiled: number; agentSource: number };
  };
  notes: string[];
}

const NODE_NAME = "storm-node";
const NS = "storm";

export async function benchStorm(p: StormParams): Promise<StormResult> {
  if (p.pods < 1 || p.pods > 250) throw new Error("pods: 1..250");
  const notes: string[] = [];
  let kubelet: Kubelet;
  let cluster: Cluster;
  let agent: AgentProc | undefined;
  let stsCalls: () => Promise<number>;
  let serverLabel: string;
  const cleanup: Array<() => Promise<unknown>> = [];
  // one stop, whether the run ends or is interrupted
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      await agent?.stop();
      for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
    })());
  const unregister = onAbort(stop);
  let agentMain: string | undefined;
  if (p.patchedAgent) {
    const pa = patchedAgentMain();
    notes.push(...pa.notes);
    if (!pa.main) throw new Error("no agent patch applies: nothing to compare");
    agentMain = pa.main;
  }
  try {
    if (p.server === "real") {
      const sys = new System({
        nodes: [],
        serverReplicas: p.replicas,
        redis: true,
        serverArgs: p.serverArgs,
      });
      cleanup.push(() => sys.stop());
      await sys.start();
      kubelet = sys.kubelet;
      cluster = sys.cluster;
      agent = await startRealAgent(sys, agentMain, p.agentEnv);
      const urls = sys.servers.map((s) => `http://127.0.0.1:${s.opsPort}/metrics`);
      stsCalls = async () =>
        (await Promise.all(urls.map((u) => metricSum(u, "keycutter_server_sts_requests_total")))).reduce(
          (x, y) => x + y,
          0,
        );
      serverLabel = `real keycutter server ×${p.replicas} (TLS, Redis) + moto STS`;
      notes.push(`server flags: ${(p.serverArgs ?? []).join(" ") || "defaults"}`);
    } else {
      const env = await createEnv();
      cleanup.push(() => env.close());
      kubelet = env.kubelet;
      cluster = env.cluster;
      const creds = await startContractServer({ delayMs: p.contractDelayMs ?? 0 });
      cleanup.push(() => creds.close());
      await kubelet.createNode(NODE_NAME, "127.0.0.1");
      await kubelet.createServiceAccount(NS, "app");
      const tokenFile = join(env.dir, "agent.token");
      writeFileSync(tokenFile, "bench");
      agent = await startAgentProcess({
        nodeName: NODE_NAME,
        kubeconfig: env.cluster.kubeconfigPath,
        serverUrl: creds.url,
        tokenFile,
        dir: env.dir,
        extraArgs: ["--no-hook"],
        ...(agentMain ? { main: agentMain } : {}),
      });
      stsCalls = async () => creds.calls;
      serverLabel = `contract test server (answers after ${p.contractDelayMs ?? 0} ms)`;
    }
    // counted from before the pods exist: an agent may fetch as soon as a pod is bound
    const stsBefore = await stsCalls();
    const opsUrl = `http://127.0.0.1:${agent.opsPort}/metrics`;
    const fetchesBefore = await metricSum(opsUrl, "keycutter_agent_credential_fetches_total");
    // pods exist, Pending, before the storm
    const names = Array.from({ length: p.pods }, (_, i) => `s-${i}`);
    await pool(names, 16, (name) =>
      kubelet.createPod({ namespace: NS, name, nodeName: NODE_NAME, serviceAccountName: "app" }),
    );
    await sleep(1000);

    // the clients run in their own process; the "kubelet" patches every pod's status at once
    const clients = spawn(
      NODE,
      [join(ROOT, "bench", "lib", "storm-client-main.ts"), "127.0.0.1", String(agent.port)],
      {
        stdio: ["pipe", "pipe", "inherit"],
      },
    );
    const lines: string[] = [];
    const gotLine = new Set<(l: string) => void>();
    createInterface({ input: clients.stdout! }).on("line", (l) => {
      lines.push(l);
      for (const f of gotLine) f(l);
    });
    const exited = new Promise<void>((r) => clients.on("exit", () => r()));
    const ready = new Promise<void>((r) => gotLine.add((l) => l.includes('"ready"') && r()));
    clients.stdin!.write("ping\n");
    await ready;
    const patcher = podStatusPatcher(cluster);
    const t0 = performance.now();
    const patchDone: number[] = [];
    await pool(names, p.pods, async (name, i) => {
      const ip = `127.0.0.${2 + i}`;
      await patcher.patch(NS, name, ip, "127.0.0.1");
      patchDone.push(performance.now() - t0);
      clients.stdin!.write(`${i} ${ip}\n`);
    });
    clients.stdin!.write("end\n");
    await exited;
    patcher.close();
    const rows = lines
      .filter((l) => l.startsWith('{"i"'))
      .map(
        (l) =>
          JSON.parse(l) as {
            i: number;
            ipAt: number;
            first: SdkResult;
            untilServed: number;
            servedAt: number;
          },
      );
    if (rows.length !== p.pods) throw new Error(`storm clients reported ${rows.length} of ${p.pods} pods`);
    const c0 = Math.min(...rows.map((r) => r.ipAt));
    // from the first IP update to the last pod served (client clock)
    const allServedMs = Math.max(...rows.map((r) => r.servedAt)) - c0;
    await sleep(500);
    const stsAfter = await stsCalls();
    const fetchesAfter = await metricSum(opsUrl, "keycutter_agent_credential_fetches_total");
    const firstMs = rows.map((r) => r.first.ms).sort((a, b) => a - b);
    const errs = rows.filter((r) => !r.first.ok);
    const ips = patchDone;
    const keys = new Set(rows.filter((r) => r.first.ok).map((r) => r.first.accessKeyId));
    const okCount = rows.filter((r) => r.first.ok).length;
    if (keys.size !== okCount)
      notes.push(`distinct access keys: ${keys.size} for ${okCount} pods served on the first try (sharing!)`);
    else if (okCount)
      notes.push(`each pod served on the first try got its own credentials (${keys.size} keys)`);

    const result: StormResult = {
      params: p,
      server: serverLabel,
      summary: {
        pods: p.pods,
        allServedMs: Math.round(allServedMs),
        neverServed: rows.filter((r) => r.servedAt < 0).length,
        firstTryOk: rows.length - errs.length,
        clientErrors: errs.length,
        slowestFirstTryMs: Math.round(firstMs[firstMs.length - 1]!),
        p50FirstTryMs: Math.round(percentile(firstMs, 0.5)),
        p99FirstTryMs: Math.round(percentile(firstMs, 0.99)),
        slowestUntilServedMs: Math.round(Math.max(...rows.map((r) => r.untilServed))),
        withinOneSecond: rows.filter((r) => r.untilServed >= 0 && r.untilServed <= 1000).length,
        ipUpdatesSpreadMs: Math.round(Math.max(...ips) - Math.min(...ips)),
        stsCalls: stsAfter - stsBefore,
        agentFetches: fetchesAfter - fetchesBefore,
      },
      errorSamples: [...new Set(errs.map((r) => r.first.error ?? ""))].slice(0, 5),
      notes,
    };

    if (p.memory) {
      const m = p.memory;
      const ipsAll = names.map((_, i) => `127.0.0.${2 + i}`);
      const samples: Array<{ t: number; rssMiB: number }> = [];
      const mib = (b: number) => Math.round((b / 1048576) * 10) / 10;
      const start = Date.now();
      const cpu0 = cpuMs(agent.proc.pid);
      samples.push({ t: 0, rssMiB: mib(rssBytes(agent.proc.pid)) });
      const timer = setInterval(() => {
        samples.push({ t: Math.round((Date.now() - start) / 1000), rssMiB: mib(rssBytes(agent!.proc.pid)) });
      }, m.sampleEveryMs);
      // the default per-pod rate limit (50/s) stays on: the load spreads over every pod's address
      const load = await runLoadgen({
        host: "127.0.0.1",
        port: agent.port,
        connections: m.connections,
        durationMs: m.durationMs,
        warmupMs: 0,
        localAddresses: ipsAll,
        ratePerConnection: m.ratePerConnection,
      });
      clearInterval(timer);
      const cpu = cpuMs(agent.proc.pid) - cpu0;
      samples.push({ t: Math.round((Date.now() - start) / 1000), rssMiB: mib(rssBytes(agent.proc.pid)) });
      result.memory = {
        summary: {
          pods: p.pods,
          seconds: Math.round((Date.now() - start) / 1000),
          rssStartMiB: samples[0]!.rssMiB,
          rssEndMiB: samples[samples.length - 1]!.rssMiB,
          rssMaxMiB: Math.max(...samples.map((s) => s.rssMiB)),
          growthSecondHalfMiB:
            Math.round(
              (samples[samples.length - 1]!.rssMiB - samples[Math.floor((samples.length - 1) / 2)]!.rssMiB) *
                10,
            ) / 10,
          sequences: load.sequences,
          errors: load.errors,
          cpuPct: Math.round((cpu / (Date.now() - start)) * 1000) / 10,
        },
        samples,
        importWeightMiB: {
          emptyNode: importWeightMiB([]),
          agentCompiled: importWeightMiB([join(deployedApp(), "dist", "cli", "commands", "agent.js")]),
          agentSource: importWeightMiB([join(ROOT, "src", "cli", "commands", "agent.ts")]),
        },
      };
      if (load.errors) notes.push(`memory run errors: ${load.errorSamples.slice(0, 3).join("; ")}`);
    }
    return result;
  } finally {
    unregister();
    await stop();
  }
}

/** The node and its agent, as System.addNode does, but listening on loopback. */
async function startRealAgent(
  sys: System,
  main: string | undefined,
  env: NodeJS.ProcessEnv | undefined,
): Promise<AgentProc> {
  await setUpStormTenant(sys, "storm", NS);

  // the node and its agent, as System.addNode does, but listening on loopback
  const identity = await agentOnNode(sys, NODE_NAME, "127.0.0.1");
  const apiToken = await identity.token([sys.cluster.issuer]);
  const tokenFile = await identity.writeToken(join(sys.dir, "agent.token"));
  const agent = await startAgentProcess({
    nodeName: NODE_NAME,
    kubeconfig: sys.cluster.kubeconfigFor("127.0.0.1", apiToken),
    serverUrl: sys.serverUrl,
    serverCaFile: sys.pki.caFile,
    tokenFile,
    dir: sys.dir,
    extraArgs: ["--no-hook"],
    ...(main ? { main } : {}),
    ...(env ? { env } : {}),
  });

  return agent;
}
