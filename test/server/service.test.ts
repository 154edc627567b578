// CredentialService with stand-ins for its dependencies (one-module unit test): in-process single
// flight, cache reuse threshold, duration fallback, refusals never reaching STS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createLogger } from "../../src/common/logger.ts";
import { StsError, type AssumeRoleRequest } from "../../src/aws/sts.ts";
import { CredentialService, type Deps } from "../../src/server/service.ts";
import { createServerMetrics } from "../../src/server/metrics.ts";
import type { AuditRecord } from "../../src/server/audit.ts";
import type { AccessPolicy, RoleAllowance } from "../../src/policy/types.ts";
import { ContractError } from "../../src/api/contract.ts";

const pod = { namespace: "t", name: "p", uid: "11111111-2222-3333-4444-555555555555" };
const policy: AccessPolicy = {
  metadata: { name: "p", namespace: "t", uid: "pu", generation: 1 },
  spec: { podSelector: {}, roleArn: "arn:aws:iam::123456789012:role/r", durationSeconds: 7200 },
};
const allowance: RoleAllowance = {
  metadata: { name: "a", uid: "au", generation: 1 },
  spec: { namespaces: ["t"], roleArns: ["arn:aws:iam::123456789012:role/*"] },
};

function make(sts: (r: AssumeRoleRequest) => Promise<{ expiresInS: number }>, maxDurationSeconds = 43200) {
  const calls: AssumeRoleRequest[] = [];
  const audit: AuditRecord[] = [];
  let n = 0;
  const deps: Deps = {
    pods: {
      pod: async () => ({
        facts: { ...pod, serviceAccountName: "default", nodeName: "n1", labels: {}, annotations: {} },
        phase: "Running",
        terminating: false,
      }),
      namespace: async (name) => ({ name, labels: {} }),
    },
    policies: { accessPolicies: () => [policy], roleAllowances: () => [allowance] },
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
          expiration: new Date(Date.now() + expiresInS * 1000),
        };
      },
    },
    audit: (r) => audit.push(r),
    metrics: createServerMetrics(),
    log: createLogger("t", { level: "silent" }),
  };
  return { svc: new CredentialService(deps, { maxDurationSeconds }), calls, audit };
}

test("concurrent requests for one pod make one STS call (single flight)", async () => {
  const { svc, calls, audit } = make(async () => {
    await new Promise((r) => setTimeout(r, 50));
    return { expiresInS: 7200 };
  });
  const res = await Promise.all(
    Array.from({ length: 20 }, () => svc.issue({ serviceAccount: "s/a", nodeName: "n1" }, { pod })),
  );
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
    (e: unknown) => e instanceof ContractError && e.code === "PodNotOnNode",
  );
  await assert.rejects(
    svc.issue(
      { serviceAccount: "s/a", nodeName: "n1" },
      { pod: { ...pod, uid: "99999999-2222-3333-4444-555555555555" } },
    ),
    (e: unknown) => e instanceof ContractError && e.code === "PodNotFound",
  );
  assert.equal(calls.length, 0);
  assert.deepEqual(
    audit.map((a) => a.code),
    ["PodNotOnNode", "PodNotFound"],
  );
  svc.close();
});
