// The central security service against real parts: kube-apiserver (CRDs, RBAC: the server runs
// with a token of its service account bound to deploy/rbac/*), moto STS/S3 with auth enforced,
// real Redis. Agents authenticate with pod-bound tokens of agent pods on nodes.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { runSimulation } from "@cloud-copilot/iam-simulate";
import { spawnSync } from "node:child_process";
import { NODE, startRedis, waitFor, type Redis } from "../harness/index.ts";
import { copyFileSync, rmSync } from "node:fs";
import { connect as tlsConnect } from "node:tls";
import { cacheKeyFile } from "../harness/keycutter-server.ts";
import { makeServingCert } from "../harness/tls.ts";
import { untilTrue } from "../harness/manual-clock.ts";
import { startThrottleProxy } from "../aws/throttle-proxy.ts";
import { ApiClientFrom, apiserverTokenReviews, forgedToken, junkTokens } from "./flood.ts";
import {
  createAllowance,
  createPolicy,
  createWorld,
  explainArgs,
  post,
  readyConditionOf,
  roleArn,
  startTestServer,
  tenantPolicy,
  type TestServer,
  type World,
} from "./world.ts";
import type { AccessPolicy } from "../../src/policy/types.ts";
import { canonicalJson } from "../../src/policy/decide.ts";

async function s3Read(w: World, creds: Record<string, string>, bucket: string, key: string): Promise<string> {
  const s3 = new S3Client({
    endpoint: w.moto.endpoint,
    region: w.moto.region,
    forcePathStyle: true,
    credentials: {
      accessKeyId: creds.accessKeyId as string,
      secretAccessKey: creds.secretAccessKey as string,
      sessionToken: creds.sessionToken as string,
    },
  });
  try {
    const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return await (r.Body as { transformToString(): Promise<string> }).transformToString();
  } finally {
    s3.destroy();
  }
}

describe("keycutter server (real apiserver, moto, redis)", { timeout: 600_000 }, () => {
  let w: World;
  let srv: TestServer;
  let redis: Redis;
  let keyFile: string;

  const ask = (podKey: string, node = "node-1", extra: Record<string, unknown> = {}) =>
    post(srv.running.apiPort, w.cert.caFile, {
      token: w.agentToken[node],
      body: { pod: w.pods[podKey], ...extra },
    });

  /** A new pod of service account `app` (team blue) on node-1 at `podIP`. */
  const bluePod = async (namespace: string, name: string, podIP: string) => {
    const created = await w.kubelet.createPod({
      namespace,
      name,
      nodeName: "node-1",
      serviceAccountName: "app",
      labels: { team: "blue" },
      podIP,
    });
    return { namespace, name, uid: created.metadata!.uid! };
  };
  /** node-1's agent asks server `port` for `pod`'s credentials. */
  const askAt = (port: number, pod: { namespace: string; name: string; uid: string }) =>
    post(port, w.cert.caFile, { token: w.agentToken["node-1"], body: { pod } });

  before(async () => {
    w = await createWorld();
    redis = await startRedis();
    keyFile = cacheKeyFile(w.dir);
    srv = await startTestServer(w, { redisUrl: redis.url, cacheKeyFile: keyFile });
    await waitFor("server ready", async () => srv.running.ready(), { timeoutMs: 30_000 });
    await waitFor("policies loaded", async () => srv.running.informers.accessPolicies().length >= 7, {
      timeoutMs: 30_000,
    });
  });

  after(async () => {
    await srv?.running.stop();
    await redis?.stop();
    await w?.stop();
  });

  it("issues tenant A's credentials: A's bucket readable, B's denied (moto enforces the role)", async () => {
    const r = await ask("a1");
    assert.equal(r.status, 200, r.raw);
    const creds = r.body.credentials as Record<string, string>;
    assert.equal(r.body.roleArn, roleArn("tenant-a"));
    assert.equal(r.body.roleName, "tenant-a");
    assert.match(creds.expiration as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.deepEqual(r.body.policy, { namespace: "tenant-a", name: "a", generation: 1 });
    assert.equal(await s3Read(w, creds, "bucket-a", "tenant-a/blue/data.txt"), "A-blue");
    await assert.rejects(s3Read(w, creds, "bucket-b", "tenant-b/blue/data.txt"), (e: Error) =>
      /AccessDenied|Forbidden|denied/i.test(`${e.name} ${e.message}`),
    );
    // and B's credentials the other way round
    const rb = await ask("b1");
    assert.equal(rb.status, 200, rb.raw);
    const cb = rb.body.credentials as Record<string, string>;
    assert.equal(await s3Read(w, cb, "bucket-b", "tenant-b/blue/data.txt"), "B-blue");
    await assert.rejects(s3Read(w, cb, "bucket-a", "tenant-a/blue/data.txt"));
    const rec = srv.audit.find((a) => a.pod?.uid === w.pods.a1?.uid && a.decision === "allowed");
    assert.ok(rec, "audit record for the issuance");
    assert.equal(rec.node, "node-1");
    assert.equal(rec.serviceAccount, "app");
    assert.equal(rec.role, roleArn("tenant-a"));
    assert.equal(rec.policySha256?.length, 64);
    assert.equal(rec.tags?.["kubernetes-pod-uid"], w.pods.a1?.uid);
    const line = JSON.stringify(srv.audit);
    assert.ok(
      !line.includes(creds.secretAccessKey as string) && !line.includes(creds.sessionToken as string),
      "no secret in audit",
    );
  });

  it("sends the exact rendered session policy, tags and names; the simulator shows it narrows to the pod's prefix", async () => {
    const call = srv.stsCalls.find(
      (c) => c.RoleArn === roleArn("tenant-a") && c.Tags?.some((t) => t.Value === w.pods.a1?.uid),
    );
    assert.ok(call, "AssumeRole call captured");
    const expected = {
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Action: ["s3:GetObject"], Resource: "arn:aws:s3:::bucket-a/tenant-a/blue/*" },
        {
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: "arn:aws:s3:::bucket-a",
          Condition: { StringLike: { "s3:prefix": "tenant-a/blue/*" } },
        },
        { Effect: "Deny", Action: "s3:DeleteObject", Resource: "*" },
      ],
    };
    assert.equal(call.Policy, canonicalJson(expected));
    assert.equal(call.DurationSeconds, 3600);
    assert.match(call.RoleSessionName ?? "", /^tenant-a\.web-1-[0-9a-f]{12}$/);
    assert.equal(call.SourceIdentity, call.RoleSessionName);
    const tags = Object.fromEntries((call.Tags ?? []).map((t) => [t.Key, t.Value]));
    assert.deepEqual(tags, {
      "kubernetes-namespace": "tenant-a",
      "kubernetes-service-account": "app",
      "kubernetes-pod-name": "web-1",
      "kubernetes-pod-uid": w.pods.a1?.uid,
      "kubernetes-node-name": "node-1",
      "kubernetes-cluster-name": "test-cluster",
      team: "blue",
    });
    const identity = [
      {
        name: "tenant-a-policy",
        policy: {
          Version: "2012-10-17",
          Statement: [
            {
              Effect: "Allow",
              Action: ["s3:GetObject", "s3:ListBucket"],
              Resource: ["arn:aws:s3:::bucket-a", "arn:aws:s3:::bucket-a/*"],
            },
          ],
        },
      },
    ];
    const sim = async (action: string, resource: string, policy: unknown) => {
      const r = await runSimulation(
        {
          request: {
            principal: `arn:aws:sts::123456789012:assumed-role/tenant-a/${call.RoleSessionName}`,
            action,
            resource: { resource, accountId: "123456789012" },
            contextVariables: {},
          },
          identityPolicies: identity,
          serviceControlPolicies: [],
          resourceControlPolicies: [],
          ...(policy ? { sessionPolicy: policy } : {}),
        },
        {},
      );
      assert.notEqual(r.resultType, "error", JSON.stringify(r));
      return (r as { overallResult: string }).overallResult;
    };
    const session = JSON.parse(call.Policy as string);
    assert.equal(
      await sim("s3:GetObject", "arn:aws:s3:::bucket-a/tenant-a/blue/data.txt", session),
      "Allowed",
    );
    assert.equal(
      await sim("s3:GetObject", "arn:aws:s3:::bucket-a/tenant-a/red/data.txt", session),
      "ImplicitlyDenied",
    );
    assert.equal(
      await sim("s3:GetObject", "arn:aws:s3:::bucket-a/tenant-b/blue/data.txt", session),
      "ImplicitlyDenied",
    );
    assert.equal(
      await sim("s3:DeleteObject", "arn:aws:s3:::bucket-a/tenant-a/blue/data.txt", session),
      "ExplicitlyDenied",
    );
    // without the session policy the role alone would allow the other prefix: the narrowing is ours
    assert.equal(
      await sim("s3:GetObject", "arn:aws:s3:::bucket-a/tenant-a/red/data.txt", undefined),
      "Allowed",
    );
  });

  it("refuses a pod on another node (403 PodNotOnNode) and audits it", async () => {
    const before = srv.stsCalls.length;
    const r = await ask("a1", "node-2");
    assert.equal(r.status, 403, r.raw);
    assert.equal(r.body.code, "PodNotOnNode");
    assert.equal(srv.stsCalls.length, before);
    const rec = srv.audit.findLast((a) => a.code === "PodNotOnNode");
    assert.ok(rec);
    assert.equal(rec.node, "node-2");
    assert.equal(rec.decision, "denied");
    assert.equal(rec.pod?.uid, w.pods.a1?.uid);
    // the node-2 agent does get its own pod
    const ok = await ask("n2", "node-2");
    assert.equal(ok.status, 200, ok.raw);
  });

  it("refuses wrong UIDs and deleted pods; serves terminating pods until they are gone", async () => {
    const wrong = await post(srv.running.apiPort, w.cert.caFile, {
      token: w.agentToken["node-1"],
      body: { pod: { ...w.pods.a1, uid: "00000000-0000-0000-0000-000000000000" } },
    });
    assert.equal(wrong.status, 404);
    assert.equal(wrong.body.code, "PodNotFound");
    await w.kubelet.terminatePod("tenant-a", "web-term");
    const term = await ask("aTerm");
    assert.equal(term.status, 200, term.raw);
    await w.kubelet.deletePod("tenant-a", "web-term");
    const gone = await ask("aTerm");
    assert.equal(gone.status, 404);
    assert.equal(gone.body.code, "PodNotFound");
    await w.kubelet.deletePod("tenant-a", "web-del");
    const del = await ask("aDel");
    assert.equal(del.status, 404);
  });

  it("no policy → 404 NoPolicy; ambiguous → 409; disallowed role → 403; oversized → 422; hostile annotation → 422", async () => {
    const before = srv.stsCalls.length;
    const none = await ask("nopol");
    assert.equal(none.status, 404);
    assert.equal(none.body.code, "NoPolicy");
    const amb = await ask("amb");
    assert.equal(amb.status, 409);
    assert.equal(amb.body.code, "AmbiguousPolicy");
    assert.match(String(amb.body.message), /one, two/);
    const role = await ask("thief");
    assert.equal(role.status, 403);
    assert.equal(role.body.code, "RoleNotAllowed");
    const big = await ask("big");
    assert.equal(big.status, 422);
    assert.equal(big.body.code, "PolicyInvalid");
    assert.match(String(big.body.message), /2048/);
    const hostile = await ask("hostile");
    assert.equal(hostile.status, 422);
    assert.equal(hostile.body.code, "PolicyInvalid");
    assert.ok(!String(hostile.body.message).includes('"Effect"'));
    assert.equal(srv.stsCalls.length, before, "nothing was sent to STS");
  });

  it("writes Ready conditions from the leader", async () => {
    const cond = async (ns: string, name: string) => {
      const o = (await w.custom.getNamespacedCustomObject({
        group: "keycutter.dev",
        version: "v1alpha1",
        namespace: ns,
        plural: "accesspolicies",
        name,
      })) as AccessPolicy;
      return o.status?.conditions?.find((c) => c.type === "Ready");
    };
    await waitFor("statuses", async () => (await cond("tenant-a", "steal"))?.reason === "RoleNotAllowed", {
      timeoutMs: 30_000,
    });
    await waitFor("big", async () => (await cond("tenant-a", "big"))?.reason === "PolicyTooLarge", {
      timeoutMs: 30_000,
    });
    await waitFor("amb", async () => (await cond("amb", "one"))?.reason === "AmbiguousMatch", {
      timeoutMs: 30_000,
    });
    await waitFor("hostile", async () => (await cond("tenant-a", "hostile"))?.reason === "TemplateInvalid", {
      timeoutMs: 30_000,
    });
    const ok = await cond("tenant-a", "a");
    assert.equal(ok?.status, "True");
    assert.equal(ok?.observedGeneration, 1);
    const ra = (await w.custom.getClusterCustomObject({
      group: "keycutter.dev",
      version: "v1alpha1",
      plural: "roleallowances",
      name: "tenant-a",
    })) as AccessPolicy;
    assert.equal(ra.status?.conditions?.[0]?.status, "True");
  });

  it("a session tag key no allowance permits: 403 RoleNotAllowed (TagKeyNotAllowed) in the answer, the status and explain; a permitted key reaches STS", async () => {
    const podRef = await bluePod("tagged", "web-1", "10.244.1.200");
    const askTagged = () => askAt(srv.running.apiPort, podRef);
    // the platform gives the namespace keys of its own, nothing else
    await createAllowance(w, {
      metadata: { name: "tagged" },
      spec: { namespaces: ["tagged"], roleArns: [roleArn("tenant-a")], sessionTagKeys: ["${namespace}-*"] },
    });
    // the tenant claims the team tag other tenants' ABAC rules key on
    await createPolicy(
      w,
      tenantPolicy("tagged", "claims-team", "app", "tenant-a", "bucket-a", {
        sessionTags: { team: "team-b" },
      }),
    );
    const stsBefore = srv.stsCalls.length;
    const refused = await waitFor(
      "the tag key refused",
      async () => {
        const r = await askTagged();
        return /session tag keys not permitted/.test(String(r.body.message)) ? r : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 300 },
    );
    assert.equal(refused.status, 403);
    assert.equal(refused.body.code, "RoleNotAllowed");
    assert.match(String(refused.body.message), /"team" \(RoleAllowance tagged\)/);
    assert.equal(srv.stsCalls.length, stsBefore, "nothing was sent to STS");

    const readPolicy = async () =>
      (await w.custom.getNamespacedCustomObject({
        group: "keycutter.dev",
        version: "v1alpha1",
        namespace: "tagged",
        plural: "accesspolicies",
        name: "claims-team",
      })) as AccessPolicy;
    const ready = await readyConditionOf(
      w,
      "tagged",
      "claims-team",
      "TagKeyNotAllowed in the status",
      (c) => c.reason === "TagKeyNotAllowed",
    );
    assert.equal(ready.status, "False");
    assert.match(ready.message, /"team" \(RoleAllowance tagged\)/);

    const explained = spawnSync(NODE, explainArgs(w, ["tagged/web-1", "-o", "json"]), { encoding: "utf8" });
    assert.equal(explained.status, 3, explained.stderr);
    const e = JSON.parse(explained.stdout);
    assert.equal(e.decision.reason, "TagKeyNotAllowed");
    const tagged = e.allowances.find((a: { name: string }) => a.name === "tagged");
    assert.deepEqual(tagged.refusedTagKeys, ["team"]);
    assert.match(
      tagged.reason,
      /does not permit session tag key\(s\) "team" \(spec.sessionTagKeys: \$\{namespace\}-\*\)/,
    );

    // a key of the namespace's own: issued, and the tag is in the AssumeRole call
    const current = await readPolicy();
    current.spec.sessionTags = { "tagged-team": "${pod.labels['team']}" };
    await w.custom.replaceNamespacedCustomObject({
      group: "keycutter.dev",
      version: "v1alpha1",
      namespace: "tagged",
      plural: "accesspolicies",
      name: "claims-team",
      body: current,
    });
    const issued = await waitFor(
      "issued with the namespace's own key",
      async () => {
        const r = await askTagged();
        return r.status === 200 ? r : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 300 },
    );
    assert.equal(issued.body.roleArn, roleArn("tenant-a"));
    const call = srv.stsCalls.at(-1);
    const tags = Object.fromEntries((call?.Tags ?? []).map((t) => [t.Key, t.Value]));
    assert.equal(tags["tagged-team"], "blue");
    assert.equal(tags.team, undefined);
  });

  it("the leader finds a template a pod cannot fill without any request being made", async () => {
    await w.kubelet.createServiceAccount("tenant-a", "unlabelled");
    await createPolicy(w, tenantPolicy("tenant-a", "needs-team", "unlabelled", "tenant-a", "bucket-a"));
    // no agent asks for this pod: only the leader's own evaluation can put the problem in status
    await w.kubelet.createPod({
      namespace: "tenant-a",
      name: "no-team-label",
      nodeName: "node-1",
      serviceAccountName: "unlabelled",
    });
    const c = await readyConditionOf(
      w,
      "tenant-a",
      "needs-team",
      "TemplateInvalid from the leader's own evaluation",
      (ready) => ready.status === "False",
    );
    assert.equal(c.reason, "TemplateInvalid");
    assert.match(c.message, /no-team-label/);
  });

  it("the apiserver rejects obvious mistakes (schema and CEL)", async () => {
    const bad = async (body: unknown, plural = "accesspolicies") => {
      await assert.rejects(
        plural === "accesspolicies"
          ? w.custom.createNamespacedCustomObject({
              group: "keycutter.dev",
              version: "v1alpha1",
              namespace: "tenant-a",
              plural,
              body,
            })
          : w.custom.createClusterCustomObject({ group: "keycutter.dev", version: "v1alpha1", plural, body }),
        (e: { code?: number }) => e.code === 422,
      );
    };
    await bad({
      apiVersion: "keycutter.dev/v1alpha1",
      kind: "AccessPolicy",
      metadata: { name: "x1" },
      spec: { podSelector: {}, roleArn: "not-an-arn" },
    });
    await bad({
      apiVersion: "keycutter.dev/v1alpha1",
      kind: "AccessPolicy",
      metadata: { name: "x2" },
      spec: { podSelector: {}, roleArn: roleArn("r"), sessionTags: { "kubernetes-namespace": "x" } },
    });
    await bad(
      {
        apiVersion: "keycutter.dev/v1alpha1",
        kind: "RoleAllowance",
        metadata: { name: "x3" },
        spec: {
          namespaces: ["a"],
          roleArns: [roleArn("r")],
          denyStatements: [{ Effect: "Allow", Action: "*", Resource: "*" }],
        },
      },
      "roleallowances",
    );
    await bad(
      {
        apiVersion: "keycutter.dev/v1alpha1",
        kind: "RoleAllowance",
        metadata: { name: "x4" },
        spec: { roleArns: [roleArn("r")] },
      },
      "roleallowances",
    );
  });

  it("answers bad input with a 4xx and a clear code, issuing nothing", async () => {
    const before = srv.stsCalls.length;
    const port = srv.running.apiPort;
    const ca = w.cert.caFile;
    const t = w.agentToken["node-1"];
    const cases: Array<[string, Parameters<typeof post>[2], number, string]> = [
      ["invalid JSON", { token: t, raw: "{not json" }, 400, "BadRequest"],
      ["unknown field", { token: t, body: { pod: w.pods.a1, extra: 1 } }, 400, "BadRequest"],
      ["unknown pod field", { token: t, body: { pod: { ...w.pods.a1, node: "x" } } }, 400, "BadRequest"],
      ["bad namespace", { token: t, body: { pod: { ...w.pods.a1, namespace: "../x" } } }, 400, "BadRequest"],
      ["array body", { token: t, raw: "[]" }, 400, "BadRequest"],
      ["huge body", { token: t, raw: `{"pod":"${"x".repeat(100_000)}"}` }, 413, "PayloadTooLarge"],
      [
        "wrong content type",
        { token: t, raw: "pod=x", contentType: "application/x-www-form-urlencoded" },
        415,
        "UnsupportedMediaType",
      ],
      ["no token", { body: { pod: w.pods.a1 } }, 401, "Unauthenticated"],
      [
        "forged token",
        {
          token:
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a2V5Y3V0dGVyLXN5c3RlbTprZXljdXR0ZXItYWdlbnQifQ.c2lnbmF0dXJl",
          body: { pod: w.pods.a1 },
        },
        401,
        "Unauthenticated",
      ],
      [
        "tampered token",
        { token: `${t?.slice(0, -4)}AAAA`, body: { pod: w.pods.a1 } },
        401,
        "Unauthenticated",
      ],
      ["garbage token", { token: "not-a-jwt", body: { pod: w.pods.a1 } }, 401, "Unauthenticated"],
      ["GET", { token: t, method: "GET" }, 405, "MethodNotAllowed"],
      ["other path", { token: t, body: {}, path: "/v1/other" }, 404, "NotFound"],
    ];
    for (const [name, o, status, code] of cases) {
      const r = await post(port, ca, o);
      assert.equal(r.status, status, `${name}: ${r.raw}`);
      assert.equal(r.body.code, code, name);
      assert.equal(typeof r.body.message, "string", name);
    }
    // a valid token of the wrong service account, and a valid agent token for another audience
    const pod = await w.kubelet.createPod({
      namespace: "tenant-a",
      name: "impostor",
      nodeName: "node-1",
      serviceAccountName: "app",
      podIP: "10.244.1.99",
    });
    const tenantToken = await w.kubelet.requestToken("tenant-a", "app", {
      podName: "impostor",
      podUID: pod.metadata!.uid!,
      audiences: ["keycutter"],
    });
    const r1 = await post(port, ca, { token: tenantToken, body: { pod: w.pods.a1 } });
    assert.equal(r1.status, 403, r1.raw);
    assert.equal(r1.body.code, "Forbidden");
    const agentPod = await w.kubelet.createPod({
      namespace: "keycutter-system",
      name: "agent-aud",
      nodeName: "node-1",
      serviceAccountName: "keycutter-agent",
      podIP: "10.99.0.1",
      hostNetwork: true,
    });
    const wrongAud = await w.kubelet.requestToken("keycutter-system", "keycutter-agent", {
      podName: "agent-aud",
      podUID: agentPod.metadata!.uid!,
      audiences: ["something-else"],
    });
    const r2 = await post(port, ca, { token: wrongAud, body: { pod: w.pods.a1 } });
    assert.equal(r2.status, 401, r2.raw);
    // a token of a deleted agent pod is dead (replay after the pod is gone)
    const replay = await w.kubelet.requestToken("keycutter-system", "keycutter-agent", {
      podName: "agent-aud",
      podUID: agentPod.metadata!.uid!,
      audiences: ["keycutter"],
    });
    await w.kubelet.deletePod("keycutter-system", "agent-aud");
    const r3 = await post(port, ca, { token: replay, body: { pod: w.pods.a1 } });
    assert.equal(r3.status, 401, r3.raw);
    assert.equal(srv.stsCalls.length, before);
    const h = await fetch(`http://127.0.0.1:${srv.running.opsPort}/healthz`);
    assert.equal(h.status, 200);
    const m = await (await fetch(`http://127.0.0.1:${srv.running.opsPort}/metrics`)).text();
    assert.match(m, /keycutter_server_decisions_total\{outcome="issued"\} \d+/);
    assert.match(m, /keycutter_server_decisions_total\{outcome="Unauthenticated"\} \d+/);
    assert.match(m, /keycutter_server_sts_latency_seconds_count\{outcome="ok"\} \d+/);
  });

  it("TokenReview flood: junk tokens are refused without a TokenReview (counted at the apiserver)", async () => {
    const t = await startTestServer(w, { leaderElection: false });
    const junk = new ApiClientFrom(t.running.apiPort, w.cert.caFile, "127.0.0.2");
    try {
      await waitFor("ready", async () => t.running.ready(), { timeoutMs: 30_000 });
      const before = await apiserverTokenReviews(w.cluster);
      for (const j of junkTokens()) {
        for (let i = 0; i < 3; i++) {
          const r = await junk.post(j.token, { pod: w.pods.a1 });
          assert.equal(r.status, j.status, `${j.name}: ${r.status} ${r.code}`);
        }
      }
      assert.equal(await apiserverTokenReviews(w.cluster), before, "no junk token reached TokenReview");
      // a forged token that passes every local check costs one review; its replays none
      const forged = forgedToken();
      for (let i = 0; i < 5; i++) assert.equal((await junk.post(forged, { pod: w.pods.a1 })).status, 401);
      assert.equal(await apiserverTokenReviews(w.cluster), before + 1, "rejected tokens are cached");
      // and a real agent token still gets in
      const ok = await post(t.running.apiPort, w.cert.caFile, {
        token: w.agentToken["node-1"],
        body: { pod: w.pods.a1 },
      });
      assert.equal(ok.status, 200, ok.raw);
      const m = await (await fetch(`http://127.0.0.1:${t.running.opsPort}/metrics`)).text();
      assert.match(m, /keycutter_server_token_checks_total\{kind="agent",outcome="refused_locally"\} 33/);
    } finally {
      junk.close();
      await t.running.stop();
    }
  });

  it("TokenReview flood: agents (and pod tokens) keep authenticating while other sources flood forged tokens", async () => {
    const t = await startTestServer(w, {
      leaderElection: false,
      agentReviewBudget: { ratePerSecond: 20, burst: 20, perSourceRatePerSecond: 5, perSourceBurst: 10 },
    });
    const legit = new ApiClientFrom(t.running.apiPort, w.cert.caFile, "127.0.0.1", 4);
    const attackers = Array.from(
      { length: 20 },
      (_, i) => new ApiClientFrom(t.running.apiPort, w.cert.caFile, `127.0.1.${i + 1}`, 8),
    );
    try {
      await waitFor("ready", async () => t.running.ready(), { timeoutMs: 30_000 });
      const agentPod = await w.kubelet.createPod({
        namespace: "keycutter-system",
        name: "agent-flood",
        nodeName: "node-1",
        serviceAccountName: "keycutter-agent",
        podIP: "10.99.0.1",
        hostNetwork: true,
      });
      // fresh tokens: every legitimate request below needs a TokenReview of its own
      const freshAgentTokens = await Promise.all(
        Array.from({ length: 8 }, () =>
          w.kubelet.requestToken("keycutter-system", "keycutter-agent", {
            podName: "agent-flood",
            podUID: agentPod.metadata!.uid!,
            audiences: ["keycutter"],
          }),
        ),
      );
      const freshPodTokens = await Promise.all(
        Array.from({ length: 4 }, () =>
          w.kubelet.requestToken("tenant-a", "app", {
            podName: "web-2",
            podUID: w.pods.a2!.uid,
            audiences: ["keycutter-pod"],
          }),
        ),
      );
      const warm = await legit.post(w.agentToken["node-1"]!, { pod: w.pods.a2 });
      assert.equal(warm.status, 200, "the agent authenticates before the flood");
      const reviewsBefore = await apiserverTokenReviews(w.cluster);
      let stop = false;
      const floodStatuses = new Map<number, number>();
      const floodStart = performance.now();
      const flood = attackers.map(async (a) => {
        for (let i = 0; i < 60 && !stop; i++) {
          const burst = await Promise.all(
            Array.from({ length: 8 }, () => a.post(forgedToken(), { pod: w.pods.a1 })),
          );
          for (const r of burst) floodStatuses.set(r.status, (floodStatuses.get(r.status) ?? 0) + 1);
        }
      });
      // the flood is under way (every attacker's first burst answered) before the legitimate requests
      const answered = () => [...floodStatuses.values()].reduce((x, y) => x + y, 0);
      await untilTrue(() => answered() >= 8 * attackers.length, "the flood's first bursts", 10_000_000);
      const results = [];
      for (const token of freshAgentTokens) results.push(await legit.post(token, { pod: w.pods.a2 }));
      for (const podToken of freshPodTokens)
        results.push(await legit.post(w.agentToken["node-1"]!, { pod: w.pods.a2, podToken }));
      stop = true;
      await Promise.all(flood);
      const floodSeconds = (performance.now() - floodStart) / 1000;
      assert.deepEqual(
        results.map((r) => r.status),
        results.map(() => 200),
        `legitimate requests under the flood: ${JSON.stringify(results)}`,
      );
      for (const r of results) assert.ok(r.ms < 1500, `a legitimate request took ${Math.round(r.ms)} ms`);
      const floodTotal = [...floodStatuses.values()].reduce((x, y) => x + y, 0);
      assert.ok(floodTotal >= 200, `the flood sent ${floodTotal} requests`);
      assert.deepEqual(
        [...floodStatuses.keys()].filter((s) => s !== 401 && s !== 429),
        [],
        `flood answers: ${JSON.stringify([...floodStatuses])}`,
      );
      // reviews spent: within the agent budget (burst + rate × time) plus the legitimate ones
      const reviews = (await apiserverTokenReviews(w.cluster)) - reviewsBefore;
      const budget = 20 + 20 * (floodSeconds + 2) + results.length;
      assert.ok(
        reviews <= budget,
        `${reviews} TokenReviews for ${floodTotal} forged tokens (budget ${budget})`,
      );
    } finally {
      legit.close();
      for (const a of attackers) a.close();
      await t.running.stop();
    }
  });

  it("TokenReview flood: the rejected-token cache is a bounded LRU", async () => {
    const t = await startTestServer(w, {
      leaderElection: false,
      reviewCacheEntries: 8,
      agentReviewBudget: { perSourceRatePerSecond: 100, perSourceBurst: 100 },
    });
    const junk = new ApiClientFrom(t.running.apiPort, w.cert.caFile, "127.0.0.3");
    try {
      await waitFor("ready", async () => t.running.ready(), { timeoutMs: 30_000 });
      const tokens = Array.from({ length: 20 }, () => forgedToken());
      const before = await apiserverTokenReviews(w.cluster);
      for (const tok of tokens) assert.equal((await junk.post(tok, { pod: w.pods.a1 })).status, 401);
      assert.equal(await apiserverTokenReviews(w.cluster), before + 20);
      assert.ok(t.running.reviewer.rejectedCached <= 8, `${t.running.reviewer.rejectedCached} cached`);
      // the 8 most recent are remembered (no review), the oldest was evicted (one review)
      for (const tok of tokens.slice(12))
        assert.equal((await junk.post(tok, { pod: w.pods.a1 })).status, 401);
      assert.equal(await apiserverTokenReviews(w.cluster), before + 20);
      assert.equal((await junk.post(tokens[0]!, { pod: w.pods.a1 })).status, 401);
      assert.equal(await apiserverTokenReviews(w.cluster), before + 21);
      assert.ok(t.running.reviewer.rejectedCached <= 8);
    } finally {
      junk.close();
      await t.running.stop();
    }
  });

  it("container-credentials path: the pod's own token must name the same pod", async () => {
    const own = await w.kubelet.requestToken("tenant-a", "app", {
      podName: "web-2",
      podUID: w.pods.a2!.uid,
      audiences: ["keycutter-pod"],
    });
    const ok = await ask("a2", "node-1", { podToken: own });
    assert.equal(ok.status, 200, ok.raw);
    const other = await w.kubelet.requestToken("tenant-a", "app", {
      podName: "web-1",
      podUID: w.pods.a1!.uid,
      audiences: ["keycutter-pod"],
    });
    const bad = await ask("a2", "node-1", { podToken: other });
    assert.equal(bad.status, 403);
    assert.equal(bad.body.code, "PodTokenMismatch");
    const wrongAud = await w.kubelet.requestToken("tenant-a", "app", {
      podName: "web-2",
      podUID: w.pods.a2!.uid,
      audiences: ["keycutter"],
    });
    const bad2 = await ask("a2", "node-1", { podToken: wrongAud });
    assert.equal(bad2.status, 403);
    assert.equal(bad2.body.code, "PodTokenMismatch");
  });

  it("caches per pod: a second request makes no STS call; a second replica shares the cache through Redis", async () => {
    const r1 = await ask("a3");
    assert.equal(r1.status, 200, r1.raw);
    const calls = srv.stsCalls.length;
    const again = await ask("a3");
    assert.equal(again.status, 200);
    assert.equal(srv.stsCalls.length, calls, "memory hit");
    assert.equal(
      (again.body.credentials as Record<string, string>).accessKeyId,
      (r1.body.credentials as Record<string, string>).accessKeyId,
    );
    // stored encrypted: no plaintext key id in Redis
    const keys = await redis.command("KEYS keycutter:*");
    assert.match(keys, /keycutter:v1:creds:[0-9a-f]{64}/);
    const k = /keycutter:v1:creds:[0-9a-f]{64}/.exec(keys)?.[0] as string;
    const val = await redis.command(`GET ${k}`);
    assert.ok(!val.includes((r1.body.credentials as Record<string, string>).accessKeyId as string));
    assert.ok(!val.includes("tenant-a"));

    const replica = await startTestServer(w, { redisUrl: redis.url, cacheKeyFile: keyFile });
    try {
      await waitFor(
        "replica ready",
        async () => replica.running.ready() && replica.running.shared?.ready === true,
        { timeoutMs: 30_000 },
      );
      const r2 = await post(replica.running.apiPort, w.cert.caFile, {
        token: w.agentToken["node-1"],
        body: { pod: w.pods.a3 },
      });
      assert.equal(r2.status, 200, r2.raw);
      assert.equal(replica.stsCalls.length, 0, "second replica made no STS call");
      assert.equal(
        (r2.body.credentials as Record<string, string>).accessKeyId,
        (r1.body.credentials as Record<string, string>).accessKeyId,
      );
      assert.equal(replica.audit.at(-1)?.source, "shared");
      // both replicas at once for a new pod: one STS call in total (in-process + Redis lock single flight)
      const [x, y] = await Promise.all([
        post(srv.running.apiPort, w.cert.caFile, { token: w.agentToken["node-1"], body: { pod: w.pods.a4 } }),
        post(replica.running.apiPort, w.cert.caFile, {
          token: w.agentToken["node-1"],
          body: { pod: w.pods.a4 },
        }),
      ]);
      assert.equal(x.status, 200);
      assert.equal(y.status, 200);
      const forA4 = [...srv.stsCalls, ...replica.stsCalls].filter((c) =>
        c.Tags?.some((t) => t.Value === w.pods.a4?.uid),
      );
      assert.equal(forA4.length, 1, "one STS call across both replicas");
    } finally {
      await replica.running.stop();
    }
  });

  it("keycutter explain: matched policy, why others did not, allowance, rendered policy, and a simulation over role ∩ session", async () => {
    const run = (args: string[], env: Record<string, string> = {}) =>
      spawnSync(NODE, explainArgs(w, args), {
        encoding: "utf8",
        env: {
          ...process.env,
          AWS_REGION: "us-east-1",
          AWS_ACCESS_KEY_ID: w.auditorCreds.accessKeyId,
          AWS_SECRET_ACCESS_KEY: w.auditorCreds.secretAccessKey,
          ...env,
        },
      });
    /** explain for tenant-a/web-1 with a simulation of s3:GetObject on `resource`, as JSON. */
    const simulateGet = (resource: string, iamEndpoint = w.moto.endpoint) =>
      run([
        "tenant-a/web-1",
        "--action",
        "s3:GetObject",
        "--resource",
        resource,
        "--iam-endpoint",
        iamEndpoint,
        "-o",
        "json",
      ]);
    const red = simulateGet("arn:aws:s3:::bucket-a/tenant-a/red/data.txt");
    assert.equal(red.status, 0, red.stderr);
    const e = JSON.parse(red.stdout);
    assert.equal(e.decision.ok, true);
    assert.equal(e.decision.policy, "a");
    const byName = Object.fromEntries(e.policies.map((p: { name: string }) => [p.name, p]));
    assert.equal(byName.a.selected, true);
    assert.match(byName.steal.reason, /service account is "app", policy selects "thief"/);
    assert.equal(e.allowances.find((a: { name: string }) => a.name === "tenant-a").applies, true);
    assert.match(
      e.allowances.find((a: { name: string }) => a.name === "tenant-b").reason,
      /does not cover namespace/,
    );
    assert.equal(e.sessionPolicy.Statement[0].Resource, "arn:aws:s3:::bucket-a/tenant-a/blue/*");
    assert.equal(e.tags["kubernetes-pod-uid"], w.pods.a1?.uid);
    assert.equal(e.simulation.basis, "role+session");
    assert.deepEqual(e.simulation.rolePolicies, ["inline:tenant-a-policy"]);
    assert.equal(e.simulation.result, "ImplicitlyDenied");
    const blue = simulateGet("arn:aws:s3:::bucket-a/tenant-a/blue/data.txt");
    assert.equal(JSON.parse(blue.stdout).simulation.result, "Allowed");
    // B's bucket: the session policy alone would not allow it either, and the role does not
    const other = simulateGet("arn:aws:s3:::bucket-b/tenant-b/blue/data.txt");
    assert.equal(JSON.parse(other.stdout).simulation.result, "ImplicitlyDenied");
    // IAM unreachable: session policy alone, and it says so
    const noIam = simulateGet("arn:aws:s3:::bucket-a/tenant-a/blue/data.txt", "http://127.0.0.1:9");
    const ni = JSON.parse(noIam.stdout);
    assert.equal(ni.simulation.basis, "session-only");
    assert.match(ni.simulation.note, /could not be read/);
    // human-readable output for a refused pod
    const amb = run(["amb/x-1"]);
    assert.equal(amb.status, 3, "exit 3: refused");
    assert.match(amb.stdout, /REFUSED \(AmbiguousPolicy\)/);
    assert.match(amb.stdout, /✔ one \(priority 0\)/);
  });

  it("STS throttling: the server backs off and retries, then answers 429 Throttled if it persists", async () => {
    const proxy = await startThrottleProxy(w.moto.endpoint);
    const t = await startTestServer(w, { stsEndpoint: proxy.endpoint, leaderElection: false });
    try {
      await waitFor("throttle server ready", async () => t.running.ready(), { timeoutMs: 30_000 });
      proxy.throttleNext(2);
      const r = await post(t.running.apiPort, w.cert.caFile, {
        token: w.agentToken["node-1"],
        body: { pod: w.pods.b1 },
      });
      assert.equal(r.status, 200, r.raw);
      assert.equal(proxy.throttled, 2);
      assert.equal(t.stsCalls.length, 3, "two throttled attempts and one that succeeded");
      proxy.always = true;
      const r2 = await post(t.running.apiPort, w.cert.caFile, {
        token: w.agentToken["node-1"],
        body: { pod: w.pods.n2 },
      });
      assert.equal(r2.status, 403, "node-1 agent, node-2 pod: refused before STS");
      const r3 = await askAt(t.running.apiPort, await bluePod("tenant-b", "web-throttled", "10.244.1.78"));
      assert.equal(r3.status, 429, r3.raw);
      assert.equal(r3.body.code, "Throttled");
      assert.equal(t.audit.at(-1)?.code, "Throttled");
      const m = await (await fetch(`http://127.0.0.1:${t.running.opsPort}/metrics`)).text();
      assert.match(m, /keycutter_server_sts_requests_total\{outcome="Throttling"\} ([5-9]|\d\d)/);
    } finally {
      proxy.always = false;
      await t.running.stop();
      await proxy.close();
    }
  });

  it("keeps serving when Redis is down (per-replica cache, never an outage)", async () => {
    await redis.kill();
    const r = await askAt(srv.running.apiPort, await bluePod("tenant-a", "web-redis-down", "10.244.1.77"));
    assert.equal(r.status, 200, r.raw);
    const again = await ask("a3");
    assert.equal(again.status, 200, "cached pod still served from memory");
    await redis.restart();
  });

  it("reloads the TLS certificate when its files change", async () => {
    const fingerprint = () =>
      new Promise<string>((resolve, reject) => {
        const sock = tlsConnect(
          {
            host: "127.0.0.1",
            port: srv.running.apiPort,
            servername: "localhost",
            rejectUnauthorized: false,
          },
          () => {
            resolve(sock.getPeerCertificate().fingerprint256);
            sock.end();
          },
        );
        sock.on("error", reject);
      });
    const before = await fingerprint();
    // a new key and certificate from a new CA, as a rotation to another issuer would bring
    const fresh = await makeServingCert(["127.0.0.1"]);
    try {
      copyFileSync(fresh.keyFile, w.cert.keyFile);
      copyFileSync(fresh.certFile, w.cert.certFile);
      await waitFor("new certificate served", async () => (await fingerprint()) !== before, {
        timeoutMs: 20_000,
        intervalMs: 500,
      });
      // and clients trusting the new certificate get answers
      const r = await post(srv.running.apiPort, fresh.caFile, {
        token: w.agentToken["node-1"],
        body: { pod: w.pods.a3 },
      });
      assert.equal(r.status, 200, r.raw);
      copyFileSync(fresh.caFile, w.cert.caFile);
    } finally {
      rmSync(fresh.dir, { recursive: true, force: true });
    }
  });

  it("leader election: one replica holds the Lease and writes status; when it stops, another takes over", async () => {
    const r2 = await startTestServer(w, { leaderElection: true });
    try {
      await waitFor("first replica leads", async () => srv.running.elector?.isLeader === true, {
        timeoutMs: 20_000,
      });
      // one full attempt of the second replica against the Lease the first holds, not a wait
      await r2.running.elector?.tick();
      assert.equal(r2.running.elector?.isLeader, false, "the second waits");
      assert.equal((await srv.running.metrics.leader.get()).values[0]?.value, 1, "leader gauge");
      assert.equal((await r2.running.metrics.leader.get()).values[0]?.value ?? 0, 0);
      await srv.running.stop(); // releases the Lease
      await waitFor("failover", async () => r2.running.elector?.isLeader === true, { timeoutMs: 20_000 });
      // the new leader writes status: a new broken policy gets its condition
      await createPolicy(w, tenantPolicy("nopol", "after-failover", "app", "tenant-a", "bucket-a"));
      await waitFor(
        "status by the new leader",
        async () => {
          const o = (await w.custom.getNamespacedCustomObject({
            group: "keycutter.dev",
            version: "v1alpha1",
            namespace: "nopol",
            plural: "accesspolicies",
            name: "after-failover",
          })) as AccessPolicy;
          return o.status?.conditions?.find((c) => c.type === "Ready")?.reason === "RoleNotAllowed";
        },
        { timeoutMs: 20_000 },
      );
    } finally {
      await r2.running.stop();
    }
  });

  it("picks up policy changes after an apiserver restart (watches re-established)", async () => {
    const t = await startTestServer(w, { leaderElection: false });
    try {
      await waitFor("ready", async () => t.running.ready(), { timeoutMs: 30_000 });
      const askNopol = () =>
        post(t.running.apiPort, w.cert.caFile, {
          token: w.agentToken["node-1"],
          body: { pod: w.pods.nopol },
        });
      const before = await askNopol();
      assert.equal(before.status, 403, before.raw);
      assert.equal(before.body.code, "RoleNotAllowed");
      await w.cluster.restartApiserver();
      await createAllowance(w, {
        metadata: { name: "nopol" },
        spec: { namespaces: ["nopol"], roleArns: [roleArn("tenant-a")], sessionTagKeys: ["team"] },
      });
      const after = await waitFor(
        "the new allowance in force",
        async () => {
          const r = await askNopol();
          return r.status === 200 ? r : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      assert.equal(after.body.roleArn, roleArn("tenant-a"));
    } finally {
      await t.running.stop();
    }
  });
});
