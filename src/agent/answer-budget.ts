// How long one pod-facing request may be held before it is answered. botocore, the JS SDK, Java
// and Rust allow 1 s for a single IMDS attempt and do not retry a 503 (botocore and JS fall back
// to IMDSv1 for that call, which --require-imdsv2 refuses); aws-sdk-go-v2 gives up after 500 ms
// and retries a timeout and a 503 alike, 1 s later (docs/SDK-TIMINGS.md). The wait ends as soon
// as what it waits for arrives, so a longer budget never delays an answer: it only decides
// whether a late pod is served or refused. 800 ms serves the 1 s SDKs' single attempt (200 ms
// for the connection and the write) and costs Go nothing a shorter budget would spare it.

/** The agent's defaults: a request is answered within 800 ms of arriving, whatever it waits for. */
export const DEFAULT_UNKNOWN_POD_WAIT_MS = 800;
export const DEFAULT_CREDENTIAL_WAIT_MS = 800;

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
