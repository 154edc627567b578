// Policy tightening reaches running pods (issue 12, item 12), end to end: real apiserver, two
// server replicas with Redis, moto as STS, an agent with its real hook, pods in network
// namespaces asking through 169.254.169.254. Measures, from just before the apiserver is asked to
// accept a change, how long until the pod is served the new credentials or refused.
// Needs root (network namespaces, iptables); starts every part itself.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { CustomObjectsApi, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { canonicalJson } from "../../src/policy/decide.ts";
import { MOTO_ACCOUNT_ID, waitFor } from "../harness/index.ts";
import { System, type TestPod } from "./system.ts";
import { BUCKET_A, ROLE_A, accessPolicy, roleAllowance, startWithTenants } from "./fixtures.ts";

/** Within this, a change must have reached the pod; today's agent keeps old credentials for tens of minutes. */
const DEADLINE_MS = 15_000;
const GROUP = { group: "keycutter.dev", version: "v1alpha1" };
const ADMIN_DENY = { Effect: "Deny", Action: ["iam:*", "sts:*"], Resource: "*" };
/** Only the fields named change. */
const mergePatch = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

interface Audit {
  decision: string;
  code: string;
  pod?: { namespace: string; name: string; uid: string };
  policySha256?: string;
  source?: string;
  expiration?: string;
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const sessionPolicySha = (statements: object[]) =>
  sha256(canonicalJson({ Version: "2012-10-17", Statement: statements }));

describe("e2e: policy tightening reaches running pods", () => {
  const sys = new System({ nodes: ["node-a"], serverReplicas: 2 });
  let a1: TestPod, a2: TestPod, b1: TestPod;
  const figures: string[] = [];
  let custom: CustomObjectsApi;

  /** Each replica's audit records, in its own order. */
  const auditLines = (): Audit[][] =>
    sys.servers.map((s) =>
      s.process
        .logs()
        .split("\n")
        .filter((l) => l.includes('"kind":"audit"'))
        .map((l) => JSON.parse(l) as Audit),
    );
  /** A mark in every replica's audit trail, to read what came after. */
  const auditMark = (): number[] => auditLines().map((lines) => lines.length);
  const auditsOf = (p: TestPod, mark: number[]): Audit[] =>
    auditLines()
      .flatMap((lines, i) => lines.slice(mark[i] ?? 0))
      .filter((a) => a.pod?.uid === p.uid);

  /** The IMDSv2 sequence an SDK runs, paced to stay under the agent's per-pod rate limit (50/s). */
  const keyOf = async (p: TestPod): Promise<{ status: number; key?: string; expiration?: string }> => {
    await new Promise((r) => setTimeout(r, 50));
    const r = await sys.imdsCredentials(p);
    return { status: r.status, key: r.creds?.AccessKeyId, expiration: r.creds?.Expiration };
  };

  /**
   * Asks as the pod's SDK would until `done` holds; returns the time from `t0`. Every answer on
   * the way is kept, so the caller can check that nothing old came back after the change landed.
   */
  const until = async (
    p: TestPod,
    t0: number,
    done: (r: { status: number; key?: string }) => boolean,
  ): Promise<{ ms: number; seen: { status: number; key?: string; expiration?: string }[] }> => {
    const seen: { status: number; key?: string; expiration?: string }[] = [];
    for (;;) {
      const r = await keyOf(p);
      seen.push(r);
      if (done(r)) return { ms: Date.now() - t0, seen };
      assert.ok(
        Date.now() - t0 < DEADLINE_MS,
        `not in force after ${DEADLINE_MS} ms: ${JSON.stringify(seen.at(-1))}`,
      );
    }
  };

  /** After a change has reached the pod: a burst of further requests, none of them old. */
  const neverAgain = async (p: TestPod, old: string) => {
    for (let i = 0; i < 8; i++) {
      const r = await keyOf(p);
      assert.notEqual(r.key, old, "the old credentials were served again");
    }
  };

  const patchPolicy = (namespace: string, name: string, spec: object) =>
    custom.patchNamespacedCustomObject(
      { ...GROUP, namespace, plural: "accesspolicies", name, body: { spec } },
      mergePatch,
    );
  const patchAllowance = (name: string, spec: object) =>
    custom.patchClusterCustomObject({ ...GROUP, plural: "roleallowances", name, body: { spec } }, mergePatch);

  before(async () => {
    await startWithTenants(sys);
    custom = sys.cluster.kc.makeApiClient(CustomObjectsApi);
    a1 = await sys.addPod("node-a", "tenant-a", "reader-1", { serviceAccount: "reader" });
    a2 = await sys.addPod("node-a", "tenant-a", "reader-2", { serviceAccount: "reader" });
    b1 = await sys.addPod("node-a", "tenant-b", "reader-1", { serviceAccount: "reader" });
  });
  after(async () => {
    for (const f of figures) console.log(`# ${f}`);
    await sys.stop();
  });

  it("(a) a tightened session policy: new credentials under it within seconds, never the old ones after", async () => {
    const first = await keyOf(a1);
    assert.equal(first.status, 200);
    assert.equal((await keyOf(a1)).key, first.key, "served from the agent's cache");
    const tightened = [
      {
        Effect: "Allow",
        Action: ["s3:GetObject"],
        Resource: [`arn:aws:s3:::${BUCKET_A}/tenant-a/reports/*`],
      },
    ];
    const mark = auditMark();
    const t0 = Date.now();
    await patchPolicy("tenant-a", "readers", {
      sessionPolicy: { Version: "2012-10-17", Statement: tightened },
    });
    const { ms, seen } = await until(a1, t0, (r) => r.status === 200 && r.key !== first.key);
    figures.push(`(a) AccessPolicy session policy tightened → pod served new credentials after ${ms} ms`);
    await neverAgain(a1, first.key!);
    // the credentials served are the ones issued under the tightened policy (the audit's hash of
    // the session policy sent to STS, with the allowance's deny appended)
    const served = seen.at(-1)!;
    const issued = auditsOf(a1, mark).filter(
      (a) => a.decision === "allowed" && a.expiration === served.expiration,
    );
    assert.ok(issued.length > 0, "an audited issuance for the served credentials");
    assert.equal(issued[0]!.policySha256, sessionPolicySha([...tightened, ADMIN_DENY]));
    assert.ok(
      auditsOf(a1, mark).some((a) => a.source === "sts"),
      "a new AssumeRole",
    );
  });

  it("(d) a change in another namespace re-issues nothing here; one in the pod's namespace that leaves its decision re-issues nothing", async () => {
    const before1 = (await keyOf(a1)).key;
    const before2 = (await keyOf(a2)).key;
    const bBefore = (await keyOf(b1)).key;
    let mark = auditMark();
    let t0 = Date.now();
    await patchPolicy("tenant-b", "readers", { durationSeconds: 1800 });
    // tenant-b's own pod gets its new decision (its duration changed) ...
    const { ms } = await until(b1, t0, (r) => r.status === 200 && r.key !== bBefore);
    figures.push(`(d) tenant-b's change reached tenant-b's pod after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1000));
    // ... while tenant-a's pods were not even asked about
    assert.deepEqual(auditsOf(a1, mark), []);
    assert.deepEqual(auditsOf(a2, mark), []);
    assert.equal((await keyOf(a1)).key, before1);

    // A new AccessPolicy in tenant-a for another service account moves tenant-a's epoch: the agent
    // asks again for its tenant-a pods, and the servers answer from their caches, no AssumeRole.
    mark = auditMark();
    t0 = Date.now();
    await sys.apply(accessPolicy("tenant-a", "batch", ROLE_A, BUCKET_A, "batch"));
    await waitFor(
      "the agent revalidated both tenant-a pods",
      async () => (auditsOf(a1, mark).length > 0 && auditsOf(a2, mark).length > 0 ? true : undefined),
      { timeoutMs: DEADLINE_MS },
    );
    figures.push(
      `(d) an unrelated AccessPolicy in tenant-a: both pods revalidated after ${Date.now() - t0} ms, no AssumeRole`,
    );
    for (const a of [...auditsOf(a1, mark), ...auditsOf(a2, mark)]) {
      assert.equal(a.decision, "allowed");
      assert.notEqual(a.source, "sts", "an unchanged decision found the issued credentials");
    }
    assert.equal((await keyOf(a1)).key, before1);
    assert.equal((await keyOf(a2)).key, before2);
  });

  it("(c) a tightened RoleAllowance: a new deny reaches the pod within seconds; removing the role refuses it", async () => {
    const first = await keyOf(a1);
    assert.equal(first.status, 200);
    const extraDeny = { Effect: "Deny", Action: ["s3:ListBucket"], Resource: "*" };
    const mark = auditMark();
    let t0 = Date.now();
    await patchAllowance("tenants", { denyStatements: [ADMIN_DENY, extraDeny] });
    const { ms, seen } = await until(a1, t0, (r) => r.status === 200 && r.key !== first.key);
    figures.push(`(c) RoleAllowance deny added → pod served new credentials after ${ms} ms`);
    await neverAgain(a1, first.key!);
    const served = seen.at(-1)!;
    const issued = auditsOf(a1, mark).filter(
      (a) => a.decision === "allowed" && a.expiration === served.expiration,
    );
    assert.ok(issued.length > 0);
    const tightened = [
      {
        Effect: "Allow",
        Action: ["s3:GetObject"],
        Resource: [`arn:aws:s3:::${BUCKET_A}/tenant-a/reports/*`],
      },
    ];
    assert.equal(issued[0]!.policySha256, sessionPolicySha([...tightened, ADMIN_DENY, extraDeny]));

    const allowed = served.key!;
    t0 = Date.now();
    await patchAllowance("tenants", { roleArns: [`arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-b-*`] });
    const refused = await until(a1, t0, (r) => r.status !== 200);
    figures.push(`(c) role removed from the RoleAllowance → pod refused after ${refused.ms} ms`);
    assert.equal(refused.seen.at(-1)!.status, 404, "RoleNotAllowed: no credentials for this pod");
    await neverAgain(a1, allowed);
    for (let i = 0; i < 4; i++)
      assert.notEqual((await keyOf(a2)).status, 200, "the namespace's other pod too");
    assert.equal((await keyOf(b1)).status, 200, "tenant-b keeps its role");
    await sys.apply(roleAllowance());
    await until(a1, Date.now(), (r) => r.status === 200);
  });

  it("(b) a deleted AccessPolicy: the pod is refused within seconds, never served again", async () => {
    const first = await keyOf(a1);
    assert.equal(first.status, 200);
    const t0 = Date.now();
    await custom.deleteNamespacedCustomObject({
      ...GROUP,
      namespace: "tenant-a",
      plural: "accesspolicies",
      name: "readers",
    });
    const { ms, seen } = await until(a1, t0, (r) => r.status !== 200);
    figures.push(`(b) AccessPolicy deleted → pod refused after ${ms} ms`);
    assert.equal(seen.at(-1)!.status, 404, "NoPolicy");
    await neverAgain(a1, first.key!);
  });
});
