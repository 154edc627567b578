// How long one pod-facing request may be held before it is answered. The strictest SDK,
// aws-sdk-go-v2, gives up on an IMDS response after 500 ms (`defaultResponseHeaderTimeout`) and
// retries only after a fixed 1 s; botocore, the JS SDK, Java and Rust allow 1 s for one attempt
// (docs/SDK-TIMINGS.md). An answer within 400 ms reaches every SDK's first attempt.

/** The agent's defaults: a request is answered within 400 ms of arriving, whatever it waits for. */
export const DEFAULT_UNKNOWN_POD_WAIT_MS = 400;
export const DEFAULT_CREDENTIAL_WAIT_MS = 400;

/**
 * How long a request that has already been held `elapsedMs` (waiting for the pod watch) may
 * still wait for the credential service: at most `credentialWaitMs`, and both waits together at
 * most the larger of the two, so that a late pod does not add its wait to the server's.
 */
export function credentialWaitLeftMs(
  cfg: { unknownPodWaitMs: number; credentialWaitMs: number },
  elapsedMs: number,
): number {
  const budget = Math.max(cfg.credentialWaitMs, cfg.unknownPodWaitMs);
  return Math.max(0, Math.min(cfg.credentialWaitMs, budget - elapsedMs));
}
