// The agent ↔ server contract. Both sides import only this module for the wire format, so a
// change here is a change to both. Transport: HTTPS, JSON bodies, the agent's projected
// service-account token as a Bearer token.

export const API_VERSION = "v1";
export const CREDENTIALS_PATH = "/v1/credentials";
/** Bodies larger than this are refused with 413 before parsing. */
export const MAX_REQUEST_BYTES = 16 * 1024;

export interface PodRef {
  namespace: string;
  name: string;
  uid: string;
}

/**
 * POST /v1/credentials
 * `pod` is the pod the agent resolved from the caller's source IP. `podToken` is set only on the
 * container-credentials path: the pod's own projected token, which the server validates and
 * which must name the same pod.
 */
export interface CredentialsRequest {
  pod: PodRef;
  podToken?: string;
}

export interface IssuedCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** RFC 3339 UTC. */
  expiration: string;
  accountId?: string;
}

export interface CredentialsResponse {
  credentials: IssuedCredentials;
  roleArn: string;
  /** Last path segment of the role ARN: what IMDS lists under security-credentials/. */
  roleName: string;
  sessionName: string;
  policy: { namespace: string; name: string; generation: number };
}

export type ErrorCode =
  | "BadRequest"
  | "PayloadTooLarge"
  | "Unauthenticated"
  | "Forbidden"
  | "PodNotFound"
  | "PodNotOnNode"
  /** A pod the server never serves: a mirror (static) pod, or one without a service account. */
  | "PodNotEligible"
  | "PodTokenMismatch"
  | "NoPolicy"
  | "AmbiguousPolicy"
  | "RoleNotAllowed"
  | "PolicyInvalid"
  | "StsDenied"
  | "Throttled"
  | "Unavailable";

/** Every non-2xx answer has this body. `message` never contains a secret. */
export interface ErrorResponse {
  code: ErrorCode;
  message: string;
}

export const ERROR_STATUS: Record<ErrorCode, number> = {
  BadRequest: 400,
  PayloadTooLarge: 413,
  Unauthenticated: 401,
  Forbidden: 403,
  PodNotFound: 404,
  PodNotOnNode: 403,
  PodNotEligible: 403,
  PodTokenMismatch: 403,
  NoPolicy: 404,
  AmbiguousPolicy: 409,
  RoleNotAllowed: 403,
  PolicyInvalid: 422,
  StsDenied: 403,
  Throttled: 429,
  Unavailable: 503,
};

/** Errors that say something definite about the pod; the agent may cache them briefly. */
export const DEFINITE_DENIALS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "PodNotEligible",
  "NoPolicy",
  "AmbiguousPolicy",
  "RoleNotAllowed",
  "PolicyInvalid",
  "StsDenied",
]);

const K8S_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const UID = /^[0-9a-fA-F-]{1,64}$/;

export class ContractError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Validates an untrusted body; throws ContractError("BadRequest") naming the first problem. */
export function parseCredentialsRequest(body: unknown): CredentialsRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ContractError("BadRequest", "body must be a JSON object");
  }
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) {
    if (k !== "pod" && k !== "podToken") throw new ContractError("BadRequest", `unknown field "${k}"`);
  }
  const pod = b.pod;
  if (typeof pod !== "object" || pod === null || Array.isArray(pod)) {
    throw new ContractError("BadRequest", "pod must be an object");
  }
  const p = pod as Record<string, unknown>;
  for (const k of Object.keys(p)) {
    if (k !== "namespace" && k !== "name" && k !== "uid") {
      throw new ContractError("BadRequest", `unknown field "pod.${k}"`);
    }
  }
  if (typeof p.namespace !== "string" || !K8S_NAME.test(p.namespace) || p.namespace.length > 63) {
    throw new ContractError("BadRequest", "pod.namespace is not a valid namespace name");
  }
  if (typeof p.name !== "string" || !K8S_NAME.test(p.name)) {
    throw new ContractError("BadRequest", "pod.name is not a valid pod name");
  }
  if (typeof p.uid !== "string" || !UID.test(p.uid)) {
    throw new ContractError("BadRequest", "pod.uid is not a valid UID");
  }
  const req: CredentialsRequest = { pod: { namespace: p.namespace, name: p.name, uid: p.uid } };
  if (b.podToken !== undefined) {
    if (typeof b.podToken !== "string" || b.podToken.length === 0 || b.podToken.length > 8192) {
      throw new ContractError("BadRequest", "podToken must be a non-empty string of at most 8192 characters");
    }
    req.podToken = b.podToken;
  }
  return req;
}

export function isCredentialsResponse(v: unknown): v is CredentialsResponse {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  const c = r.credentials as Record<string, unknown> | undefined;
  return (
    typeof c === "object" &&
    c !== null &&
    typeof c.accessKeyId === "string" &&
    typeof c.secretAccessKey === "string" &&
    typeof c.sessionToken === "string" &&
    typeof c.expiration === "string" &&
    !Number.isNaN(Date.parse(c.expiration)) &&
    typeof r.roleArn === "string" &&
    typeof r.roleName === "string" &&
    typeof r.sessionName === "string"
  );
}
