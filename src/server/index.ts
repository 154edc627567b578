// Assembles the central security service: TokenReview, pod lookup, policy informers, STS,
// caches, audit, metrics, the API and ops listeners, and (leader only) the status writer.

import { systemClock } from "../common/clock.ts";
import { createLogger } from "../common/logger.ts";
import { loadKubeConfig } from "../k8s/kube-config.ts";
import { StsIssuer, type StsIssuerOptions } from "../aws/sts.ts";
import { PodLookup } from "./k8s/pod-lookup.ts";
import { PolicyInformers } from "./k8s/policy-informers.ts";
import { KeycutterError } from "../api/errors.ts";
import { ReviewThrottled, TokenReviewer, type ReviewedIdentity } from "./k8s/token-review.ts";
import { LeaderElector } from "./k8s/leader-election.ts";
import { PolicyStatusWriter } from "./k8s/policy-status.ts";
import { createAuditLogger } from "./audit.ts";
import { loadKey, SharedStore } from "./cache.ts";
import { startApiServer, startOpsServer } from "./http.ts";
import { createServerMetrics, type ServerMetrics } from "./metrics.ts";
import { PolicyEpochs } from "./policy-epochs.ts";
import { CredentialService, type ServiceOptions } from "./service.ts";
import { SERVER_DEFAULTS, type ServerConfig } from "./config.ts";
import { ApiEventWriter } from "./events/api-writer.ts";
import { credentialEvents } from "./events/credential-events.ts";
import { EventRecorder } from "./events/recorder.ts";
import { startServingTls } from "./tls/setup.ts";

export type { ServerConfig } from "./config.ts";

export interface RunningServer {
  apiPort: number;
  opsPort: number;
  metrics: ServerMetrics;
  service: CredentialService;
  informers: PolicyInformers;
  reviewer: TokenReviewer;
  epochs: PolicyEpochs;
  shared?: SharedStore;
  elector?: LeaderElector;
  ready(): boolean;
  stop(): Promise<void>;
}

export async function startServer(cfg: ServerConfig): Promise<RunningServer> {
  const log = cfg.log ?? createLogger("server");
  const clock = cfg.clock ?? systemClock;
  const kc = loadKubeConfig(cfg.kubeconfig);
  const metrics = createServerMetrics();
  const audit = cfg.audit ?? createAuditLogger(cfg.auditLog).sink;
  const reviewer = new TokenReviewer(kc, {
    ...(cfg.agentReviewBudget ? { agent: cfg.agentReviewBudget } : {}),
    ...(cfg.podReviewBudget ? { pod: cfg.podReviewBudget } : {}),
    ...(cfg.reviewCacheEntries ? { maxEntries: cfg.reviewCacheEntries } : {}),
    onOutcome: (kind, outcome) => metrics.tokenChecks.inc({ kind, outcome }),
    clock,
  });
  const agentServiceAccounts = new Set(cfg.agentServiceAccounts);
  const reviewPodToken = async (token: string, nodeName: string): Promise<ReviewedIdentity> => {
    try {
      return await reviewer.review(token, {
        kind: "pod",
        audience: cfg.podTokenAudience,
        source: nodeName,
        requireNode: false,
      });
    } catch (e) {
      if (e instanceof ReviewThrottled) throw new KeycutterError("Throttled", e.message, { cause: e });
      throw e;
    }
  };
  const pods = new PodLookup(kc, { clock });
  const informers = new PolicyInformers(kc, log, { timers: clock });

  let shared: SharedStore | undefined;
  if (cfg.redisUrl) {
    if (!cfg.cacheKeyFile)
      throw new Error("--cache-key-file is required with --redis-url (cached credentials are encrypted)");
    shared = new SharedStore({
      url: cfg.redisUrl,
      key: loadKey(cfg.cacheKeyFile),
      log,
      clock,
      metrics: { onStoreError: (op) => metrics.sharedStoreErrors.inc({ op }) },
    });
  }

  const stsOpts: StsIssuerOptions = {
    region: cfg.region,
    maxAttempts: cfg.stsMaxAttempts,
    clock,
    onAttempt: (outcome, seconds) => {
      metrics.stsRequests.inc({ outcome });
      metrics.stsLatency.observe({ outcome }, seconds);
    },
  };
  if (cfg.stsEndpoint) stsOpts.endpoint = cfg.stsEndpoint;
  if (cfg.awsCredentials) stsOpts.credentials = cfg.awsCredentials;
  if (cfg.onStsCall) stsOpts.onCall = cfg.onStsCall;
  const sts = new StsIssuer(stsOpts);

  const status = new PolicyStatusWriter(kc, informers, pods, log, {
    clusterName: cfg.clusterName,
    maxDurationSeconds: cfg.maxDurationSeconds,
    intervalMs: cfg.statusIntervalMs ?? SERVER_DEFAULTS.statusIntervalMs,
    clock,
  });

  const epochs = new PolicyEpochs(informers, {
    ...(cfg.epochHoldMs !== undefined ? { holdMs: cfg.epochHoldMs } : {}),
    timers: clock,
  });

  const eventWriter = new ApiEventWriter(kc);
  const recorder = new EventRecorder({
    writer: eventWriter,
    reportingInstance: cfg.identity,
    clock,
    onOutcome: (outcome) => metrics.events.inc({ outcome }),
    // debug: the metric counts failures, and a missing RBAC rule must not flood the log
    onError: (err, event) => log.debug({ err, ...event }, "event write failed"),
  });
  recorder.start();
  const events = credentialEvents(recorder);

  const svcOpts: Partial<ServiceOptions> = {
    clusterName: cfg.clusterName,
    maxDurationSeconds: cfg.maxDurationSeconds,
    sourceIdentity: cfg.sourceIdentity,
    cacheMinRemainingSeconds: cfg.cacheMinRemainingSeconds,
    stsRatePerSecond: cfg.stsRatePerSecond,
    stsBurst: cfg.stsBurst,
  };
  const service = new CredentialService(
    {
      pods,
      policies: informers,
      reviewPodToken: (token, agent) => reviewPodToken(token, agent.nodeName),
      sts,
      ...(shared ? { shared } : {}),
      epochs,
      audit,
      metrics,
      log,
      events,
      clock,
      observe: (p, reason, message) => {
        status.observe(p, reason, message);
        events.policyRefused(p, reason, message);
      },
    },
    svcOpts,
  );

  await informers.start();
  informers.onChange(() => status.kick());
  informers.onChange(() => epochs.changed());

  let elector: LeaderElector | undefined;
  // before the listener: it serves nothing until it has a certificate (self-managed: created or
  // loaded from the Secret); rotation is the leader's, or this replica's without an election
  const tls = await startServingTls(cfg, kc, log, () => (elector ? elector.isLeader : true));
  if (cfg.leaderElection) {
    elector = new LeaderElector(kc, log, {
      namespace: cfg.leaseNamespace,
      name: cfg.leaseName,
      identity: cfg.identity,
      clock,
      onStartedLeading: () => {
        metrics.leader.set(1);
        status.start();
      },
      onStoppedLeading: () => {
        metrics.leader.set(0);
        status.stop();
      },
    });
    elector.start();
  }

  const api = await startApiServer(
    {
      ...(tls ? { tls } : {}),
      insecure: cfg.insecureHttp === true,
      agentServiceAccounts: cfg.agentServiceAccounts,
      reviewAgentToken: (token, source) =>
        reviewer.review(token, {
          kind: "agent",
          audience: cfg.agentAudience,
          source,
          serviceAccounts: agentServiceAccounts,
          requireNode: true,
        }),
      service,
      epochs,
      log,
      metrics,
      auditAuthFailure: (code, reason) => {
        metrics.decisions.inc({ outcome: code });
        audit({ decision: "denied", code, reason });
      },
    },
    cfg.listenHost,
    cfg.listenPort,
  );
  const ready = () => informers.synced;
  const ops = await startOpsServer(metrics.registry, ready, cfg.opsHost, cfg.opsPort);
  log.info(
    {
      apiPort: api.port,
      opsPort: ops.port,
      tls: cfg.insecureHttp ? "off" : cfg.tlsSecret ? "self-managed" : "files",
      redis: Boolean(shared),
      identity: cfg.identity,
    },
    "keycutter server listening",
  );

  const result: RunningServer = {
    apiPort: api.port,
    opsPort: ops.port,
    metrics,
    service,
    informers,
    reviewer,
    epochs,
    ready,
    async stop() {
      if (stopped) return stopped;
      stopped = doStop();
      return stopped;
    },
  };
  let stopped: Promise<void> | undefined;
  const doStop = async () => {
    epochs.close();
    await api.close();
    tls?.stop();
    await ops.close();
    status.stop();
    await elector?.stop();
    await informers.stop();
    service.close();
    recorder.close();
    eventWriter.close();
    sts.destroy();
    await shared?.close();
    reviewer.close();
    pods.close();
  };
  if (shared) result.shared = shared;
  if (elector) result.elector = elector;
  return result;
}
