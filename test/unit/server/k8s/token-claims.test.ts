// Local screening of service-account tokens (src/k8s/token-claims.ts): what it refuses without
// a TokenReview, and that a well-formed token passes to the review (screening never accepts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { screenToken } from "../../../../src/server/k8s/token-claims.ts";
import { forgedToken, junkTokens } from "../../../server/flood.ts";

const agents = new Set(["keycutter-system/keycutter-agent"]);
const agentExpect = { audience: "keycutter", serviceAccounts: agents, requireNode: true };
const now = () => Date.now() / 1000;

test("a token shaped like an agent's passes screening with its claims (to be reviewed)", () => {
  const r = screenToken(forgedToken({ nodeName: "node-7" }), agentExpect, now());
  assert.ok(r.ok, JSON.stringify(r));
  assert.deepEqual(r.claims.serviceAccount, { namespace: "keycutter-system", name: "keycutter-agent" });
  assert.equal(r.claims.nodeName, "node-7");
});

test("junk of every shape is refused with 401 or 403 reasons, never the token in the reason", () => {
  for (const j of junkTokens()) {
    const r = screenToken(j.token, agentExpect, now());
    assert.ok(!r.ok, j.name);
    assert.equal(r.code === "Forbidden" ? 403 : 401, j.status, `${j.name}: ${r.reason}`);
    assert.ok(!r.reason.includes(j.token.slice(0, 20)), j.name);
  }
});

test("expiry has a small leeway for clock skew; pod tokens need no node", () => {
  const justExpired = forgedToken({ expiresIn: -30 });
  assert.ok(screenToken(justExpired, agentExpect, now()).ok, "30 s late: within the leeway");
  assert.ok(!screenToken(forgedToken({ expiresIn: -120 }), agentExpect, now()).ok);
  const podToken = forgedToken({
    audience: "keycutter-pod",
    namespace: "tenant-a",
    serviceAccount: "app",
    noNode: true,
  });
  assert.ok(screenToken(podToken, { audience: "keycutter-pod", requireNode: false }, now()).ok);
  assert.ok(!screenToken(podToken, { audience: "keycutter", requireNode: false }, now()).ok);
});
