// PodLookup's namespace cache on a manual clock: a namespace's labels are read once per TTL, a
// missing namespace is remembered as missing for as long, and the TTL is the clock's, not the
// machine's. A local stand-in answers the apiserver's namespace GETs; no test here sleeps.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { KubeConfig } from "@kubernetes/client-node";
import { PodLookup } from "../../../../src/server/k8s/pod-lookup.ts";
import { startHttpStandIn, type HttpStandIn } from "../../../harness/http-stand-in.ts";
import { ManualClock } from "../../../harness/manual-clock.ts";

const labels: Record<string, Record<string, string>> = { team: { tier: "gold" } };
const gets: string[] = [];
let apiserver: HttpStandIn;
let kc: KubeConfig;

before(async () => {
  apiserver = await startHttpStandIn((req, res) => {
    const name = decodeURIComponent(req.url?.match(/^\/api\/v1\/namespaces\/([^/?]+)$/)?.[1] ?? "");
    gets.push(name);
    const found = labels[name];
    if (!found)
      res
        .writeHead(404, { "content-type": "application/json" })
        .end(JSON.stringify({ kind: "Status", code: 404, reason: "NotFound" }));
    else
      res
        .writeHead(200, { "content-type": "application/json" })
        .end(JSON.stringify({ metadata: { name, labels: found } }));
  });
  kc = apiserver.kubeConfig();
});
after(() => apiserver.close());

test("pod lookup: a namespace is read once per TTL on the clock, a missing one remembered as missing", async () => {
  const clock = new ManualClock();
  const pods = new PodLookup(kc, { namespaceTtlMs: 30_000, clock });
  gets.length = 0;
  try {
    assert.deepEqual(await pods.namespace("team"), { name: "team", labels: { tier: "gold" } });
    assert.equal(await pods.namespace("gone"), undefined);
    labels.team = { tier: "silver" };
    labels.gone = {};
    await clock.advance(29_999);
    assert.deepEqual((await pods.namespace("team"))?.labels, { tier: "gold" }, "cached within the TTL");
    assert.equal(await pods.namespace("gone"), undefined, "missing, cached within the TTL");
    assert.deepEqual(gets, ["team", "gone"]);
    await clock.advance(1);
    assert.deepEqual((await pods.namespace("team"))?.labels, { tier: "silver" }, "read again at the TTL");
    assert.deepEqual(await pods.namespace("gone"), { name: "gone", labels: {} });
    assert.deepEqual(gets, ["team", "gone", "team", "gone"]);
  } finally {
    labels.team = { tier: "gold" };
    delete labels.gone;
    pods.close();
  }
});
