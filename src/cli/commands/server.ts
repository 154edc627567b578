import { hostname } from "node:os";
import type { Command } from "commander";

function hostPort(s: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s);
  if (!m) throw new Error(`${flag}: expected HOST:PORT, got "${s}"`);
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port: Number(m[3]) };
}

const env = (k: string): string | undefined => {
  const v = process.env[k];
  return v === undefined || v === "" ? undefined : v;
};
const list = (v: string, prev: string[] = []) => [
  ...prev,
  ...v
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean),
];

export function registerServerCommands(program: Command): void {
  program
    .command("server")
    .description("run the central security service (agents → TokenReview → policies → STS)")
    .option(
      "--listen <host:port>",
      "API (HTTPS) address [env KEYCUTTER_LISTEN]",
      env("KEYCUTTER_LISTEN") ?? "0.0.0.0:8443",
    )
    .option(
      "--ops-listen <host:port>",
      "plain-HTTP /healthz /readyz /metrics [env KEYCUTTER_OPS_LISTEN]",
      env("KEYCUTTER_OPS_LISTEN") ?? "0.0.0.0:9090",
    )
    .option(
      "--tls-cert <file>",
      "PEM certificate chain, reloaded on change [env KEYCUTTER_TLS_CERT]",
      env("KEYCUTTER_TLS_CERT"),
    )
    .option("--tls-key <file>", "PEM private key [env KEYCUTTER_TLS_KEY]", env("KEYCUTTER_TLS_KEY"))
    .option("--insecure-http", "serve the API over plain HTTP (development only)", false)
    .option("--kubeconfig <file>", "kubeconfig (default: in-cluster, then $KUBECONFIG) [env KUBECONFIG]")
    .option(
      "--agent-service-account <ns/name,...>",
      "service account(s) agents run as (repeatable) [env KEYCUTTER_AGENT_SERVICE_ACCOUNTS]",
      list,
      undefined as unknown as string[],
    )
    .option(
      "--agent-audience <aud>",
      "audience of the agents' projected tokens [env KEYCUTTER_AGENT_AUDIENCE]",
      env("KEYCUTTER_AGENT_AUDIENCE") ?? "keycutter",
    )
    .option(
      "--pod-token-audience <aud>",
      "audience of pods' own tokens (container-credentials path) [env KEYCUTTER_POD_TOKEN_AUDIENCE]",
      env("KEYCUTTER_POD_TOKEN_AUDIENCE") ?? "keycutter-pod",
    )
    .option(
      "--cluster-name <name>",
      "cluster name for session tags and templates [env KEYCUTTER_CLUSTER_NAME]",
      env("KEYCUTTER_CLUSTER_NAME") ?? "",
    )
    .option(
      "--region <region>",
      "STS region [env AWS_REGION]",
      env("AWS_REGION") ?? env("AWS_DEFAULT_REGION") ?? "us-east-1",
    )
    .option(
      "--sts-endpoint <url>",
      "STS endpoint URL [env KEYCUTTER_STS_ENDPOINT, AWS_ENDPOINT_URL_STS]",
      env("KEYCUTTER_STS_ENDPOINT") ?? env("AWS_ENDPOINT_URL_STS"),
    )
    .option(
      "--max-duration <seconds>",
      "cap on session duration (3600 when the server's own credentials are a role session) [env KEYCUTTER_MAX_DURATION]",
      env("KEYCUTTER_MAX_DURATION") ?? "3600",
    )
    .option(
      "--no-source-identity",
      "do not set SourceIdentity (roles whose trust policy lacks sts:SetSourceIdentity)",
    )
    .option(
      "--cache-min-remaining <seconds>",
      "reuse cached credentials while this much lifetime is left",
      env("KEYCUTTER_CACHE_MIN_REMAINING") ?? "2700",
    )
    .option(
      "--sts-rate <per-second>",
      "sustained STS AssumeRole calls per second",
      env("KEYCUTTER_STS_RATE") ?? "50",
    )
    .option("--sts-burst <n>", "STS call burst", env("KEYCUTTER_STS_BURST") ?? "200")
    .option(
      "--sts-max-attempts <n>",
      "attempts per AssumeRole on throttling/transient errors",
      env("KEYCUTTER_STS_MAX_ATTEMPTS") ?? "5",
    )
    .option(
      "--agent-review-rate <per-second>",
      "TokenReviews per second for agent tokens, all sources together (burst: twice this) [env KEYCUTTER_AGENT_REVIEW_RATE]",
      env("KEYCUTTER_AGENT_REVIEW_RATE") ?? "100",
    )
    .option(
      "--agent-review-rate-per-source <per-second>",
      "TokenReviews per second for agent tokens from one client address (burst: four times this) [env KEYCUTTER_AGENT_REVIEW_RATE_PER_SOURCE]",
      env("KEYCUTTER_AGENT_REVIEW_RATE_PER_SOURCE") ?? "5",
    )
    .option(
      "--pod-review-rate <per-second>",
      "TokenReviews per second for pod tokens (container-credentials path), all nodes together (burst: twice this) [env KEYCUTTER_POD_REVIEW_RATE]",
      env("KEYCUTTER_POD_REVIEW_RATE") ?? "200",
    )
    .option(
      "--pod-review-rate-per-node <per-second>",
      "TokenReviews per second for pod tokens from one node's agent (burst: six times this) [env KEYCUTTER_POD_REVIEW_RATE_PER_NODE]",
      env("KEYCUTTER_POD_REVIEW_RATE_PER_NODE") ?? "50",
    )
    .option(
      "--redis-url <url>",
      "shared cache (Redis/Valkey/Dragonfly), e.g. redis://redis:6379 or rediss://... [env KEYCUTTER_REDIS_URL]",
      env("KEYCUTTER_REDIS_URL"),
    )
    .option(
      "--cache-key-file <file>",
      "32-byte AES-256-GCM key (raw, hex or base64) for the shared cache [env KEYCUTTER_CACHE_KEY_FILE]",
      env("KEYCUTTER_CACHE_KEY_FILE"),
    )
    .option(
      "--audit-log <dest>",
      "audit records: stdout, stderr or a file path [env KEYCUTTER_AUDIT_LOG]",
      env("KEYCUTTER_AUDIT_LOG") ?? "stdout",
    )
    .option("--no-leader-elect", "do not run leader election (no status writing)")
    .option(
      "--lease-namespace <ns>",
      "namespace of the leader-election Lease [env POD_NAMESPACE]",
      env("POD_NAMESPACE") ?? "keycutter-system",
    )
    .option("--lease-name <name>", "name of the leader-election Lease", "keycutter-server")
    .option(
      "--identity <id>",
      "this replica's identity in the Lease [env POD_NAME]",
      env("POD_NAME") ?? hostname(),
    )
    .action(async (o: Record<string, unknown>) => {
      const { startServer } = await import("../../server/index.ts");
      const listen = hostPort(String(o.listen), "--listen");
      const ops = hostPort(String(o.opsListen), "--ops-listen");
      const sas =
        (o.agentServiceAccount as string[] | undefined) ??
        list(env("KEYCUTTER_AGENT_SERVICE_ACCOUNTS") ?? "keycutter-system/keycutter-agent");
      for (const sa of sas)
        if (!/^[a-z0-9.-]+\/[a-z0-9.-]+$/.test(sa))
          throw new Error(`--agent-service-account: expected NAMESPACE/NAME, got "${sa}"`);
      const num = (k: string) => {
        const n = Number(o[k]);
        if (!Number.isFinite(n) || n <= 0) throw new Error(`--${k}: expected a positive number`);
        return n;
      };
      const running = await startServer({
        listenHost: listen.host,
        listenPort: listen.port,
        opsHost: ops.host,
        opsPort: ops.port,
        ...(o.tlsCert ? { tlsCertFile: String(o.tlsCert) } : {}),
        ...(o.tlsKey ? { tlsKeyFile: String(o.tlsKey) } : {}),
        insecureHttp: o.insecureHttp === true,
        ...(o.kubeconfig ? { kubeconfig: String(o.kubeconfig) } : {}),
        agentServiceAccounts: sas,
        agentAudience: String(o.agentAudience),
        podTokenAudience: String(o.podTokenAudience),
        clusterName: String(o.clusterName ?? ""),
        region: String(o.region),
        ...(o.stsEndpoint ? { stsEndpoint: String(o.stsEndpoint) } : {}),
        maxDurationSeconds: num("maxDuration"),
        sourceIdentity: o.sourceIdentity !== false,
        cacheMinRemainingSeconds: num("cacheMinRemaining"),
        stsRatePerSecond: num("stsRate"),
        stsBurst: num("stsBurst"),
        stsMaxAttempts: num("stsMaxAttempts"),
        agentReviewBudget: {
          ratePerSecond: num("agentReviewRate"),
          burst: 2 * num("agentReviewRate"),
          perSourceRatePerSecond: num("agentReviewRatePerSource"),
          perSourceBurst: 4 * num("agentReviewRatePerSource"),
        },
        podReviewBudget: {
          ratePerSecond: num("podReviewRate"),
          burst: 2 * num("podReviewRate"),
          perSourceRatePerSecond: num("podReviewRatePerNode"),
          perSourceBurst: 6 * num("podReviewRatePerNode"),
        },
        ...(o.redisUrl ? { redisUrl: String(o.redisUrl) } : {}),
        ...(o.cacheKeyFile ? { cacheKeyFile: String(o.cacheKeyFile) } : {}),
        auditLog: String(o.auditLog),
        leaderElection: o.leaderElect !== false,
        leaseNamespace: String(o.leaseNamespace),
        leaseName: String(o.leaseName),
        identity: String(o.identity),
      });
      let stopping = false;
      const shutdown = () => {
        if (stopping) return;
        stopping = true;
        void running.stop().finally(() => process.exit(0));
      };
      process.on("SIGTERM", shutdown);
      process.on("SIGINT", shutdown);
    });
}
