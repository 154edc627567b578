// When credentials may be served to a pod, and when they must be replaced, so that every AWS SDK
// refreshes them before they expire (docs/SDK-TIMINGS.md has each SDK's windows, from its code).
// Pure: the agent's cache serves and refreshes by it, the server's cache reuse rule keeps clear of
// the agents' refresh points, and policy readiness warns about durations IMDS clients cannot use
// safely. It lives in src/api because agent and server must agree on it.

/** Which endpoint the pod asked: the IMDS emulation or the container-credentials endpoint. */
export type CredentialPath = "imds" | "container";

const SECOND = 1000;

/**
 * botocore (boto3, the AWS CLI) treats IMDS credentials with no more than its refresh window
 * (900 s) plus a jitter of 120–600 s left as a failing metadata service and moves their expiry,
 * in memory, to now + that offset (`InstanceMetadataFetcher._evaluate_expiration`). Its next
 * refresh then comes `jitter` seconds after the fetch, whatever the real expiry.
 */
export const BOTOCORE_EXTENSION_MAX_SECONDS = 900 + 600;
export const BOTOCORE_EXTENSION_JITTER_MAX_SECONDS = 600;
/** Room for the answer's own latency and a background refresh, on top of every SDK window. */
export const SERVE_MARGIN_SECONDS = 60;

/** IMDS floor where it can be afforded: above botocore's extension, which then never happens. */
export const IMDS_UNEXTENDED_FLOOR_SECONDS = BOTOCORE_EXTENSION_MAX_SECONDS + SERVE_MARGIN_SECONDS;
/**
 * IMDS floor for sessions too short for the one above: botocore extends every such credential,
 * and refreshes at most 600 s after fetching it, so a credential with more than that left is
 * replaced before it really expires. What it cannot survive is a failed refresh then.
 */
export const IMDS_EXTENDED_FLOOR_SECONDS = BOTOCORE_EXTENSION_JITTER_MAX_SECONDS + SERVE_MARGIN_SECONDS;
/**
 * Sessions this long or longer are served on IMDS without ever meeting botocore's extension,
 * with a serve window of at least 19 minutes per session.
 */
export const IMDS_SAFE_DURATION_SECONDS = 2700;

/**
 * Container path: no SDK extends there. botocore refreshes below 900 s left (blocking below
 * 600 s), Java prefetches from 15 min and goes stale 1 min before expiry, Go and JS refresh at
 * 5 min, Rust at 5–10 s. Served with more than 900 s left, nobody refetches on every call; never
 * below 360 s, so that Go's and JS's 5-minute window still leaves them a minute.
 */
const CONTAINER_PREFERRED_FLOOR_SECONDS = 900 + SERVE_MARGIN_SECONDS;
const CONTAINER_LEAST_FLOOR_SECONDS = 300 + SERVE_MARGIN_SECONDS;

/** While the server fails: never below the path's hard limit (IMDS: what botocore's extension outlives). */
const CONTAINER_STALE_FLOOR_SECONDS = 120;

/** Background refreshes start at most this long before the floor (the rest of the window is used). */
const REFRESH_LEAD_MAX_SECONDS = 15 * 60;

/**
 * The least remaining lifetime with which credentials may be served on `path`. `lifetimeMs` is
 * what they had left when the agent got them (a server may hand out a session it already
 * holds, with less than its duration left): the floor is chosen by what is actually left.
 */
export function minServeRemainingMs(path: CredentialPath, lifetimeMs: number): number {
  if (path === "imds") {
    const floor =
      lifetimeMs >= IMDS_SAFE_DURATION_SECONDS * SECOND
        ? IMDS_UNEXTENDED_FLOOR_SECONDS
        : IMDS_EXTENDED_FLOOR_SECONDS;
    return floor * SECOND;
  }
  const half = lifetimeMs / 2;
  return Math.min(
    CONTAINER_PREFERRED_FLOOR_SECONDS * SECOND,
    Math.max(CONTAINER_LEAST_FLOOR_SECONDS * SECOND, half),
  );
}

/**
 * While the central service fails, credentials already held may be served on `path` only while
 * this much is left. On IMDS below the extended floor botocore would keep using them after they
 * expire (and for up to 10 minutes after the service is back), so they are refused instead.
 */
export function staleFloorMs(path: CredentialPath, configuredMs: number): number {
  if (path === "imds") return Math.max(configuredMs, IMDS_EXTENDED_FLOOR_SECONDS * SECOND);
  return Math.max(configuredMs, CONTAINER_STALE_FLOOR_SECONDS * SECOND);
}

/** The floor the background refresh has to stay ahead of: the stricter of both paths. */
function refreshFloorMs(lifetimeMs: number): number {
  return Math.max(minServeRemainingMs("imds", lifetimeMs), minServeRemainingMs("container", lifetimeMs));
}

/** How long before the floor the refresh starts at the latest (jitter only brings it closer). */
function refreshLeadMs(lifetimeMs: number): number {
  const window = lifetimeMs - refreshFloorMs(lifetimeMs);
  return Math.max(0, Math.min(window / 2, REFRESH_LEAD_MAX_SECONDS * SECOND));
}

/**
 * When (epoch ms) the agent replaces credentials in the background: ahead of the floor by half
 * the serve window (at most 15 minutes), less up to 10 % jitter so that pods fetched together do
 * not refresh together. `random` is in [0, 1). At or before `fetchedAtMs`: refresh now.
 */
export function refreshAtMs(expirationMs: number, fetchedAtMs: number, random: number): number {
  const lifetimeMs = expirationMs - fetchedAtMs;
  const lead = refreshLeadMs(lifetimeMs) * (0.9 + 0.1 * random);
  return expirationMs - refreshFloorMs(lifetimeMs) - lead;
}

/**
 * The server reuses a cached session of `durationSeconds` only while at least this much is left:
 * more than at any point an agent refreshes it (plus a margin), so a refresh never gets back the
 * credentials it is replacing. Never more than the duration (then: never reused).
 */
export function serverReuseMinRemainingSeconds(durationSeconds: number): number {
  const lifetimeMs = durationSeconds * SECOND;
  const refreshRemainingMs = refreshFloorMs(lifetimeMs) + refreshLeadMs(lifetimeMs);
  return Math.min(durationSeconds, Math.ceil(refreshRemainingMs / SECOND) + SERVE_MARGIN_SECONDS);
}

/**
 * What a session duration means for IMDS clients, for `policy validate`, the Ready condition and
 * `explain`; undefined when it is safe on both paths.
 */
export function imdsDurationWarning(durationSeconds: number): string | undefined {
  if (durationSeconds >= IMDS_SAFE_DURATION_SECONDS) return undefined;
  const window = Math.max(0, durationSeconds - IMDS_EXTENDED_FLOOR_SECONDS);
  return (
    `${durationSeconds}s sessions are shorter than ${IMDS_SAFE_DURATION_SECONDS}s: on IMDS, boto3 and the ` +
    `AWS CLI extend such credentials in memory; the agent replaces them every ${Math.floor(window / 60)} min ` +
    `or less to stay ahead, and a failed refresh then can leave them using expired credentials. ` +
    `Use durationSeconds >= ${IMDS_SAFE_DURATION_SECONDS} for IMDS pods, or the container-credentials endpoint (safe from 900s)`
  );
}
