// What an AgentMetrics reads its gauges from, for a test or benchmark with no agent behind it:
// an idle node (no pods, nothing cached, watch fresh, server reachable, CNI record active). A
// plain object, so that bench/handler-micro.ts can hand it to whichever build it loaded.
export const IDLE_AGENT_GAUGES = {
  podsKnown: () => 0,
  podsWaiting: () => 0,
  cacheEntries: () => 0,
  watchStale: () => false,
  serverReachable: () => true,
  policyEpochAgeSeconds: () => 0,
  cniState: () => ({ active: true, attachments: 0, ignoredFiles: 0, unconfirmedIps: 0 }),
};
