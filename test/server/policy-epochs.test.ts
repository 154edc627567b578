// The server's half of policy tightening: per-namespace policy epochs served to agents by long
// poll (identical on every replica), the epoch carried with credentials, and a cache key that
// follows the decision's content rather than the objects' generations. Real apiserver and moto.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { MAX_EPOCH_NAMESPACES } from "../../src/api/contract.ts";
import { untilTrue } from "../harness/manual-clock.ts";
import { createWorld, post, startTestServer, type HttpResult, type TestServer, type World } from "./world.ts";

const EPOCHS = "/v1/policy-epochs";
/** Only the fields named change. */
const mergePatch = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

describe(
  "policy epochs and the decision-content cache key (real apiserver, moto)",
  { timeout: 600_000 },
  () => {
    let w: World;
    let one: TestServer;
    let two: TestServer;

    const ask = (s: TestServer, podKey: string): Promise<HttpResult> =>
      post(s.running.apiPort, w.cert.caFile, {
        token: w.agentToken["node-1"],
        body: { pod: w.pods[podKey] },
      });
    const poll = (s: TestServer, namespaces: Record<string, string>, token = w.agentToken["node-1"]) =>
      post(s.running.apiPort, w.cert.caFile, { token, path: EPOCHS, body: { namespaces } });
    const epochsNow = async (s: TestServer, ...namespaces: string[]): Promise<Record<string, string>> => {
      const r = await poll(s, Object.fromEntries(namespaces.map((ns) => [ns, ""])));
      assert.equal(r.status, 200, r.raw);
      return r.body.epochs as Record<string, string>;
    };
    const patchAllowance = (name: string, spec: object) =>
      w.custom.patchClusterCustomObject(
        { group: "keycutter.dev", version: "v1alpha1", plural: "roleallowances", name, body: { spec } },
        mergePatch,
      );
    const patchPolicy = (namespace: string, name: string, spec: object) =>
      w.custom.patchNamespacedCustomObject(
        {
          group: "keycutter.dev",
          version: "v1alpha1",
          namespace,
          plural: "accesspolicies",
          name,
          body: { spec },
        },
        mergePatch,
      );
    /** Waits until both replicas' informers show a tenant-a epoch other than `before`. */
    const bothMovedFrom = async (previous: string): Promise<string> => {
      const [e1, e2] = await Promise.all([
        poll(one, { "tenant-a": previous }),
        poll(two, { "tenant-a": previous }),
      ]);
      const a = (e1.body.epochs as Record<string, string>)["tenant-a"]!;
      const b = (e2.body.epochs as Record<string, string>)["tenant-a"]!;
      assert.notEqual(a, previous);
      assert.equal(a, b, "both replicas compute the same epoch");
      return a;
    };

    before(async () => {
      w = await createWorld();
      one = await startTestServer(w, { epochHoldMs: 3000 });
      two = await startTestServer(w, { epochHoldMs: 3000 });
    });
    after(async () => {
      await one?.running.stop();
      await two?.running.stop();
      await w?.stop();
    });

    it("every replica computes the same epochs; credentials carry their namespace's epoch", async () => {
      const [e1, e2] = await Promise.all([
        epochsNow(one, "tenant-a", "tenant-b", "nopol"),
        epochsNow(two, "tenant-a", "tenant-b", "nopol"),
      ]);
      assert.deepEqual(e1, e2);
      assert.match(e1["tenant-a"]!, /^[A-Za-z0-9_-]{16,64}$/);
      assert.notEqual(e1["tenant-a"], e1["tenant-b"]);
      const r = await ask(one, "a1");
      assert.equal(r.status, 200, r.raw);
      assert.equal(r.body.policyEpoch, e1["tenant-a"]);
    });

    it("a poll with current epochs is held, and answered within a second of a change in its namespace only", async () => {
      const start = await epochsNow(one, "tenant-a", "tenant-b");
      const waitingBefore = one.running.epochs.waiting;
      let answeredEarly = false;
      const held = poll(one, start).then((answer) => {
        answeredEarly = true;
        return answer;
      });
      // held at the server (a waiter registered), not a guess at how long the request takes
      await untilTrue(() => one.running.epochs.waiting > waitingBefore, "the poll is held", 10_000_000);
      assert.equal(answeredEarly, false, "held while nothing changed");
      const tChange = Date.now();
      await patchPolicy("tenant-b", "b", { durationSeconds: 1800 });
      const r = await held;
      const answeredMs = Date.now() - tChange;
      console.log(`# epoch poll answered ${answeredMs} ms after the apiserver accepted the change`);
      assert.equal(r.status, 200, r.raw);
      assert.ok(answeredMs < 1000, `answered after ${answeredMs} ms`);
      const now = r.body.epochs as Record<string, string>;
      assert.equal(now["tenant-a"], start["tenant-a"], "another namespace's change leaves tenant-a's epoch");
      assert.notEqual(now["tenant-b"], start["tenant-b"]);
      // nothing changed: held for the hold time, then the same epochs
      const t1 = Date.now();
      const quiet = await poll(one, now);
      assert.equal(quiet.status, 200);
      assert.deepEqual(quiet.body.epochs, now);
      assert.ok(Date.now() - t1 >= 2500, "held for the hold time");
    });

    it("a status update (the leader's conditions) does not move an epoch", async () => {
      const start = await epochsNow(one, "tenant-a");
      await w.custom.patchNamespacedCustomObjectStatus(
        {
          group: "keycutter.dev",
          version: "v1alpha1",
          namespace: "tenant-a",
          plural: "accesspolicies",
          name: "a",
          body: { status: { observedGeneration: 99 } },
        },
        mergePatch,
      );
      const r = await poll(one, start);
      assert.deepEqual(r.body.epochs, start);
    });

    it("an allowance edit that leaves the decision as it was returns the issued credentials without STS; one that changes it forces a new AssumeRole", async () => {
      const first = await ask(one, "a2");
      assert.equal(first.status, 200, first.raw);
      const key0 = (first.body.credentials as Record<string, string>).accessKeyId;
      const calls0 = one.stsCalls.length;
      const epoch0 = first.body.policyEpoch as string;

      // The server caps durations at 3600 s: raising the allowance's cap changes its generation,
      // the epoch, and nothing the credentials carry.
      await patchAllowance("tenant-a", { maxDurationSeconds: 7200 });
      const epoch1 = await bothMovedFrom(epoch0);
      const same = await ask(one, "a2");
      assert.equal(same.status, 200, same.raw);
      assert.equal(same.body.policyEpoch, epoch1);
      assert.equal((same.body.credentials as Record<string, string>).accessKeyId, key0);
      assert.equal(one.stsCalls.length, calls0, "no AssumeRole for an unchanged decision");
      const rec = one.audit.filter((a) => a.pod?.uid === w.pods.a2!.uid).at(-1)!;
      assert.equal(rec.source, "memory");

      // A new deny statement is part of the session policy: a new key and a new AssumeRole.
      await patchAllowance("tenant-a", {
        denyStatements: [
          { Effect: "Deny", Action: "s3:DeleteObject", Resource: "*" },
          { Effect: "Deny", Action: "s3:ListBucket", Resource: "*" },
        ],
      });
      const epoch2 = await bothMovedFrom(epoch1);
      const tightened = await ask(one, "a2");
      assert.equal(tightened.status, 200, tightened.raw);
      assert.equal(tightened.body.policyEpoch, epoch2);
      assert.notEqual((tightened.body.credentials as Record<string, string>).accessKeyId, key0);
      assert.equal(one.stsCalls.length, calls0 + 1);
      const sent = JSON.parse(one.stsCalls.at(-1)!.Policy!) as {
        Statement: { Effect: string; Action: unknown }[];
      };
      assert.ok(sent.Statement.some((s) => s.Effect === "Deny" && s.Action === "s3:ListBucket"));
    });

    it("refuses polls that are unauthenticated, malformed or too large", async () => {
      const noToken = await post(one.running.apiPort, w.cert.caFile, {
        path: EPOCHS,
        body: { namespaces: { "tenant-a": "" } },
      });
      assert.equal(noToken.status, 401);
      const junkToken = await poll(one, { "tenant-a": "" }, "a.b.c");
      assert.equal(junkToken.status, 401);
      for (const raw of [
        "[]",
        "not json",
        '{"namespaces":[]}',
        '{"namespaces":{"Not_A_Name":""}}',
        '{"namespaces":{"__proto__":""}}',
        '{"namespaces":{"tenant-a":7}}',
        `{"namespaces":{"tenant-a":"${"x".repeat(65)}"}}`,
        '{"namespaces":{},"extra":1}',
      ]) {
        const r = await post(one.running.apiPort, w.cert.caFile, {
          token: w.agentToken["node-1"],
          path: EPOCHS,
          raw,
        });
        assert.equal(r.status, 400, `${raw} → ${r.status} ${r.raw}`);
        assert.equal(r.body.code, "BadRequest");
      }
      const many = Object.fromEntries(
        Array.from({ length: MAX_EPOCH_NAMESPACES + 1 }, (_, i) => [`ns-${i}`, ""]),
      );
      const tooMany = await poll(one, many);
      assert.equal(tooMany.status, 400);
      const wrongMethod = await post(one.running.apiPort, w.cert.caFile, {
        token: w.agentToken["node-1"],
        path: EPOCHS,
        method: "GET",
      });
      assert.equal(wrongMethod.status, 405);
    });
  },
);
