// Local screening of a projected service-account token before it costs a TokenReview: its shape
// (three base64url parts, JSON header and payload, bounded sizes) and the claims a valid token for
// this use must carry (audience, expiry, a service-account subject, the pod-bound
// `kubernetes.io` claims). The signature is not checked here — only the apiserver holds the keys —
// so a pass means "worth asking the apiserver", never "authenticated": screening only refuses.

/** A projected token is ~1–2 KiB; these leave room for long names and large keys. */
export const MAX_TOKEN_CHARS = 8192;
const MAX_HEADER_CHARS = 1024;
const MAX_PAYLOAD_CHARS = 6144;
const MAX_SIGNATURE_CHARS = 1024;
/** Clock skew tolerated between this server and the apiserver when reading `exp`. */
export const EXPIRY_LEEWAY_SECONDS = 60;

const BASE64URL = /^[A-Za-z0-9_-]+$/;
const SA_SUBJECT =
  /^system:serviceaccount:([a-z0-9]([-a-z0-9.]*[a-z0-9])?):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;

export interface TokenExpectations {
  audience: string;
  /** `namespace/name` of the service accounts allowed; undefined: any service account. */
  serviceAccounts?: ReadonlySet<string>;
  /** Require the node the token's pod is bound to (agent tokens: it names the agent's node). */
  requireNode: boolean;
}

export interface ScreenedClaims {
  serviceAccount: { namespace: string; name: string };
  podName: string;
  podUID: string;
  nodeName?: string;
  expiresAtSeconds: number;
}

export type ScreenResult =
  { ok: true; claims: ScreenedClaims } | { ok: false; code: "Unauthenticated" | "Forbidden"; reason: string };

const refuse = (reason: string, code: "Unauthenticated" | "Forbidden" = "Unauthenticated"): ScreenResult => ({
  ok: false,
  code,
  reason,
});

function decodeJsonObject(part: string): Record<string, unknown> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    return undefined;
  }
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

const objectAt = (o: Record<string, unknown>, key: string): Record<string, unknown> | undefined => {
  const v = o[key];
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
};
const stringAt = (o: Record<string, unknown> | undefined, key: string): string | undefined => {
  const v = o?.[key];
  return typeof v === "string" && v.length > 0 ? v : undefined;
};

/** Refuses a token that cannot be a valid one for `expect`; `nowSeconds` is Unix time. */
export function screenToken(token: string, expect: TokenExpectations, nowSeconds: number): ScreenResult {
  if (token.length > MAX_TOKEN_CHARS) return refuse(`token longer than ${MAX_TOKEN_CHARS} characters`);
  const parts = token.split(".");
  if (parts.length !== 3) return refuse("malformed bearer token (not a JWT)");
  const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
  if (
    headerPart.length > MAX_HEADER_CHARS ||
    payloadPart.length > MAX_PAYLOAD_CHARS ||
    signaturePart.length > MAX_SIGNATURE_CHARS
  )
    return refuse("malformed bearer token (a part is too long)");
  if (!BASE64URL.test(headerPart) || !BASE64URL.test(payloadPart) || !BASE64URL.test(signaturePart))
    return refuse("malformed bearer token (not base64url)");
  const header = decodeJsonObject(headerPart);
  if (!header) return refuse("malformed bearer token (header is not a JSON object)");
  const alg = header.alg;
  if (typeof alg !== "string" || alg === "" || alg.toLowerCase() === "none")
    return refuse("malformed bearer token (no signing algorithm)");
  const payload = decodeJsonObject(payloadPart);
  if (!payload) return refuse("malformed bearer token (payload is not a JSON object)");

  const aud = payload.aud;
  const audiences = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : [];
  if (!audiences.includes(expect.audience)) return refuse(`token is not for audience "${expect.audience}"`);
  const exp = payload.exp;
  if (typeof exp !== "number" || !Number.isFinite(exp))
    return refuse("token has no expiry (not a projected token)");
  if (exp + EXPIRY_LEEWAY_SECONDS < nowSeconds) return refuse("token has expired");

  const subject = typeof payload.sub === "string" ? SA_SUBJECT.exec(payload.sub) : null;
  if (!subject) return refuse("token is not a service-account token");
  const serviceAccount = { namespace: subject[1] as string, name: subject[3] as string };
  if (
    expect.serviceAccounts &&
    !expect.serviceAccounts.has(`${serviceAccount.namespace}/${serviceAccount.name}`)
  )
    return refuse(`${payload.sub as string} is not a keycutter agent`, "Forbidden");

  const bound = objectAt(payload, "kubernetes.io");
  const pod = bound ? objectAt(bound, "pod") : undefined;
  const podName = stringAt(pod, "name");
  const podUID = stringAt(pod, "uid");
  const boundSa = bound ? objectAt(bound, "serviceaccount") : undefined;
  if (
    !bound ||
    podName === undefined ||
    podUID === undefined ||
    stringAt(bound, "namespace") !== serviceAccount.namespace ||
    stringAt(boundSa, "name") !== serviceAccount.name
  )
    return refuse("token is not bound to a pod (use a projected service-account token)", "Forbidden");
  const nodeName = stringAt(bound ? objectAt(bound, "node") : undefined, "name");
  if (expect.requireNode && nodeName === undefined)
    return refuse(
      "agent token is not bound to a pod on a node (use a projected service-account token)",
      "Forbidden",
    );
  const claims: ScreenedClaims = { serviceAccount, podName, podUID, expiresAtSeconds: exp };
  if (nodeName !== undefined) claims.nodeName = nodeName;
  return { ok: true, claims };
}
