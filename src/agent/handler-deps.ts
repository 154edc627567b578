// What the pod-facing handlers (imds-handler.ts, container-handler.ts, imds-fast-answers.ts)
// are built from: the agent's configuration for them and the parts they share.
import { performance } from "node:perf_hooks";
import type { Logger } from "../common/logger.ts";
import type { PodIndex } from "./pod-index.ts";
import type { CredCache } from "./cred-cache.ts";
import type { ImdsTokens } from "./imds-token.ts";
import type { AgentMetrics } from "./metrics.ts";
import type { PodRequestLimit } from "./pod-request-limit.ts";
import type { Passthrough } from "./passthrough.ts";
import type { WaitSlots } from "./wait-slots.ts";

export interface HandlerConfig {
  requireImdsV2: boolean;
  allowHostNetwork: boolean;
  /** How long a request from an unknown IP waits for the pod watch. */
  unknownPodWaitMs: number;
  /** How long a request waits for the credential service on a cache miss. */
  credentialWaitMs: number;
  /** Requests waiting for an unknown pod, all IPs together; beyond it: immediate 404. */
  maxWaiting: number;
  /** Requests waiting for an unknown pod from one source IP; beyond it: immediate 404. */
  maxWaitingPerSource: number;
  region: string;
  availabilityZone: string;
  accountId: string;
  instanceId: string;
  instanceType: string;
}

export interface HandlerDeps {
  cfg: HandlerConfig;
  index: PodIndex;
  cache: CredCache;
  tokens: ImdsTokens;
  metrics: AgentMetrics;
  limiter: PodRequestLimit;
  passthrough: Passthrough | undefined;
  /** The bounded waits for unknown pods, shared by both listeners (cfg.maxWaiting*). */
  waits: WaitSlots;
  log: Logger;
}

/** Counts one answered request of `listener` and its latency since `start` (performance.now()). */
export function recordRequest(
  metrics: AgentMetrics,
  listener: "imds" | "container",
  route: string,
  start: number,
  status: number,
): void {
  metrics.request(listener, route, status, (performance.now() - start) / 1000);
}
