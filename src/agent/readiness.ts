// The agent's readiness: each condition that holds it back, with its own message, so that /readyz
// names what is actually wrong (a missing hook is not an unreachable credential service).

export interface ReadinessState {
  /** The iptables hook is installed (always true when the agent runs without one). */
  hookInPlace: boolean;
  watchSynced: boolean;
  watchStale: boolean;
  serverReachable: boolean;
  /** The generation this agent handed the node's traffic to (handover.ts); undefined: none. */
  handedOverTo?: number;
}

/** What keeps the agent from being ready, in the order an operator should look at it; empty: ready. */
export function notReadyReasons(state: ReadinessState): string[] {
  const reasons: string[] = [];
  if (state.handedOverTo !== undefined) reasons.push(`handed over to agent generation ${state.handedOverTo}`);
  if (!state.hookInPlace) reasons.push("iptables hook not installed");
  if (!state.watchSynced) reasons.push("pod watch not synced");
  else if (state.watchStale) reasons.push("pod watch stale");
  if (!state.serverReachable) reasons.push("credential service unreachable");
  return reasons;
}
