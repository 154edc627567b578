// Benchmark 1 (and 2): the cached IMDSv2 sequence from N concurrent keep-alive clients on
// loopback, against the real `keycutter agent` process, a bare node:http baseline and (when it
// is built) kube2iam, side by side in one run. Every pod has its own loopback address
// (127.0.0.x), so the agent resolves each client to a real pod from the apiserver's pod watch.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BenchEnv } from "./lib/env.ts";
import { median, pool, sdkFetch, sleep } from "./lib/env.ts";
import { startContractServer } from "./lib/contract-server.ts";
import {
  cpuSplitMs,
  rssBytes,
  runLoadgen,
  startAgentProcess,
  startBaseline,
  type Started,
} from "./lib/procs.ts";
import { ROLE_NAME } from "./lib/bodies.ts";
import type { LoadResult } from "./lib/loadgen.ts";
import { startKube2iam, kube2iamBinary } from "./lib/kube2iam.ts";
import { patchedAgentMain } from "./lib/patched.ts";

export interface HotpathParams {
  pods: number;
  concurrency: number[];
  durationMs: number;
  warmupMs: number;
  rounds: number;
  /** Paced run: connections × rate per connection (sequences/s), latency from intended start. */
  paced?: Array<{ connections: number; rate: number }>;
  kube2iam: boolean;
  /** Extra node flags for the agent process (e.g. --cpu-prof). */
  agentNodeArgs?: string[];
  /** CLI entry of the agent under test (default: the compiled build, as in the image). */
  agentMain?: string;
  /** Also run agents from these CLI entries (patched copies), side by side, for before/after.
   * "auto": src/ with bench/patches/*.patch applied, as "keycutter+fix". */
  extraAgents?:
    | Array<{ name: string; main?: string; env?: NodeJS.ProcessEnv; nodeArgs?: string[]; args?: string[] }>
    | "auto";
  /** Also run the same agent with its IMDS fast path off (every request through node:http). */
  nodeHttpOnlyAgent?: boolean;
  /** Also run the same agent with V8's default heap sizing (no NODE_OPTIONS from the chart). */
  v8DefaultsAgent?: boolean;
}

export interface TargetRun {
  target: string;
  round: number;
  load: LoadResult;
  /** Server CPU time per measured sequence (µs), warm-up included in the numerator pro rata. */
  serverCpuUsPerSeq: number;
  /** The kernel's share of it (system time), µs per sequence. */
  serverSysUsPerSeq: number;
  serverRssMiB: number;
}

export interface HotpathResult {
  params: HotpathParams;
  runs: Array<{ label: string; connections: number; rate?: number; runs: TargetRun[] }>;
  summary: Array<{
    label: string;
    target: string;
    seqPerSec: number;
    reqPerSec: number;
    p50Us: number;
    p99Us: number;
    maxUs: number;
    ratioVsBaseline: number;
    cpuUsPerSeq: number;
    sysUsPerSeq: number;
    errors: number;
  }>;
  notes: string[];
  /** Wall-clock ms: agent process spawned, first and last measured load. */
  timeline: { agentSpawnedAt: number; loadStartedAt: number; loadEndedAt: number };
}

const NS = "bench-hot";
const NODE_NAME = "bench-node";

export function podIp(i: number): string {
  return `127.0.0.${2 + i}`;
}

export async function benchHotpath(env: BenchEnv, p: HotpathParams): Promise<HotpathResult> {
  if (p.pods < 1 || p.pods > 250) throw new Error("pods: 1..250 (one loopback address each)");
  const notes: string[] = [];
  const { kubelet, cluster, dir } = env;
  await kubelet.createNode(NODE_NAME, "127.0.0.1").catch(() => undefined);
  await kubelet.createServiceAccount(NS, "app");
  const ips = Array.from({ length: p.pods }, (_, i) => podIp(i));
  await pool(ips, 16, (ip, i) =>
    kubelet.createPod({
      namespace: NS,
      name: `hot-${i}`,
      nodeName: NODE_NAME,
      serviceAccountName: "app",
      podIP: ip,
      hostIP: "127.0.0.1",
      annotations: { "iam.amazonaws.com/role": ROLE_NAME },
    }),
  );

  const creds = await startContractServer();
  env.defer(() => creds.close());
  const tokenFile = join(dir, "agent-token");
  writeFileSync(tokenFile, "bench-agent-token");
  const targets: Array<{ name: string; s: Started }> = [];
  const baseline = await startBaseline("127.0.0.1");
  env.defer(() => baseline.stop());
  targets.push({ name: "baseline", s: baseline });
  const agentSpawnedAt = Date.now();
  const agent = await startAgentProcess({
    nodeName: NODE_NAME,
    kubeconfig: cluster.kubeconfigPath,
    serverUrl: creds.url,
    tokenFile,
    dir,
    // the limiter stays in the path but never refuses: a benchmark client is far above a pod's rate
    extraArgs: ["--no-hook", "--rate-limit-rps", "1000000000", "--rate-limit-burst", "1000000000"],
    nodeArgs: p.agentNodeArgs,
    ...(p.agentMain ? { main: p.agentMain } : {}),
  });
  env.defer(() => agent.stop());
  targets.push({ name: "keycutter", s: agent });
  const agents = [agent];
  let extras = p.extraAgents === "auto" ? [] : [...(p.extraAgents ?? [])];
  if (p.extraAgents === "auto") {
    const pa = patchedAgentMain();
    notes.push(...pa.notes);
    if (pa.main) extras = [{ name: "keycutter+fix", main: pa.main }];
  }
  if (p.v8DefaultsAgent) extras.push({ name: "keycutter, V8 defaults", env: { NODE_OPTIONS: "" } });
  if (p.nodeHttpOnlyAgent) extras.push({ name: "keycutter, node:http only", args: ["--no-imds-fast-path"] });
  for (const extra of extras) {
    const patched = await startAgentProcess({
      nodeName: NODE_NAME,
      kubeconfig: cluster.kubeconfigPath,
      serverUrl: creds.url,
      tokenFile,
      dir,
      extraArgs: [
        "--no-hook",
        "--rate-limit-rps",
        "1000000000",
        "--rate-limit-burst",
        "1000000000",
        ...(extra.args ?? []),
      ],
      nodeArgs: [...(p.agentNodeArgs ?? []), ...(extra.nodeArgs ?? [])],
      ...(extra.main ? { main: extra.main } : {}),
      ...(extra.env ? { env: extra.env } : {}),
    });
    env.defer(() => patched.stop());
    targets.push({ name: extra.name, s: patched });
    agents.push(patched);
  }

  // every pod served (prefetched) before measuring
  const deadline = Date.now() + 60_000;
  for (const a of agents)
    for (;;) {
      const r = await pool(ips, 16, (ip) => sdkFetch("127.0.0.1", a.port, ip));
      const bad = r.filter((x) => !x.ok);
      if (bad.length === 0) break;
      if (Date.now() > deadline) throw new Error(`agent never served all pods: ${bad[0]!.error}`);
      await sleep(200);
    }
  notes.push(`credential-service calls to warm ${p.pods} pods: ${creds.calls}`);

  if (p.kube2iam) {
    const bin = kube2iamBinary();
    if (!bin) notes.push("kube2iam: binary not built (.cache/bench/kube2iam/kube2iam missing); skipped");
    else {
      try {
        const k = await startKube2iam(env, { nodeName: NODE_NAME, metadataPort: baseline.port, pods: ips });
        env.defer(() => k.stop());
        targets.push({ name: "kube2iam", s: k });
        notes.push(...k.notes);
      } catch (e) {
        notes.push(`kube2iam: could not run: ${(e as Error).message.slice(0, 500)}`);
      }
    }
  }

  const runs: HotpathResult["runs"] = [];
  const loadStartedAt = Date.now();
  const settings: Array<{ label: string; connections: number; rate?: number }> = p.concurrency.map((c) => ({
    label: `closed c=${c}`,
    connections: c,
  }));
  for (const pc of p.paced ?? [])
    settings.push({
      label: `paced ${pc.connections}x${pc.rate}/s`,
      connections: pc.connections,
      rate: pc.rate,
    });
  for (const st of settings) {
    const group: TargetRun[] = [];
    for (let round = 0; round < p.rounds; round++) {
      // alternate the order so that drifting background load hits every target alike
      const order = round % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) {
        const cpu0 = cpuSplitMs(t.s.proc.pid);
        const load = await runLoadgen({
          host: "127.0.0.1",
          port: t.s.port,
          connections: st.connections,
          durationMs: p.durationMs,
          warmupMs: p.warmupMs,
          localAddresses: ips,
          ratePerConnection: st.rate ?? 0,
          roleName: ROLE_NAME,
        });
        const cpu1 = cpuSplitMs(t.s.proc.pid);
        const cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system;
        const sys = cpu1.system - cpu0.system;
        const totalSeq = load.sequences * ((p.durationMs + p.warmupMs) / p.durationMs);
        group.push({
          target: t.name,
          round,
          load,
          serverCpuUsPerSeq: totalSeq ? Math.round((cpu * 1000) / totalSeq) : 0,
          serverSysUsPerSeq: totalSeq ? Math.round((sys * 1000) / totalSeq) : 0,
          serverRssMiB: Math.round((rssBytes(t.s.proc.pid) / 1048576) * 10) / 10,
        });
      }
    }
    runs.push({ ...st, runs: group });
  }

  const summary: HotpathResult["summary"] = [];
  for (const g of runs) {
    const base = g.runs.filter((r) => r.target === "baseline");
    for (const t of targets) {
      const mine = g.runs.filter((r) => r.target === t.name);
      const ratios = mine.map((r) => {
        const b = base.find((x) => x.round === r.round)!;
        return b.load.sequencesPerSec ? r.load.sequencesPerSec / b.load.sequencesPerSec : 0;
      });
      summary.push({
        label: g.label,
        target: t.name,
        seqPerSec: Math.round(median(mine.map((r) => r.load.sequencesPerSec))),
        reqPerSec: Math.round(median(mine.map((r) => r.load.requestsPerSec))),
        p50Us: Math.round(median(mine.map((r) => r.load.sequence.p50Us))),
        p99Us: Math.round(median(mine.map((r) => r.load.sequence.p99Us))),
        maxUs: Math.round(Math.max(...mine.map((r) => r.load.sequence.maxUs))),
        ratioVsBaseline: Math.round(median(ratios) * 1000) / 1000,
        cpuUsPerSeq: Math.round(median(mine.map((r) => r.serverCpuUsPerSeq))),
        sysUsPerSeq: Math.round(median(mine.map((r) => r.serverSysUsPerSeq))),
        errors: mine.reduce((a, r) => a + r.load.errors, 0),
      });
    }
  }
  return {
    params: p,
    runs,
    summary,
    notes,
    timeline: { agentSpawnedAt, loadStartedAt, loadEndedAt: Date.now() },
  };
}
