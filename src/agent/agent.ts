// Wires the node agent: pod watch → pod index → credential cache, the pod-facing listeners, the
// ops listener (/healthz, /readyz, /metrics) and the iptables hook.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync } from "node:fs";
import { repeat, systemClock, type Clock, type TimerHandle } from "../common/clock.ts";
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
import { HandoverServer, Predecessor, HANDOVER_TIMEOUT_MS, type OwnerRole } from "./handover.ts";
import { otherSlot, slotOfPort, slotPorts, waitUntil, type Slot } from "./handover-slots.ts";
import { RepairLoop } from "./hook-repair.ts";
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
  /**
   * Root-only host directory of the hand-over socket (handover.ts): a successor agent takes the
   * token key, the credentials and the hook from this one; undefined: no hand-over (a restart
   * starts cold, on the same ports).
   */
  handoverDir?: string;
  /** The second port slot is the configured IMDS and container ports plus this. */
  handoverPortOffset?: number;
  /** After handing over, keep the old listeners this long for kept-alive connections to leave. */
  handoverDrainMs?: number;
  /** A successor that is not ready within this long exits without taking over. */
  handoverWarmTimeoutMs?: number;
  /** On SIGTERM with a successor connected, wait this long for it to take over. */
  handoverStopWaitMs?: number;
  /** On SIGTERM with no successor connected, wait this long for one to connect. */
  handoverSuccessorWaitMs?: number;
  /** The one clock every timed part of the agent runs on (default the system's). */
  clock?: Clock;
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
async function listenOn(server: Server, hp: HostPort, reusePort = false): Promise<AddressInfo> {
  return (await listen(server, hp.host, hp.port, { reusePort })).address;
}

export async function startAgent(
  cfg: AgentConfig,
  log: Logger = createLogger("agent"),
): Promise<RunningAgent> {
  const clock = cfg.clock ?? systemClock;
  const kube = new ApiClient(cfg.kubeconfig ? kubeconfigFromFile(cfg.kubeconfig) : inClusterConfig());

  const client = new ServerClient({
    serverUrl: cfg.serverUrl,
    caFile: cfg.serverCaFile,
    tokenFile: cfg.tokenFile,
    timeoutMs: cfg.serverTimeoutMs,
    clock,
  });
  const cni = cfg.cniStateDir
    ? new CniState({
        dir: cfg.cniStateDir,
        log,
        rescanMs: cfg.cniRescanMs,
        timers: clock,
        onChange: (ips) => index.attachmentsChanged(ips),
      })
    : undefined;
  const index = new PodIndex({ attachments: cni, log, timers: clock });
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
    clock,
  });
  late.epochWatch = epochWatch;
  const cache: CredCache = new CredCache({
    source: client,
    log,
    metrics,
    requestTimeoutMs: cfg.serverTimeoutMs,
    epochs: epochWatch,
    epochMaxAgeMs: cfg.policyEpochMaxAgeMs ?? AGENT_DEFAULTS.policyEpochMaxAgeMs,
    clock,
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

  // A hand-over needs the hook: it is the DNAT that moves from one agent to the other.
  const handoverDir = cfg.hook ? cfg.handoverDir : undefined;
  const portOffset = cfg.handoverPortOffset ?? AGENT_DEFAULTS.handoverPortOffset;
  let predecessor: Predecessor | undefined;
  if (handoverDir) {
    try {
      predecessor = await Predecessor.connect(handoverDir, cfg.nodeName, HANDOVER_TIMEOUT_MS, clock);
    } catch (err) {
      log.warn({ err: (err as Error).message }, "hand-over from the running agent failed: starting cold");
    }
  }
  const handedKey = predecessor ? Buffer.from(predecessor.state.tokenKey, "base64") : undefined;
  const tokens = new ImdsTokens(cfg.imdsTokenKeyFile ? readFileSync(cfg.imdsTokenKeyFile) : handedKey, clock);
  if (predecessor) {
    // before the pod watch starts, so that its prefetches find these and ask the server nothing
    const adopted = cache.adopt(predecessor.state.creds);
    log.info(
      { adopted, generation: predecessor.state.generation },
      "hand-over received: token key and credentials",
    );
  }
  const passthrough =
    cfg.passthroughPaths.length > 0
      ? new Passthrough(cfg.upstreamImdsUrl, cfg.passthroughPaths, { clock })
      : undefined;
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
  const drain = { draining: false };
  const imdsServer = podFacingServer(createImdsHandler(deps), log, limits, drain);
  const fastPath = cfg.imdsFastPath ? new ImdsFastPath(imdsServer, createImdsFastResponder(deps)) : undefined;
  late.fastPath = fastPath;
  // after the fast path, so that a connection is counted once, whoever ends up serving it
  limitConnectionsPerSource(imdsServer, cfg.maxConnectionsPerSource, () => metrics.connectionRefused("imds"));
  const containerServer = cfg.containerListen
    ? podFacingServer(createContainerHandler(deps), log, limits, drain)
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
    clock,
    onRestart: (reason) => metrics.watchRestarts.labels(reason).inc(),
  });
  late.watch = watch;

  let stopProbing: (() => void) | undefined;
  let stopHookResync: (() => void) | undefined;
  // With the hook on, not ready until it is in place: pods must not be scheduled onto a node
  // (startup taint) or counted as served while their metadata traffic is not yet ours.
  let hookInPlace = !cfg.hook;
  let handedOverTo: number | undefined;
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
      handedOverTo,
    });
  const ready = (): boolean => notReady().length === 0;
  /** Ready but for the hook: what a successor waits for before it moves the DNAT to itself. */
  const readyToTakeOver = (): boolean =>
    notReadyReasons({
      hookInPlace: true,
      watchSynced: watch.synced,
      watchStale: watch.isStale(),
      serverReachable: client.reachable,
    }).length === 0 &&
    cache.fetching === 0 &&
    // adopted credentials older than the epoch bound are served only once the channel confirmed them
    (cache.size === 0 || epochWatch.ageMs() !== Number.POSITIVE_INFINITY);
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
  let repairLoop: RepairLoop | undefined;
  let handover: HandoverServer | undefined;
  let drainTimer: TimerHandle | undefined;
  let drained: Promise<void> = Promise.resolve();
  /** A successor owns the DNAT now: never touch the rules again, let the clients leave, close. */
  const stepDown = (g: number): void => {
    if (handedOverTo !== undefined) return;
    handedOverTo = g;
    repairLoop?.stop();
    drain.draining = true;
    fastPath?.drain();
    // the successor answers the node's probes from now on (both listen on the ops port)
    opsServer.close();
    log.info({ successor: g }, "handed over: draining kept-alive connections");
    let drainEnd = (): void => undefined;
    drained = new Promise((resolve) => (drainEnd = resolve));
    drainTimer = clock.setTimeout(() => {
      drainEnd();
      // conntrack sends no new connection here any more; what is left are idle kept-alive ones
      for (const server of [imdsServer, containerServer]) server?.close();
      imdsServer.closeAllConnections();
      containerServer?.closeAllConnections();
      fastPath?.closeAll();
      void handover?.close();
      log.info("drained: waiting for SIGTERM");
    }, cfg.handoverDrainMs ?? AGENT_DEFAULTS.handoverDrainMs);
    drainTimer.unref?.();
  };
  try {
    // The slot: the other one than a predecessor's; after a crash the one the rules point at,
    // so that pods are served again the moment this process listens.
    let slot: Slot = 0;
    let generation = 0;
    if (predecessor) {
      slot = otherSlot(predecessor.state.slot);
      generation = predecessor.state.generation + 1;
    } else if (handoverDir && cfg.hook) {
      const reader = new Hook({ ...cfg.hook, imdsPort: cfg.imdsListen.port, containerPort: undefined });
      const owner = await reader.owner();
      if (owner) {
        slot = slotOfPort(owner.imdsPort, cfg.imdsListen, portOffset) ?? 0;
        generation = owner.generation + 1;
      } else generation = 1;
    }
    const bindSlot = async (s: Slot): Promise<{ imds: AddressInfo; container: AddressInfo | undefined }> => {
      const ports = slotPorts(s, cfg.imdsListen, cfg.containerListen, portOffset);
      const imds = await listenOn(imdsServer, ports.imds);
      servers.push(imdsServer);
      let container: AddressInfo | undefined;
      if (containerServer && ports.container) {
        container = await listenOn(containerServer, ports.container);
        servers.push(containerServer);
      }
      return { imds, container };
    };
    let bound: { imds: AddressInfo; container: AddressInfo | undefined };
    try {
      bound = await bindSlot(slot);
    } catch (err) {
      // a live agent holds the slot without answering the hand-over socket: take the other and
      // move the rules to it at a higher generation, which that agent's repair loop respects
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || !handoverDir || predecessor) throw err;
      log.warn({ slot }, "the hook's slot is held by an agent that did not hand over: using the other");
      await closeServers();
      servers.length = 0;
      slot = otherSlot(slot);
      bound = await bindSlot(slot);
    }
    const { imds, container } = bound;
    // two agents answer the probes on the node's ops port during a hand-over
    const ops = await listenOn(opsServer, cfg.opsListen, handoverDir !== undefined);
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
    stopProbing = repeat(clock, 10_000, probe);
    if (cfg.hook) {
      const other = slotPorts(otherSlot(slot), cfg.imdsListen, cfg.containerListen, portOffset);
      const h = new Hook({
        ...cfg.hook,
        imdsPort: imds.port,
        containerPort: container?.port,
        extraGuardedPorts: handoverDir
          ? [other.imds.port, ...(other.container ? [other.container.port] : [])]
          : undefined,
        generation: handoverDir ? generation : undefined,
      });
      hook = h;
      if (predecessor) {
        const p = predecessor;
        // the predecessor serves meanwhile; the DNAT moves only to an agent that is ready
        if (
          !(await waitUntil(
            readyToTakeOver,
            cfg.handoverWarmTimeoutMs ?? AGENT_DEFAULTS.handoverWarmTimeoutMs,
            undefined,
            clock,
          ))
        )
          throw new Error(`not ready to take over within the warm-up time: ${notReady().join("; ")}`);
        cache.retain((uid) => index.getByUid(uid) !== undefined);
        await p.pause();
        await h.install({ keepConntrack: true });
        await p.tookOver(generation);
        log.info({ generation, slot, imds: imds.port }, "hand-over complete: the hook points at this agent");
      } else await h.install();
      hookInPlace = true;
      log.info(
        { chain: cfg.hook.chain, agentIp: cfg.hook.agentIp, ipv6: h.ipv6, generation, slot },
        "iptables hook installed",
      );
      const repair = new RepairLoop(h, generation, {
        onRepaired: () => {
          metrics.hookRepairs.inc();
          log.warn({ chain: cfg.hook?.chain }, "iptables hook was missing or altered: repaired");
        },
        onError: (err) => log.error({ err }, "iptables hook check failed"),
        onSuperseded: (g) => stepDown(g),
      });
      repairLoop = repair;
      if (cfg.hookResyncMs > 0) {
        stopHookResync = repeat(clock, cfg.hookResyncMs, () => void repair.tick());
      }
      if (handoverDir) {
        const role: OwnerRole = {
          state: () => ({
            node: cfg.nodeName,
            generation,
            slot,
            tokenKey: tokens.exportKey().toString("base64"),
            creds: cache.handOver(),
          }),
          pauseRepair: () => repair.pause(),
          resumeRepair: () => repair.resume(),
          stepDown: (g) => stepDown(g),
        };
        handover = await HandoverServer.listen(handoverDir, role, log, clock);
      }
    }
    log.info({ node: cfg.nodeName, imds, container, ops }, "agent listening");
    let taintTimer: TimerHandle | undefined;
    if (cfg.readyTaintKey) {
      const key = cfg.readyTaintKey;
      const tick = (): void => {
        taintTimer = undefined;
        if (!ready()) {
          taintTimer = clock.setTimeout(tick, 500);
          return;
        }
        removeNodeTaint(kube, cfg.nodeName, key).then(
          (removed) => log.info({ taint: key, removed }, "agent ready: startup taint handled"),
          (err: unknown) => {
            log.warn({ taint: key, err }, "cannot remove the startup taint, retrying");
            taintTimer = clock.setTimeout(tick, 5000);
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
        // A surge pod's probes on the shared ops port may have been answered by this agent, so
        // its pod can be Ready (and this one deleted) before its process connected: wait for it.
        if (handover && handedOverTo === undefined)
          await handover.waitForSuccessor(
            cfg.handoverSuccessorWaitMs ?? AGENT_DEFAULTS.handoverSuccessorWaitMs,
          );
        // a successor is warming up: keep serving (and the hook ours) until it has taken over
        if (handover?.successorPending) {
          log.info("stopping: waiting for the successor to take over");
          await handover.waitForTakeOver(cfg.handoverStopWaitMs ?? AGENT_DEFAULTS.handoverStopWaitMs);
        }
        // handed over: SIGTERM comes as soon as the new pod is Ready, maybe mid-drain; its
        // clients leave between two requests, not by a reset
        await drained;
        clock.clearTimeout(drainTimer);
        repairLoop?.stop();
        await handover?.close();
        stopProbing?.();
        clock.clearTimeout(taintTimer);
        stopHookResync?.();
        await watch.stop();
        await cni?.stop();
        await epochWatch.stop();
        await closeServers();
        cache.dropAll();
        client.close();
        kube.close();
        passthrough?.close();
        // after a hand-over the rules are the successor's
        if (hook && cfg.uninstallHookOnExit && handedOverTo === undefined) await hook.uninstall();
      },
    };
  } catch (err) {
    predecessor?.close();
    await handover?.close();
    stopProbing?.();
    stopHookResync?.();
    await watch.stop();
    await cni?.stop();
    await epochWatch.stop();
    await closeServers();
    client.close();
    kube.close();
    throw err;
  }
}
