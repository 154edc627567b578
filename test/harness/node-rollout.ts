// Helpers for test/node/rollout.test.ts: poller pods that call the metadata endpoints the way an
// SDK does every 100 ms and log each call, the agent DaemonSet's rollout state, and a SIGKILL of
// the agent's process on the real node.
import { AppsV1Api, CoreV1Api } from "@kubernetes/client-node";
import { jsonLines } from "./node-workloads.ts";
import type { RealNode } from "./realnode.ts";
import { waitFor } from "./process.ts";

/**
 * The poller (Node's fetch, undici's kept-alive connections as the JS SDK uses them): per round,
 * IMDSv2 with one token kept for its TTL (as SDKs do; a 401 on it is logged as `tokenRefused`
 * and a new one fetched), then the container-credentials path with the projected token. One JSON
 * line per call: t, path, ok, ms, key (the access key id, never the secret), role, err.
 */
export const POLLER_SCRIPT = `
import { readFileSync } from "node:fs";
const IMDS = "http://169.254.169.254";
const FULL_URI = process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI;
const TOKEN_FILE = process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE;
const INTERVAL = Number(process.env.POLL_INTERVAL_MS ?? "100");
let token;
let stop = false;
process.on("SIGTERM", () => (stop = true));
const get = (url, init = {}) => fetch(url, { ...init, signal: AbortSignal.timeout(2000) });
const putToken = async () => {
  const r = await get(IMDS + "/latest/api/token", { method: "PUT", headers: { "x-aws-ec2-metadata-token-ttl-seconds": "21600" } });
  if (r.status !== 200) throw new Error("token " + r.status);
  return r.text();
};
async function imds() {
  let tokenRefused = false;
  token ??= await putToken();
  const list = () => get(IMDS + "/latest/meta-data/iam/security-credentials/", { headers: { "x-aws-ec2-metadata-token": token } });
  let r = await list();
  if (r.status === 401) {
    tokenRefused = true;
    token = await putToken();
    r = await list();
  }
  if (r.status !== 200) throw new Error("role " + r.status);
  const role = (await r.text()).trim();
  const d = await get(IMDS + "/latest/meta-data/iam/security-credentials/" + role, { headers: { "x-aws-ec2-metadata-token": token } });
  if (d.status !== 200) throw new Error("credentials " + d.status);
  const doc = await d.json();
  return { key: doc.AccessKeyId, role, tokenRefused };
}
async function container() {
  const r = await get(FULL_URI, { headers: { authorization: readFileSync(TOKEN_FILE, "utf8").trim() } });
  if (r.status !== 200) throw new Error("container " + r.status);
  const doc = await r.json();
  return { key: doc.AccessKeyId };
}
while (!stop) {
  for (const [path, call] of [["imds", imds], ["container", container]]) {
    const t0 = performance.now();
    let line;
    try {
      line = { ok: true, ...(await call()) };
    } catch (err) {
      line = { ok: false, err: err.cause?.code ?? err.message };
    }
    console.log(JSON.stringify({ t: Date.now(), path, ms: Math.round(performance.now() - t0), ...line }));
  }
  await new Promise((r) => setTimeout(r, INTERVAL));
}
`;

export interface PollLine {
  t: number;
  path: "imds" | "container";
  ok: boolean;
  ms: number;
  key?: string;
  role?: string;
  tokenRefused?: boolean;
  err?: string;
}

export function parsePollLines(text: string): PollLine[] {
  return jsonLines<PollLine>(text);
}

/** The ConfigMap with the poller, for a namespace's poller pods. */
export function pollerConfigMap(namespace: string): object {
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "poller", namespace },
    data: { "poller.mjs": POLLER_SCRIPT },
  };
}

/** A poller pod spec (aws-clients image: Node and the SDKs) with the kubelet's projected pod token. */
export function pollerPodSpec(image: string): object {
  return {
    serviceAccountName: "reader",
    terminationGracePeriodSeconds: 1,
    containers: [
      {
        name: "poller",
        image,
        imagePullPolicy: "Never",
        command: ["node", "/poller/poller.mjs"],
        env: [
          { name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", value: "http://169.254.170.23/v1/credentials" },
          { name: "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", value: "/var/run/secrets/keycutter/token" },
        ],
        resources: { requests: { cpu: "5m", memory: "32Mi" } },
        volumeMounts: [
          { name: "poller", mountPath: "/poller", readOnly: true },
          { name: "keycutter-token", mountPath: "/var/run/secrets/keycutter", readOnly: true },
        ],
      },
    ],
    volumes: [
      { name: "poller", configMap: { name: "poller" } },
      {
        name: "keycutter-token",
        projected: {
          sources: [
            { serviceAccountToken: { audience: "keycutter-pod", expirationSeconds: 3600, path: "token" } },
          ],
        },
      },
    ],
  };
}

/** What a set of poller lines says for one case. */
export interface CaseSummary {
  calls: number;
  failed: number;
  wrong: number;
  maxLatencyMs: number;
  tokensRefused: number;
}

/**
 * `wrong`: a key not of the pod's own tenant (seen by a pod of another tenant, or the node's),
 * or a role other than the tenant's. `failed`: a call that did not return credentials, or whose
 * IMDSv2 token was refused.
 */
export function summarise(
  byPod: Map<string, { tenant: string; lines: PollLine[] }>,
  expectedRole: (tenant: string) => string,
  forbiddenKeys: Set<string>,
): CaseSummary {
  const tenantsOfKey = new Map<string, Set<string>>();
  for (const { tenant, lines } of byPod.values())
    for (const l of lines)
      if (l.key) {
        let set = tenantsOfKey.get(l.key);
        if (!set) tenantsOfKey.set(l.key, (set = new Set()));
        set.add(tenant);
      }
  const s: CaseSummary = { calls: 0, failed: 0, wrong: 0, maxLatencyMs: 0, tokensRefused: 0 };
  for (const { tenant, lines } of byPod.values()) {
    for (const l of lines) {
      s.calls++;
      s.maxLatencyMs = Math.max(s.maxLatencyMs, l.ms);
      if (l.tokenRefused) s.tokensRefused++;
      if (!l.ok || l.tokenRefused) s.failed++;
      if (
        l.key &&
        (forbiddenKeys.has(l.key) ||
          (tenantsOfKey.get(l.key)?.size ?? 0) > 1 ||
          (l.role !== undefined && l.role !== expectedRole(tenant)))
      )
        s.wrong++;
    }
  }
  return s;
}

/** Waits until the DaemonSet's rollout is complete: every pod updated and available, the old ones gone. */
export async function waitDaemonSetRolledOut(node: RealNode, namespace: string, name: string): Promise<void> {
  const apps = node.cluster.kc.makeApiClient(AppsV1Api);
  const core = node.cluster.kc.makeApiClient(CoreV1Api);
  await waitFor(
    `DaemonSet ${namespace}/${name} rolled out`,
    async () => {
      const ds = await apps.readNamespacedDaemonSet({ name, namespace });
      const st = ds.status;
      if (!st || (st.observedGeneration ?? 0) < (ds.metadata?.generation ?? 0)) return false;
      if (st.updatedNumberScheduled !== st.desiredNumberScheduled) return false;
      if (st.numberAvailable !== st.desiredNumberScheduled || (st.numberUnavailable ?? 0) > 0) return false;
      const selector = Object.entries(ds.spec!.selector.matchLabels ?? {})
        .map(([k, v]) => `${k}=${v}`)
        .join(",");
      const pods = await core.listNamespacedPod({ namespace, labelSelector: selector });
      return pods.items.length === st.desiredNumberScheduled;
    },
    { timeoutMs: 300_000, intervalMs: 500, onTimeout: () => "" },
  ).catch(async (err: Error) => {
    throw new Error(`${err.message}\n${await node.describePods(namespace)}`, { cause: err });
  });
}

/** SIGKILLs the process of the named container of a pod (a crash or an OOM kill); returns its pid. */
export async function killContainerProcess(
  node: RealNode,
  podName: string,
  container: string,
): Promise<number> {
  const pods = (await node.crictl(["pods", "--name", podName, "-q"])).trim().split("\n").filter(Boolean);
  if (pods.length !== 1) throw new Error(`pod sandbox ${podName}: ${pods.length} found`);
  const id = (await node.crictl(["ps", "--pod", pods[0]!, "--name", container, "--state", "running", "-q"]))
    .trim()
    .split("\n")[0];
  if (!id) throw new Error(`no running container ${container} in ${podName}`);
  const info = JSON.parse(await node.crictl(["inspect", id])) as { info?: { pid?: number } };
  const pid = info.info?.pid;
  if (!pid) throw new Error(`no pid for container ${id}`);
  process.kill(pid, "SIGKILL");
  return pid;
}
