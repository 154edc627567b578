// The one interface of the issuance chain: memory cache → remembered refusals → single flight →
// shared cache with its lock → fair rate limit → STS. Each step implements Issuer and wraps the
// next, so a step can be tested, reordered or left out on its own (chain.ts puts them together).
import { serverReuseMinRemainingSeconds } from "../../api/serve-window.ts";
import type { IssuePlan } from "../../policy/decide.ts";
import type { CachedCredentials } from "../cache.ts";

export interface IssueContext {
  podUID: string;
  /** The pod UID and the plan's AssumeRole inputs (keys.ts): what credentials are cached under. */
  cacheKey: string;
}

export type CredentialsSource = "memory" | "shared" | "sts";

export interface Issued {
  creds: CachedCredentials;
  /** Which step had them: the audit record says so. */
  source: CredentialsSource;
}

export interface Issuer {
  /** Credentials for `plan`, or a KeycutterError. */
  issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued>;
}

/** A step that wraps the next one: what it adds, it adds around `next.issue()`. */
export abstract class WrappingIssuer<Options> implements Issuer {
  protected readonly next: Issuer;
  protected readonly opts: Options;

  constructor(next: Issuer, opts: Options) {
    this.next = next;
    this.opts = opts;
  }

  abstract issue(plan: IssuePlan, ctx: IssueContext): Promise<Issued>;
}

/**
 * Cached credentials are reused only while at least `minRemainingSeconds` of their lifetime is
 * left, and never past a quarter of the lifetime used up, so the agent can cache them in turn.
 */
export function freshEnough(
  creds: CachedCredentials | undefined,
  durationSeconds: number,
  minRemainingSeconds: number,
  nowMs: number,
): creds is CachedCredentials {
  if (!creds) return false;
  // never what an agent refreshing them would get back (api/serve-window.ts); the option only adds
  const minMs =
    Math.max(
      serverReuseMinRemainingSeconds(durationSeconds),
      Math.min(minRemainingSeconds, 0.75 * durationSeconds),
    ) * 1000;
  return Date.parse(creds.expiration) - nowMs >= minMs;
}
