// Per-pod request budget in front of the pod-facing handlers: a flooding pod gets 429s and cannot
// starve the others. One token bucket per source IP, in the bounded set of ../common/keyed-token-buckets.ts.
import { KeyedTokenBuckets } from "../common/keyed-token-buckets.ts";

export interface PodRequestLimit {
  /** Spends one of `sourceIp`'s requests; false: over its budget (the caller refuses with 429). */
  take(sourceIp: string): boolean;
}

/** Source IPs remembered at once; a flood of new ones evicts the longest-idle, which start full again. */
const MAX_SOURCES = 8192;

/** `ratePerSecond` requests per second sustained, `burst` at once; `ratePerSecond <= 0` turns it off. */
export function podRequestLimit(
  ratePerSecond: number,
  burst: number,
  maxSources = MAX_SOURCES,
): PodRequestLimit {
  if (ratePerSecond <= 0) return { take: () => true };
  const buckets = new KeyedTokenBuckets({ ratePerSecond, burst: Math.max(1, burst), maxKeys: maxSources });
  return { take: (sourceIp) => buckets.take(sourceIp) };
}
