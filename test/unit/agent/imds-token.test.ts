import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ImdsTokens, parseTtl } from "../../../src/agent/imds-token.ts";

test("a token verifies for its pod only, until it expires", () => {
  const t = new ImdsTokens();
  const now = Date.now();
  const tok = t.issue("uid-a", 300, now);
  assert.ok(t.verify(tok, "uid-a", now));
  assert.ok(!t.verify(tok, "uid-b", now));
  assert.ok(!t.verify(tok, "uid-a", now + 301_000));
  assert.ok(!new ImdsTokens().verify(tok, "uid-a", now), "another agent key");
});

test("tampered or garbage tokens never verify", () => {
  const t = new ImdsTokens();
  const tok = t.issue("uid-a", 21600);
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), (s) => {
      assert.equal(t.verify(s, "uid-a"), s === tok);
    }),
  );
  const flipped = tok.slice(0, 3) + (tok[3] === "A" ? "B" : "A") + tok.slice(4);
  assert.ok(!t.verify(flipped, "uid-a"));
});

test("TTL header parsing", () => {
  assert.equal(parseTtl("21600"), 21600);
  assert.equal(parseTtl("1"), 1);
  for (const bad of [undefined, "", "0", "21601", "-5", "1e3", " 30", "30 ", "abc", "3.5"]) {
    assert.equal(parseTtl(bad), undefined, String(bad));
  }
  assert.equal(parseTtl(["300", "300"]), undefined);
});

test("the verified-token memo gives the same answers as the HMAC and stays bounded", () => {
  const t = new ImdsTokens();
  const now = Date.now();
  const tok = t.issue("uid-a", 2, now);
  for (let i = 0; i < 3; i++) {
    assert.ok(t.verify(tok, "uid-a", now));
    assert.ok(!t.verify(tok, "uid-b", now));
  }
  assert.ok(!t.verify(tok, "uid-a", now + 3000), "expired even when memoised");
  // a token from another agent instance (another key) is verified by HMAC, not trusted from memo
  const other = new ImdsTokens().issue("uid-a", 300, now);
  assert.ok(!t.verify(other, "uid-a", now));
  for (let i = 0; i < 10_000; i++) t.issue(`uid-${i}`, 300, now);
  const size = (t as unknown as { verified: Map<string, unknown> }).verified.size;
  assert.ok(size <= 8192, `memo bounded (${size})`);
  const t2 = new ImdsTokens();
  const fresh = t2.issue("uid-x", 300, now);
  const copy = new ImdsTokens((t2 as unknown as { key: { export(): Buffer } }).key.export());
  assert.ok(copy.verify(fresh, "uid-x", now), "same key, cold memo: HMAC path");
  assert.ok(copy.verify(fresh, "uid-x", now), "then memoised");
});
