// One command for every benchmark figure: `npm run bench` (full) or `npm run bench:smoke`.
// Prints a table and writes JSON to bench/results/ (latest.json and a timestamped copy).
//   node bench/run.ts [--smoke] [--only=hotpath,dnat,storm,storm-contract,storm-dnat,memory,scale,flood] [--out=FILE]
//     [--no-kube2iam] [--no-fix] [--rounds=N] [--duration-ms=N] [--storm-pods=N] [--memory-ms=N]
//     [--storm-dnat-pods=N] [--flood-phase-ms=N] [--flood-junk-rate=N]
//     [--scale-steps=10000,50000,100000] [--scale-budget-ms=N] [--keep-from=EARLIER.json]
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { ROOT } from "../test/harness/index.ts";
import { createEnv } from "./lib/env.ts";
import { benchHotpath, type HotpathParams, type HotpathResult } from "./hotpath.ts";
import { benchStorm, type StormParams, type StormResult } from "./storm.ts";
import { benchDnat, type DnatParams, type DnatResult } from "./dnat.ts";
import { patchedAgentMain } from "./lib/patched.ts";
import { benchScale, type ScaleParams, type ScaleResult } from "./scale.ts";
import { benchStormDnat, type StormDnatParams, type StormDnatResult } from "./storm-dnat.ts";
import { installAbortHandlers } from "./lib/abort.ts";
import { benchFlood, type FloodParams, type FloodResult } from "./flood.ts";

installAbortHandlers();

const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const a = argv.find((x) => x === `--${name}` || x.startsWith(`--${name}=`));
  if (a === undefined) return undefined;
  return a.includes("=") ? a.slice(a.indexOf("=") + 1) : "true";
};
const smoke = flag("smoke") !== undefined;
const only = new Set(
  (flag("only") ?? "hotpath,dnat,storm,storm-contract,storm-fix,storm-dnat,memory,scale,flood").split(","),
);
const num = (name: string, def: number): number => Number(flag(name) ?? def);

const hotParams: HotpathParams = smoke
  ? { pods: 4, concurrency: [2], durationMs: 500, warmupMs: 200, rounds: 1, kube2iam: false }
  : {
      pods: 250,
      concurrency: [1, 4, 16, 64],
      durationMs: num("duration-ms", 4000),
      warmupMs: 1000,
      rounds: num("rounds", 3),
      // moderate (250 pods' SDKs re-reading credentials often: 160 sequences/s) and heavy (1600/s)
      paced: [
        { connections: 16, rate: 10 },
        { connections: 16, rate: 100 },
      ],
      extraAgents: flag("no-fix") === undefined ? "auto" : undefined,
      v8DefaultsAgent: flag("no-v8-defaults") === undefined,
      nodeHttpOnlyAgent: true,
      kube2iam: flag("no-kube2iam") === undefined,
    };
const stormParams: StormParams = smoke
  ? {
      pods: 10,
      server: "real",
      replicas: 1,
      memory: { durationMs: 2000, sampleEveryMs: 500, connections: 4, ratePerConnection: 10 },
    }
  : {
      pods: num("storm-pods", 250),
      server: "real",
      replicas: 2,
      memory: only.has("memory")
        ? {
            durationMs: num("memory-ms", 300_000),
            sampleEveryMs: 10_000,
            // one connection per pod at 4 sequences/s: 1000 sequences/s on the node, under the per-pod limit
            connections: 250,
            ratePerConnection: 4,
          }
        : undefined,
    };
// the same storm with a credential service that answers in a fixed time: the agent's own share
const stormContractParams: StormParams = {
  pods: smoke ? 10 : num("storm-pods", 250),
  server: "contract",
  contractDelayMs: 100,
  replicas: 0,
};
const dnatParams: DnatParams = smoke
  ? { connections: 2, durationMs: 500, warmupMs: 200, rounds: 1 }
  : { connections: 16, durationMs: num("duration-ms", 4000), warmupMs: 1000, rounds: num("rounds", 3) };
// the storm with every pod in its own network namespace, through the agent's DNAT hook
const stormDnatParams: StormDnatParams = smoke
  ? { pods: 10, replicas: 1 }
  : { pods: num("storm-dnat-pods", 250), replicas: 2 };
const scaleParams: ScaleParams = smoke
  ? { steps: [30], issue: 5 }
  : {
      steps: (flag("scale-steps") ?? "10000,50000,100000").split(",").map(Number),
      issue: 200,
      budgetMs: num("scale-budget-ms", 25 * 60_000),
    };
// agent authentication with and without a hostile client flooding junk tokens, in the same run
const floodParams: FloodParams = smoke
  ? { agents: 2, legitPerSecond: 10, phaseMs: 1500, junkPerSecond: 200, junkConnections: 16 }
  : {
      agents: 8,
      legitPerSecond: 20,
      phaseMs: num("flood-phase-ms", 15_000),
      junkPerSecond: num("flood-junk-rate", 1000),
      junkConnections: 512,
    };

interface Report {
  startedAt: string;
  finishedAt?: string;
  smoke: boolean;
  machine: {
    cpus: number;
    model: string;
    memGiB: number;
    loadAvgStart: number[];
    loadAvgEnd?: number[];
    node: string;
    /** How late a thread wakes from a 2 ms sleep, in µs: the machine's own latency floor. */
    wakeLatencyUs?: { samples: number; p50: number; p99: number; max: number };
  };
  hotpath?: HotpathResult;
  storm?: StormResult;
  stormContract?: StormResult;
  stormFix?: StormResult;
  stormDnat?: StormDnatResult;
  dnat?: DnatResult;
  scale?: ScaleResult;
  flood?: FloodResult;
  errors: string[];
}

const report: Report = {
  startedAt: new Date().toISOString(),
  smoke,
  machine: {
    cpus: cpus().length,
    model: cpus()[0]?.model ?? "",
    memGiB: Math.round(totalmem() / 2 ** 30),
    loadAvgStart: loadavg().map((x) => Math.round(x * 100) / 100),
    node: process.version,
  },
  errors: [],
};

/**
 * Sleeps 2 ms `n` times (a futex wait, no event loop) and reports how late each wake-up was.
 * On a virtual machine an idle vCPU can take milliseconds to run again; any request that finds
 * both sides asleep pays it, which puts a floor under every p99 measured here.
 */
function wakeLatency(n: number): NonNullable<Report["machine"]["wakeLatencyUs"]> {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  const late: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    Atomics.wait(cell, 0, 0, 2);
    late.push((performance.now() - t0 - 2) * 1000);
  }
  late.sort((a, b) => a - b);
  const q = (p: number): number => Math.round(late[Math.min(n - 1, Math.floor(p * n))]!);
  return { samples: n, p50: q(0.5), p99: q(0.99), max: Math.round(late[n - 1]!) };
}
report.machine.wakeLatencyUs = wakeLatency(smoke ? 50 : 2000);

function table(rows: Array<Record<string, string | number>>): string {
  if (rows.length === 0) return "";
  const cols = Object.keys(rows[0]!);
  const w = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? "").length)));
  const line = (vals: string[]): string => vals.map((v, i) => v.padStart(w[i]!)).join("  ");
  return [
    line(cols),
    line(w.map((n) => "-".repeat(n))),
    ...rows.map((r) => line(cols.map((c) => String(r[c] ?? "")))),
  ].join("\n");
}

// each section gets its own cluster so that one's pods do not weigh on the next
type Env = Awaited<ReturnType<typeof createEnv>>;
async function withEnv<T>(
  name: string,
  fn: (env: Env) => Promise<T>,
  needEnv = true,
): Promise<T | undefined> {
  if (!only.has(name)) return undefined;
  const t0 = Date.now();
  console.error(`\n== ${name} …`);
  let env: Env | undefined;
  try {
    if (needEnv) env = await createEnv();
    const r = await fn(env as Env);
    console.error(`== ${name} done in ${Math.round((Date.now() - t0) / 1000)} s`);
    return r;
  } catch (e) {
    const msg = `${name}: ${(e as Error).stack ?? e}`;
    console.error(msg);
    report.errors.push(msg.slice(0, 3000));
    return undefined;
  } finally {
    await env?.close();
  }
}

report.hotpath = await withEnv("hotpath", (env) => benchHotpath(env, hotParams));
// the storm brings up the whole system itself (servers, Redis, moto); memory runs on it afterwards
report.dnat = await withEnv("dnat", () => benchDnat(dnatParams), false);
report.storm = await withEnv("storm", () => benchStorm(stormParams), false);
report.stormContract = await withEnv("storm-contract", () => benchStorm(stormContractParams), false);
// the same real storm with the proposed agent patches (bench/patches), when any still applies
report.stormFix =
  only.has("storm-fix") && patchedAgentMain().main !== undefined
    ? await withEnv(
        "storm-fix",
        () => benchStorm({ ...stormParams, memory: undefined, patchedAgent: true }),
        false,
      )
    : undefined;
report.stormDnat = await withEnv("storm-dnat", () => benchStormDnat(stormDnatParams), false);
report.scale = await withEnv("scale", () => benchScale(scaleParams), false);
report.flood = await withEnv("flood", () => benchFlood(floodParams), false);
report.finishedAt = new Date().toISOString();
// sections not run this time can be carried over from an earlier report (said so in the JSON)
const keepFrom = flag("keep-from");
if (keepFrom) {
  const old = JSON.parse(readFileSync(keepFrom, "utf8")) as Report;
  const r = report as unknown as Record<string, unknown>;
  const o = old as unknown as Record<string, unknown>;
  const carried: string[] = [];
  // a patched-agent storm means nothing once its patches have landed (none apply any more)
  const sections = ["hotpath", "dnat", "storm", "stormContract", "stormDnat", "scale", "flood"];
  if (patchedAgentMain().main !== undefined) sections.push("stormFix");
  for (const k of sections)
    if (r[k] === undefined && o[k] !== undefined) {
      r[k] = o[k];
      carried.push(k);
    }
  (report as Report & { carriedOver?: unknown }).carriedOver = {
    from: keepFrom,
    startedAt: old.startedAt,
    sections: carried,
  };
}
report.machine.loadAvgEnd = loadavg().map((x) => Math.round(x * 100) / 100);

const out = [];
const m = report.machine;
out.push(
  `\nMachine: ${m.cpus} CPUs, load ${m.loadAvgStart.join("/")} → ${m.loadAvgEnd?.join("/")}; ` +
    `a 2 ms sleep wakes late by p50 ${m.wakeLatencyUs?.p50} µs, p99 ${m.wakeLatencyUs?.p99} µs, max ${m.wakeLatencyUs?.max} µs`,
);
if (report.hotpath) {
  out.push("\nHot path: cached IMDSv2 sequence (PUT token, GET role, GET credentials), loopback, keep-alive");
  out.push(
    table(
      report.hotpath.summary.map((s) => ({
        load: s.label,
        target: s.target,
        "seq/s": s.seqPerSec,
        "req/s": s.reqPerSec,
        "p50 µs": s.p50Us,
        "p99 µs": s.p99Us,
        "max µs": s.maxUs,
        "× baseline": s.ratioVsBaseline,
        "cpu µs/seq": s.cpuUsPerSeq,
        "of it kernel": s.sysUsPerSeq,
        errors: s.errors,
      })),
    ),
  );
  for (const n of report.hotpath.notes) out.push(`  note: ${n}`);
}
if (report.dnat) {
  out.push(
    `\nHot path through the DNAT hook, from a pod network namespace (c=${report.dnat.params.connections})`,
  );
  out.push(
    table(
      report.dnat.summary.map((s) => ({
        target: s.target,
        "seq/s": s.seqPerSec,
        "p50 µs": s.p50Us,
        "p99 µs": s.p99Us,
        "max µs": s.maxUs,
        "× baseline": s.ratioVsBaseline,
        errors: s.errors,
      })),
    ),
  );
  for (const n of report.dnat.notes) out.push(`  note: ${n}`);
}
for (const st of [report.storm, report.stormContract, report.stormFix]) {
  if (!st) continue;
  out.push(`\nPod-start storm: ${st.params.pods} pods on one node at once (${st.server})`);
  out.push(table([st.summary as unknown as Record<string, string | number>]));
  for (const e of st.errorSamples) out.push(`  client error: ${e}`);
  for (const n of st.notes) out.push(`  note: ${n}`);
}
if (report.stormDnat) {
  const st = report.stormDnat;
  out.push(
    `\nPod-start storm through the DNAT hook: ${st.params.pods} pods, each in its own network namespace`,
  );
  out.push(table([st.summary as unknown as Record<string, string | number>]));
  for (const e of st.errorSamples) out.push(`  client error: ${e}`);
  for (const n of st.notes) out.push(`  note: ${n}`);
}
if (report.storm?.memory) {
  out.push(`\nAgent memory: ${report.storm.params.pods} pods, sustained load from every pod`);
  out.push(table([report.storm.memory.summary as unknown as Record<string, string | number>]));
  const w = report.storm.memory.importWeightMiB;
  if (w) {
    out.push(
      `  RSS after only importing (MiB): empty node ${w.emptyNode}, agent modules compiled ${w.agentCompiled}, through type stripping ${w.agentSource}`,
    );
  }
}
if (report.scale) {
  out.push("\nServer at scale: pods in the apiserver, server RSS and issuance rate");
  out.push(table(report.scale.steps as unknown as Array<Record<string, string | number>>));
  for (const n of report.scale.notes) out.push(`  note: ${n}`);
}
if (report.flood) {
  const f = report.flood;
  out.push(
    `\nAgent authentication (fresh token, real TokenReview) without and with a junk-token flood (${f.params.junkPerSecond}/s target)`,
  );
  out.push(
    table(
      f.phases.map((ph) => ({
        phase: ph.phase,
        requests: ph.requests,
        "p50 ms": ph.p50Ms,
        "p99 ms": ph.p99Ms,
        "max ms": ph.maxMs,
        errors: ph.errors,
        TokenReviews: ph.tokenReviews,
      })),
    ),
  );
  out.push(`  flood / quiet: p50 ×${f.ratio.p50}, p99 ×${f.ratio.p99}`);
  out.push(
    `  junk: ${f.junk.sent} sent, ${f.junk.achievedPerSecond}/s achieved, answers ${JSON.stringify(f.junk.statuses)}`,
  );
  for (const n of f.notes) out.push(`  note: ${n}`);
}
if (report.errors.length) out.push(`\nERRORS:\n${report.errors.join("\n")}`);
console.log(out.join("\n"));

const dir = join(ROOT, "bench", "results");
mkdirSync(dir, { recursive: true });
const file =
  flag("out") ?? join(dir, smoke ? "smoke.json" : `bench-${report.startedAt.replace(/[:.]/g, "-")}.json`);
writeFileSync(file, JSON.stringify(report, null, 2) + "\n");
if (!smoke && flag("out") === undefined)
  writeFileSync(join(dir, "latest.json"), JSON.stringify(report, null, 2) + "\n");
console.log(`\nJSON: ${file}`);
process.exit(report.errors.length ? 1 : 0);
