import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { decrypt, encrypt, MemoryCache } from "../../../src/server/cache.ts";

test("AES-GCM values: round trip, bound to their key (AAD), tamper-evident", () => {
  const key = randomBytes(32);
  const v = encrypt(key, "k1", '{"secretAccessKey":"s"}');
  assert.ok(!v.includes("secretAccessKey"));
  assert.equal(decrypt(key, "k1", v), '{"secretAccessKey":"s"}');
  assert.throws(() => decrypt(key, "k2", v), "copied under another key");
  assert.throws(() => decrypt(randomBytes(32), "k1", v), "other key");
  const b = Buffer.from(v.slice(3), "base64");
  b[b.length - 1] = (b[b.length - 1] as number) ^ 1;
  assert.throws(() => decrypt(key, "k1", `v1.${b.toString("base64")}`), "tampered");
});

test("memory cache drops expired entries and stays bounded", () => {
  const m = new MemoryCache(2);
  const c = (exp: number) => ({
    accessKeyId: "a",
    secretAccessKey: "s",
    sessionToken: "t",
    expiration: new Date(exp).toISOString(),
  });
  const now = Date.parse("2026-12-01T12:00:00Z");
  m.set("old", c(now - 1));
  assert.equal(m.get("old", now), undefined);
  m.set("a", c(now + 60_000));
  m.set("b", c(now + 60_000));
  m.set("c", c(now + 60_000));
  assert.equal(m.size, 2);
  assert.equal(m.get("a", now), undefined);
  assert.ok(m.get("c", now));
  assert.ok(m.get("c", now + 59_999), "valid until its expiration");
  assert.equal(m.get("c", now + 60_000), undefined, "gone at its expiration");
  m.set("d", c(now + 120_000));
  m.sweep(now + 60_000);
  assert.equal(m.size, 1, "the sweep drops what has expired, keeps the rest");
  assert.ok(m.get("d", now + 60_000));
});
