// Profiles the agent's hot path: runs the real agent process under `node --cpu-prof` while the
// load generator drives the cached IMDSv2 sequence, then prints the top self-time functions and a
// breakdown by area. With --with-baseline, also profiles the bare baseline server under the same
// load and prints both side by side in µs of CPU per sequence, function by function.
// `node bench/profile.ts [--duration-ms=N] [--connections=N] [--with-baseline] [--out=FILE]`
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ManagedProcess, NODE, ROOT, freePort } from "../test/harness/index.ts";
import { runLoadgen } from "./lib/procs.ts";
import { createEnv } from "./lib/env.ts";
import { installAbortHandlers } from "./lib/abort.ts";
import { benchHotpath } from "./hotpath.ts";

interface CpuProfile {
  nodes: Array<{
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    hitCount?: number;
  }>;
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  byArea: Record<string, number>;
  top: Array<{ fn: string; where: string; selfMs: number; pct: number }>;
}

function area(url: string, fn: string): string {
  if (fn === "(garbage collector)") return "gc";
  if (fn === "(idle)") return "idle";
  if (fn === "(program)") return "program (native, uncategorised)";
  // the agent runs compiled (.cache/bench/app-<hash>/dist/) unless a source entry is given
  if (/\/(src|dist)\/agent\//.test(url)) return "keycutter agent";
  if (/\/(src|dist)\//.test(url)) return "keycutter other";
  if (url.includes("prom-client")) return "prom-client";
  if (url.includes("pino") || url.includes("thread-stream")) return "pino";
  if (url.includes("@kubernetes")) return "k8s client";
  if (url.startsWith("node:_http") || url.startsWith("node:http")) return "node http";
  if (url.startsWith("node:net") || url.startsWith("node:stream") || url.startsWith("node:internal/stream"))
    return "node net/stream";
  if (url.startsWith("node:internal/crypto") || url.startsWith("node:crypto")) return "node crypto";
  if (url.startsWith("node:")) return "node other";
  if (url === "") return "native/builtin";
  return "other";
}

/** Self time per function over the samples taken between fromMs and toMs after the profile start. */
export function summarise(file: string, fromMs = 0, toMs = Infinity, topN = 25): ProfileSummary {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const hitsById = new Map<number, number>();
  const timeById = new Map<number, number>();
  let t = 0;
  let totalUs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    t += dt;
    if (t < fromMs * 1000 || t > toMs * 1000) continue;
    const id = p.samples[i]!;
    hitsById.set(id, (hitsById.get(id) ?? 0) + 1);
    timeById.set(id, (timeById.get(id) ?? 0) + dt);
    totalUs += dt;
  }
  const self = new Map<string, { fn: string; where: string; us: number; area: string }>();
  const byArea: Record<string, number> = {};
  for (const n of p.nodes) {
    const us = timeById.get(n.id) ?? 0;
    if (!us) continue;
    const cf = n.callFrame;
    const fn = cf.functionName || "(anonymous)";
    const where = cf.url
      ? `${cf.url.replace(/^file:\/\/.*?\/(src|dist|node_modules)\//, "$1/")}:${cf.lineNumber + 1}`
      : "";
    const key = `${fn}@${where}`;
    const e = self.get(key) ?? { fn, where, us: 0, area: area(cf.url, fn) };
    e.us += us;
    self.set(key, e);
    byArea[e.area] = (byArea[e.area] ?? 0) + us;
  }
  const busyUs = totalUs - (byArea.idle ?? 0);
  const top = [...self.values()]
    .filter((e) => e.area !== "idle")
    .sort((a, b) => b.us - a.us)
    .slice(0, topN)
    .map((e) => ({
      fn: e.fn,
      where: e.where,
      selfMs: Math.round(e.us / 100) / 10,
      pct: Math.round((e.us / busyUs) * 1000) / 10,
    }));
  const areas: Record<string, number> = {};
  for (const [k, v] of Object.entries(byArea).sort((a, b) => b[1] - a[1]))
    areas[k] = k === "idle" ? Math.round(v / 1000) : Math.round((v / busyUs) * 1000) / 10;
  return { totalMs: Math.round(totalUs / 1000), byArea: areas, top };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (n: string, d: string): string =>
    process.argv.find((a) => a.startsWith(`--${n}=`))?.split("=")[1] ?? d;
  const dir = join(ROOT, ".cache", "bench", "prof", String(Date.now()));
  mkdirSync(dir, { recursive: true });
  installAbortHandlers();
  const env = await createEnv();
  let result;
  try {
    result = await benchHotpath(env, {
      pods: 50,
      concurrency: [Number(arg("connections", "16"))],
      durationMs: Number(arg("duration-ms", "8000")),
      warmupMs: 1000,
      rounds: 1,
      kube2iam: false,
      agentNodeArgs: ["--cpu-prof", `--cpu-prof-dir=${dir}`, "--cpu-prof-interval=200"],
      ...(arg("agent-main", "") ? { agentMain: arg("agent-main", "") } : {}),
    });
  } finally {
    await env.close(); // stops the agent: the profile is written on exit
  }
  const f = readdirSync(dir).find((x) => x.endsWith(".cpuprofile"));
  if (!f) throw new Error(`no profile in ${dir}`);
  // only the samples taken while the load ran (not start-up, pod sync or warm-up)
  const tl = result.timeline;
  const s = summarise(
    join(dir, f),
    tl.loadStartedAt - tl.agentSpawnedAt + 1000,
    tl.loadEndedAt - tl.agentSpawnedAt,
  );
  console.log(JSON.stringify({ byArea: s.byArea }, null, 2));
  for (const t of s.top)
    console.log(`${String(t.pct).padStart(5)}%  ${t.selfMs.toFixed(1).padStart(8)} ms  ${t.fn}  ${t.where}`);
  for (const r of result.summary)
    console.log(
      `${r.target}: ${r.seqPerSec} seq/s, p99 ${r.p99Us} µs, ×baseline ${r.ratioVsBaseline}, cpu ${r.cpuUsPerSeq} µs/seq`,
    );
  const out = arg("out", "");
  if (out)
    writeFileSync(
      out,
      JSON.stringify({ profile: join(dir, f), summary: s, hotpath: result.summary }, null, 2) + "\n",
    );
  console.log(`profile: ${join(dir, f)}`);
  if (process.argv.includes("--with-baseline")) {
    const agent = result.summary.find((r) => r.target === "keycutter")!;
    const measuredMs = Number(arg("duration-ms", "8000"));
    const base = await profileBaseline(Number(arg("connections", "16")), measuredMs);
    // the agent's busy samples are its warm-up (1 s) and its measured run, at about the same rate
    const all = summarise(
      join(dir, f),
      tl.loadStartedAt - tl.agentSpawnedAt,
      tl.loadEndedAt - tl.agentSpawnedAt,
      400,
    );
    compare(base, { summary: all, sequences: (agent.seqPerSec * (measuredMs + 1000)) / 1000 });
  }
}

/** The bare baseline under --cpu-prof, driven alone by the same load generator. */
async function profileBaseline(
  connections: number,
  durationMs: number,
): Promise<{ summary: ProfileSummary; sequences: number }> {
  const dir = join(ROOT, ".cache", "bench", "prof", `${Date.now()}-baseline`);
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const p = new ManagedProcess("baseline", NODE, [
    "--cpu-prof",
    `--cpu-prof-dir=${dir}`,
    "--cpu-prof-interval=200",
    join(ROOT, "bench", "lib", "baseline-main.ts"),
    "127.0.0.1",
    String(port),
  ]);
  let load;
  try {
    await p.waitForLine(/baseline listening/, 15_000);
    load = await runLoadgen({ host: "127.0.0.1", port, connections, durationMs, warmupMs: 1000 });
  } finally {
    await p.stop(); // the profile is written on exit
  }
  const f = readdirSync(dir).find((x) => x.endsWith(".cpuprofile"));
  if (!f) throw new Error(`no baseline profile in ${dir}`);
  // the whole profile: start-up is idle time, and warm-up sequences are counted pro rata
  return {
    summary: summarise(join(dir, f), 0, Infinity, 400),
    sequences: (load.sequences * (durationMs + 1000)) / durationMs,
  };
}

/** CPU µs per sequence, function by function, largest extra cost of the agent first. */
function compare(
  base: { summary: ProfileSummary; sequences: number },
  agent: { summary: ProfileSummary; sequences: number },
): void {
  const perSeq = (x: { summary: ProfileSummary; sequences: number }) =>
    new Map(
      x.summary.top.map((t) => [
        `${t.fn} ${t.where.replace(/:\d+$/, "").replace(/^dist\//, "")}`,
        (t.selfMs * 1000) / x.sequences,
      ]),
    );
  const b = perSeq(base);
  const a = perSeq(agent);
  const keys = [...new Set([...b.keys(), ...a.keys()])];
  const diff = (k: string) => (a.get(k) ?? 0) - (b.get(k) ?? 0);
  keys.sort((x, y) => diff(y) - diff(x));
  const sum = (m: Map<string, number>) => [...m.values()].reduce((x, y) => x + y, 0);
  console.log(
    `\nCPU µs per sequence (profiled functions): baseline ${sum(b).toFixed(1)}, agent ${sum(a).toFixed(1)}`,
  );
  console.log("baseline    agent     diff  function");
  const row = (k: string) =>
    console.log(
      `${(b.get(k) ?? 0).toFixed(1).padStart(8)} ${(a.get(k) ?? 0).toFixed(1).padStart(8)} ${diff(k).toFixed(1).padStart(8)}  ${k}`,
    );
  for (const k of keys.slice(0, 25)) row(k);
  console.log("…");
  for (const k of keys.slice(-5)) row(k);
}
