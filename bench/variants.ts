// Which part of the agent's extra CPU per sequence comes from its server options, the weight of
// the modules it loads, or reading req.headers? Four bare baselines side by side (plain; with the
// agent's server options; with the agent's modules imported; reading headers per request), 16 connections, 3 alternating rounds;
// prints [sequences/s, user µs/seq, kernel µs/seq] per round.   node bench/variants.ts
import { join } from "node:path";
import { ManagedProcess, NODE, ROOT, freePort } from "../test/harness/index.ts";
import { cpuSplitMs, runLoadgen } from "./lib/procs.ts";

const variants = ["plain", "agent-options", "agent-modules", "agent-headers"];
const procs: Array<{ name: string; p: ManagedProcess; port: number }> = [];
try {
  for (const v of variants) {
    const port = await freePort();
    const p = new ManagedProcess(v, NODE, [
      join(ROOT, "bench", "lib", "baseline-main.ts"),
      "127.0.0.1",
      String(port),
      v,
    ]);
    await p.waitForLine(/baseline listening/, 20_000);
    procs.push({ name: v, p, port });
  }
  const res: Record<string, number[][]> = {};
  for (let round = 0; round < 3; round++) {
    for (const t of round % 2 ? [...procs].reverse() : procs) {
      const c0 = cpuSplitMs(t.p.pid);
      const l = await runLoadgen({
        host: "127.0.0.1",
        port: t.port,
        connections: 16,
        durationMs: 4000,
        warmupMs: 1000,
      });
      const c1 = cpuSplitMs(t.p.pid);
      const seq = l.sequences * 1.25; // warm-up included pro rata
      (res[t.name] ??= []).push([
        l.sequencesPerSec,
        Math.round(((c1.user - c0.user) * 1000) / seq),
        Math.round(((c1.system - c0.system) * 1000) / seq),
      ]);
    }
  }
  for (const [k, v] of Object.entries(res)) console.log(k.padEnd(22), JSON.stringify(v));
} finally {
  for (const t of procs) await t.p.stop();
}
