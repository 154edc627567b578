// Session binding through the whole server, against real parts: the pod's address is read live
// from the kube-apiserver on every request and lands in the session policy sent to STS (moto
// records it); a pod whose IP changes gets new credentials bound to the new IP; a pod without an
// IP gets none; `keycutter explain` shows the binding.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { NODE, waitFor } from "../harness/index.ts";
import {
  createAllowance,
  createPolicy,
  createWorld,
  explainArgs,
  post,
  roleArn,
  startTestServer,
  type TestServer,
  type World,
} from "./world.ts";
import { sessionNameFor } from "../../src/policy/decide.ts";

const NS = "bound";
const FIRST_IP = "10.244.9.10";
const SECOND_IP = "10.244.9.11";

describe("session binding in the server (real apiserver, moto)", { timeout: 600_000 }, () => {
  let w: World;
  let srv: TestServer;
  const pods: Record<string, { namespace: string; name: string; uid: string }> = {};

  const ask = (name: string) =>
    post(srv.running.apiPort, w.cert.caFile, { token: w.agentToken["node-1"], body: { pod: pods[name] } });
  /** The session policy of the last STS call made for a pod. */
  const policySent = (name: string) => {
    const sessionName = sessionNameFor(pods[name]!);
    return srv.stsCalls.filter((c) => c.RoleSessionName === sessionName).at(-1)?.Policy ?? "";
  };

  before(async () => {
    w = await createWorld();
    srv = await startTestServer(w);
    await w.kubelet.ensureNamespace(NS);
    await createAllowance(w, {
      metadata: { name: "bound-to-pod" },
      spec: {
        namespaces: [NS],
        roleArns: [roleArn("tenant-a")],
        bindSessions: { to: "PodIP", via: "SourceIp" },
      },
    });
    await createPolicy(w, {
      metadata: { name: "read", namespace: NS },
      spec: {
        podSelector: {},
        roleArn: roleArn("tenant-a"),
        sessionPolicy: {
          Statement: [
            { Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::bucket-a/${pod.ip}/*" },
          ],
        },
      },
    });
    for (const [name, podIP] of [
      ["web-1", FIRST_IP],
      ["no-ip", undefined],
    ] as const) {
      const p = await w.kubelet.createPod({
        namespace: NS,
        name,
        nodeName: "node-1",
        serviceAccountName: "app",
        ...(podIP ? { podIP, hostIP: "10.99.0.1" } : {}),
      });
      pods[name] = { namespace: NS, name, uid: p.metadata!.uid! };
    }
    await waitFor("server ready", async () => srv.running.ready(), { timeoutMs: 30_000 });
    await waitFor(
      "binding policies loaded",
      async () =>
        srv.running.informers.roleAllowances().some((a) => a.metadata.name === "bound-to-pod") &&
        srv.running.informers.accessPolicies(NS).length === 1,
      { timeoutMs: 30_000 },
    );
  });

  after(async () => {
    await srv?.running.stop();
    await w?.stop();
  });

  it("the pod's live IP is in the session policy sent to STS, after the tenant's statements", async () => {
    const r = await ask("web-1");
    assert.equal(r.status, 200, r.raw);
    const doc = JSON.parse(policySent("web-1")) as { Statement: Record<string, unknown>[] };
    assert.equal(doc.Statement[0]?.Resource, `arn:aws:s3:::bucket-a/${FIRST_IP}/*`);
    assert.deepEqual(doc.Statement.at(-1), {
      Action: "*",
      Condition: {
        BoolIfExists: { "aws:ViaAWSService": "false" },
        NotIpAddress: { "aws:SourceIp": [`${FIRST_IP}/32`] },
      },
      Effect: "Deny",
      Resource: "*",
    });
  });

  it("a pod whose IP changes gets new credentials, bound to the new IP; the old answer is never reused", async () => {
    const before = await ask("web-1");
    assert.equal(before.status, 200, before.raw);
    const callsBefore = srv.stsCalls.length;
    const again = await ask("web-1");
    assert.equal(
      (again.body.credentials as { accessKeyId: string }).accessKeyId,
      (before.body.credentials as { accessKeyId: string }).accessKeyId,
      "same IP: the cached credentials",
    );
    assert.equal(srv.stsCalls.length, callsBefore, "a cache hit makes no STS call");

    await w.kubelet.setPodIP(NS, "web-1", SECOND_IP, "10.99.0.1");
    const after = await ask("web-1");
    assert.equal(after.status, 200, after.raw);
    assert.notEqual(
      (after.body.credentials as { accessKeyId: string }).accessKeyId,
      (before.body.credentials as { accessKeyId: string }).accessKeyId,
      "a new IP: new credentials",
    );
    assert.equal(srv.stsCalls.length, callsBefore + 1);
    const sent = policySent("web-1");
    assert.ok(sent.includes(`"${SECOND_IP}/32"`), sent);
    assert.ok(!sent.includes(FIRST_IP), "nothing of the old address is left");
    const audit = srv.audit.filter((a) => a.pod?.uid === pods["web-1"]!.uid && a.decision === "allowed");
    assert.notEqual(audit.at(-1)?.policySha256, audit.at(-2)?.policySha256);
  });

  it("a pod without an IP gets no credentials: 503 Unavailable, nothing sent to STS", async () => {
    const calls = srv.stsCalls.length;
    const r = await ask("no-ip");
    assert.equal(r.status, 503, r.raw);
    assert.equal(r.body.code, "Unavailable");
    assert.match(String(r.body.message), /status\.podIP; credentials are issued once it has one/);
    assert.equal(srv.stsCalls.length, calls);
  });

  it("keycutter explain shows the binding, and simulates from the pod's address", async () => {
    const run = (args: string[]) =>
      spawnSync(NODE, explainArgs(w, [`${NS}/web-1`, ...args]), {
        encoding: "utf8",
        env: { ...process.env, AWS_REGION: "us-east-1" },
      });
    const json = run([
      "--no-role",
      "--action",
      "s3:GetObject",
      "--resource",
      `arn:aws:s3:::bucket-a/${SECOND_IP}/x`,
      "-o",
      "json",
    ]);
    assert.equal(json.status, 0, json.stderr);
    const e = JSON.parse(json.stdout);
    assert.deepEqual(e.pod.podIPs, [SECOND_IP]);
    assert.equal(
      e.allowances.find((a: { name: string }) => a.name === "bound-to-pod").bindsSessionsTo,
      "PodIP",
    );
    assert.equal(e.bindings.length, 1);
    assert.deepEqual(
      { ...e.bindings[0], summary: undefined },
      {
        allowance: "bound-to-pod",
        to: "PodIP",
        conditionKey: "aws:SourceIp",
        values: [`${SECOND_IP}/32`],
        exemptAwsServiceCalls: true,
        summary: undefined,
      },
    );
    assert.equal(e.simulation.result, "Allowed", JSON.stringify(e.simulation));
    assert.match(e.simulation.note, /bound origin \(aws:SourceIp=10\.244\.9\.11\)/);
    const text = run([]);
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /pod IP 10\.244\.9\.11, node IP 10\.99\.0\.1/);
    assert.match(text.stdout, /binds sessions to PodIP/);
    assert.match(
      text.stdout,
      /Session bindings .*\n {2}bound-to-pod: bound to PodIP: every request is denied unless aws:SourceIp in 10\.244\.9\.11\/32; calls AWS services make on its behalf \(aws:ViaAWSService\) are exempt/,
    );
  });

  it("the apiserver refuses malformed bindings (the CRD's schema and CEL rules)", async () => {
    const attempt = async (name: string, bindSessions: unknown) => {
      try {
        await createAllowance(w, {
          metadata: { name },
          spec: { namespaces: [NS], roleArns: [roleArn("tenant-a")], bindSessions } as never,
        });
        return "";
      } catch (e) {
        return String((e as { body?: unknown }).body ?? e);
      }
    };
    assert.match(
      await attempt("no-via", { to: "PodIP" }),
      /via \(SourceIp or VpcSourceIp\) is required for PodIP/,
    );
    assert.match(
      await attempt("stray-via", { to: "SourceVpc", vpcIds: ["vpc-1a2b3c4d"], via: "SourceIp" }),
      /via \(SourceIp or VpcSourceIp\) is required for PodIP and NodeIP, and not used otherwise/,
    );
    assert.match(await attempt("no-ids", { to: "SourceVpce" }), /vpceIds is required for SourceVpce/);
    assert.match(await attempt("bad-id", { to: "SourceVpc", vpcIds: ["vpc-*"] }), /vpcIds\[0\]/);
    assert.match(
      await attempt("bad-target", { to: "Anywhere", via: "SourceIp" }),
      /Unsupported value: \\"Anywhere\\"/,
    );
    assert.equal(
      await attempt("fine", { to: "SourceVpce", vpceIds: ["vpce-0123456789abcdef0"], actions: ["s3:*"] }),
      "",
    );
  });
});
