// CredentialService with stand-ins for its dependencies (one-module unit test): in-process single
// flight, cache reuse threshold, duration fallback, refusals never reaching STS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { sleep } from "../../../src/common/clock.ts";
import { createLogger } from "../../../src/common/logger.ts";
import { StsError, type AssumeRoleRequest } from "../../../src/aws/sts.ts";
import { CredentialService, type Deps } from "../../../src/server/service.ts";
import { createServerMetrics } from "../../../src/server/metrics.ts";
import type { AuditRecord } from "../../../src/server/audit.ts";
import type { AccessPolicy } from "../../../src/policy/types.ts";
import { KeycutterError } from "../../../src/api/errors.ts";
import { ManualClock } from "../../harness/manual-clock.ts";
import { accessPolicyObject, roleAllowanceObject } from "../../harness/policy-objects.ts";

const pod = { namespace: "t", name: "p", uid: "11111111-2222-3333-4444-555555555555" };
const policy = accessPolicyObject({ namespace: "t", name: "p", role: "r", durationSeconds: 7200 });
const allowance = roleAllowanceObject("a", ["t"]);

interface MakeOptions {
  policies?: () => AccessPolicy[];
  serviceAccountName?: string;
  mirror?: boolean;
  events?: Deps["events"];
}

function make(
  sts: (r: AssumeRoleRequest) => Promise<{ expiresInS: number }>,
  maxDurationSeconds = 43200,
  o: MakeOptions = {},
) {
  const calls: AssumeRoleRequest[] = [];
  const audit: AuditRecord[] = [];
  const logLines: string[] = [];
  const clock = new ManualClock();
  let n = 0;
  const deps: Deps = {
    pods: {
      pod: async () => ({
        facts: {
          ...pod,
          serviceAccountName: o.serviceAccountName ?? "default",
          nodeName: "n1",
          labels: {},
          annotations: {},
        },
        phase: "Running",
        terminating: false,
        mirror: o.mirror ?? false,
      }),
      namespace: async (name) => ({ name, labels: {} }),
    },
    policies: { accessPolicies: o.policies ?? (() => [policy]), roleAllowances: () => [allowance] },
    reviewPodToken: async () => ({ authenticated: false, username: "", audiences: [] }),
    sts: {
      assumeRole: async (r) => {
        calls.push(r);
        const { expiresInS } = await sts(r);
        n++;
        return {
          accessKeyId: `ASIA${n}`,
          secretAccessKey: "s",
          sessionToken: "t",
          expiration: new Date(clock.now() + expiresInS * 1000),
          requestId: `sts-request-${n}`,
        };
      },
    },
    audit: (r) => audit.push(r),
    metrics: createServerMetrics(),
    log: createLogger("t", {
      level: "warn",
      hooks: {
        streamWrite: (line) => {
          logLines.push(line);
          return "";
        },
      },
    }),
    clock,
    ...(o.events ? { events: o.events } : {}),
  };
  return { svc: new CredentialService(deps, { maxDurationSeconds }), calls, audit, logLines, clock };
}

test("concurrent requests for one pod make one STS call (single flight)", async () => {
  const { svc, calls, audit, clock } = make(async () => {
    await sleep(clock, 50);
    return { expiresInS: 7200 };
  });
  const all = Promise.all(
    Array.from({ length: 20 }, () => svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod })),
  );
  await clock.advance(50); // STS answers once all twenty are waiting
  const res = await all;
  assert.equal(calls.length, 1);
  assert.ok(res.every((r) => r.credentials.accessKeyId === "ASIA1"));
  assert.equal(audit.length, 20);
  assert.ok(audit.every((a) => a.decision === "allowed"));
  svc.close();
});

test("cached credentials are reused only while enough lifetime is left", async () => {
  const { svc, calls } = make(async () => ({ expiresInS: 1000 }));
  await svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  await svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  assert.equal(calls.length, 2, "1000 s left is below the reuse threshold: asked STS again");
  svc.close();
});

test("15-minute sessions: what an agent refreshes (about 780 s left) is never handed back; a fresh one is", async () => {
  // the agent replaces a 900 s session on IMDS from about 780 s left (serve-window.ts): the
  // server must not answer that refresh with the same credentials
  const aged = make(async () => ({ expiresInS: 780 }), 900);
  await aged.svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  await aged.svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  assert.equal(aged.calls.length, 2, "780 s left: a new STS session");
  aged.svc.close();
  const fresh = make(async () => ({ expiresInS: 895 }), 900);
  await fresh.svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  await fresh.svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  assert.equal(fresh.calls.length, 1, "just issued: reused");
  fresh.svc.close();
});

test("a role with a lower MaxSessionDuration: retried once at 3600", async () => {
  const { svc, calls } = make(async (r) => {
    if (r.durationSeconds > 3600)
      throw new StsError(
        "PolicyInvalid",
        "ValidationError",
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
      );
    return { expiresInS: 3600 };
  });
  const r = await svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  assert.equal(r.credentials.accessKeyId, "ASIA1");
  assert.deepEqual(
    calls.map((c) => c.durationSeconds),
    [7200, 3600],
  );
  svc.close();
});

test("refusals never reach STS: wrong node, wrong UID", async () => {
  const { svc, calls, audit } = make(async () => ({ expiresInS: 3600 }));
  await assert.rejects(
    svc.issue({ serviceAccount: "s/a", nodeName: "n2" }, { pod }),
    (e: unknown) => e instanceof KeycutterError && e.code === "PodNotOnNode",
  );
  await assert.rejects(
    svc.issue(
      { serviceAccount: "s/a", nodeName: "n1" },
      { pod: { ...pod, uid: "99999999-2222-3333-4444-555555555555" } },
    ),
    (e: unknown) => e instanceof KeycutterError && e.code === "PodNotFound",
  );
  assert.equal(calls.length, 0);
  assert.deepEqual(
    audit.map((a) => a.code),
    ["PodNotOnNode", "PodNotFound"],
  );
  svc.close();
});

const agent = { serviceAccount: "s/a", nodeName: "n1" };
const SERVER_ARN = "arn:aws:iam::123456789012:user/keycutter-server";
const denied = () =>
  new StsError(
    "StsDenied",
    "AccessDenied",
    `AccessDenied: User: ${SERVER_ARN} is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/r`,
    "req-0001",
  );

test("STS's text stays in the server log: the caller gets the code and the request id", async () => {
  const { svc, audit, logLines } = make(async () => {
    throw denied();
  });
  await assert.rejects(svc.issue(agent, { pod }), (e: unknown) => {
    assert.ok(e instanceof KeycutterError);
    assert.equal(e.code, "StsDenied");
    assert.match(e.message, /\(StsDenied\).*request id req-0001/);
    assert.ok(!e.message.includes("arn:aws:") && !/not authorized/.test(e.message), e.message);
    return true;
  });
  assert.ok(!JSON.stringify(audit).includes(SERVER_ARN), "nor in the audit record");
  const logged = logLines.join("");
  assert.ok(logged.includes(SERVER_ARN) && logged.includes("req-0001"), logged);
  svc.close();
});

test("a definite STS refusal is answered from memory until its TTL or a new policy generation", async () => {
  let current: AccessPolicy = policy;
  const { svc, calls, clock } = make(
    async () => {
      throw denied();
    },
    43200,
    { policies: () => [current] },
  );
  const refused = (e: unknown) => e instanceof KeycutterError && e.code === "StsDenied";
  for (let i = 0; i < 5; i++) await assert.rejects(svc.issue(agent, { pod }), refused);
  assert.equal(calls.length, 1, "retries of a refused plan cost no STS call");
  await clock.advance(29_000);
  await assert.rejects(svc.issue(agent, { pod }), refused);
  assert.equal(calls.length, 1, "still within the TTL");
  await clock.advance(2_000);
  await assert.rejects(svc.issue(agent, { pod }), refused);
  assert.equal(calls.length, 2, "TTL passed: STS asked again");
  current = { ...policy, metadata: { ...policy.metadata, generation: 2 } };
  await assert.rejects(svc.issue(agent, { pod }), refused);
  assert.equal(calls.length, 3, "a new policy generation is a new plan: asked at once");
  svc.close();
});

test("expired credentials are swept from memory every minute on the clock; close stops the sweep", async () => {
  const { svc, clock } = make(async () => ({ expiresInS: 3600 }));
  await svc.issue(agent, { pod });
  assert.equal(svc.memory.size, 1);
  await clock.advance(3_599_999);
  assert.equal(svc.memory.size, 1, "valid until its expiration: 59 sweeps kept it");
  await clock.advance(1);
  assert.equal(svc.memory.size, 0, "the sweep at its expiration dropped it without a request");
  svc.close();
  assert.equal(clock.pending, 0, "no sweep timer left after close");
});

test("throttling and outages are not remembered: the next request asks STS again", async () => {
  const { svc, calls } = make(async () => {
    throw new StsError("Unavailable", "InternalFailure", "InternalFailure: boom");
  });
  await assert.rejects(svc.issue(agent, { pod }));
  await assert.rejects(svc.issue(agent, { pod }));
  assert.equal(calls.length, 2);
  svc.close();
});

test("mirror pods and pods without a service account are refused before any policy or STS", async () => {
  const policyAll: AccessPolicy = { ...policy, spec: { ...policy.spec, podSelector: {} } };
  for (const o of [{ mirror: true }, { serviceAccountName: "" }]) {
    const { svc, calls } = make(async () => ({ expiresInS: 3600 }), 43200, {
      ...o,
      policies: () => [policyAll],
    });
    await assert.rejects(
      svc.issue(agent, { pod }),
      (e: unknown) => e instanceof KeycutterError && e.code === "PodNotEligible",
      JSON.stringify(o),
    );
    assert.equal(calls.length, 0);
    svc.close();
  }
});

test("the audit record carries the access key id the caller got and STS's request id, also on a cache hit", async () => {
  const { svc, audit } = make(async () => ({ expiresInS: 7200 }));
  const first = await svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  await svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod });
  assert.equal(audit[0]?.accessKeyId, first.credentials.accessKeyId);
  assert.equal(audit[0]?.stsRequestId, "sts-request-1");
  assert.equal(audit[1]?.source, "memory");
  assert.equal(audit[1]?.stsRequestId, "sts-request-1");
  assert.ok(audit.every((a) => !("secretAccessKey" in a) && !("sessionToken" in a)));
  svc.close();
});

test("a refusal of an existing pod is reported as an Event on it; one for a pod with another UID is not", async () => {
  const denied: { pod: unknown; code: string; message: string }[] = [];
  const { svc } = make(async () => ({ expiresInS: 7200 }), 43200, {
    policies: () => [],
    events: { podDenied: (p, code, message) => denied.push({ pod: p, code, message }) },
  });
  await assert.rejects(svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod }), { code: "NoPolicy" });
  assert.equal(denied.length, 1);
  assert.deepEqual(denied[0]?.pod, pod);
  assert.equal(denied[0]?.code, "NoPolicy");
  await assert.rejects(
    svc.issue(
      { serviceAccount: "s/a", nodeName: "n1" },
      { pod: { ...pod, uid: "99999999-2222-3333-4444-555555555555" } },
    ),
    { code: "PodNotFound" },
  );
  assert.equal(denied.length, 1, "no Event names a pod the request did not prove");
  svc.close();
});
