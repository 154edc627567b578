// The one error catalogue: every code keycutter answers with, the HTTP status it is answered
// with, what a pod's IMDS client gets for it, whether it is a definite denial or worth retrying,
// and what it means. Statuses are chosen here and nowhere else; docs/OPERATIONS.md documents
// every row (test/unit/api/errors.test.ts checks both).

export interface ErrorSpec {
  /** The HTTP status wherever keycutter answers with this code: the server's API, the agent's listeners. */
  readonly status: number;
  /**
   * What the IMDS listener answers a pod whose credentials could not be had for this reason. IMDS
   * clients know two answers: 404 (no credentials for you; do not hammer) and 5xx (try again).
   */
  readonly imdsStatus: number;
  /** Says something lasting about the pod: the agent may remember the refusal briefly. */
  readonly definite: boolean;
  /** A later attempt may succeed on its own: the server adds Retry-After. */
  readonly retryable: boolean;
  /** Who answers with it: the server (and the agent relays it), the agent alone, or both. */
  readonly raisedBy: "server" | "agent" | "both";
  readonly meaning: string;
}

function spec(
  status: number,
  imdsStatus: number,
  raisedBy: ErrorSpec["raisedBy"],
  meaning: string,
  flags: { definite?: boolean; retryable?: boolean } = {},
): ErrorSpec {
  return {
    status,
    imdsStatus,
    definite: flags.definite ?? false,
    retryable: flags.retryable ?? false,
    raisedBy,
    meaning,
  };
}

const DEFINITE = { definite: true };
const RETRYABLE = { retryable: true };

export const ERRORS = {
  BadRequest: spec(400, 503, "both", "the request is malformed (body, field, header value)"),
  PayloadTooLarge: spec(413, 503, "both", "the request carries a body larger than accepted"),
  UriTooLong: spec(414, 414, "agent", "the request's URI is longer than a pod-facing listener accepts"),
  UnsupportedMediaType: spec(415, 503, "server", "the request body is not application/json"),
  NotFound: spec(404, 404, "both", "no such path"),
  MethodNotAllowed: spec(405, 405, "both", "the path exists but not for this method"),
  Unauthenticated: spec(
    401,
    503,
    "both",
    "no valid credentials: the agent's token (server), the pod's IMDSv2 session token or service-account token (agent)",
  ),
  Forbidden: spec(
    403,
    404,
    "both",
    "authenticated but not allowed: not a keycutter agent, a token not bound to a node, a proxied IMDS token request",
  ),
  PodNotFound: spec(
    404,
    404,
    "both",
    "no such pod: none with this IP or name, another UID, or it has finished",
  ),
  PodIpAmbiguous: spec(
    409,
    409,
    "agent",
    "more than one pod of the node claims the caller's IP; the agent refuses to guess",
  ),
  HostNetworkRefused: spec(
    403,
    403,
    "agent",
    "the caller is a hostNetwork pod, which shares the node's IP and is not served",
  ),
  PodNotOnNode: spec(403, 404, "server", "the pod is not bound to the asking agent's node"),
  PodNotEligible: spec(
    403,
    404,
    "server",
    "a pod the server never serves: a mirror (static) pod, or one without a service account",
    DEFINITE,
  ),
  PodTokenMismatch: spec(
    403,
    404,
    "server",
    "the pod's own token is invalid or names another pod or service account",
  ),
  NoPolicy: spec(404, 404, "server", "no AccessPolicy of the namespace selects the pod", DEFINITE),
  AmbiguousPolicy: spec(409, 404, "server", "more than one AccessPolicy selects the pod", DEFINITE),
  RoleNotAllowed: spec(403, 404, "server", "no RoleAllowance lets the namespace use the role", DEFINITE),
  PolicyInvalid: spec(
    422,
    404,
    "server",
    "the policy cannot be turned into an AssumeRole STS accepts",
    DEFINITE,
  ),
  StsDenied: spec(403, 404, "server", "STS refused the AssumeRole (trust policy, permissions)", DEFINITE),
  Throttled: spec(
    429,
    503,
    "both",
    "too many requests: the agent's per-source limit, or the server's STS or review budget",
    RETRYABLE,
  ),
  Unavailable: spec(
    503,
    503,
    "both",
    "a dependency did not answer: Kubernetes API, STS, the credential service; or an internal error",
    RETRYABLE,
  ),
  PolicyChangePropagating: spec(
    503,
    503,
    "agent",
    "the answer was decided under another policy epoch than the agent knows: a policy change is still reaching the replicas",
    RETRYABLE,
  ),
  ServerAnswerInvalid: spec(
    502,
    503,
    "agent",
    "the credential service's answer was not understood (malformed, too large, expired credentials)",
    RETRYABLE,
  ),
  MetadataUpstreamFailed: spec(
    502,
    502,
    "agent",
    "the node's real IMDS did not answer an allowlisted passthrough path",
  ),
  InternalError: spec(500, 500, "agent", "a fault in a pod-facing handler (logged)"),
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export const ERROR_CODES: readonly ErrorCode[] = Object.keys(ERRORS) as ErrorCode[];

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && Object.hasOwn(ERRORS, value);
}

export function httpStatus(code: ErrorCode): number {
  return ERRORS[code].status;
}

export function imdsStatus(code: ErrorCode): number {
  return ERRORS[code].imdsStatus;
}

/** The one error class: a catalogue code, a message that never carries a secret, and its cause. */
export class KeycutterError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KeycutterError";
    this.code = code;
  }

  get status(): number {
    return ERRORS[this.code].status;
  }
}
