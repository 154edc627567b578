// When each pod's last credentials expire: tells a refresh from a first issuance, so that the STS
// budget serves new pods first (rate-limit.ts). Bounded: the least recently issued go first.
import { LRUCache } from "lru-cache";

export class IssuedHistory {
  private readonly expiries: LRUCache<string, number>;

  constructor(maxPods = 200_000) {
    this.expiries = new LRUCache({ max: maxPods });
  }

  /** The pod holds credentials that expire at `expirationMs` (the latest such time is kept). */
  record(podUID: string, expirationMs: number): void {
    if ((this.expiries.get(podUID) ?? 0) < expirationMs) this.expiries.set(podUID, expirationMs);
  }

  /** The pod was issued credentials that are still valid at `nowMs`. */
  holdsValid(podUID: string, nowMs: number): boolean {
    return (this.expiries.get(podUID) ?? 0) > nowMs;
  }

  sweep(nowMs: number): void {
    for (const [podUID, expirationMs] of this.expiries.entries())
      if (expirationMs <= nowMs) this.expiries.delete(podUID);
  }
}
