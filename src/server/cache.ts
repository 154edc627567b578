// Credential cache shared by replicas.
//
// Layers: an in-process map (always), plus an optional Redis-protocol store (Redis, Valkey,
// Dragonfly) whose values are AES-256-GCM encrypted with a key from a file; the store key is a
// sha256 of the cache key (no pod names or UIDs in the store's key space) and is bound to the
// ciphertext as additional authenticated data, so a value copied under another key does not
// decrypt. Any store failure degrades to the in-process layer: a miss, never an error.
//
// Cross-replica single flight: before calling STS a replica takes a short lock (SET NX PX); a
// replica that finds the lock held waits briefly for the value to appear instead of calling STS.

import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { systemClock, type Clock } from "../common/clock.ts";
import type { Logger } from "../common/logger.ts";

export interface CachedCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** ISO 8601 */
  expiration: string;
  accountId?: string;
  /** STS's request id of the AssumeRole that issued them (audit records join CloudTrail by it). */
  stsRequestId?: string;
}

/** Loads a 32-byte key: raw 32 bytes, 64 hex chars, or base64 of 32 bytes (whitespace trimmed). */
export function loadKey(path: string): Buffer {
  const raw = readFileSync(path);
  if (raw.length === 32) return raw;
  const s = raw.toString("utf8").trim();
  if (/^[0-9a-fA-F]{64}$/.test(s)) return Buffer.from(s, "hex");
  const b = Buffer.from(s, "base64");
  if (b.length === 32) return b;
  throw new Error(`cache key file ${path}: expected 32 bytes (raw, hex or base64)`);
}

export function encrypt(key: Buffer, aad: string, plaintext: string): string {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(Buffer.from(aad));
  const ct = Buffer.concat([c.update(plaintext, "utf8"), c.final()]);
  return `v1.${Buffer.concat([iv, c.getAuthTag(), ct]).toString("base64")}`;
}

export function decrypt(key: Buffer, aad: string, value: string): string {
  if (!value.startsWith("v1.")) throw new Error("unknown cache value format");
  const b = Buffer.from(value.slice(3), "base64");
  if (b.length < 29) throw new Error("cache value too short");
  const d = createDecipheriv("aes-256-gcm", key, b.subarray(0, 12));
  d.setAAD(Buffer.from(aad));
  d.setAuthTag(b.subarray(12, 28));
  return Buffer.concat([d.update(b.subarray(28)), d.final()]).toString("utf8");
}

export interface CacheMetrics {
  onStoreError?: (op: string) => void;
}

export interface SharedStoreOptions {
  url: string;
  key: Buffer;
  prefix?: string;
  commandTimeoutMs?: number;
  log: Logger;
  metrics?: CacheMetrics;
  /** Paces the "unavailable" warning (one per 10 s). */
  clock?: Pick<Clock, "now">;
}

export class SharedStore {
  readonly redis: Redis;
  private readonly key: Buffer;
  private readonly prefix: string;
  private readonly log: Logger;
  private readonly metrics: CacheMetrics;
  private readonly clock: Pick<Clock, "now">;
  private lastErrorLog = 0;

  constructor(opts: SharedStoreOptions) {
    this.key = opts.key;
    this.clock = opts.clock ?? systemClock;
    this.prefix = opts.prefix ?? "keycutter:v1:";
    this.log = opts.log;
    this.metrics = opts.metrics ?? {};
    this.redis = new Redis(opts.url, {
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: opts.commandTimeoutMs ?? 300,
      connectTimeout: 1000,
      retryStrategy: (n) => Math.min(200 * n, 2000),
    });
    this.redis.on("error", (e: Error) => this.noteError("connection", e));
  }

  get ready(): boolean {
    return this.redis.status === "ready";
  }

  private noteError(op: string, e: unknown): void {
    this.metrics.onStoreError?.(op);
    const now = this.clock.now();
    if (now - this.lastErrorLog > 10_000) {
      this.lastErrorLog = now;
      // the message only: ioredis errors carry the command and its arguments (cache entries)
      this.log.warn(
        { op, err: (e as Error).message },
        "shared cache unavailable; using the in-process cache",
      );
    }
  }

  private k(kind: string, cacheKey: string): string {
    return `${this.prefix}${kind}:${createHash("sha256").update(cacheKey).digest("hex")}`;
  }

  async get(cacheKey: string): Promise<CachedCredentials | undefined> {
    if (!this.ready) return undefined;
    const rk = this.k("creds", cacheKey);
    try {
      const v = await this.redis.get(rk);
      if (!v) return undefined;
      return JSON.parse(decrypt(this.key, rk, v)) as CachedCredentials;
    } catch (e) {
      this.noteError("get", e);
      return undefined;
    }
  }

  async set(cacheKey: string, v: CachedCredentials, ttlMs: number): Promise<void> {
    if (!this.ready || ttlMs <= 0) return;
    const rk = this.k("creds", cacheKey);
    try {
      await this.redis.set(rk, encrypt(this.key, rk, JSON.stringify(v)), "PX", Math.ceil(ttlMs));
    } catch (e) {
      this.noteError("set", e);
    }
  }

  /** Returns a token when the lock was taken, undefined when held elsewhere or the store is down. */
  async lock(cacheKey: string, ttlMs: number): Promise<string | undefined> {
    if (!this.ready) return undefined;
    const token = randomBytes(12).toString("hex");
    try {
      const r = await this.redis.set(this.k("lock", cacheKey), token, "PX", ttlMs, "NX");
      return r === "OK" ? token : undefined;
    } catch (e) {
      this.noteError("lock", e);
      return undefined;
    }
  }

  async unlock(cacheKey: string, token: string): Promise<void> {
    if (!this.ready) return;
    try {
      await this.redis.eval(
        'if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end',
        1,
        this.k("lock", cacheKey),
        token,
      );
    } catch (e) {
      this.noteError("unlock", e);
    }
  }

  async close(): Promise<void> {
    this.redis.disconnect();
  }
}

/** In-process layer: bounded map, expired entries dropped on access and by a sweep. */
export class MemoryCache {
  private readonly map = new Map<string, CachedCredentials>();
  private readonly max: number;
  constructor(max = 200_000) {
    this.max = max;
  }
  get size(): number {
    return this.map.size;
  }
  get(key: string, now: number): CachedCredentials | undefined {
    const v = this.map.get(key);
    if (v && Date.parse(v.expiration) <= now) {
      this.map.delete(key);
      return undefined;
    }
    return v;
  }
  set(key: string, v: CachedCredentials): void {
    if (this.map.size >= this.max) {
      const first = this.map.keys().next();
      if (!first.done) this.map.delete(first.value);
    }
    this.map.delete(key);
    this.map.set(key, v);
  }
  delete(key: string): void {
    this.map.delete(key);
  }
  sweep(now: number): void {
    for (const [k, v] of this.map) if (Date.parse(v.expiration) <= now) this.map.delete(k);
  }
}
