// PodWatch against a scripted fake apiserver (one-module test): relist on 410, reconnect after
// errors, field selector, staleness. The real apiserver is exercised in agent-netns.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ManualClock } from "../../harness/manual-clock.ts";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ApiClient } from "../../../src/k8s/api-client.ts";
import { RestConfig } from "../../../src/k8s/rest-config.ts";
import { pino } from "pino";
import { PodWatch, type PodInfo } from "../../../src/agent/pod-watch.ts";

function podObj(name: string, ip: string, rv: string) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "ns", uid: `uid-${name}`, resourceVersion: rv },
    spec: { nodeName: "n1", serviceAccountName: "sa", containers: [{ name: "c", image: "x" }] },
    status: { phase: "Running", podIP: ip, podIPs: [{ ip }] },
  };
}

test("relists after 410 Gone, applies events, reconnects after a dropped watch", async () => {
  const requests: string[] = [];
  const resumedFrom: string[] = [];
  let lists = 0;
  let watches = 0;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url!, "http://x");
    requests.push(url.pathname + url.search);
    res.setHeader("content-type", "application/json");
    if (url.searchParams.get("watch") !== "true") {
      lists++;
      const items = lists === 1 ? [podObj("a", "10.0.0.2", "5")] : [podObj("b", "10.0.0.3", "20")];
      res.end(
        JSON.stringify({
          apiVersion: "v1",
          kind: "PodList",
          metadata: { resourceVersion: lists === 1 ? "10" : "30" },
          items,
        }),
      );
      return;
    }
    watches++;
    if (watches === 1) {
      // one event, then the server says the resourceVersion is too old
      res.write(JSON.stringify({ type: "ADDED", object: podObj("c", "10.0.0.4", "11") }) + "\n");
      res.end(
        JSON.stringify({
          type: "ERROR",
          object: { kind: "Status", code: 410, message: "too old resource version" },
        }) + "\n",
      );
    } else if (watches === 2) {
      res.write(JSON.stringify({ type: "MODIFIED", object: podObj("b", "10.0.0.9", "31") }) + "\n");
      setTimeout(() => res.destroy(), 50); // connection dropped mid-watch
    } else {
      resumedFrom.push(url.searchParams.get("resourceVersion") ?? "");
      res.write(JSON.stringify({ type: "DELETED", object: podObj("b", "10.0.0.9", "32") }) + "\n");
      // keep open
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const api = new ApiClient(
    new RestConfig(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, {}, { token: "t" }),
  );
  const events: string[] = [];
  const handler = {
    upsert: (p: PodInfo) => events.push(`upsert ${p.name} ${p.ip}`),
    remove: (uid: string) => events.push(`remove ${uid}`),
    resync: (pods: PodInfo[]) => events.push(`resync ${pods.map((p) => p.name).join(",")}`),
  };
  const clock = new ManualClock();
  const w = new PodWatch({
    api,
    nodeName: "n1",
    handler,
    log: pino({ level: "silent" }),
    backoffInitialMs: 20,
    staleAfterMs: 60_000,
    clock,
  });
  assert.ok(w.isStale(), "stale before the first list");
  w.start();
  // the backoffs pass on the manual clock, 1 ms a step (at most 20 s of it, well inside staleAfterMs)
  for (let step = 0; step < 20_000 && !events.includes("remove uid-b"); step++) await clock.advance(1);
  await w.stop();
  api.close();
  server.closeAllConnections();
  server.close();
  assert.deepEqual(events, [
    "resync a",
    "upsert c 10.0.0.4",
    "resync b",
    "upsert b 10.0.0.9",
    "remove uid-b",
  ]);
  assert.equal(lists, 2, "relisted once after 410");
  assert.equal(resumedFrom[0], "31", "re-watch resumes from the last event");
  assert.ok(
    requests.every((r) => r.includes("fieldSelector=spec.nodeName%3Dn1")),
    "node-scoped list and watch",
  );
  assert.ok(w.restarts >= 2);
  assert.ok(!w.isStale());
});
