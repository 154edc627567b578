// End to end: unmodified AWS clients in pods get their own pod's credentials, and only those.
// Needs root (network namespaces, iptables); starts every part itself.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { System, IMDS } from "./system.ts";
import { BUCKET_A, BUCKET_B, startWithTenants } from "./fixtures.ts";
import type { TestPod } from "./system.ts";

describe("e2e: tenant isolation with real clients", () => {
  const sys = new System({ nodes: ["node-a", "node-b"], serverReplicas: 2 });
  let a1: TestPod, b1: TestPod, a2: TestPod, nobody: TestPod;

  before(async () => {
    await startWithTenants(sys);
    a1 = await sys.addPod("node-a", "tenant-a", "app-1", { serviceAccount: "reader" });
    b1 = await sys.addPod("node-a", "tenant-b", "app-1", { serviceAccount: "reader" });
    a2 = await sys.addPod("node-b", "tenant-a", "app-2", { serviceAccount: "reader" });
    nobody = await sys.addPod("node-a", "tenant-a", "no-policy", { serviceAccount: "other" });
  });
  after(async () => {
    await sys.stop();
  });

  it("the AWS CLI in tenant A's pod reads A's data through 169.254.169.254", async () => {
    const r = await sys.aws(a1, ["s3", "cp", `s3://${BUCKET_A}/tenant-a/report.csv`, "-"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "a,1\n");
  });

  it("the same pod is denied on tenant B's bucket (the role does not allow it)", async () => {
    const r = await sys.aws(a1, ["s3", "cp", `s3://${BUCKET_B}/tenant-b/secret.csv`, "-"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /AccessDenied|Forbidden|403/);
  });

  it("tenant B's pod on the same node reads B's data and not A's", async () => {
    const ok = await sys.aws(b1, ["s3", "cp", `s3://${BUCKET_B}/tenant-b/secret.csv`, "-"]);
    assert.equal(ok.code, 0, ok.stderr);
    const denied = await sys.aws(b1, ["s3", "cp", `s3://${BUCKET_A}/tenant-a/report.csv`, "-"]);
    assert.notEqual(denied.code, 0);
  });

  it("two pods get different credentials and different roles", async () => {
    const ca = await sys.imdsCredentials(a1);
    const cb = await sys.imdsCredentials(b1);
    const ca2 = await sys.imdsCredentials(a2);
    assert.equal(ca.status, 200, ca.body);
    assert.equal(cb.status, 200, cb.body);
    assert.equal(ca2.status, 200, ca2.body);
    assert.notEqual(ca.creds!.AccessKeyId, cb.creds!.AccessKeyId);
    assert.notEqual(ca.creds!.AccessKeyId, ca2.creds!.AccessKeyId, "same policy, different pod: own session");
    assert.equal(ca.creds!.Code, "Success");
  });

  it("a pod with no policy gets no credentials and a clear 404", async () => {
    const r = await sys.imdsCredentials(nobody);
    assert.equal(r.status, 404, r.body);
    const cli = await sys.aws(nobody, ["s3", "ls", `s3://${BUCKET_A}`]);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /credentials/i);
  });

  it("IMDSv1 works where allowed", async () => {
    const role = await sys.curl(a1, `${IMDS}/latest/meta-data/iam/security-credentials/`);
    assert.equal(role.status, 200);
    assert.equal(role.body, "tenant-a-reader");
  });
});
