// TokenReviewer's time on a manual clock: an accepted review is reused for 10 s and a rejected one
// for 5 s, then asked again; a token's expiry is judged by the clock. A local stand-in answers the
// apiserver's TokenReviews; no test here sleeps.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { KubeConfig } from "@kubernetes/client-node";
import { TokenReviewer, type ReviewOutcome } from "../../../../src/server/k8s/token-review.ts";
import { forgedToken } from "../../../server/flood.ts";
import { startHttpStandIn, type HttpStandIn } from "../../../harness/http-stand-in.ts";
import { ManualClock } from "../../../harness/manual-clock.ts";

const good = forgedToken({ expiresIn: 3600 });
const bad = forgedToken({ expiresIn: 3600 });
const shortLived = forgedToken({ expiresIn: 60 });
let reviews = 0;
let apiserver: HttpStandIn;
let kc: KubeConfig;

before(async () => {
  apiserver = await startHttpStandIn((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      reviews++;
      const { spec } = JSON.parse(Buffer.concat(chunks).toString()) as {
        spec: { token: string; audiences: string[] };
      };
      const status =
        spec.token === bad
          ? { authenticated: false, error: "invalid bearer token" }
          : {
              authenticated: true,
              audiences: spec.audiences,
              user: {
                username: "system:serviceaccount:keycutter-system:keycutter-agent",
                extra: { "authentication.kubernetes.io/node-name": ["node-1"] },
              },
            };
      res.writeHead(201, { "content-type": "application/json" }).end(JSON.stringify({ status }));
    });
  });
  kc = apiserver.kubeConfig();
});
after(() => apiserver.close());

const req = { kind: "agent" as const, audience: "keycutter", source: "10.0.0.1", requireNode: true };

test("token review: accepted reused for 10 s, rejected for 5 s, on the clock", async () => {
  const clock = new ManualClock(Date.now());
  const outcomes: ReviewOutcome[] = [];
  const reviewer = new TokenReviewer(kc, { clock, onOutcome: (_kind, outcome) => outcomes.push(outcome) });
  try {
    reviews = 0;
    assert.equal((await reviewer.review(good, req)).authenticated, true);
    assert.equal((await reviewer.review(bad, req)).authenticated, false);
    assert.equal(reviews, 2);
    await clock.advance(5_000);
    await reviewer.review(good, req);
    await reviewer.review(bad, req);
    assert.equal(reviews, 2, "both answered from the caches for 5 s");
    await clock.advance(1);
    await reviewer.review(bad, req);
    assert.equal(reviews, 3, "the rejection expired after 5 s: asked again");
    await clock.advance(4_999);
    await reviewer.review(good, req);
    assert.equal(reviews, 3, "the acceptance holds for 10 s");
    await clock.advance(1);
    await reviewer.review(good, req);
    assert.equal(reviews, 4, "the acceptance expired after 10 s: asked again");
    assert.deepEqual(outcomes, [
      "reviewed",
      "reviewed",
      "cached_accepted",
      "cached_rejected",
      "reviewed",
      "cached_accepted",
      "reviewed",
    ]);
  } finally {
    reviewer.close();
  }
});

test("token review: a token's expiry is judged by the clock", async () => {
  const clock = new ManualClock(Date.now());
  const reviewer = new TokenReviewer(kc, { clock });
  try {
    assert.equal((await reviewer.review(shortLived, req)).authenticated, true);
    await clock.advance(60_000 + 10 * 60_000);
    const late = await reviewer.review(shortLived, req);
    assert.equal(late.authenticated, false, "expired by the clock, refused before any review");
    assert.match(late.error ?? "", /expired/);
  } finally {
    reviewer.close();
  }
});
