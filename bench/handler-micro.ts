// The IMDS handler's own JavaScript cost, without sockets: createImdsHandler (as the agent builds
// it: pod index, credential cache, token HMAC, rate limiter, metrics) called with minimal request
// and response objects for the cached IMDSv2 sequence, 100 000 times.
//   node bench/handler-micro.ts [SRC_DIR]   (default src/; e.g. a checkout of an older commit's src/)
import { join, resolve } from "node:path";
import { ROOT } from "../test/harness/index.ts";
import { IDLE_AGENT_GAUGES } from "../test/harness/agent-gauges.ts";
import { AGENT_DEFAULTS } from "../src/agent/defaults.ts";

const srcDir = resolve(process.argv[2] ?? join(ROOT, "src"));
const imp = (p: string) => import(join(srcDir, p));
// older checkouts had every pod-facing handler in agent/handlers.ts
const { createImdsHandler } = await imp("agent/imds-handler.ts").catch(() => imp("agent/handlers.ts"));
const { PodIndex } = await imp("agent/pod-index.ts");
const { CredCache } = await imp("agent/cred-cache.ts");
const { ImdsTokens } = await imp("agent/imds-token.ts");
const { AgentMetrics } = await imp("agent/metrics.ts");
const { podRequestLimit } = await imp("agent/pod-request-limit.ts");
const { createLogger } = await imp("common/logger.ts");

const log = createLogger("bench", { level: "warn" });
const index = new PodIndex();
const metrics = new AgentMetrics(IDLE_AGENT_GAUGES);
const expiration = new Date(Date.now() + 3600_000).toISOString().replace(/\.\d{3}Z$/, "Z");
const cache = new CredCache({
  log,
  metrics,
  source: {
    async credentials() {
      return {
        credentials: {
          accessKeyId: "ASIABENCH",
          secretAccessKey: "s".repeat(40),
          sessionToken: "t".repeat(700),
          expiration,
        },
        roleArn: "arn:aws:iam::123456789012:role/bench-role",
        roleName: "bench-role",
        sessionName: "bench",
        policy: { namespace: "bench", name: "bench", generation: 1 },
      };
    },
  },
});
const pod = {
  uid: "0f8fad5b-d9cb-469f-a165-70867728950e",
  namespace: "bench",
  name: "p",
  ip: "127.0.0.2",
  ips: ["127.0.0.2"],
  hostNetwork: false,
  phase: "Running",
  terminating: false,
  serviceAccountName: "app",
  nodeName: "n",
};
index.upsert(pod);
cache.prefetch(pod);
await new Promise((r) => setTimeout(r, 50));
// production's settings (from this tree, whichever src/ is measured), identity document aside
const cfg = {
  ...AGENT_DEFAULTS,
  availabilityZone: "us-east-1a",
  accountId: "123456789012",
  instanceId: "i-0",
};
const handler = createImdsHandler({
  cfg,
  index,
  cache,
  tokens: new ImdsTokens(Buffer.alloc(32, 7)),
  metrics,
  limiter: podRequestLimit(1e9, 1e9),
  passthrough: undefined,
  // the pod is known: nothing here ever waits for the watch
  waits: { acquire: () => "total", size: 0 },
  log,
});
let body: unknown;
let status = 0;
const socket = { remoteAddress: "127.0.0.2" };
const res = () => ({
  statusCode: 200,
  destroyed: false,
  headersSent: false,
  writeHead(s: number) {
    status = s;
    return this;
  },
  setHeader() {},
  end(b: unknown) {
    body = b;
  },
});
const req = (method: string, url: string, headers: Record<string, string>) => ({
  method,
  url,
  headers,
  socket,
});
function sequence(): void {
  handler(
    req("PUT", "/latest/api/token", { host: "x", "x-aws-ec2-metadata-token-ttl-seconds": "21600" }),
    res(),
  );
  const token = String(body);
  const h = { host: "x", "x-aws-ec2-metadata-token": token };
  handler(req("GET", "/latest/meta-data/iam/security-credentials/", h), res());
  handler(req("GET", "/latest/meta-data/iam/security-credentials/bench-role", h), res());
  if (status !== 200) throw new Error(`handler answered ${status}`);
}
for (let i = 0; i < 20_000; i++) sequence();
const n = 100_000;
const t0 = performance.now();
for (let i = 0; i < n; i++) sequence();
const us = ((performance.now() - t0) * 1000) / n;
console.log(JSON.stringify({ src: srcDir, usPerSequence: Math.round(us * 10) / 10 }));
