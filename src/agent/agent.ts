// Wires the node agent: pod watch → pod index → credential cache, the pod-facing listeners, the
// ops listener (/healthz, /readyz, /metrics) and the iptables hook.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync } from "node:fs";
import { createLogger, type Logger } from "../common/logger.ts";
import { PodWatch } from "./pod-watch.ts";
import { ApiClient } from "../k8s/api-client.ts";
import { inClusterConfig, kubeconfigFromFile } from "../k8s/rest-config.ts";
import { PodIndex, podFinished } from "./pod-index.ts";
import { CniState } from "./cni-state.ts";
import { CredCache } from "./cred-cache.ts";
import { ImdsTokens } from "./imds-token.ts";
import { AgentMetrics } from "./metrics.ts";
import { podRequestLimit } from "./pod-request-limit.ts";
import { Passthrough } from "./passthrough.ts";
import { ServerClient } from "./server-client.ts";
import { PolicyEpochWatch } from "./epoch-watch.ts";
import type { HandlerConfig } from "./handler-deps.ts";
import { createImdsHandler } from "./imds-handler.ts";
import { createImdsFastResponder } from "./imds-fast-answers.ts";
import { createContainerHandler } from "./container-handler.ts";
import { ImdsFastPath } from "./imds-fast-path.ts";
import { POD_FACING_LIMITS, podFacingServer, timeoutOptions } from "./pod-facing-server.ts";
import { limitConnectionsPerSource } from "./connection-limit.ts";
import { WaitSlots } from "./wait-slots.ts";
import { Hook, type HookOptions } from "./hook/iptables.ts";
import { removeNodeTaint } from "./ready-taint.ts";
import { notReadyReasons } from "./readiness.ts";
import { closeServer, listen } from "../common/listen.ts";
import { opsHandler } from "../common/ops-listener.ts";
import { AGENT_DEFAULTS } from "./defaults.ts";
import type { HostPort } from "../common/config-values.ts";

export type { HostPort } from "../common/config-values.ts";

export interface AgentConfig extends HandlerConfig {
  nodeName: string;
  serverUrl: string;
  serverCaFile: string | undefined;
  tokenFile: string;
  serverTimeoutMs: number;
  /** undefined: in-cluster configuration. */
  kubeconfig: string | undefined;
  imdsListen: HostPort;
  /** undefined: no container-credentials listener. */
  containerListen: HostPort | undefined;
  opsListen: HostPort;
  passthroughPaths: string[];
  upstreamImdsUrl: string;
  rateLimitRps: number;
  rateLimitBurst: number;
  /** Connections open at once on each pod-facing listener, all sources together. */
  maxConnections: number;
  /** Connections one source IP may hold open on each pod-facing listener. */
  maxConnectionsPerSource: number;
  /** File with the IMDS token HMAC key (kept across restarts); undefined: random per process. */
  imdsTokenKeyFile: string | undefined;
  /** undefined: do not touch iptables. */
  hook: Omit<HookOptions, "imdsPort" | "containerPort"> | undefined;
  /** Remove the hook on shutdown (default false: stay fail-closed while the agent restarts). */
  uninstallHookOnExit: boolean;
  watchStaleAfterMs: number;
  /** Taint key to remove from this node once the agent is ready (startup taint); undefined: none. */
  readyTaintKey: string | undefined;
  /** Re-check (and repair) the hook this often; 0 = only at start. */
  hookResyncMs: number;
  /** Answer cached IMDS requests without node:http (imds-fast-path.ts); false: node:http only. */
  imdsFastPath: boolean;
  /**
   * The node's CNI result cache (cni-state.ts), which says which pod holds an IP before the pod
   * watch does; undefined: not used (the watch alone attributes IPs).
   */
  cniStateDir: string | undefined;
  /** Full rescan of cniStateDir this often (fs.watch reports changes in between); 0: never. */
  cniRescanMs: number;
  /**
   * Credentials neither fetched nor confirmed by the policy-epoch channel for this long are
   * revalidated with the server on next use (default 60 s).
   */
  policyEpochMaxAgeMs?: number;
}

/** The ops listener's connection caps: probes and a scraper need a handful. */
const OPS_MAX_CONNECTIONS = 256;
const OPS_MAX_CONNECTIONS_PER_SOURCE = 16;

export interface RunningAgent {
  imds: AddressInfo;
  container: AddressInfo | undefined;
  ops: AddressInfo;
  index: PodIndex;
  cache: CredCache;
  metrics: AgentMetrics;
  hook: Hook | undefined;
  ready(): boolean;
  stop(): Promise<void>;
}

/** Binds `server` to `hp`; the address it got. */
async function listenOn(server: Server, hp: HostPort): Promise<AddressInfo> {
  return (await listen(server, hp.host, hp.port)).address;
}

export async function startAgent(
  cfg: AgentConfig,
  log: Logger = createLogger("agent"),
): Promise<RunningAgent> {
  const kube = new ApiClient(cfg.kubeconfig ? kubeconfigFromFile(cfg.kubeconfig) : inClusterConfig());

  const client = new ServerClient({
    serverUrl: cfg.serverUrl,
    caFile: cfg.serverCaFile,
    tokenFile: cfg.tokenFile,
    timeoutMs: cfg.serverTimeoutMs,
  });
  const cni = cfg.cniStateDir
    ? new CniState({
        dir: cfg.cniStateDir,
        log,
        rescanMs: cfg.cniRescanMs,
        onChange: (ips) => index.attachmentsChanged(ips),
      })
    : undefined;
  const index = new PodIndex({ attachments: cni, log });
  const late: {
    watch?: PodWatch;
    cache?: CredCache;
    fastPath?: ImdsFastPath;
    epochWatch?: PolicyEpochWatch;
  } = {};
  const metrics = new AgentMetrics({
    podsKnown: () => index.size,
    podsWaiting: () => index.waiting,
    cacheEntries: () => late.cache?.size ?? 0,
    watchStale: () => late.watch?.isStale() ?? true,
    serverReachable: () => client.reachable,
    policyEpochAgeSeconds: () => (late.epochWatch?.ageMs() ?? 0) / 1000,
    fastPath: () => late.fastPath?.stats,
    cniState: () => {
      const s = cni?.status();
      return {
        active: s?.state === "active",
        attachments: s?.state === "active" ? s.attachments : 0,
        ignoredFiles: s?.state === "active" ? s.ignored : 0,
        unconfirmedIps: index.unconfirmedIps,
      };
    },
  });
  const epochWatch: PolicyEpochWatch = new PolicyEpochWatch({
    source: client,
    namespaces: (): Set<string> => cache.namespaces(),
    onEpochs: (epochs) => cache.confirmEpochs(epochs),
    log,
  });
  late.epochWatch = epochWatch;
  const cache: CredCache = new CredCache({
    source: client,
    log,
    metrics,
    requestTimeoutMs: cfg.serverTimeoutMs,
    epochs: epochWatch,
    epochMaxAgeMs: cfg.policyEpochMaxAgeMs ?? AGENT_DEFAULTS.policyEpochMaxAgeMs,
  });
  late.cache = cache;

  index.addListener({
    podChanged(pod, prev) {
      // A changed IP means a new network identity: nothing issued before follows it. The first
      // IP is not a change: credentials are bound to the pod UID, fetched from the moment the pod
      // is bound to this node, so they are ready by the time the CNI has given it an address.
      if (prev && prev.ip !== "" && prev.ip !== pod.ip) cache.drop(pod.uid);
      // a pod in which nothing runs any more can make no request: nothing is kept or renewed for it
      if (podFinished(pod)) cache.drop(pod.uid);
      else if (!pod.hostNetwork && !pod.mirror && !pod.terminating) {
        cache.prefetch(pod);
        epochWatch.cover(pod.namespace);
      }
    },
    podGone(pod) {
      cache.drop(pod.uid);
      log.debug({ pod: `${pod.namespace}/${pod.name}` }, "pod gone, credentials dropped");
    },
  });

  const tokens = new ImdsTokens(cfg.imdsTokenKeyFile ? readFileSync(cfg.imdsTokenKeyFile) : undefined);
  const passthrough =
    cfg.passthroughPaths.length > 0 ? new Passthrough(cfg.upstreamImdsUrl, cfg.passthroughPaths) : undefined;
  const deps = {
    cfg,
    index,
    cache,
    tokens,
    metrics,
    limiter: podRequestLimit(cfg.rateLimitRps, cfg.rateLimitBurst),
    passthrough,
    waits: new WaitSlots(cfg.maxWaiting, cfg.maxWaitingPerSource),
    log,
  };
  const limits = { ...POD_FACING_LIMITS, maxConnections: cfg.maxConnections };
  const imdsServer = podFacingServer(createImdsHandler(deps), log, limits);
  const fastPath = cfg.imdsFastPath ? new ImdsFastPath(imdsServer, createImdsFastResponder(deps)) : undefined;
  late.fastPath = fastPath;
  // after the fast path, so that a connection is counted once, whoever ends up serving it
  limitConnectionsPerSource(imdsServer, cfg.maxConnectionsPerSource, () => metrics.connectionRefused("imds"));
  const containerServer = cfg.containerListen
    ? podFacingServer(createContainerHandler(deps), log, limits)
    : undefined;
  if (containerServer)
    limitConnectionsPerSource(containerServer, cfg.maxConnectionsPerSource, () =>
      metrics.connectionRefused("container"),
    );

  const watch = new PodWatch({
    api: kube,
    nodeName: cfg.nodeName,
    handler: index,
    log,
    staleAfterMs: cfg.watchStaleAfterMs,
    onRestart: (reason) => metrics.watchRestarts.labels(reason).inc(),
  });
  late.watch = watch;

  let probeTimer: NodeJS.Timeout | undefined;
  let hookTimer: NodeJS.Timeout | undefined;
  // With the hook on, not ready until it is in place: pods must not be scheduled onto a node
  // (startup taint) or counted as served while their metadata traffic is not yet ours.
  let hookInPlace = !cfg.hook;
  // Not a readiness condition: without the CNI state the agent works as it did before it (the
  // pod watch alone attributes IPs); /readyz and the metrics say which way it runs.
  const cniStateLine = (): string => {
    if (!cni) return "cni-state: off (--cni-state-dir empty): IPs attributed from the pod watch alone";
    const s = cni.status();
    return s.state === "active"
      ? `cni-state: active (${s.attachments} attachments, ${s.ignored} ignored)`
      : `cni-state: ${s.state} (${s.detail}): IPs attributed from the pod watch alone`;
  };
  const notReady = (): string[] =>
    notReadyReasons({
      hookInPlace,
      watchSynced: watch.synced,
      watchStale: watch.isStale(),
      serverReachable: client.reachable,
    });
  const ready = (): boolean => notReady().length === 0;
  // Reachable by anything that reaches the node IP (probes, Prometheus): the same timeouts as the
  // pod-facing servers, and few connections, so that nobody can hold it open against the probes.
  const opsServer = createServer(
    timeoutOptions(POD_FACING_LIMITS),
    opsHandler({
      healthz: () =>
        watch.synced && watch.isStale()
          ? { ok: false, text: "pod watch stale\n" }
          : { ok: true, text: "ok\n" },
      readyz: () => {
        const reasons = notReady();
        const ok = reasons.length === 0;
        return { ok, text: `${ok ? "ok" : reasons.join("; ")}\n${cniStateLine()}\n` };
      },
      registry: metrics.registry,
    }),
  );

  opsServer.maxConnections = OPS_MAX_CONNECTIONS;
  limitConnectionsPerSource(opsServer, OPS_MAX_CONNECTIONS_PER_SOURCE, () => undefined);

  const servers: Server[] = [];
  // the IMDS server does not know the idle keep-alive sockets its fast path holds
  const closeServers = async (): Promise<void> => {
    const closing = Promise.all(servers.map(closeServer));
    fastPath?.closeAll();
    await closing;
  };
  let hook: Hook | undefined;
  try {
    const imds = await listenOn(imdsServer, cfg.imdsListen);
    servers.push(imdsServer);
    let container: AddressInfo | undefined;
    if (containerServer && cfg.containerListen) {
      container = await listenOn(containerServer, cfg.containerListen);
      servers.push(containerServer);
    }
    const ops = await listenOn(opsServer, cfg.opsListen);
    servers.push(opsServer);
    // the node's CNI state is read before the first pod is known, so no request is ever
    // answered from the watch alone where that state exists
    if (cni) await cni.start();
    else
      log.warn(
        "--cni-state-dir is empty: IPs are attributed from the pod watch alone (a reused IP can be served as its previous pod until the watch shows that pod gone)",
      );
    watch.start();
    epochWatch.start();
    const probe = (): void => {
      void client.probe();
    };
    probe();
    probeTimer = setInterval(probe, 10_000);
    probeTimer.unref();
    if (cfg.hook) {
      hook = new Hook({ ...cfg.hook, imdsPort: imds.port, containerPort: container?.port });
      await hook.install();
      hookInPlace = true;
      log.info(
        { chain: cfg.hook.chain, agentIp: cfg.hook.agentIp, ipv6: hook.ipv6 },
        "iptables hook installed",
      );
      if (cfg.hookResyncMs > 0) {
        const h = hook;
        let busy = false;
        hookTimer = setInterval(() => {
          if (busy) return;
          busy = true;
          h.install()
            .then(
              (changed) => {
                if (changed) {
                  metrics.hookRepairs.inc();
                  log.warn({ chain: cfg.hook?.chain }, "iptables hook was missing or altered: repaired");
                }
              },
              (err: unknown) => log.error({ err }, "iptables hook check failed"),
            )
            .finally(() => (busy = false));
        }, cfg.hookResyncMs);
        hookTimer.unref();
      }
    }
    log.info({ node: cfg.nodeName, imds, container, ops }, "agent listening");
    let taintTimer: NodeJS.Timeout | undefined;
    if (cfg.readyTaintKey) {
      const key = cfg.readyTaintKey;
      const tick = (): void => {
        taintTimer = undefined;
        if (!ready()) {
          taintTimer = setTimeout(tick, 500);
          return;
        }
        removeNodeTaint(kube, cfg.nodeName, key).then(
          (removed) => log.info({ taint: key, removed }, "agent ready: startup taint handled"),
          (err: unknown) => {
            log.warn({ taint: key, err }, "cannot remove the startup taint, retrying");
            taintTimer = setTimeout(tick, 5000);
          },
        );
      };
      tick();
    }
    return {
      imds,
      container,
      ops,
      index,
      cache,
      metrics,
      hook,
      ready,
      async stop() {
        if (probeTimer) clearInterval(probeTimer);
        if (taintTimer) clearTimeout(taintTimer);
        if (hookTimer) clearInterval(hookTimer);
        await watch.stop();
        await cni?.stop();
        await epochWatch.stop();
        await closeServers();
        cache.dropAll();
        client.close();
        kube.close();
        passthrough?.close();
        if (hook && cfg.uninstallHookOnExit) await hook.uninstall();
      },
    };
  } catch (err) {
    if (probeTimer) clearInterval(probeTimer);
    if (hookTimer) clearInterval(hookTimer);
    await watch.stop();
    await cni?.stop();
    await epochWatch.stop();
    await closeServers();
    client.close();
    kube.close();
    throw err;
  }
}
