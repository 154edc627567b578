// Stateless IMDSv2 session tokens: HMAC-signed (pod UID, expiry). No memory grows with the
// number of tokens issued; a token presented by any pod other than the one it was issued to, or
// after its expiry, or after an agent restart (new key) fails verification.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export const MIN_TTL_SECONDS = 1;
export const MAX_TTL_SECONDS = 21600;
const MAC_BYTES = 18;
const MAX_TOKEN_CHARS = 256;

export class ImdsTokens {
  private readonly key: Buffer;

  constructor(key: Buffer = randomBytes(32)) {
    if (key.length < 16) throw new Error("IMDS token key must have at least 16 bytes");
    this.key = key;
  }

  /** Token for `uid`, valid until now + ttlSeconds. */
  issue(uid: string, ttlSeconds: number, nowMs = Date.now()): string {
    const exp = Math.floor(nowMs / 1000) + ttlSeconds;
    const payload = Buffer.from(`${exp.toString(36)}:${uid}`, "utf8");
    const mac = createHmac("sha256", this.key).update(payload).digest().subarray(0, MAC_BYTES);
    return `${payload.toString("base64url")}.${mac.toString("base64url")}`;
  }

  /** True when `token` was issued by this agent to `uid` and has not expired. */
  verify(token: string, uid: string, nowMs = Date.now()): boolean {
    if (token.length > MAX_TOKEN_CHARS) return false;
    const dot = token.indexOf(".");
    if (dot <= 0 || dot !== token.lastIndexOf(".")) return false;
    const payload = Buffer.from(token.slice(0, dot), "base64url");
    const mac = Buffer.from(token.slice(dot + 1), "base64url");
    if (mac.length !== MAC_BYTES) return false;
    const want = createHmac("sha256", this.key).update(payload).digest().subarray(0, MAC_BYTES);
    if (!timingSafeEqual(mac, want)) return false;
    const text = payload.toString("utf8");
    const colon = text.indexOf(":");
    if (colon <= 0) return false;
    if (text.slice(colon + 1) !== uid) return false;
    const exp = parseInt(text.slice(0, colon), 36);
    return Number.isFinite(exp) && exp * 1000 > nowMs;
  }
}

/** Parses the TTL header: an integer 1–21600 written in plain decimal, else undefined. */
export function parseTtl(v: string | string[] | undefined): number | undefined {
  if (typeof v !== "string" || !/^[0-9]{1,5}$/.test(v)) return undefined;
  const n = Number(v);
  return n >= MIN_TTL_SECONDS && n <= MAX_TTL_SECONDS ? n : undefined;
}
