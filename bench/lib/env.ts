// Shared set-up: one real cluster per run, pods created in parallel, an SDK-like IMDSv2 client.
import { request, Agent } from "node:http";
import { readFileSync } from "node:fs";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { performance } from "node:perf_hooks";
import { startBaseWorld, type BaseWorld } from "../../test/harness/world.ts";
import { onAbort } from "./abort.ts";

export type BenchEnv = Pick<BaseWorld, "cluster" | "kubelet" | "dir" | "defer"> & { close(): Promise<void> };

/** A real cluster for one run, stopped (clean-ups first) at the end or on an interrupt. */
export async function createEnv(): Promise<BenchEnv> {
  const world = await startBaseWorld({
    prefix: "kc-bench",
    onCleanupError: (e) => console.error(`cleanup: ${(e as Error).message}`),
  });
  const close = (): Promise<void> => {
    unregister();
    return world.stop();
  };
  const unregister = onAbort(close);
  return { cluster: world.cluster, kubelet: world.kubelet, dir: world.dir, defer: world.defer, close };
}

/** Runs fn over items with at most `limit` in flight. */
export async function pool<T, R>(
  items: T[],
  limit: number,
  fn: (x: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface SdkResult {
  ok: boolean;
  ms: number;
  error?: string;
  accessKeyId?: string;
}

/**
 * What an SDK does at start-up (botocore/JS v3 defaults): a fresh connection, PUT token, GET the
 * role listing, GET the credentials, each with a 1 s timeout and no retry.
 */
export function sdkFetch(
  host: string,
  port: number,
  localAddress?: string,
  timeoutMs = 1000,
): Promise<SdkResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const t0 = performance.now();
  const one = (
    method: string,
    path: string,
    headers: Record<string, string>,
  ): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const req = request(
        { host, port, method, path, headers, agent, localAddress, timeout: timeoutMs },
        (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (body += c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", reject);
      req.end();
    });
  return (async () => {
    try {
      const t = await one("PUT", "/latest/api/token", { "x-aws-ec2-metadata-token-ttl-seconds": "21600" });
      if (t.status !== 200) throw new Error(`token: HTTP ${t.status}`);
      const h = { "x-aws-ec2-metadata-token": t.body };
      const l = await one("GET", "/latest/meta-data/iam/security-credentials/", h);
      if (l.status !== 200) throw new Error(`list: HTTP ${l.status} ${l.body.slice(0, 100)}`);
      const c = await one("GET", `/latest/meta-data/iam/security-credentials/${l.body}`, h);
      if (c.status !== 200) throw new Error(`creds: HTTP ${c.status} ${c.body.slice(0, 100)}`);
      const doc = JSON.parse(c.body) as { AccessKeyId?: string; Code?: string };
      if (!doc.AccessKeyId || doc.Code !== "Success") throw new Error("creds: bad document");
      return { ok: true, ms: performance.now() - t0, accessKeyId: doc.AccessKeyId };
    } catch (e) {
      return { ok: false, ms: performance.now() - t0, error: (e as Error).message };
    } finally {
      agent.destroy();
    }
  })();
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length
    ? s.length % 2
      ? s[(s.length - 1) / 2]!
      : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
    : 0;
}

/** Sum of every sample of a Prometheus metric (all label sets). */
export async function metricSum(url: string, name: string): Promise<number> {
  const text = await fetch(url).then((r) => r.text());
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + "{") || line.startsWith(name + " "))
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

/**
 * What the kubelet does once the CNI has run, in one cheap call: a strategic-merge patch of the
 * pod's status (Running, podIP/podIPs, hostIP, Ready), over a keep-alive connection.
 */
export function podStatusPatcher(cluster: { server: string; adminToken: string; caFile: string }) {
  const agent = new HttpsAgent({ keepAlive: true, maxSockets: 64, ca: readFileSync(cluster.caFile) });
  const url = new URL(cluster.server);
  const patch = (ns: string, name: string, ip: string, hostIP: string): Promise<number> => {
    const body = JSON.stringify({
      status: {
        phase: "Running",
        podIP: ip,
        podIPs: [{ ip }],
        hostIP,
        hostIPs: [{ ip: hostIP }],
        startTime: new Date().toISOString(),
        conditions: [{ type: "Ready", status: "True", lastTransitionTime: new Date().toISOString() }],
      },
    });
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        {
          host: url.hostname,
          port: url.port,
          method: "PATCH",
          path: `/api/v1/namespaces/${ns}/pods/${name}/status`,
          agent,
          headers: {
            authorization: `Bearer ${cluster.adminToken}`,
            "content-type": "application/strategic-merge-patch+json",
            "content-length": Buffer.byteLength(body),
          },
        },
        (res) => {
          res.resume();
          res.on("end", () =>
            res.statusCode === 200 ? resolve(200) : reject(new Error(`status patch: HTTP ${res.statusCode}`)),
          );
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  };
  return { patch, close: () => agent.destroy() };
}
