// The one check of who may be served: the caller's source IP must belong to exactly one pod of
// this node, and not a hostNetwork pod (unless allowed). Every pod-facing answer, fast or full,
// goes through servablePod().
import type { ErrorCode } from "../api/errors.ts";
import type { HandlerDeps } from "./handler-deps.ts";
import type { Lookup, PodInfo } from "./pod-index.ts";

export interface Refusal {
  refused: true;
  code: ErrorCode;
  message: string;
}

const HOST_NETWORK_REFUSED: Refusal = {
  refused: true,
  code: "HostNetworkRefused",
  message: "hostNetwork pods are not served (they share the node's IP)",
};

/** The pod to serve for lookup `l` of `ip`, or why none is. */
export function servablePod(l: Lookup, ip: string, allowHostNetwork: boolean): PodInfo | Refusal {
  switch (l.kind) {
    case "pod":
      return l.pod.hostNetwork && !allowHostNetwork ? HOST_NETWORK_REFUSED : l.pod;
    case "hostNetwork":
      return HOST_NETWORK_REFUSED;
    case "ambiguous":
      return {
        refused: true,
        code: "PodIpAmbiguous",
        message: `more than one pod claims ${ip}; refusing to guess`,
      };
    case "none":
      return { refused: true, code: "PodNotFound", message: `no pod on this node has IP ${ip}` };
  }
}

export function isRefusal(x: PodInfo | Refusal): x is Refusal {
  return (x as Refusal).refused === true;
}

/** The pod servable at `ip` now, or undefined: what the fast paths answer from memory for. */
export function servableNow(d: HandlerDeps, ip: string): PodInfo | undefined {
  const found = servablePod(d.index.lookup(ip), ip, d.cfg.allowHostNetwork);
  return isRefusal(found) ? undefined : found;
}

/**
 * Looks `ip` up, waiting a bounded time for the pod watch when it is unknown and a wait slot is
 * free for it; otherwise the current lookup at once (an unknown IP: 404).
 */
export function lookupOrWait(d: HandlerDeps, ip: string, then: (l: Lookup) => void): void {
  const l = d.index.lookup(ip);
  if (l.kind !== "none") return then(l);
  const release = d.waits.acquire(ip);
  if (typeof release !== "function") {
    d.metrics.waitRefused(release);
    return then(l);
  }
  d.index.waitFor(ip, d.cfg.unknownPodWaitMs).then((l2) => {
    release();
    then(l2);
  });
}
