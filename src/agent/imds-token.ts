// Stateless IMDSv2 session tokens: HMAC-signed (pod UID, expiry). No memory grows with the
// number of tokens issued; a token presented by any pod other than the one it was issued to, or
// after its expiry, or after an agent restart (new key) fails verification.
import { createHmac, createSecretKey, randomBytes, timingSafeEqual, type KeyObject } from "node:crypto";
import { systemClock, type Clock } from "../common/clock.ts";

export const MIN_TTL_SECONDS = 1;
export const MAX_TTL_SECONDS = 21600;
const MAC_BYTES = 18;
const MAX_TOKEN_CHARS = 256;
/** Verified tokens remembered (so that the hot path skips the HMAC); bounded, oldest out first. */
const VERIFIED_MAX = 8192;

export class ImdsTokens {
  private readonly key: KeyObject;
  private readonly verified = new Map<string, { uid: string; expMs: number }>();
  /** Last token issued per pod: a second request in the same second gets the same token. */
  private readonly lastIssued = new Map<string, { exp: number; token: string }>();
  private readonly clock: Pick<Clock, "now">;

  /** `clock`: token expiry. */
  constructor(key: Buffer = randomBytes(32), clock: Pick<Clock, "now"> = systemClock) {
    if (key.length < 16) throw new Error("IMDS token key must have at least 16 bytes");
    this.key = createSecretKey(key);
    this.clock = clock;
  }

  /** The raw key, for a hand-over to a successor agent (handover.ts); not kept in a second copy. */
  exportKey(): Buffer {
    return this.key.export();
  }

  /** Token for `uid`, valid until now + ttlSeconds. */
  issue(uid: string, ttlSeconds: number, nowMs = this.clock.now()): string {
    const exp = Math.floor(nowMs / 1000) + ttlSeconds;
    const last = this.lastIssued.get(uid);
    if (last !== undefined && last.exp === exp) return last.token;
    const payload = Buffer.from(`${exp.toString(36)}:${uid}`, "utf8");
    const mac = createHmac("sha256", this.key).update(payload).digest().subarray(0, MAC_BYTES);
    const token = `${payload.toString("base64url")}.${mac.toString("base64url")}`;
    this.remember(token, uid, exp * 1000);
    if (this.lastIssued.size >= VERIFIED_MAX) this.lastIssued.clear();
    this.lastIssued.set(uid, { exp, token });
    return token;
  }

  private remember(token: string, uid: string, expMs: number): void {
    if (this.verified.size >= VERIFIED_MAX) {
      const oldest = this.verified.keys().next();
      if (!oldest.done) this.verified.delete(oldest.value);
    }
    this.verified.set(token, { uid, expMs });
  }

  /** True when `token` was issued by this agent to `uid` and has not expired. */
  verify(token: string, uid: string, nowMs = this.clock.now()): boolean {
    const known = this.verified.get(token);
    if (known !== undefined) {
      if (known.expMs > nowMs) return known.uid === uid;
      this.verified.delete(token);
      return false;
    }
    return this.verifySlow(token, uid, nowMs);
  }

  private verifySlow(token: string, uid: string, nowMs: number): boolean {
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
    const exp = parseInt(text.slice(0, colon), 36);
    if (!Number.isFinite(exp) || exp * 1000 <= nowMs) return false;
    const tokenUid = text.slice(colon + 1);
    this.remember(token, tokenUid, exp * 1000);
    return tokenUid === uid;
  }
}

/** Parses the TTL header: an integer 1–21600 written in plain decimal, else undefined. */
export function parseTtl(v: string | string[] | undefined): number | undefined {
  if (typeof v !== "string" || !/^[0-9]{1,5}$/.test(v)) return undefined;
  const n = Number(v);
  return n >= MIN_TTL_SECONDS && n <= MAX_TTL_SECONDS ? n : undefined;
}
