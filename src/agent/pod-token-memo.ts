// What one pod's own service-account tokens got from the server (container-credentials path):
// tokens it accepted, trusted again for a short time; tokens it refused, refused again without a
// TokenReview; and the one validation in flight per token. Tokens are kept as sha256 digests only.
// Bounded per pod: a new token evicts the least recently used one, never all the others.
import { createHash } from "node:crypto";
import { LRUCache } from "lru-cache";
import type { ErrorCode } from "../api/errors.ts";

export interface TokenRefusal {
  code: ErrorCode;
  message: string;
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("base64url");
}

export class PodTokenMemo<Answer> {
  private readonly maxTokens: number;
  /** digest → until when the server's acceptance is trusted (ms). */
  private accepted: LRUCache<string, number> | undefined;
  private refused: LRUCache<string, TokenRefusal & { untilMs: number }> | undefined;
  private readonly flights = new Map<string, Promise<Answer>>();

  constructor(maxTokens: number) {
    this.maxTokens = maxTokens;
  }

  isAccepted(digest: string, nowMs: number): boolean {
    const until = this.accepted?.get(digest);
    return until !== undefined && until > nowMs;
  }

  accept(digest: string, untilMs: number): void {
    this.accepted ??= new LRUCache({ max: this.maxTokens });
    this.accepted.set(digest, untilMs);
  }

  /** The accepted digests with their trust deadlines, for a hand-over to a successor agent. */
  acceptedEntries(nowMs: number): Array<[string, number]> {
    const out: Array<[string, number]> = [];
    for (const [digest, until] of this.accepted?.entries() ?? [])
      if (until > nowMs) out.push([digest, until]);
    return out;
  }

  /** The server no longer serves the pod: no token of it is trusted until the server says so again. */
  forgetAccepted(): void {
    this.accepted = undefined;
  }

  refusalOf(digest: string, nowMs: number): TokenRefusal | undefined {
    const refusal = this.refused?.get(digest);
    return refusal !== undefined && refusal.untilMs > nowMs
      ? { code: refusal.code, message: refusal.message }
      : undefined;
  }

  refuse(digest: string, refusal: TokenRefusal, untilMs: number): void {
    this.refused ??= new LRUCache({ max: this.maxTokens });
    this.refused.set(digest, { ...refusal, untilMs });
  }

  /** The validation of `digest` in flight, or a new one from `start`; forgotten once settled. */
  flight(digest: string, start: () => Promise<Answer>): Promise<Answer> {
    let running = this.flights.get(digest);
    if (!running) {
      running = start();
      this.flights.set(digest, running);
      const clear = (): void => {
        this.flights.delete(digest);
      };
      running.then(clear, clear);
    }
    return running;
  }
}
