// Benchmark 4, server side: the real keycutter server (one replica, TLS, Redis, leader election
// and the policy status writer on) while the apiserver holds 10k, 50k, 100k pods; at each step its
// RSS and its issuance rate (distinct pods, each a real STS AssumeRole in moto), called exactly as
// an agent calls it (POST /v1/credentials with a node-bound agent token). Pods are created in
// bulk straight through the API; on this machine etcd + apiserver creation speed bounds how far a
// run gets within its budget, and the result says which steps were reached.
import { Agent as HttpsAgent, request } from "node:https";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { System } from "../test/e2e/system.ts";
import { agentOnNode } from "../test/harness/world.ts";
import { allowBenchRole } from "./lib/storm-policy.ts";
import { CREDENTIALS_PATH } from "../src/api/contract.ts";
import { metricSum, pool, percentile } from "./lib/env.ts";
import { rssBytes } from "./lib/procs.ts";
import { onAbort } from "./lib/abort.ts";

export interface ScaleParams {
  steps: number[];
  /** Distinct pods issued at each step. */
  issue: number;
  /** Stop creating pods after this long (the result says which steps were reached). */
  budgetMs?: number;
  /** Pods per namespace. */
  perNamespace?: number;
  serverArgs?: string[];
}

export interface ScaleStep {
  pods: number;
  reached: boolean;
  createSeconds: number;
  createPerSec: number;
  serverRssMiB: number;
  issued: number;
  issueErrors: number;
  issuePerSec: number;
  issueP50Ms: number;
  issueP99Ms: number;
  apiserverRssMiB: number;
  /** Mean STS AssumeRole latency seen by the server during this step (moto). */
  stsMeanMs: number;
}

export interface ScaleResult {
  params: ScaleParams;
  steps: ScaleStep[];
  notes: string[];
}

const NODE_NAME = "scale-node";

export async function benchScale(p: ScaleParams): Promise<ScaleResult> {
  const notes: string[] = [];
  const perNs = p.perNamespace ?? 1000;
  const serverArgs = p.serverArgs ?? ["--sts-rate", "1000", "--sts-burst", "1000"];
  const sys = new System({ nodes: [], serverReplicas: 1, redis: true, serverArgs });
  const t0 = Date.now();
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= sys.stop());
  const unregister = onAbort(stop);
  try {
    await sys.start();
    const roleArn = await allowBenchRole(sys, "scale", ["scale-*"]);
    const agentToken = await (await agentOnNode(sys, NODE_NAME, "127.0.0.1")).token();
    const core = sys.kubelet.core;
    const server = sys.servers[0]!;
    const apiserverPid = sys.cluster.apiserver.pid;
    const ca = readFileSync(sys.pki.caFile);
    const https = new HttpsAgent({ keepAlive: true, maxSockets: 16, ca });
    const url = new URL(sys.serverUrl);
    const post = (body: string): Promise<{ status: number; text: string }> =>
      new Promise((resolve, reject) => {
        const req = request(
          {
            host: url.hostname,
            port: url.port,
            path: CREDENTIALS_PATH,
            method: "POST",
            agent: https,
            servername: "keycutter",
            headers: {
              authorization: `Bearer ${agentToken}`,
              "content-type": "application/json",
              "content-length": Buffer.byteLength(body),
            },
            timeout: 30_000,
          },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (text += c));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
          },
        );
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", reject);
        req.end(body);
      });

    const created: Array<{ ns: string; name: string; uid: string }> = [];
    let issuedUpTo = 0;
    const steps: ScaleStep[] = [];
    const nsReady = new Map<string, Promise<void>>();
    const budget = p.budgetMs ?? Infinity;
    for (const target of p.steps) {
      const c0 = performance.now();
      const startCount = created.length;
      const todo = Array.from({ length: Math.max(0, target - created.length) }, (_, k) => startCount + k);
      let stopped = false;
      await pool(todo, 32, async (i) => {
        if (stopped || Date.now() - t0 > budget) {
          stopped = true;
          return;
        }
        const ns = `scale-${Math.floor(i / perNs)}`;
        let ready = nsReady.get(ns);
        if (!ready) {
          ready = (async () => {
            await sys.kubelet.createServiceAccount(ns, "app");
            await sys.apply({
              apiVersion: "keycutter.dev/v1alpha1",
              kind: "AccessPolicy",
              metadata: { namespace: ns, name: "app" },
              spec: { podSelector: { serviceAccountName: "app" }, roleArn, durationSeconds: 3600 },
            });
          })();
          nsReady.set(ns, ready);
        }
        await ready;
        const name = `p-${i}`;
        for (let attempt = 0; ; attempt++) {
          try {
            const pod = await core.createNamespacedPod({
              namespace: ns,
              body: {
                metadata: { name, labels: { app: "scale", shard: String(i % 10) } },
                spec: {
                  nodeName: NODE_NAME,
                  serviceAccountName: "app",
                  containers: [{ name: "app", image: "example.invalid/app:1" }],
                },
              },
            });
            created.push({ ns, name, uid: pod.metadata!.uid! });
            return;
          } catch (e) {
            const code = (e as { code?: number }).code;
            if ((code === 404 || code === 403) && attempt < 20) {
              await new Promise((r) => setTimeout(r, 200)); // namespace/SA not visible yet
              continue;
            }
            throw e;
          }
        }
      });
      const createSeconds = (performance.now() - c0) / 1000;
      const reached = created.length >= target;
      // let the server settle (status writer, GC), then issue for pods never issued before
      await new Promise((r) => setTimeout(r, 5000));
      const batch = created.slice(issuedUpTo, issuedUpTo + p.issue);
      issuedUpTo += batch.length;
      const lat: number[] = [];
      let errors = 0;
      const errSamples = new Set<string>();
      const m = `http://127.0.0.1:${server.opsPort}/metrics`;
      const [sSum0, sCnt0] = [
        await metricSum(m, "keycutter_server_sts_latency_seconds_sum"),
        await metricSum(m, "keycutter_server_sts_latency_seconds_count"),
      ];
      const i0 = performance.now();
      let rssMax = rssBytes(server.process.pid);
      await pool(batch, 16, async (x) => {
        const a = performance.now();
        const r = await post(JSON.stringify({ pod: { namespace: x.ns, name: x.name, uid: x.uid } })).catch(
          (e: Error) => ({ status: 0, text: e.message }),
        );
        lat.push(performance.now() - a);
        if (r.status !== 200) {
          errors++;
          if (errSamples.size < 3) errSamples.add(`${r.status} ${r.text.slice(0, 160)}`);
        }
        rssMax = Math.max(rssMax, rssBytes(server.process.pid));
      });
      const issueSec = (performance.now() - i0) / 1000;
      const [sSum1, sCnt1] = [
        await metricSum(m, "keycutter_server_sts_latency_seconds_sum"),
        await metricSum(m, "keycutter_server_sts_latency_seconds_count"),
      ];
      lat.sort((a, b) => a - b);
      const mib = (b: number) => Math.round((b / 1048576) * 10) / 10;
      steps.push({
        pods: created.length,
        reached,
        createSeconds: Math.round(createSeconds),
        createPerSec: Math.round((created.length - startCount) / Math.max(0.001, createSeconds)),
        serverRssMiB: mib(rssMax),
        issued: batch.length - errors,
        issueErrors: errors,
        issuePerSec: Math.round(((batch.length - errors) / issueSec) * 10) / 10,
        issueP50Ms: Math.round(percentile(lat, 0.5)),
        issueP99Ms: Math.round(percentile(lat, 0.99)),
        apiserverRssMiB: mib(rssBytes(apiserverPid)),
        stsMeanMs: sCnt1 > sCnt0 ? Math.round(((sSum1 - sSum0) / (sCnt1 - sCnt0)) * 1000) : 0,
      });
      for (const e of errSamples) notes.push(`issue error at ${created.length} pods: ${e}`);
      console.error(`scale: ${JSON.stringify(steps[steps.length - 1])}`);
      if (!reached) {
        notes.push(
          `budget of ${Math.round(budget / 60000)} min reached at ${created.length} pods; later steps not run`,
        );
        break;
      }
    }
    https.destroy();
    notes.push(
      `server flags: ${serverArgs.join(" ")} (the server's own STS rate limit is raised so that the figure is the server's, not its limiter's); pods spread over namespaces of ${perNs}, each with an AccessPolicy`,
    );
    return { params: p, steps, notes };
  } finally {
    unregister();
    await stop();
  }
}
