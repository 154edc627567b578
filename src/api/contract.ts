// The agent ↔ server contract. Both sides import only this module for the wire format, so a
// change here is a change to both (with its error catalogue, errors.ts). Transport: HTTPS, JSON bodies, the agent's projected
// service-account token as a Bearer token.

import { KeycutterError, type ErrorCode } from "./errors.ts";

export type { ErrorCode };

export const API_VERSION = "v1";
export const CREDENTIALS_PATH = "/v1/credentials";
/** Bodies larger than this are refused with 413 before parsing. */
export const MAX_REQUEST_BYTES = 16 * 1024;

/**
 * POST /v1/policy-epochs: a long poll. The agent names the namespaces of its pods with the epoch
 * it knows for each ("" when none); the server answers as soon as one differs from its own, or
 * after about POLICY_EPOCH_HOLD_MS with the same epochs. Same authentication as the credentials
 * call.
 */
export const POLICY_EPOCHS_PATH = "/v1/policy-epochs";
/** How long the server holds a long poll with nothing changed. */
export const POLICY_EPOCH_HOLD_MS = 25_000;
/** At most this many namespaces per poll (a node's pods are never in more). */
export const MAX_EPOCH_NAMESPACES = 512;
/** The epochs body: MAX_EPOCH_NAMESPACES names of 63 characters with an epoch each. */
export const MAX_EPOCH_REQUEST_BYTES = 64 * 1024;

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
  /**
   * The pod namespace's policy epoch the decision was made under. An agent that knows a different
   * epoch for the namespace does not serve these credentials (the replica or the agent is behind a
   * policy change) and asks again. Absent from servers older than the epoch channel.
   */
  policyEpoch?: string;
}

/** POST /v1/policy-epochs body: namespace → the epoch the agent knows ("" for none yet). */
export interface PolicyEpochsRequest {
  namespaces: Record<string, string>;
}

/** The server's epoch for every namespace of the request. */
export interface PolicyEpochsResponse {
  epochs: Record<string, string>;
}

/** Every non-2xx answer has this body. `message` never contains a secret. */
export interface ErrorResponse {
  code: ErrorCode;
  message: string;
}

const K8S_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** Epochs are base64url digests (policy-epoch computation: src/server/policy-epochs.ts). */
const EPOCH = /^[A-Za-z0-9_-]{0,64}$/;
const UID = /^[0-9a-fA-F-]{1,64}$/;

/** Validates an untrusted body; throws KeycutterError("BadRequest") naming the first problem. */
export function parseCredentialsRequest(body: unknown): CredentialsRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new KeycutterError("BadRequest", "body must be a JSON object");
  }
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) {
    if (k !== "pod" && k !== "podToken") throw new KeycutterError("BadRequest", `unknown field "${k}"`);
  }
  const pod = b.pod;
  if (typeof pod !== "object" || pod === null || Array.isArray(pod)) {
    throw new KeycutterError("BadRequest", "pod must be an object");
  }
  const p = pod as Record<string, unknown>;
  for (const k of Object.keys(p)) {
    if (k !== "namespace" && k !== "name" && k !== "uid") {
      throw new KeycutterError("BadRequest", `unknown field "pod.${k}"`);
    }
  }
  if (typeof p.namespace !== "string" || !K8S_NAME.test(p.namespace) || p.namespace.length > 63) {
    throw new KeycutterError("BadRequest", "pod.namespace is not a valid namespace name");
  }
  if (typeof p.name !== "string" || !K8S_NAME.test(p.name)) {
    throw new KeycutterError("BadRequest", "pod.name is not a valid pod name");
  }
  if (typeof p.uid !== "string" || !UID.test(p.uid)) {
    throw new KeycutterError("BadRequest", "pod.uid is not a valid UID");
  }
  const req: CredentialsRequest = { pod: { namespace: p.namespace, name: p.name, uid: p.uid } };
  if (b.podToken !== undefined) {
    if (typeof b.podToken !== "string" || b.podToken.length === 0 || b.podToken.length > 8192) {
      throw new KeycutterError(
        "BadRequest",
        "podToken must be a non-empty string of at most 8192 characters",
      );
    }
    req.podToken = b.podToken;
  }
  return req;
}

/** Validates an untrusted epochs poll; throws KeycutterError("BadRequest") naming the first problem. */
export function parsePolicyEpochsRequest(body: unknown): PolicyEpochsRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new KeycutterError("BadRequest", "body must be a JSON object");
  }
  for (const k of Object.keys(body)) {
    if (k !== "namespaces") throw new KeycutterError("BadRequest", `unknown field "${k}"`);
  }
  const namespaces = (body as Record<string, unknown>).namespaces;
  if (typeof namespaces !== "object" || namespaces === null || Array.isArray(namespaces)) {
    throw new KeycutterError("BadRequest", "namespaces must be an object of namespace → epoch");
  }
  const entries = Object.entries(namespaces);
  if (entries.length > MAX_EPOCH_NAMESPACES) {
    throw new KeycutterError("BadRequest", `at most ${MAX_EPOCH_NAMESPACES} namespaces per poll`);
  }
  // A null-prototype object: names are checked below, but nothing here should ever reach a prototype.
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [ns, epoch] of entries) {
    if (!NAMESPACE_NAME.test(ns))
      throw new KeycutterError("BadRequest", "namespaces has an invalid namespace name");
    if (typeof epoch !== "string" || !EPOCH.test(epoch)) {
      throw new KeycutterError("BadRequest", `namespaces.${ns} is not a valid epoch`);
    }
    out[ns] = epoch;
  }
  return { namespaces: out };
}

export function isPolicyEpochsResponse(v: unknown): v is PolicyEpochsResponse {
  if (typeof v !== "object" || v === null) return false;
  const epochs = (v as Record<string, unknown>).epochs;
  if (typeof epochs !== "object" || epochs === null || Array.isArray(epochs)) return false;
  return Object.entries(epochs).every(
    ([ns, epoch]) => NAMESPACE_NAME.test(ns) && typeof epoch === "string" && EPOCH.test(epoch),
  );
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
    typeof r.sessionName === "string" &&
    (r.policyEpoch === undefined || (typeof r.policyEpoch === "string" && EPOCH.test(r.policyEpoch)))
  );
}
