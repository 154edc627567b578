// Third step: one issuance in flight per cache key on this replica; everyone asking for the same
// credentials meanwhile gets the same answer. Bounded by the keys being issued at once.
import type { IssuePlan } from "../../policy/decide.ts";
import type { IssueContext, Issued, Issuer } from "./issuer.ts";

export class SingleFlightIssuer implements Issuer {
  private readonly next: Issuer;
  private readonly inflight = new Map<string, Promise<Issued>>();

  constructor(next: Issuer) {
    this.next = next;
  }

  get size(): number {
    return this.inflight.size;
  }

  issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued> {
    const running = this.inflight.get(ctx.cacheKey);
    if (running) return running;
    const flight = this.next.issue(plan, ctx).finally(() => this.inflight.delete(ctx.cacheKey));
    this.inflight.set(ctx.cacheKey, flight);
    return flight;
  }
}
