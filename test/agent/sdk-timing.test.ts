// Real SDKs against the agent's serve/refresh rules and first-call budgets (issue 15, section 1):
// the real apiserver, pods in network namespaces behind the agent's own iptables hook, boto3 and
// the JS SDK v3 unmodified, a contract test server standing in for the central service (with the
// real server's reuse rule), and a stand-in AWS service that refuses expired credentials.
//
// Real time is too slow, so the clock moves instead: the agent and each SDK process run under
// libfaketime with one timestamp file, the test server and the stand-in read the same offset.
// Each SDK advances the clock before each of its calls, over three session lifetimes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Kubelet, PodNetwork } from "../harness/index.ts";
import {
  makeServingCert,
  waitFor,
  NODE,
  VENV_BIN,
  type Cluster,
  type NodeNet,
  type PodNet,
  type ManagedProcess,
  type TestPki,
} from "../harness/index.ts";
import { TestServer } from "./test-server.ts";
import {
  addTokenedPod,
  startAgentNode,
  agentFlags,
  agentIdentity,
  agentReady,
  removeHook,
  sdkEnv,
  spawnAgent,
  type TokenedPod,
} from "../harness/netns-agent.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const PY = join(VENV_BIN, "python");
const CHAIN = "KCTIME";
const NS = "team-t";
const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/** Old rules for the check that this test fails without the fix: KEYCUTTER_TEST_DURATIONS=900. */
const DURATIONS = (process.env.KEYCUTTER_TEST_DURATIONS ?? "900,1800,3600").split(",").map(Number);
/**
 * Real time instead (bench/sdk-refresh-realtime.ts): this many minutes of 15-minute sessions,
 * the clock not moved, the three SDKs side by side.
 */
const REALTIME_MINUTES = Number(process.env.KEYCUTTER_SDK_REALTIME_MINUTES ?? 0);

let cluster: Cluster;
let kubelet: Kubelet;
let net: PodNetwork;
let node: NodeNet;
let pki: TestPki;
let server: TestServer;
let service: Server;
let servicePort = 0;
let agent: ManagedProcess | undefined;
let tmp: string;
let clockFile: string;
let agentArgs: string[];
let cniStateDir: string;
let goClient: string;
/** The simulated clock's offset from real time, in seconds (what the timestamp file says). */
let offsetS = 0;
const serviceCalls: { ak: string; ok: boolean; offsetS: number }[] = [];

function readOffset(): number {
  try {
    return Number(/^\+(\d+)/.exec(readFileSync(clockFile, "utf8"))?.[1] ?? 0);
  } catch {
    return offsetS;
  }
}

function fakeNow(): number {
  return Date.now() + readOffset() * 1000;
}

function setOffset(s: number): void {
  offsetS = s;
  writeFileSync(`${clockFile}.tmp`, `+${s}\n`);
  renameSync(`${clockFile}.tmp`, clockFile);
}

function fakeTimeEnv(): Record<string, string> {
  if (REALTIME_MINUTES > 0) return {};
  return { LD_PRELOAD: LIBFAKETIME, FAKETIME_TIMESTAMP_FILE: clockFile, FAKETIME_NO_CACHE: "1" };
}

function clientEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return sdkEnv(tmp, { SERVICE_URL: `http://${net.gatewayIP}:${servicePort}`, ...extra });
}

/**
 * sts:GetCallerIdentity as AWS would answer it: refused once the signing key's session has
 * expired (by the simulated clock). Query (XML) and JSON protocols both.
 */
function startService(): Promise<void> {
  service = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const ak = /Credential=([A-Z0-9]+)\//.exec(req.headers.authorization ?? "")?.[1] ?? "";
      const expiry = server.issued.get(ak);
      const ok = expiry !== undefined && fakeNow() < expiry;
      serviceCalls.push({ ak, ok, offsetS: readOffset() });
      const json = String(req.headers["content-type"] ?? "").includes("json");
      if (json) {
        res.writeHead(ok ? 200 : 400, { "content-type": "application/x-amz-json-1.1" });
        res.end(
          JSON.stringify(
            ok
              ? { Account: "123456789012", Arn: `arn:aws:sts::123456789012:assumed-role/r/${ak}`, UserId: ak }
              : {
                  __type: "ExpiredTokenException",
                  message: "The security token included in the request is expired",
                },
          ),
        );
        return;
      }
      res.writeHead(ok ? 200 : 403, { "content-type": "text/xml" });
      res.end(
        ok
          ? `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/r/${ak}</Arn><UserId>${ak}</UserId><Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>`
          : `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message></Error><RequestId>r</RequestId></ErrorResponse>`,
      );
    });
  });
  return new Promise((resolve) =>
    service.listen(0, "0.0.0.0", () => {
      servicePort = (service.address() as AddressInfo).port;
      resolve();
    }),
  );
}

function addPod(name: string, withIp = true): Promise<TokenedPod> {
  return addTokenedPod(kubelet, net, node, { dir: tmp, namespace: NS, name, withIp });
}

before(async () => {
  assert.ok(
    existsSync(LIBFAKETIME),
    "libfaketime (Debian package faketime) is needed: scripts/setup.sh installs it",
  );
  tmp = mkdtempSync(join(tmpdir(), "kc-sdktime-"));
  clockFile = join(tmp, "faketime");
  setOffset(0);
  ({ cluster, kubelet, net, node, cniStateDir } = await startAgentNode(tmp));
  await kubelet.ensureNamespace(NS);
  await kubelet.createServiceAccount(NS, "app");
  const { token: agentToken, tokenFile } = await agentIdentity(cluster, kubelet, node, {
    roleName: "keycutter-agent-sdktime",
    rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] }],
    dir: tmp,
  });
  pki = await makeServingCert([net.gatewayIP, "127.0.0.1"]);
  server = new TestServer({
    kc: cluster.kc,
    certFile: pki.certFile,
    keyFile: pki.keyFile,
    agents: new Map([[agentToken, "node1"]]),
    epochHoldMs: 1000,
    now: fakeNow,
    reuse: true,
  });
  await server.start();
  await startService();
  goClient = join(tmp, "go-sdk-client");
  execFileSync("nice", ["-n", "19", "go", "build", "-o", goClient, "."], {
    cwd: join(FIX, "go-sdk-client"),
    env: { ...process.env, GOFLAGS: "-mod=mod" },
    stdio: "pipe",
  });
  const kubeconfig = cluster.kubeconfigFor(net.gatewayIP, agentToken);
  agentArgs = [
    ...agentFlags({ net, node, server, pki, tokenFile, kubeconfig, chain: CHAIN }),
    "--region=eu-west-1",
    "--require-imdsv2",
    // the simulated clock jumps by minutes: neither the watch nor the epoch channel is judged by it
    "--watch-stale-after-ms=86400000",
    "--policy-epoch-max-age-ms=86400000",
  ];
  agent = await spawnAgent(net, node, agentArgs, {
    ...process.env,
    ...fakeTimeEnv(),
    KEYCUTTER_LOG_LEVEL: "info",
    KEYCUTTER_CNI_STATE_DIR: cniStateDir,
  });
  await agentReady(node);
});

after(async () => {
  if (agent) await agent.stop().catch(() => undefined);
  await removeHook(net, node, CHAIN);
  await server?.stop().catch(() => undefined);
  await new Promise((r) => (service ? service.close(r) : r(undefined)));
  await net?.destroy().catch(() => undefined);
  await cluster?.stop().catch(() => undefined);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

interface StepResult {
  offset: number;
  ok: boolean;
  ak?: string;
  error?: string;
}

type Client = "boto3-imds" | "js-imds" | "boto3-container";

async function runClient(
  client: Client,
  pod: { net: PodNet; tokenFile: string },
  steps: number,
  stepS: number,
) {
  const start = offsetS;
  // "-": real time, the client sleeps each step instead of moving the clock
  const args = [REALTIME_MINUTES > 0 ? "-" : clockFile, String(start), String(stepS), String(steps)];
  const container = {
    AWS_CONTAINER_CREDENTIALS_FULL_URI: "http://169.254.170.23/v1/credentials",
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: pod.tokenFile,
  };
  const env = clientEnv({ ...fakeTimeEnv(), ...(client === "boto3-container" ? container : {}) });
  const r =
    client === "js-imds"
      ? await net.exec(pod.net.netns, NODE, [join(FIX, "sdk-refresh-js.ts"), ...args], {
          env,
          timeoutMs: 300_000 + steps * stepS * 1000,
        })
      : await net.exec(pod.net.netns, PY, [join(FIX, "sdk-refresh-boto.py"), ...args], {
          env,
          timeoutMs: 300_000 + steps * stepS * 1000,
        });
  assert.equal(r.code, 0, r.stderr);
  if (REALTIME_MINUTES === 0) {
    offsetS = start + steps * stepS;
    setOffset(offsetS);
  }
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as StepResult[];
}

async function waitingForPod(): Promise<number> {
  const m = await (await fetch(`http://${node.ip}:8182/metrics`)).text();
  return Number(/^keycutter_agent_requests_waiting_for_pod (\d+)/m.exec(m)?.[1] ?? 0);
}

interface FirstCall {
  ok?: boolean;
  seconds?: number;
  ak?: string | null;
  error?: string;
}

/**
 * One client's first call from a new pod whose IP reaches the agent `lateMs` after the client's
 * first request (the token PUT) is held for the unknown IP, as when the kubelet's status update
 * lags the container's start.
 */
async function firstCallWithLateIp(
  client: "go" | "boto3",
  lateMs: number,
): Promise<{ out: FirstCall; why: string }> {
  const name = `late${lateMs}-${client}`;
  const pod = await addPod(name, false);
  const env = clientEnv({ AWS_METADATA_SERVICE_TIMEOUT: "1", AWS_METADATA_SERVICE_NUM_ATTEMPTS: "1" });
  const run =
    client === "go"
      ? net.exec(pod.net.netns, goClient, [], { env, timeoutMs: 60_000 })
      : net.exec(pod.net.netns, PY, [join(FIX, "boto-creds.py")], { env, timeoutMs: 60_000 });
  const deadline = Date.now() + 30_000;
  while ((await waitingForPod()) === 0) {
    assert.ok(Date.now() < deadline, "the first request never reached the agent");
    await new Promise((r) => setTimeout(r, 5));
  }
  if (lateMs > 0) await new Promise((r) => setTimeout(r, lateMs));
  await kubelet.setPodIP(NS, name, pod.net.ip, node.ip);
  const r = await run;
  const why = `${r.stdout}${r.stderr}\n${agent!.logs().slice(-3000)}`;
  assert.equal(r.code, 0, why);
  const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as FirstCall;
  console.log(`FIRST-CALL ${JSON.stringify({ client, lateMs, ...out })}`);
  return { out, why };
}

test("first call: Go (500 ms per attempt) and boto3 (1 s, one attempt) in a pod whose IP reaches the agent after its first request", async () => {
  server.lifetimeSeconds = 3600;
  const go = await firstCallWithLateIp("go", 0);
  assert.ok(go.out.ok, go.why);
  // a timed-out attempt costs Go a fixed 1 s before the next
  assert.ok(go.out.seconds! < 0.9, `answered at the first attempt (${go.out.seconds} s)`);
  const boto3 = await firstCallWithLateIp("boto3", 0);
  assert.ok(boto3.out.ak, `boto3 got the pod's credentials\n${boto3.why}`);
});

test("first call with the IP 550 ms late: boto3's single 1 s attempt is still served; Go is, after its one retry", async () => {
  // The agent holds the request until the IP arrives, up to its budget: with a budget under the
  // delay, boto3 got a 503, fell back to IMDSv1 and failed its call; Go's first attempt times out
  // at 500 ms either way and its retry, 1 s later, is served
  server.lifetimeSeconds = 3600;
  const boto3 = await firstCallWithLateIp("boto3", 550);
  assert.ok(boto3.out.ak, `boto3 got the pod's credentials\n${boto3.why}`);
  const go = await firstCallWithLateIp("go", 550);
  assert.ok(go.out.ok, go.why);
  assert.ok(go.out.seconds! < 3, `served at Go's second attempt (${go.out.seconds} s)`);
});

const CLIENTS = ["boto3-imds", "js-imds", "boto3-container"] as const;

async function sessionRun(durationS: number, client: Client, steps: number, stepS: number): Promise<void> {
  const name = `d${durationS}-${client}${REALTIME_MINUTES > 0 ? "-rt" : ""}`;
  const pod = await addPod(name);
  // the agent prefetches when the pod gets its IP
  await waitFor("prefetched", async () => server.callsFor(name).length > 0);
  const results = await runClient(client, pod, steps, stepS);
  const failed = results.filter((r) => !r.ok);
  const keys = [...new Set(results.flatMap((r) => (r.ak ? [r.ak] : [])))];
  // one line per run, for the report and bench/sdk-refresh-realtime.ts
  console.log(
    `SDK-REFRESH ${JSON.stringify({ client, durationS, calls: results.length, failed: failed.length, keys: keys.length, spanS: steps * stepS, realTime: REALTIME_MINUTES > 0 })}`,
  );
  assert.deepEqual(
    failed.slice(0, 5),
    [],
    `${client}, ${durationS}s sessions: ${failed.length} of ${results.length} calls failed\n${agent!.logs().slice(-4000)}`,
  );
  assert.ok(keys.length >= 3, `${client}: at least two refreshes seen by the SDK (${keys.length} keys)`);
}

if (REALTIME_MINUTES > 0) {
  test(`real time, ${REALTIME_MINUTES} minutes of 15-minute sessions: boto3 and JS on IMDS, boto3 on the container path, no failed call`, async () => {
    server.lifetimeSeconds = 900;
    const stepS = 20;
    await Promise.all(
      CLIENTS.map((client) => sessionRun(900, client, (REALTIME_MINUTES * 60) / stepS, stepS)),
    );
  });
} else {
  for (const durationS of DURATIONS) {
    test(`${durationS / 60}-minute sessions: boto3 and JS on IMDS, boto3 on the container path, over three lifetimes, across refreshes, with no failed call`, async () => {
      server.lifetimeSeconds = durationS;
      const stepS = durationS / 45; // 20, 40, 80 s
      for (const client of CLIENTS) await sessionRun(durationS, client, 3 * 45, stepS);
    });
  }
}
