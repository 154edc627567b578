// The node agent's defaults, in one place: what `keycutter agent` runs with when a flag is not
// given. The CLI (src/cli/commands/agent.ts), the agent itself and the tests read this object, so
// a test cannot run the agent with values production does not have without saying so.

import { DEFAULT_CREDENTIAL_WAIT_MS, DEFAULT_UNKNOWN_POD_WAIT_MS } from "./answer-budget.ts";

/** Where libcni (containerd, CRI-O) caches each attachment's result. */
export const DEFAULT_CNI_STATE_DIR = "/var/lib/cni/results";

export const AGENT_DEFAULTS = {
  tokenFile: "/var/run/secrets/keycutter/token",
  serverTimeoutMs: 5000,
  imdsListen: { host: "0.0.0.0", port: 8180 },
  containerListen: { host: "0.0.0.0", port: 8181 },
  opsListen: { host: "0.0.0.0", port: 8182 },
  requireImdsV2: false,
  allowHostNetwork: false,
  // answered within 800 ms whatever a request waits for (answer-budget.ts): the 1 s SDKs' one attempt
  unknownPodWaitMs: DEFAULT_UNKNOWN_POD_WAIT_MS,
  credentialWaitMs: DEFAULT_CREDENTIAL_WAIT_MS,
  maxWaiting: 1024,
  maxWaitingPerSource: 4,
  maxConnections: 4096,
  maxConnectionsPerSource: 32,
  region: "us-east-1",
  accountId: "000000000000",
  instanceId: "i-00000000000000000",
  instanceType: "m5.large",
  upstreamImdsUrl: "http://169.254.169.254",
  rateLimitRps: 50,
  rateLimitBurst: 100,
  hookEnabled: true,
  hookChain: "KEYCUTTER",
  iptables: "iptables",
  conntrackFlush: true,
  uninstallHookOnExit: false,
  watchStaleAfterMs: 5 * 60_000,
  hookResyncMs: 30_000,
  imdsFastPath: true,
  cniStateDir: DEFAULT_CNI_STATE_DIR,
  cniRescanMs: 10_000,
  policyEpochMaxAgeMs: 60_000,
  // hand-over (handover.ts): off unless a directory is given (the chart gives /run/keycutter)
  handoverDir: "",
  handoverPortOffset: 10,
  // the pod-facing keep-alive timeout (5 s) and a second: idle clients leave on their own
  handoverDrainMs: 6_000,
  handoverWarmTimeoutMs: 60_000,
  handoverStopWaitMs: 30_000,
  // a surge pod's process starts within seconds of its pod being created
  handoverSuccessorWaitMs: 10_000,
} as const;

/** The availability zone served when none is given: the region's first. */
export function defaultAvailabilityZone(region: string): string {
  return `${region}a`;
}
