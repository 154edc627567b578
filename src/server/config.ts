// The central security service's configuration: its shape and its defaults, in one place. The CLI
// (src/cli/commands/server.ts), the server itself and the tests read SERVER_DEFAULTS, so a test
// cannot run the server with values production does not have without saying so. Type imports
// only: the CLI reads this module in every process, the agent's too, and the server's code stays
// out of the agent's memory (src/cli/commands/server.ts loads it only to run the server).

import type { AssumeRoleCommandInput } from "@aws-sdk/client-sts";
import type { Clock } from "../common/clock.ts";
import type { Logger } from "../common/logger.ts";
import type { ReviewBudget } from "./k8s/token-review.ts";
import type { AuditSink } from "./audit.ts";

export interface ServerConfig {
  listenHost: string;
  listenPort: number;
  opsHost: string;
  opsPort: number;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  /** Self-managed TLS: the Secret (in tlsNamespace) holding the server's own CA and certificate. */
  tlsSecret?: string;
  tlsNamespace: string;
  /** The ConfigMap (in tlsNamespace) the self-managed CA bundle is published in for agents. */
  tlsCaConfigMap: string;
  /** DNS names and IP addresses of the self-managed serving certificate. */
  tlsSans: string[];
  tlsCertLifetimeSeconds: number;
  tlsCaLifetimeSeconds: number;
  /** Renew a self-managed certificate when this fraction of its lifetime has passed. */
  tlsRenewAtFraction: number;
  /** How long a new CA stays in the bundle before a certificate it signed is served. */
  tlsBundlePropagationSeconds: number;
  /** How often each replica re-reads the self-managed Secret. */
  tlsSyncSeconds: number;
  insecureHttp?: boolean;
  /** Kubeconfig path; undefined: in-cluster, then the default loading rules. */
  kubeconfig?: string;
  agentServiceAccounts: string[];
  agentAudience: string;
  podTokenAudience: string;
  /** TokenReview budgets: agent tokens (per client address) and pod tokens (per node), apart. */
  agentReviewBudget?: Partial<ReviewBudget>;
  podReviewBudget?: Partial<ReviewBudget>;
  /** Bound of each token cache (accepted, rejected) and of the per-source maps (default 10000). */
  reviewCacheEntries?: number;
  clusterName: string;
  region: string;
  stsEndpoint?: string;
  /** Static credentials for the server itself (tests); otherwise the default provider chain. */
  awsCredentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  maxDurationSeconds: number;
  sourceIdentity: boolean;
  cacheMinRemainingSeconds: number;
  stsRatePerSecond: number;
  stsBurst: number;
  stsMaxAttempts: number;
  redisUrl?: string;
  cacheKeyFile?: string;
  auditLog: string;
  leaderElection: boolean;
  leaseNamespace: string;
  leaseName: string;
  identity: string;
  statusIntervalMs?: number;
  /** How long an agent's epoch poll is held with nothing changed (tests shorten it). */
  epochHoldMs?: number;
  /** Test hook: every AssumeRole input. */
  onStsCall?: (input: AssumeRoleCommandInput) => void;
  audit?: AuditSink;
  log?: Logger;
  /** The one clock every timed part of the server runs on (default the system's). */
  clock?: Clock;
}

/** The self-managed certificate's settings (all have defaults), as tls/setup.ts reads them. */
export type SelfManagedTlsSetting =
  | "tlsNamespace"
  | "tlsCaConfigMap"
  | "tlsSans"
  | "tlsCertLifetimeSeconds"
  | "tlsCaLifetimeSeconds"
  | "tlsRenewAtFraction"
  | "tlsBundlePropagationSeconds"
  | "tlsSyncSeconds";

/** Every setting that has a default; the rest (identity, files, URLs) have none or come from the environment. */
export type ServerDefaults = Required<
  Pick<
    ServerConfig,
    | "listenHost"
    | "listenPort"
    | "opsHost"
    | "opsPort"
    | "insecureHttp"
    | "agentServiceAccounts"
    | "agentAudience"
    | "podTokenAudience"
    | "clusterName"
    | "region"
    | "maxDurationSeconds"
    | "sourceIdentity"
    | "cacheMinRemainingSeconds"
    | "stsRatePerSecond"
    | "stsBurst"
    | "stsMaxAttempts"
    | "auditLog"
    | "leaderElection"
    | "leaseNamespace"
    | "leaseName"
    | "statusIntervalMs"
    | SelfManagedTlsSetting
  >
> & { agentReviewBudget: ReviewBudget; podReviewBudget: ReviewBudget };

export const SERVER_DEFAULTS: ServerDefaults = {
  listenHost: "0.0.0.0",
  listenPort: 8443,
  opsHost: "0.0.0.0",
  opsPort: 9090,
  insecureHttp: false,
  agentServiceAccounts: ["keycutter-system/keycutter-agent"],
  agentAudience: "keycutter",
  podTokenAudience: "keycutter-pod",
  clusterName: "",
  region: "us-east-1",
  // the same as the service's and the TokenReviewer's own defaults (DEFAULT_SERVICE_OPTIONS,
  // DEFAULT_REVIEW_BUDGETS); test/unit/server/config.test.ts keeps them in step
  maxDurationSeconds: 3600,
  sourceIdentity: true,
  cacheMinRemainingSeconds: 2700,
  stsRatePerSecond: 50,
  stsBurst: 200,
  stsMaxAttempts: 5,
  agentReviewBudget: { ratePerSecond: 100, burst: 200, perSourceRatePerSecond: 5, perSourceBurst: 20 },
  podReviewBudget: { ratePerSecond: 200, burst: 400, perSourceRatePerSecond: 50, perSourceBurst: 300 },
  auditLog: "stdout",
  leaderElection: true,
  leaseNamespace: "keycutter-system",
  leaseName: "keycutter-server",
  statusIntervalMs: 30_000,
  tlsNamespace: "keycutter-system",
  tlsCaConfigMap: "keycutter-server-ca",
  tlsSans: [],
  // cert-manager's defaults for the serving certificate (90 days, renewed at 2/3); the CA lives
  // a year and is rotated the same way, through the bundle
  tlsCertLifetimeSeconds: 90 * 86_400,
  tlsCaLifetimeSeconds: 365 * 86_400,
  tlsRenewAtFraction: 0.6667, // 2/3, as the chart's values can write it
  // the kubelet refreshes a mounted ConfigMap within its sync period plus its cache TTL (about
  // two minutes at the defaults); the agent re-reads the file every few seconds
  tlsBundlePropagationSeconds: 300,
  tlsSyncSeconds: 30,
};
