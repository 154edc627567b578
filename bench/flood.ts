// Benchmark: agent authentication under a TokenReview flood. The real server (TLS, the chart's
// command line) against the real apiserver, agents on several nodes authenticating with tokens
// bound to their own pods — each request with a fresh token, so that each costs a real
// TokenReview — first with no other traffic, then while a hostile client from another address
// sends junk bearer tokens at ~1000 requests/s (half forged agent tokens that pass every local
// check, half junk of other shapes), in the same run. Reported: the agents' latency in both
// phases and the ratio, their errors, the junk's answers, and TokenReviews counted at the
// apiserver in each phase.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { NODE, ROOT } from "../test/harness/index.ts";
import { System } from "../test/e2e/system.ts";
import { agentOnNode } from "../test/harness/world.ts";
import { ApiClientFrom, apiserverTokenReviews } from "../test/server/flood.ts";
import { onAbort } from "./lib/abort.ts";
import { percentile, pool, sleep } from "./lib/env.ts";

export interface FloodParams {
  /** Agents, each on its own node and source address. */
  agents: number;
  /** Authentications per second, all agents together. */
  legitPerSecond: number;
  /** Length of each phase (quiet, flood). */
  phaseMs: number;
  junkPerSecond: number;
  junkConnections: number;
  serverArgs?: string[];
}

export interface FloodPhase {
  phase: "quiet" | "flood";
  requests: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Answers other than the expected one (the pod does not exist: 404 after authentication). */
  errors: number;
  statuses: Record<string, number>;
  tokenReviews: number;
}

export interface FloodResult {
  params: FloodParams;
  phases: FloodPhase[];
  ratio: { p50: number; p99: number };
  junk: { sent: number; achievedPerSecond: number; statuses: Record<string, number> };
  notes: string[];
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

export async function benchFlood(p: FloodParams): Promise<FloodResult> {
  const sys = new System({ nodes: [], serverReplicas: 1, redis: false, serverArgs: p.serverArgs });
  const clients: ApiClientFrom[] = [];
  const stop = async () => {
    for (const c of clients) c.close();
    await sys.stop();
  };
  const unregister = onAbort(stop);
  try {
    await sys.start();
    const server = sys.servers[0]!;
    const tokensPerPhase = Math.ceil((p.legitPerSecond * p.phaseMs) / 1000);
    // agents on their nodes; each request carries a token never seen before
    const agents = await pool(
      Array.from({ length: p.agents }, (_, i) => i),
      8,
      async (i) => {
        const node = `flood-node-${i}`;
        const address = `127.0.2.${i + 1}`;
        const identity = await agentOnNode(sys, node, address);
        const tokens = await pool(
          // round-robin: the first agents take one more than the average in each phase; one to warm up
          Array.from({ length: 2 * Math.ceil(tokensPerPhase / p.agents) + 1 }, () => 0),
          4,
          () => identity.token(undefined, 3600),
        );
        const client = new ApiClientFrom(server.port, sys.pki.caFile, address, 4);
        clients.push(client);
        return { client, tokens, node };
      },
    );
    // one authentication per agent first: a running agent has authenticated before any attack
    for (const a of agents) await a.client.post(a.tokens.pop()!, { pod: absentPod(a.node) });

    const runPhase = async (phase: FloodPhase["phase"]): Promise<FloodPhase> => {
      const reviewsBefore = await apiserverTokenReviews(sys.cluster);
      const latencies: number[] = [];
      const statuses: Record<string, number> = {};
      const t0 = performance.now();
      const pending: Promise<void>[] = [];
      for (let i = 0; i < tokensPerPhase; i++) {
        const at = (i * 1000) / p.legitPerSecond;
        const wait = at - (performance.now() - t0);
        if (wait > 0) await sleep(wait);
        const a = agents[i % agents.length]!;
        pending.push(
          a.client.post(a.tokens.pop()!, { pod: absentPod(a.node) }, 10_000).then((r) => {
            latencies.push(r.ms);
            const k = r.code ? `${r.status} ${r.code}` : String(r.status);
            statuses[k] = (statuses[k] ?? 0) + 1;
          }),
        );
      }
      await Promise.all(pending);
      latencies.sort((x, y) => x - y);
      return {
        phase,
        requests: latencies.length,
        p50Ms: round(percentile(latencies, 0.5)),
        p99Ms: round(percentile(latencies, 0.99)),
        maxMs: round(latencies.at(-1) ?? 0),
        errors: latencies.length - (statuses["404 PodNotFound"] ?? 0),
        statuses,
        tokenReviews: (await apiserverTokenReviews(sys.cluster)) - reviewsBefore,
      };
    };

    const quiet = await runPhase("quiet");
    const junkProc = spawn(
      NODE,
      [
        join(ROOT, "bench", "lib", "junk-client-main.ts"),
        JSON.stringify({
          port: server.port,
          caFile: sys.pki.caFile,
          localAddress: "127.0.3.1",
          ratePerSecond: p.junkPerSecond,
          durationMs: p.phaseMs + 60_000,
          connections: p.junkConnections,
        }),
      ],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    let junkOut = "";
    junkProc.stdout!.on("data", (d: Buffer) => (junkOut += d.toString()));
    const junkExited = new Promise<void>((r) => junkProc.on("exit", () => r()));
    await sleep(Math.min(2000, p.phaseMs / 2)); // the flood at full rate before measuring
    const flood = await runPhase("flood");
    junkProc.stdin!.end();
    await junkExited;
    const junk = JSON.parse(junkOut.trim().split("\n").pop() ?? "{}") as FloodResult["junk"];
    return {
      params: p,
      phases: [quiet, flood],
      ratio: {
        p50: round(flood.p50Ms / Math.max(quiet.p50Ms, 0.1), 2),
        p99: round(flood.p99Ms / Math.max(quiet.p99Ms, 0.1), 2),
      },
      junk,
      notes: [
        `${p.agents} agents, ${p.legitPerSecond} authentications/s, each with a fresh token (a TokenReview each)`,
        `hostile client: ${p.junkConnections} keep-alive connections from one address, target ${p.junkPerSecond} requests/s`,
        `server flags: ${(p.serverArgs ?? []).join(" ") || "defaults"}`,
      ],
    };
  } finally {
    unregister();
    await stop();
  }
}

/** A pod that does not exist on the agent's node: answered 404 once the agent is authenticated. */
function absentPod(node: string) {
  return { namespace: "flood", name: `absent-on-${node}`, uid: "00000000-0000-0000-0000-000000000000" };
}
