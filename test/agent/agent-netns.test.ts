// Real parts: the real apiserver, pods in real network namespaces, the agent running in a node
// namespace and installing the real iptables DNAT hook itself, real SDKs (botocore/boto3, the AWS
// CLI, the AWS SDK for JavaScript v3) run unmodified inside the pod namespaces, and a contract
// test server (test-server.ts) over TLS standing in for the central service.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Kubelet, PodNetwork } from "../harness/index.ts";
import {
  makeServingCert,
  waitFor,
  NODE,
  KEYCUTTER_MAIN,
  VENV_BIN,
  type Cluster,
  type NodeNet,
  type PodNet,
  type ManagedProcess,
  type TestPki,
} from "../harness/index.ts";
import { startFakeImds, NODE_ACCESS_KEY, type FakeImds } from "../harness/fake-imds.ts";
import { TestServer } from "./test-server.ts";
import {
  addTokenedPod,
  startAgentNode,
  agentFlags,
  agentIdentity,
  agentReady,
  hookCommand,
  removeHook,
  sdkEnv,
  spawnAgent,
} from "../harness/netns-agent.ts";
import { Passthrough } from "../../src/agent/passthrough.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const PY = join(VENV_BIN, "python");
const CHAIN = "KCTEST";
const NS = "team-a";
const TAINT = "keycutter.dev/agent-not-ready";

let cluster: Cluster;
let kubelet: Kubelet;
let net: PodNetwork;
let node: NodeNet;
let pki: TestPki;
let server: TestServer;
let fakeImds: FakeImds;
let agent: ManagedProcess | undefined;
let tmp: string;
let agentArgs: string[];
let iptablesBefore: string;
let agentsMap: Map<string, string>;
let agentTokenFile: string;
/** The node's libcni result cache, which the harness writes as the container runtime would. */
let cniStateDir: string;
const pods = new Map<string, { net: PodNet; uid: string; tokenFile: string }>();

const clientEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => sdkEnv(tmp, extra);

/** The node's IPv4 and IPv6 rules and chains (iptables-save, ip6tables-save), built-ins' policies aside. */
async function iptablesRules(): Promise<string> {
  const r = await net.exec(node.netns, "iptables-save", []);
  const r6 = await net.exec(node.netns, "ip6tables-save", []);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r6.code, 0, r6.stderr);
  return (r.stdout + "\n# ipv6\n" + r6.stdout)
    .split("\n")
    .filter(
      (l) =>
        l.startsWith("-A") ||
        (l.startsWith(":") && !/^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) /.test(l)),
    )
    .sort()
    .join("\n");
}

function startAgent(extra: string[] = [], args = agentArgs): Promise<ManagedProcess> {
  // the CNI state directory through the environment (same as --cni-state-dir), which an agent
  // that predates the flag ignores: the IP reuse test then shows what such an agent serves
  return spawnAgent(net, node, [...args, ...extra], {
    ...process.env,
    KEYCUTTER_LOG_LEVEL: "info",
    KEYCUTTER_CNI_STATE_DIR: cniStateDir,
  });
}

/**
 * A pod as a node brings it up: bound to the node (Pending), its sandbox's network set up with
 * the runtime's CNI ADD recorded in the node's result cache, then the kubelet's status update
 * with the IP. `k8s: false`: a network namespace only, no pod and no CNI record.
 */
async function addPod(
  name: string,
  opts: { labels?: Record<string, string>; ip?: string; k8s?: boolean } = {},
) {
  const entry =
    opts.k8s !== false
      ? await addTokenedPod(kubelet, net, node, {
          dir: tmp,
          namespace: NS,
          name,
          labels: opts.labels,
          ip: opts.ip,
        })
      : { net: await net.addPod("node1", name, opts.ip), uid: "", tokenFile: join(tmp, `${name}.token`) };
  pods.set(name, entry);
  return entry;
}

interface ProbeResult {
  status: number;
  body?: string;
  headers?: Record<string, string>;
  error?: string;
}

async function probe(pod: string, method: string, url: string, headers: string[] = []): Promise<ProbeResult> {
  const r = await net.exec(pods.get(pod)!.net.netns, PY, [join(FIX, "probe.py"), method, url, ...headers], {
    env: clientEnv(),
  });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as ProbeResult;
}

async function boto(
  pod: string,
  extra: Record<string, string> = {},
): Promise<{ ak: string | null; method: string | null }> {
  const r = await net.exec(pods.get(pod)!.net.netns, PY, [join(FIX, "boto-creds.py")], {
    env: clientEnv(extra),
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as { ak: string | null; method: string | null };
}

async function jsSdk(pod: string, which: "imds" | "container" | "chain", extra: Record<string, string> = {}) {
  const r = await net.exec(pods.get(pod)!.net.netns, NODE, [join(FIX, "js-sdk-creds.ts"), which], {
    env: clientEnv(extra),
    timeoutMs: 60_000,
  });
  return JSON.parse(r.stdout.trim().split("\n").pop() || "{}") as {
    ok: boolean;
    accessKeyId?: string;
    error?: string;
  };
}

function issuedTo(pod: string): string[] {
  return server.callsFor(pod).flatMap((c) => (c.accessKeyId ? [c.accessKeyId] : []));
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "kc-agent-"));
  ({ cluster, kubelet, net, node, cniStateDir } = await startAgentNode(tmp));
  // the node registers with a startup taint that the agent removes once it is ready
  const n1 = await kubelet.core.readNode({ name: "node1" });
  n1.spec = {
    ...n1.spec,
    taints: [
      { key: TAINT, effect: "NoSchedule" },
      { key: "other", effect: "NoSchedule" },
    ],
  };
  await kubelet.core.replaceNode({ name: "node1", body: n1 });
  await kubelet.ensureNamespace(NS);
  await kubelet.createServiceAccount(NS, "app");

  // The agent's identity: get/list/watch on pods and its node's taint, nothing else (RBAC on).
  const { token: agentToken, tokenFile } = await agentIdentity(cluster, kubelet, node, {
    roleName: "keycutter-agent-test",
    rules: [
      { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
      { apiGroups: [""], resources: ["nodes"], verbs: ["get", "patch"] },
    ],
    dir: tmp,
  });
  agentTokenFile = tokenFile;
  const kubeconfig = cluster.kubeconfigFor(net.gatewayIP, agentToken);

  pki = await makeServingCert([net.gatewayIP, "127.0.0.1"]);
  server = new TestServer({
    kc: cluster.kc,
    certFile: pki.certFile,
    keyFile: pki.keyFile,
    agents: (agentsMap = new Map([[agentToken, "node1"]])),
    noPolicyLabel: "test/no-policy",
    // a healthy epoch channel answers every second, so a short --policy-epoch-max-age-ms can be tested
    epochHoldMs: 1000,
  });
  await server.start();

  fakeImds = await startFakeImds(net, node.netns);
  iptablesBefore = await iptablesRules();

  agentArgs = [
    ...agentFlags({ net, node, server, pki, tokenFile, kubeconfig, chain: CHAIN }),
    "--unknown-pod-wait-ms=500",
    "--region=eu-west-1",
    "--passthrough=/latest/meta-data/instance-id",
    "--upstream-imds-url=http://169.254.169.254",
    `--ready-taint=${TAINT}`,
    "--hook-resync-ms=500",
  ];

  // Pods a and b exist before the agent starts (pods scheduled before the agent is ready).
  await addPod("a");
  await addPod("b");
  agent = await startAgent();
  await agentReady(node);
});

after(async () => {
  if (agent) await agent.stop().catch(() => undefined);
  await removeHook(net, node, CHAIN);
  await fakeImds?.stop().catch(() => undefined);
  await server?.stop().catch(() => undefined);
  await net?.destroy().catch(() => undefined);
  await cluster?.stop().catch(() => undefined);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

/** Requests the agent's IMDS fast path answered itself (without node:http), so far. */
async function fastServed(): Promise<number> {
  const m = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
  return Number(/keycutter_agent_imds_fast_path_total\{outcome="served"\} (\d+)/.exec(m)?.[1] ?? 0);
}

test("boto3 (IMDSv2 through 169.254.169.254 and the DNAT hook): two pods get their own, different credentials", async () => {
  const served = await fastServed();
  const a = await boto("a");
  const b = await boto("b");
  assert.equal(a.method, "iam-role");
  assert.equal(b.method, "iam-role");
  assert.ok(
    a.ak && issuedTo("a").includes(a.ak),
    `pod a got ${a.ak}, issued to a: ${issuedTo("a").join(",")}`,
  );
  assert.ok(b.ak && issuedTo("b").includes(b.ak), `pod b got ${b.ak}`);
  assert.notEqual(a.ak, b.ak);
  assert.notEqual(a.ak, NODE_ACCESS_KEY);
  // prefetch: both pods were fetched without waiting for a request, through the agent's identity
  assert.ok(server.callsFor("a").length >= 1 && server.callsFor("a").every((c) => c.result === "ok"));
  // botocore's token PUT, role listing and credentials GET, from prefetched credentials: all
  // answered by the fast path (3 requests per pod at least)
  assert.ok((await fastServed()) - served >= 6, "boto3's requests were answered by the IMDS fast path");
});

test("once ready, the agent removes its startup taint from the node (and only that taint)", async () => {
  await waitFor("startup taint removed", async () => {
    const n = await kubelet.core.readNode({ name: "node1" });
    return !(n.spec?.taints ?? []).some((t) => t.key === TAINT);
  });
  const n = await kubelet.core.readNode({ name: "node1" });
  assert.deepEqual(
    (n.spec?.taints ?? []).map((t) => t.key),
    ["other"],
  );
});

test("the AWS CLI in a pod resolves the pod's role through IMDS", async () => {
  const r = await net.exec(pods.get("a")!.net.netns, join(VENV_BIN, "aws"), ["configure", "list"], {
    env: clientEnv(),
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /access_key\s+\*+(\w{4})\s+iam-role/);
  const last4 = /access_key\s+\*+(\w{4})\s+iam-role/.exec(r.stdout)![1]!;
  assert.ok(
    issuedTo("a").some((k) => k.endsWith(last4)),
    `CLI shows …${last4}`,
  );
});

test("AWS SDK for JavaScript v3: fromInstanceMetadata, the default chain, and fromHttp (container) in pods", async () => {
  const served = await fastServed();
  const a = await jsSdk("a", "imds");
  assert.ok(a.ok, a.error);
  assert.ok((await fastServed()) - served >= 3, "the JS SDK's IMDS requests were answered by the fast path");
  assert.ok(issuedTo("a").includes(a.accessKeyId!));
  const chain = await jsSdk("a", "chain");
  assert.ok(chain.ok, chain.error);
  assert.ok(issuedTo("a").includes(chain.accessKeyId!));
  const b = await jsSdk("b", "container", {
    AWS_CONTAINER_CREDENTIALS_FULL_URI: "http://169.254.170.23/v1/credentials",
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: pods.get("b")!.tokenFile,
  });
  assert.ok(b.ok, b.error);
  assert.ok(issuedTo("b").includes(b.accessKeyId!));
  assert.ok(
    server.callsFor("b").some((c) => c.withToken && c.result === "ok"),
    "server validated pod b's token",
  );
});

test("boto3 through the container-credentials endpoint (169.254.170.23) with the pod's token", async () => {
  const b = await boto("b", {
    AWS_CONTAINER_CREDENTIALS_FULL_URI: "http://169.254.170.23/v1/credentials",
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: pods.get("b")!.tokenFile,
  });
  assert.equal(b.method, "container-role");
  assert.ok(b.ak && issuedTo("b").includes(b.ak));
});

test("token of pod A presented by pod B: 403 on container credentials, 401 on IMDS", async () => {
  const tokenA = (await import("node:fs")).readFileSync(pods.get("a")!.tokenFile, "utf8");
  const c = await probe("b", "GET", "http://169.254.170.23/v1/credentials", [`Authorization:${tokenA}`]);
  assert.equal(c.status, 403);
  assert.equal(JSON.parse(c.body!).code, "PodTokenMismatch");
  assert.ok(server.callsFor("b").some((x) => x.result === "PodTokenMismatch"));
  const js = await jsSdk("b", "container", {
    AWS_CONTAINER_CREDENTIALS_FULL_URI: "http://169.254.170.23/v1/credentials",
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: pods.get("a")!.tokenFile,
  });
  assert.equal(js.ok, false);

  const t = await probe("a", "PUT", "http://169.254.169.254/latest/api/token", [
    "X-aws-ec2-metadata-token-ttl-seconds:300",
  ]);
  assert.equal(t.status, 200);
  assert.equal(
    t.headers?.["X-aws-ec2-metadata-token-ttl-seconds"] ??
      t.headers?.["x-aws-ec2-metadata-token-ttl-seconds"],
    "300",
  );
  const own = await probe("a", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/", [
    `X-aws-ec2-metadata-token:${t.body}`,
  ]);
  assert.equal(own.status, 200);
  const stolen = await probe(
    "b",
    "GET",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    [`X-aws-ec2-metadata-token:${t.body}`],
  );
  assert.equal(stolen.status, 401);
});

test("unknown pod (a namespace with no Kubernetes pod): 404 after the wait, no credentials", async () => {
  await addPod("ghost", { k8s: false });
  const t0 = Date.now();
  const r = await probe("ghost", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
  assert.equal(r.status, 404);
  assert.ok(Date.now() - t0 >= 450, "waited for the watch first");
  const s = await boto("ghost");
  assert.equal(s.ak, null);
});

test("a pod created after the agent is served from its first call; no policy → 404, never a default role", async () => {
  await addPod("late");
  // prefetch: the agent asks for the pod's credentials as soon as it has an IP, before any call
  await waitFor("prefetch of pod late", async () => server.callsFor("late").some((c) => c.result === "ok"), {
    timeoutMs: 5000,
  });
  const late = await boto("late");
  assert.ok(late.ak && issuedTo("late").includes(late.ak));
  await addPod("nopol", { labels: { "test/no-policy": "1" } });
  const r = await probe("nopol", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
  assert.equal(r.status, 404);
  assert.match(r.body!, /NoPolicy/);
});

test("terminating pod keeps its credentials; deleted pod gets none; a new pod reusing its IP never gets the old ones", async () => {
  const c = await addPod("c");
  const before1 = await boto("c");
  assert.ok(before1.ak && issuedTo("c").includes(before1.ak));
  await kubelet.terminatePod(NS, "c");
  const during = await boto("c");
  assert.ok(during.ak && issuedTo("c").includes(during.ak), "terminating pod still served");
  await kubelet.deletePod(NS, "c");
  await waitFor("agent dropped pod c", async () => {
    const r = await probe("c", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
    return r.status === 404;
  });
  const ip = c.net.ip;
  await net.removePod(c.net);
  const callsBefore = server.calls.length;
  const d = await addPod("d", { ip });
  assert.equal(d.net.ip, ip);
  const got = await boto("d");
  assert.ok(got.ak, "new pod served");
  assert.ok(issuedTo("d").includes(got.ak!), `pod d got ${got.ak}`);
  assert.ok(!issuedTo("c").includes(got.ak!), "never pod c's credentials");
  assert.ok(
    server.calls.slice(callsBefore).every((x) => x.pod.name !== "c"),
    "nothing fetched for the dead pod",
  );
});

test("IP handed to a new pod before the old pod's status reaches the agent: never the old pod's credentials", async () => {
  const CREDS = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
  // pod A is known at IP X with prefetched credentials
  const a = await addPod("reuse-a");
  const fromA = await boto("reuse-a");
  assert.ok(fromA.ak && issuedTo("reuse-a").includes(fromA.ak), "A is served its own");
  const ip = a.net.ip;
  // A's sandbox goes: the runtime's CNI DEL frees X and removes A's result cache file. The
  // kubelet's status update for A is held back: the apiserver, and the agent's watch, still
  // show A Running at X (nothing below touches A's API object until the end).
  await net.removePod(a.net);
  // B is bound to the node and its sandbox gets X: the interface is up before the runtime has
  // recorded the attachment (CNI ADD still running), and the kubelet has not reported B's IP
  const bound = await kubelet.createPod({
    namespace: NS,
    name: "reuse-b",
    nodeName: "node1",
    serviceAccountName: "app",
  });
  const uidB = bound.metadata!.uid!;
  const bnet = await net.addPod("node1", "reuse-b", ip);
  pods.set("reuse-b", { net: bnet, uid: uidB, tokenFile: "" });
  const neverA = (what: string, r: ProbeResult): void => {
    assert.equal(r.status, 404, `${what}: ${JSON.stringify(r)}`);
  };
  neverA("X attached to no pod", await probe("reuse-b", "GET", CREDS));
  // CNI ADD done: the node says X is B's, the watch still says A
  net.cniAttach(bnet, { namespace: NS, name: "reuse-b", uid: uidB });
  const t0 = Date.now();
  neverA("X attached to B, B unknown to the watch", await probe("reuse-b", "GET", CREDS));
  assert.ok(Date.now() - t0 >= 450, "waited for the watch (the bounded wait for an unknown pod)");
  const early = await boto("reuse-b");
  assert.ok(!early.ak || !issuedTo("reuse-a").includes(early.ak), `B got A's credentials: ${early.ak}`);
  // the kubelet reports B: served B's own, while A is still Running at X in the API
  await kubelet.setPodIP(NS, "reuse-b", ip, node.ip);
  await waitFor("B served", async () => (await probe("reuse-b", "GET", CREDS)).status === 200);
  const fromB = await boto("reuse-b");
  assert.ok(fromB.ak && issuedTo("reuse-b").includes(fromB.ak), `B got ${fromB.ak}`);
  assert.ok(!issuedTo("reuse-a").includes(fromB.ak));
  const stillA = await kubelet.core.readNamespacedPod({ namespace: NS, name: "reuse-a" });
  assert.equal(stillA.status?.phase, "Running", "A's status was held back throughout");
  const m = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
  assert.match(m, /keycutter_agent_cni_state_active 1\n/);
  assert.match(m, /keycutter_agent_pod_ips_unconfirmed [1-9]/, "A at X is counted as unconfirmed");
  assert.match(await (await fetch(`http://${node.ip}:8182/readyz`)).text(), /cni-state: active/);
  // A's terminal status arrives at last
  await kubelet.deletePod(NS, "reuse-a");
});

test("hostNetwork pod (the node's IP) is refused", async () => {
  await kubelet.createPod({
    namespace: NS,
    name: "hostnet",
    nodeName: "node1",
    serviceAccountName: "app",
    hostNetwork: true,
    podIP: node.ip,
    hostIP: node.ip,
  });
  pods.set("hostnet", {
    net: { name: "hostnet", node: "node1", netns: node.netns, ip: node.ip },
    uid: "",
    tokenFile: "",
  });
  await waitFor("hostNetwork refusal", async () => {
    const r = await probe(
      "hostnet",
      "GET",
      `http://${node.ip}:8180/latest/meta-data/iam/security-credentials/`,
    );
    return r.status === 403;
  });
  assert.ok(server.callsFor("hostnet").length === 0, "nothing requested for a hostNetwork pod");
});

test("metadata passthrough: allowlisted path reaches the real IMDS, credential paths never do", async () => {
  const r = await probe("a", "GET", "http://169.254.169.254/latest/meta-data/instance-id");
  assert.equal(r.status, 200);
  assert.equal(r.body, "i-nodeinstance");
  const other = await probe("a", "GET", "http://169.254.169.254/latest/meta-data/hostname");
  assert.equal(other.status, 404);
});

test("ops port: /readyz, /healthz, /metrics with request, cache and pod counters", async () => {
  assert.equal((await fetch(`http://${node.ip}:8182/healthz`)).status, 200);
  assert.equal((await fetch(`http://${node.ip}:8182/readyz`)).status, 200);
  const m = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
  assert.match(m, /keycutter_agent_requests_total\{listener="imds",route="credentials",status="200"\} \d+/);
  assert.match(m, /keycutter_agent_cache_lookups_total\{listener="imds",result="hit"\} [1-9]/);
  assert.match(m, /keycutter_agent_pods_known [1-9]/);
  assert.match(m, /keycutter_agent_request_duration_seconds_bucket/);
  assert.match(
    m,
    /keycutter_agent_hook_repairs_total 0\n/,
    "the periodic hook check changed nothing by itself",
  );
  assert.ok(
    !/ASIA|session-|secret/i.test(m.replace(/keycutter_agent_stale_served_total|SecretAccessKey/g, "")),
    "no secret in metrics",
  );
  const logs = agent!.logs();
  for (const call of server.calls)
    if (call.accessKeyId) assert.ok(!logs.includes(`session-${call.pod.uid}`), "no session token in logs");
});

test("a hook rule deleted behind the agent's back is repaired", async () => {
  /** iptables `op` (-D delete, -C check) on the hook's jump from PREROUTING. */
  const jump = (op: "-D" | "-C") =>
    net.exec(node.netns, "iptables", [
      "-t",
      "nat",
      op,
      "PREROUTING",
      "-m",
      "comment",
      "--comment",
      "keycutter",
      "-j",
      CHAIN,
    ]);
  const del = await jump("-D");
  assert.equal(del.code, 0, del.stderr);
  await waitFor("hook repaired", async () => (await jump("-C")).code === 0);
  await waitFor("repair counted", async () =>
    /keycutter_agent_hook_repairs_total [1-9]/.test(
      await (await fetch(`http://${node.ip}:8182/metrics`)).text(),
    ),
  );
  const a = await boto("a");
  assert.ok(a.ak && issuedTo("a").includes(a.ak));
});

test("IPv6: a dual-stack pod cannot reach the node's IMDS at fd00:ec2::254 or fd00:ec2::23; the agent repairs that rule too", async () => {
  const six = await addPod("six");
  // dual stack: the node's pod bridge and the pod get IPv6 addresses; the node's IMDS answers on
  // every IPv6 address of the node, fd00:ec2::254 and fd00:ec2::23 included
  const gw = `fd10:${net.octet.toString(16)}::1`;
  const sh = async (netns: string, args: string[]): Promise<void> => {
    const r = await net.exec(netns, "ip", args);
    assert.equal(r.code, 0, `ip ${args.join(" ")}: ${r.stderr}`);
  };
  await sh(node.netns, ["-6", "addr", "add", `${gw}/64`, "dev", "cbr0", "nodad"]);
  await sh(six.net.netns, [
    "-6",
    "addr",
    "add",
    `fd10:${net.octet.toString(16)}::10/64`,
    "dev",
    "eth0",
    "nodad",
  ]);
  await sh(six.net.netns, ["-6", "route", "add", "default", "via", gw]);
  // control: over IPv6 the pod reaches the node, and the fake IMDS hands out the node's role
  const control = await probe("six", "GET", `http://[${gw}]/latest/meta-data/iam/security-credentials/`);
  assert.equal(control.body, "node-role", JSON.stringify(control));
  const refused = async (): Promise<void> => {
    for (const url of [
      "http://[fd00:ec2::254]/latest/meta-data/iam/security-credentials/",
      "http://[fd00:ec2::254]/latest/api/token",
      "http://[fd00:ec2::23]/v1/credentials",
    ]) {
      const r = await probe("six", "GET", url);
      assert.equal(r.status, -1, `${url}: expected a refused connection, got ${JSON.stringify(r)}`);
      assert.match(r.error!, /ConnectionRefused|ConnectionReset/);
    }
  };
  await refused();
  const jump = ["-m", "comment", "--comment", "keycutter", "-j", `${CHAIN}-FC`];
  const del = await net.exec(node.netns, "ip6tables", ["-D", "INPUT", ...jump]);
  assert.equal(del.code, 0, del.stderr);
  await waitFor(
    "ip6tables jump repaired",
    async () => (await net.exec(node.netns, "ip6tables", ["-C", "INPUT", ...jump])).code === 0,
  );
  await refused();
});

/** Runs `body` against an agent restarted with `extra` flags, then restores the default agent. */
async function withAgentFlags(extra: string[], body: () => Promise<void>): Promise<void> {
  await agent!.stop();
  agent = await startAgent(extra);
  try {
    await agentReady(node, `agent with ${extra.join(" ")} ready`);
    await body();
  } finally {
    await agent.stop();
    agent = await startAgent();
    await agentReady(node, "default agent ready again");
  }
}

async function agentMetric(name: string): Promise<number> {
  const text = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return Number(line?.slice(name.length + 1) ?? 0);
}

test("passthrough: user-data, the signed identity documents and credential paths never reach the real IMDS, whatever the allowlist", async () => {
  await withAgentFlags(["--passthrough=/latest/*,/latest/dynamic/instance-identity/*"], async () => {
    // control: the broad allowlist does pass ordinary paths (and the unsigned document) through
    for (const path of ["/latest/meta-data/hostname", "/latest/dynamic/instance-identity/document"]) {
      const r = await probe("a", "GET", `http://169.254.169.254${path}`);
      assert.equal(r.body, `NODE-IMDS ${path}`, JSON.stringify(r));
    }
    const never = [
      "/latest/user-data",
      "/latest/user-data/",
      "/latest/USER-DATA",
      "/latest/User-Data",
      "/latest/dynamic/instance-identity/pkcs7",
      "/latest/dynamic/instance-identity/signature",
      "/latest/dynamic/instance-identity/rsa2048",
      "/latest/dynamic/instance-identity/PKCS7",
      "/latest/dynamic/instance-identity/document/signature",
      "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
      "/latest/meta-data/IAM/security-credentials/",
      "/latest/meta-data/Iam/info",
      "/latest//user-data",
      "/latest/meta-data/../user-data",
      "/latest/./user-data",
      "/latest/%75ser-data",
      "/latest/dynamic/instance-identity%2fpkcs7",
      "/latest/user-data%2f",
    ];
    for (const path of never) {
      const r = await probe("a", "GET", `http://169.254.169.254${path}`);
      assert.ok(
        !/NODE-IMDS|node-role|ASIANODE/.test(r.body ?? ""),
        `${path} reached the real IMDS: ${r.body}`,
      );
      assert.ok(r.status === 404 || r.status === 400, `${path}: ${JSON.stringify(r)}`);
    }
  });
  assert.throws(
    () => new Passthrough("http://127.0.0.1:1", ["/latest/user-data"]),
    /cannot be passed through/,
  );
  assert.throws(
    () => new Passthrough("http://127.0.0.1:1", ["/latest/dynamic/instance-identity/pkcs7"]),
    /cannot be passed through/,
  );
});

test("the agent's ports take only traffic through the hook: a remote host connecting to the node IP directly is refused, pods through the DNAT are served", async () => {
  // a host on the cluster network (another node, its pods, the VPC): it reaches the node IP
  const remote = net.nodes.get("remote") ?? (await net.addNode("remote"));
  const health = await net.exec(
    remote.netns,
    PY,
    [join(FIX, "probe.py"), "GET", `http://${node.ip}:8182/healthz`],
    {
      env: clientEnv(),
    },
  );
  assert.equal(
    (JSON.parse(health.stdout) as ProbeResult).status,
    200,
    "control: the remote host reaches the node",
  );
  for (const url of [
    `http://${node.ip}:8180/latest/meta-data/iam/security-credentials/`,
    `http://${node.ip}:8181/v1/credentials`,
  ]) {
    const r = await net.exec(remote.netns, PY, [join(FIX, "probe.py"), "GET", url], { env: clientEnv() });
    const res = JSON.parse(r.stdout) as ProbeResult;
    assert.equal(res.status, -1, `${url} from a remote host: ${r.stdout}`);
    assert.match(res.error!, /ConnectionRefused|ConnectionReset/);
    // a pod of this node going to the node IP directly, not through the metadata address: refused too
    const direct = await probe("a", "GET", url);
    assert.equal(direct.status, -1, `${url} from pod a, not through the DNAT: ${JSON.stringify(direct)}`);
  }
  const a = await probe("a", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
  assert.equal(a.status, 200, JSON.stringify(a));
  const check = await hookCommand(net, node, CHAIN, "check");
  assert.equal(check.code, 0, check.stdout + check.stderr);
});

test("one source filling the waits for unknown pods cannot make another new pod's first request fail", async () => {
  await withAgentFlags(["--unknown-pod-wait-ms=6000", "--max-waiting=8"], async () => {
    const hog = await net.addPod("node1", "hog");
    const url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
    const flood = net.exec(hog.netns, PY, [join(FIX, "many-requests.py"), "16", url], {
      env: clientEnv(),
      timeoutMs: 60_000,
    });
    // the hog holds its share of the waits (4), the rest of its requests are answered at once
    await waitFor(
      "the hog's requests wait",
      async () => (await agentMetric("keycutter_agent_requests_waiting_for_pod")) >= 4,
      {
        timeoutMs: 10_000,
      },
    );
    // a new pod whose first request comes before the watch has delivered it
    const fresh = await net.addPod("node1", "newcomer", undefined, { namespace: NS, name: "newcomer" });
    pods.set("newcomer", { net: fresh, uid: "", tokenFile: "" });
    const first = probe("newcomer", "GET", url);
    await waitFor(
      "the newcomer's request waits for the watch",
      async () => (await agentMetric("keycutter_agent_requests_waiting_for_pod")) >= 5,
      {
        timeoutMs: 5000,
      },
    );
    await kubelet.createPod({
      namespace: NS,
      name: "newcomer",
      nodeName: "node1",
      serviceAccountName: "app",
      podIP: fresh.ip,
      hostIP: node.ip,
    });
    const r = await first;
    assert.equal(r.status, 200, `the newcomer's first request: ${JSON.stringify(r)}`);
    const hogged = JSON.parse((await flood).stdout) as { statuses: number[] };
    assert.equal(hogged.statuses.filter((x) => x === 404).length, 16, "the hog got nothing");
    const text = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
    assert.match(text, /keycutter_agent_waits_refused_total\{limit="per_source"\} 12\n/);
  });
});

test("a pod holding connections is capped per source; another pod is still served", async () => {
  // the default cap (--max-connections-per-source=32)
  const refusedBefore = await agentMetric('keycutter_agent_connections_refused_total{listener="imds"}');
  const marker = join(tmp, "held-connections");
  const run = net.exec(pods.get("a")!.net.netns, PY, [join(FIX, "hold-connections.py"), "40", marker], {
    env: clientEnv(),
    timeoutMs: 60_000,
  });
  await waitFor("connections measured", async () => existsSync(`${marker}.measured`), { timeoutMs: 20_000 });
  const b = await probe("b", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
  assert.equal(b.status, 200, `pod b while pod a holds its connections: ${JSON.stringify(b)}`);
  writeFileSync(marker, "");
  const out = JSON.parse((await run).stdout) as { held: number; closed: number; after: string };
  assert.deepEqual([out.held, out.closed], [32, 8], JSON.stringify(out));
  assert.equal(out.after, "HTTP/1.1 200 OK", "once it let go, pod a connects again");
  const refused = await agentMetric('keycutter_agent_connections_refused_total{listener="imds"}');
  assert.equal(refused - refusedBefore, 8);
});

test("fail closed whatever the interface: a pod behind one not in --hook-pod-interface (cali*, lxc*, net1) is refused, never served by the real IMDS", async () => {
  for (const iface of ["cali0abc", "lxc1234", "net1"]) {
    const pod = await net.addRoutedPod("node1", `routed-${iface}`, iface);
    const inNs = async (url: string): Promise<ProbeResult> => {
      const r = await net.exec(pod.netns, PY, [join(FIX, "probe.py"), "GET", url], { env: clientEnv() });
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as ProbeResult;
    };
    // control: the pod reaches the node (and whatever listens on it)
    assert.equal((await inNs(`http://${node.ip}:8182/healthz`)).status, 200, `${iface}: routed to the node`);
    for (const url of [
      "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
      "http://169.254.169.254/latest/api/token",
      "http://169.254.170.23/v1/credentials",
    ]) {
      const r = await inNs(url);
      assert.equal(r.status, -1, `${iface} ${url}: expected a refused connection, got ${JSON.stringify(r)}`);
      assert.match(r.error!, /ConnectionRefused|ConnectionReset/);
    }
  }
});

test("require-IMDSv2 mode: a v1 client gets 401, IMDSv2 SDKs still work", async () => {
  // Restart the node's agent in require-v2 mode (the hook stays in place meanwhile: pods are
  // refused, never sent to the real IMDS), then restore the default mode.
  await withAgentFlags(["--require-imdsv2"], async () => {
    const v1 = await probe("a", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
    assert.equal(v1.status, 401, JSON.stringify(v1));
    const v1Boto = await boto("a", { AWS_EC2_METADATA_V1_DISABLED: "false" });
    assert.ok(v1Boto.ak && issuedTo("a").includes(v1Boto.ak), "boto3 uses v2 and succeeds");
    const js = await jsSdk("a", "imds");
    assert.ok(js.ok && issuedTo("a").includes(js.accessKeyId!), js.error);
  });
});

test("policy epochs: a moved epoch replaces a pod's credentials within seconds, never served again; with the epoch channel down they revalidate after --policy-epoch-max-age-ms", async () => {
  await withAgentFlags(["--policy-epoch-max-age-ms=3000"], async () => {
    try {
      const first = (await boto("a")).ak!;
      assert.ok(issuedTo("a").includes(first));
      assert.equal((await boto("a")).ak, first, "cached");

      // the service says pod a's namespace changed policy: new credentials, and never the old again
      const t0 = Date.now();
      server.setEpoch(NS, `moved-${t0}`);
      const moved = await waitFor("new credentials after the epoch moved", async () => {
        const ak = (await boto("a")).ak;
        return ak !== first ? ak : undefined;
      });
      console.log(`# epoch moved → pod served new credentials after ${Date.now() - t0} ms`);
      assert.ok(moved && issuedTo("a").includes(moved));
      for (let i = 0; i < 3; i++) assert.notEqual((await boto("a")).ak, first);

      // the channel goes down (the credentials call still works): served from cache within the
      // bound, then revalidated with the service on the next request
      const calls = server.callsFor("a").length;
      server.pollsDown = true;
      assert.equal((await boto("a")).ak, moved, "within the bound: cached");
      await new Promise((r) => setTimeout(r, 3500));
      const revalidated = (await boto("a")).ak;
      assert.ok(server.callsFor("a").length > calls, "asked the service again");
      assert.notEqual(
        revalidated,
        moved,
        "the stand-in issues anew on every call: the revalidated answer is served",
      );
    } finally {
      server.pollsDown = false; // before the default agent starts again
    }
  });
});

test("credential service unreachable: cached pods keep working, a new pod gets a clear 503; recovery", async () => {
  const port = server.port;
  await server.stop();
  try {
    const a = await boto("a");
    assert.ok(a.ak && issuedTo("a").includes(a.ak), "cached credentials still served");
    await addPod("e");
    const r = await probe("e", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/");
    assert.equal(r.status, 503);
    assert.equal((await boto("e")).ak, null);
    assert.equal((await fetch(`http://${node.ip}:8182/readyz`)).status, 503);
  } finally {
    await server.start(port);
  }
  await waitFor(
    "pod e served once the service is back",
    async () =>
      (await probe("e", "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"))
        .status === 200,
    { timeoutMs: 30_000 },
  );
  const e = await boto("e");
  assert.ok(e.ak && issuedTo("e").includes(e.ak));
});

test("apiserver restart: the pod watch reconnects and new pods are served", async () => {
  await cluster.restartApiserver();
  await addPod("f");
  const f = await boto("f");
  assert.ok(f.ak && issuedTo("f").includes(f.ak), `pod f got ${f.ak}`);
  const m = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
  assert.match(m, /keycutter_agent_watch_restarts_total\{reason="(error|closed)"\} [1-9]/);
});

test("the agent re-reads its token file when it changes", async () => {
  const agentPod = await kubelet.core.readNamespacedPod({
    namespace: "keycutter-system",
    name: "keycutter-agent-node1",
  });
  const fresh = await kubelet.requestToken("keycutter-system", "keycutter-agent", {
    podName: "keycutter-agent-node1",
    podUID: agentPod.metadata!.uid!,
    audiences: [cluster.issuer, "keycutter"],
  });
  agentsMap.clear();
  agentsMap.set(fresh, "node1");
  writeFileSync(agentTokenFile, fresh);
  await new Promise((r) => setTimeout(r, 1200));
  await addPod("g");
  const g = await boto("g");
  assert.ok(g.ak && issuedTo("g").includes(g.ak), "served with the rotated agent token");
});

test("agent down: pods get connection refused, never the real IMDS; uninstall leaves no rule", async () => {
  // The fake real IMDS is reachable from the node itself (so a refusal below means something).
  const nodeView = await net.exec(
    node.netns,
    PY,
    [join(FIX, "probe.py"), "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"],
    {
      env: clientEnv(),
    },
  );
  assert.match(nodeView.stdout, /node-role/);

  await agent!.stop();
  agent = undefined;
  for (const url of [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.170.23/v1/credentials",
  ]) {
    const r = await probe("a", "GET", url);
    assert.equal(r.status, -1, `expected a refused connection, got ${JSON.stringify(r)}`);
    assert.match(r.error!, /ConnectionRefused/);
  }
  const s = await boto("a");
  assert.notEqual(s.ak, NODE_ACCESS_KEY);
  assert.equal(s.ak, null);

  const check = await hookCommand(net, node, CHAIN, "check");
  assert.equal(check.code, 0, check.stdout + check.stderr);
  const un = await hookCommand(net, node, CHAIN, "uninstall");
  assert.equal(un.code, 0, un.stderr);
  assert.equal(await iptablesRules(), iptablesBefore, "iptables back to exactly what it was");
  // …and with the hook gone the fake real IMDS is what a pod would reach: the hook was the barrier.
  // A fresh pod namespace: the long-lived test pods have been through IP reuse and stopped agents,
  // and once in a few runs one of them lost its path to the node (a test-network artefact: no
  // rule was left, see DIAG-DOWN), which says nothing about the hook.
  const fresh = await net.addPod("node1", `after-uninstall-${Date.now() % 100000}`);
  const afterRun = await net.exec(
    fresh.netns,
    PY,
    [join(FIX, "probe.py"), "GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"],
    { env: clientEnv() },
  );
  const after = JSON.parse(afterRun.stdout) as ProbeResult;
  if (after.body !== "node-role") {
    const diag = [
      await net.exec(node.netns, "iptables-save", []),
      await net.exec(node.netns, "sh", ["-c", "conntrack -L 2>&1 | head -50"]),
      await net.exec(node.netns, "sh", ["-c", "nft list ruleset 2>&1 | head -80"]),
      await net.exec(fresh.netns, "sh", ["-c", "ip route get 169.254.169.254; ip neigh; ip addr"]),
      await net.exec(node.netns, "sh", [
        "-c",
        "ip neigh; sysctl net.ipv4.conf.all.rp_filter net.ipv4.conf.cbr0.rp_filter",
      ]),
      await net.exec(node.netns, "ss", ["-tanp"]),
      await net.exec(node.netns, "ip", ["addr"]),
      await net.exec("1", "true", []).catch(() => ({ stdout: "", stderr: "" })),
    ].map((r) => r.stdout + r.stderr);
    console.log("DIAG-DOWN", diag.join("\n----\n"), fakeImds.process.tail(20));
  }
  assert.equal(after.body, "node-role", JSON.stringify(after));
});

test("installing the hook cuts connections already open to the real IMDS", async () => {
  const hookArgs = [`--hook-chain=${CHAIN}`, "--hook-pod-interface=cbr0", `--hook-agent-ip=${node.ip}`];
  // start from "no agent, no hook" (the state the previous test leaves)
  if (agent) {
    await agent.stop();
    agent = undefined;
  }
  await hookCommand(net, node, CHAIN, "uninstall");
  const marker = join(tmp, "hook-installed");
  const fresh = await net.addPod("node1", `keepalive-${Date.now() % 100000}`);
  const run = net.exec(fresh.netns, PY, [join(FIX, "keepalive.py"), marker], {
    env: clientEnv(),
  });
  await waitFor("first request answered", async () => existsSync(`${marker}.first`), { timeoutMs: 20_000 });
  const init = await net.exec(node.netns, NODE, [KEYCUTTER_MAIN, "hook", "init", ...hookArgs]);
  writeFileSync(marker, "");
  assert.equal(init.code, 0, init.stderr);
  const out = await run;
  const [first, second] = out.stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { ok: boolean; data?: string; error?: string });
  assert.ok(
    first?.ok && /node-role/.test(first.data!),
    `before the hook the fake IMDS answered: ${out.stdout}`,
  );
  assert.ok(second && !(second.ok && /node-role/.test(second.data ?? "")), `after the hook: ${out.stdout}`);
  const un = await hookCommand(net, node, CHAIN, "uninstall");
  assert.equal(un.code, 0, un.stderr);
  assert.equal(await iptablesRules(), iptablesBefore);
});
