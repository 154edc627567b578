import { hostname } from "node:os";
import type { Command } from "commander";
import { InvalidValue } from "../../common/config-values.ts";
import type { ReviewBudget } from "../../server/k8s/token-review.ts";
import { SERVER_DEFAULTS, type ServerConfig } from "../../server/config.ts";
import { FlagSource, configOrExit, type Environment, type ParsedFlags } from "../flag-source.ts";

const SERVICE_ACCOUNT = /^[a-z0-9.-]+\/[a-z0-9.-]+$/;
const POSITIVE = { min: 1 };
// rates may be fractions ("0.5" a second), never zero: a zero budget refuses everything
const POSITIVE_RATE = { above: 0 };
// self-managed certificate lifetimes: 10 s (tests) to 10 years
const TLS_LIFETIME = { min: 10, max: 10 * 365 * 86_400 };

/**
 * A TokenReview budget from its two rates; the bursts keep the defaults' proportion to their
 * rates (agent tokens: twice the rate, four times per source; pod tokens: twice, six times).
 */
function reviewBudget(rate: number, perSourceRate: number, defaults: ReviewBudget): ReviewBudget {
  return {
    ratePerSecond: rate,
    burst: rate * (defaults.burst / defaults.ratePerSecond),
    perSourceRatePerSecond: perSourceRate,
    perSourceBurst: perSourceRate * (defaults.perSourceBurst / defaults.perSourceRatePerSecond),
  };
}

function serviceAccount(text: string): string {
  if (!SERVICE_ACCOUNT.test(text))
    throw new InvalidValue(`expected NAMESPACE/NAME, got ${JSON.stringify(text.slice(0, 80))}`);
  return text;
}

/**
 * The server configuration from parsed flags and the environment, as a pure function: defaults
 * (SERVER_DEFAULTS) → flag, else environment variable → validated values. Bad values throw one
 * ConfigError naming the flag and its environment variable.
 */
export function serverConfigFrom(
  opts: ParsedFlags,
  env: Environment = process.env,
  host: string = hostname(),
): ServerConfig {
  const flags = new FlagSource(opts, env);
  const defaults = SERVER_DEFAULTS;
  const listen = flags.hostPort("--listen", { host: defaults.listenHost, port: defaults.listenPort });
  const ops = flags.hostPort("--ops-listen", { host: defaults.opsHost, port: defaults.opsPort });
  const agentRate = flags.number(
    "--agent-review-rate",
    defaults.agentReviewBudget.ratePerSecond,
    POSITIVE_RATE,
  );
  const agentRatePerSource = flags.number(
    "--agent-review-rate-per-source",
    defaults.agentReviewBudget.perSourceRatePerSecond,
    POSITIVE_RATE,
  );
  const podRate = flags.number("--pod-review-rate", defaults.podReviewBudget.ratePerSecond, POSITIVE_RATE);
  const podRatePerNode = flags.number(
    "--pod-review-rate-per-node",
    defaults.podReviewBudget.perSourceRatePerSecond,
    POSITIVE_RATE,
  );
  const tlsCertFile = flags.string("--tls-cert");
  const tlsKeyFile = flags.string("--tls-key");
  const tlsSecret = flags.string("--tls-secret");
  const kubeconfig = flags.string("--kubeconfig");
  const stsEndpoint = flags.url("--sts-endpoint", ["https:", "http:"], "AWS_ENDPOINT_URL_STS");
  const redisUrl = flags.url("--redis-url", ["redis:", "rediss:"]);
  const cacheKeyFile = flags.string("--cache-key-file");
  return {
    listenHost: listen.host,
    listenPort: listen.port,
    opsHost: ops.host,
    opsPort: ops.port,
    ...(tlsCertFile ? { tlsCertFile } : {}),
    ...(tlsKeyFile ? { tlsKeyFile } : {}),
    ...(tlsSecret ? { tlsSecret } : {}),
    tlsNamespace: flags.string("--tls-namespace", "POD_NAMESPACE") ?? defaults.tlsNamespace,
    tlsCaConfigMap: flags.string("--tls-ca-configmap") ?? defaults.tlsCaConfigMap,
    tlsSans: flags.list("--tls-san", defaults.tlsSans),
    tlsCertLifetimeSeconds: flags.duration(
      "--tls-cert-lifetime",
      "s",
      defaults.tlsCertLifetimeSeconds,
      TLS_LIFETIME,
    ),
    tlsCaLifetimeSeconds: flags.duration(
      "--tls-ca-lifetime",
      "s",
      defaults.tlsCaLifetimeSeconds,
      TLS_LIFETIME,
    ),
    tlsRenewAtFraction: flags.number("--tls-renew-at", defaults.tlsRenewAtFraction, { above: 0, max: 0.95 }),
    tlsBundlePropagationSeconds: flags.duration(
      "--tls-bundle-propagation",
      "s",
      defaults.tlsBundlePropagationSeconds,
      { max: TLS_LIFETIME.max },
    ),
    tlsSyncSeconds: flags.duration("--tls-sync-interval", "s", defaults.tlsSyncSeconds, {
      min: 1,
      max: 3600,
    }),
    insecureHttp: flags.boolean("--insecure-http", defaults.insecureHttp),
    ...(kubeconfig ? { kubeconfig } : {}),
    agentServiceAccounts: flags.list(
      "--agent-service-account",
      defaults.agentServiceAccounts,
      serviceAccount,
      "KEYCUTTER_AGENT_SERVICE_ACCOUNTS",
    ),
    agentAudience: flags.string("--agent-audience") ?? defaults.agentAudience,
    podTokenAudience: flags.string("--pod-token-audience") ?? defaults.podTokenAudience,
    clusterName: flags.string("--cluster-name") ?? defaults.clusterName,
    region: flags.string("--region", "AWS_REGION", "AWS_DEFAULT_REGION") ?? defaults.region,
    ...(stsEndpoint ? { stsEndpoint } : {}),
    maxDurationSeconds: flags.duration("--max-duration", "s", defaults.maxDurationSeconds, POSITIVE),
    sourceIdentity: flags.boolean("--source-identity", defaults.sourceIdentity),
    cacheMinRemainingSeconds: flags.duration(
      "--cache-min-remaining",
      "s",
      defaults.cacheMinRemainingSeconds,
      POSITIVE,
    ),
    stsRatePerSecond: flags.number("--sts-rate", defaults.stsRatePerSecond, POSITIVE_RATE),
    stsBurst: flags.integer("--sts-burst", defaults.stsBurst, POSITIVE),
    stsMaxAttempts: flags.integer("--sts-max-attempts", defaults.stsMaxAttempts, POSITIVE),
    agentReviewBudget: reviewBudget(agentRate, agentRatePerSource, defaults.agentReviewBudget),
    podReviewBudget: reviewBudget(podRate, podRatePerNode, defaults.podReviewBudget),
    ...(redisUrl ? { redisUrl } : {}),
    ...(cacheKeyFile ? { cacheKeyFile } : {}),
    auditLog: flags.string("--audit-log") ?? defaults.auditLog,
    leaderElection: flags.boolean("--leader-elect", defaults.leaderElection),
    leaseNamespace: flags.string("--lease-namespace", "POD_NAMESPACE") ?? defaults.leaseNamespace,
    leaseName: flags.string("--lease-name") ?? defaults.leaseName,
    identity: flags.string("--identity", "POD_NAME") ?? host,
  };
}

const repeatable = (value: string, previous: string[] = []): string[] => [...previous, value];

export function registerServerCommands(program: Command): void {
  const d = SERVER_DEFAULTS;
  program
    .command("server")
    .description("run the central security service (agents → TokenReview → policies → STS)")
    .option(
      "--listen <host:port>",
      `API (HTTPS) address (default ${d.listenHost}:${d.listenPort}) [env KEYCUTTER_LISTEN]`,
    )
    .option(
      "--ops-listen <host:port>",
      `plain-HTTP /healthz /readyz /metrics (default ${d.opsHost}:${d.opsPort}) [env KEYCUTTER_OPS_LISTEN]`,
    )
    .option("--tls-cert <file>", "PEM certificate chain, reloaded on change [env KEYCUTTER_TLS_CERT]")
    .option("--tls-key <file>", "PEM private key [env KEYCUTTER_TLS_KEY]")
    .option(
      "--tls-secret <name>",
      "self-managed TLS: the Secret holding the server's own CA and certificate, created when absent, rotated before expiry [env KEYCUTTER_TLS_SECRET]",
    )
    .option(
      "--tls-namespace <namespace>",
      `namespace of --tls-secret and --tls-ca-configmap (default ${d.tlsNamespace}) [env POD_NAMESPACE]`,
    )
    .option(
      "--tls-ca-configmap <name>",
      `self-managed TLS: the ConfigMap the CA bundle agents trust is published in (default ${d.tlsCaConfigMap})`,
    )
    .option(
      "--tls-san <name>",
      "self-managed TLS: a DNS name or IP address of the serving certificate (repeatable, comma-separated) [env KEYCUTTER_TLS_SAN]",
      repeatable,
    )
    .option(
      "--tls-cert-lifetime <seconds>",
      `self-managed TLS: serving certificate lifetime (default ${d.tlsCertLifetimeSeconds}, 90 days)`,
    )
    .option(
      "--tls-ca-lifetime <seconds>",
      `self-managed TLS: CA lifetime (default ${d.tlsCaLifetimeSeconds}, 365 days)`,
    )
    .option(
      "--tls-renew-at <fraction>",
      "self-managed TLS: renew a certificate when this fraction of its lifetime has passed (default 2/3)",
    )
    .option(
      "--tls-bundle-propagation <seconds>",
      `self-managed TLS: how long a new CA is in the agents' bundle before it signs the served certificate (default ${d.tlsBundlePropagationSeconds})`,
    )
    .option(
      "--tls-sync-interval <seconds>",
      `self-managed TLS: how often each replica re-reads the Secret (default ${d.tlsSyncSeconds})`,
    )
    .option("--insecure-http", "serve the API over plain HTTP (development only)")
    .option("--kubeconfig <file>", "kubeconfig (default: in-cluster, then $KUBECONFIG) [env KUBECONFIG]")
    .option(
      "--agent-service-account <ns/name,...>",
      `service account(s) agents run as (repeatable; default ${d.agentServiceAccounts.join(",")}) [env KEYCUTTER_AGENT_SERVICE_ACCOUNTS]`,
      repeatable,
    )
    .option(
      "--agent-audience <aud>",
      `audience of the agents' projected tokens (default ${d.agentAudience}) [env KEYCUTTER_AGENT_AUDIENCE]`,
    )
    .option(
      "--pod-token-audience <aud>",
      `audience of pods' own tokens, container-credentials path (default ${d.podTokenAudience}) [env KEYCUTTER_POD_TOKEN_AUDIENCE]`,
    )
    .option(
      "--cluster-name <name>",
      "cluster name for session tags and templates [env KEYCUTTER_CLUSTER_NAME]",
    )
    .option("--region <region>", `STS region (default ${d.region}) [env AWS_REGION]`)
    .option("--sts-endpoint <url>", "STS endpoint URL [env KEYCUTTER_STS_ENDPOINT, AWS_ENDPOINT_URL_STS]")
    .option(
      "--max-duration <seconds>",
      `cap on session duration (default ${d.maxDurationSeconds}; 3600 when the server's own credentials are a role session) [env KEYCUTTER_MAX_DURATION]`,
    )
    .option(
      "--no-source-identity",
      "do not set SourceIdentity (roles whose trust policy lacks sts:SetSourceIdentity)",
    )
    .option(
      "--cache-min-remaining <seconds>",
      `reuse cached credentials while this much lifetime is left (default ${d.cacheMinRemainingSeconds}) [env KEYCUTTER_CACHE_MIN_REMAINING]`,
    )
    .option(
      "--sts-rate <per-second>",
      `sustained STS AssumeRole calls per second (default ${d.stsRatePerSecond}) [env KEYCUTTER_STS_RATE]`,
    )
    .option("--sts-burst <n>", `STS call burst (default ${d.stsBurst}) [env KEYCUTTER_STS_BURST]`)
    .option(
      "--sts-max-attempts <n>",
      `attempts per AssumeRole on throttling/transient errors (default ${d.stsMaxAttempts}) [env KEYCUTTER_STS_MAX_ATTEMPTS]`,
    )
    .option(
      "--agent-review-rate <per-second>",
      `TokenReviews per second for agent tokens, all sources together (burst: twice this; default ${d.agentReviewBudget.ratePerSecond}) [env KEYCUTTER_AGENT_REVIEW_RATE]`,
    )
    .option(
      "--agent-review-rate-per-source <per-second>",
      `TokenReviews per second for agent tokens from one client address (burst: four times this; default ${d.agentReviewBudget.perSourceRatePerSecond}) [env KEYCUTTER_AGENT_REVIEW_RATE_PER_SOURCE]`,
    )
    .option(
      "--pod-review-rate <per-second>",
      `TokenReviews per second for pod tokens (container-credentials path), all nodes together (burst: twice this; default ${d.podReviewBudget.ratePerSecond}) [env KEYCUTTER_POD_REVIEW_RATE]`,
    )
    .option(
      "--pod-review-rate-per-node <per-second>",
      `TokenReviews per second for pod tokens from one node's agent (burst: six times this; default ${d.podReviewBudget.perSourceRatePerSecond}) [env KEYCUTTER_POD_REVIEW_RATE_PER_NODE]`,
    )
    .option(
      "--redis-url <url>",
      "shared cache (Redis/Valkey/Dragonfly), e.g. redis://redis:6379 or rediss://... [env KEYCUTTER_REDIS_URL]",
    )
    .option(
      "--cache-key-file <file>",
      "32-byte AES-256-GCM key (raw, hex or base64) for the shared cache [env KEYCUTTER_CACHE_KEY_FILE]",
    )
    .option(
      "--audit-log <dest>",
      `audit records: stdout, stderr or a file path (default ${d.auditLog}) [env KEYCUTTER_AUDIT_LOG]`,
    )
    .option("--no-leader-elect", "do not run leader election (no status writing)")
    .option(
      "--lease-namespace <ns>",
      `namespace of the leader-election Lease (default ${d.leaseNamespace}) [env POD_NAMESPACE]`,
    )
    .option("--lease-name <name>", `name of the leader-election Lease (default ${d.leaseName})`)
    .option("--identity <id>", "this replica's identity in the Lease (default: the host name) [env POD_NAME]")
    .action(async (opts: ParsedFlags) => {
      const config = configOrExit("server", () => serverConfigFrom(opts));
      const { startServer } = await import("../../server/index.ts");
      const running = await startServer(config);
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
