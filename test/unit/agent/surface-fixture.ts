// The pod-facing surface's dependencies in-process, as the agent wires them, with a fake
// credential source (one-module scope): shared by the HTTP-surface and fast-path suites.
import { pino } from "pino";
import type { PodInfo } from "../../../src/agent/pod-index.ts";
import { PodIndex } from "../../../src/agent/pod-index.ts";
import { CredCache, type CredentialsSource } from "../../../src/agent/cred-cache.ts";
import { ImdsTokens } from "../../../src/agent/imds-token.ts";
import { AgentMetrics } from "../../../src/agent/metrics.ts";
import { podRequestLimit } from "../../../src/agent/pod-request-limit.ts";
import { WaitSlots } from "../../../src/agent/wait-slots.ts";
import { KeycutterError } from "../../../src/api/errors.ts";
import type { HandlerConfig, HandlerDeps } from "../../../src/agent/handler-deps.ts";
import type { CredentialsResponse, PodRef } from "../../../src/api/contract.ts";
import { AGENT_DEFAULTS } from "../../../src/agent/defaults.ts";

export const log = pino({ level: "silent" });

export class Source implements CredentialsSource {
  calls: { pod: PodRef; podToken?: string }[] = [];
  async credentials(req: { pod: PodRef; podToken?: string }): Promise<CredentialsResponse> {
    this.calls.push(req);
    if (req.pod.name === "nopolicy") throw new KeycutterError("NoPolicy", "no policy selects this pod");
    if (req.podToken !== undefined && req.podToken !== `token.of.${req.pod.name}`) {
      throw new KeycutterError("PodTokenMismatch", "the token names another pod");
    }
    return {
      credentials: {
        accessKeyId: `AKIA-${req.pod.name}`,
        secretAccessKey: `secret-${req.pod.name}`,
        sessionToken: `session-${req.pod.name}`,
        expiration: new Date(Date.now() + 3600_000).toISOString(),
      },
      roleArn: `arn:aws:iam::123456789012:role/role-${req.pod.name}`,
      roleName: `role-${req.pod.name}`,
      sessionName: "s",
      policy: { namespace: "ns", name: "p", generation: 1 },
    };
  }
}

export function pod(name: string, ip: string, extra: Partial<PodInfo> = {}): PodInfo {
  return {
    uid: `uid-${name}`,
    namespace: "ns",
    name,
    ip,
    ips: [ip],
    hostNetwork: false,
    phase: "Running",
    terminating: false,
    containersDone: false,
    serviceAccountName: "sa",
    nodeName: "n1",
    ...extra,
  };
}

export const surfaceCfg: HandlerConfig = {
  requireImdsV2: AGENT_DEFAULTS.requireImdsV2,
  allowHostNetwork: AGENT_DEFAULTS.allowHostNetwork,
  // shorter than production's, so that the tests of an unknown IP do not wait the full 800 ms
  unknownPodWaitMs: 300,
  credentialWaitMs: AGENT_DEFAULTS.credentialWaitMs,
  // small enough for a test to fill
  maxWaiting: 100,
  maxWaitingPerSource: AGENT_DEFAULTS.maxWaitingPerSource,
  region: "eu-west-1",
  availabilityZone: "eu-west-1b",
  accountId: "123456789012",
  instanceId: "i-0123",
  instanceType: AGENT_DEFAULTS.instanceType,
};

function floodLimiter(): HandlerDeps["limiter"] {
  const loose = podRequestLimit(10_000, 10_000);
  const strict = podRequestLimit(20, 50);
  return { take: (ip: string) => (ip === "127.0.0.8" ? strict : loose).take(ip) };
}

/** Handler dependencies; 127.0.0.8 is the flooding pod, with a strict rate limit (20/s, burst 50). */
export function surfaceDeps(cfg: HandlerConfig = surfaceCfg): HandlerDeps & { source: Source } {
  const source = new Source();
  const index = new PodIndex();
  const cache = new CredCache({ source, log });
  const metrics = new AgentMetrics({
    podsKnown: () => index.size,
    podsWaiting: () => index.waiting,
    cacheEntries: () => cache.size,
    watchStale: () => false,
    serverReachable: () => true,
  });
  return {
    cfg,
    index,
    cache,
    tokens: new ImdsTokens(),
    metrics,
    limiter: floodLimiter(),
    passthrough: undefined,
    waits: new WaitSlots(cfg.maxWaiting, cfg.maxWaitingPerSource),
    log,
    source,
  };
}
