import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ImdsTokens, parseTtl } from "../../src/agent/imds-token.ts";

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
