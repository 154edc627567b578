import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createAuditLogger } from "../../../src/server/audit.ts";

test("audit records go to their own stream as one JSON line each, with secrets redacted even if misused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-audit-"));
  try {
    const file = join(dir, "audit", "audit.log");
    const { sink, logger } = createAuditLogger(file);
    sink({
      decision: "allowed",
      code: "issued",
      reason: "ok",
      node: "n1",
      pod: { namespace: "a", name: "p", uid: "u" },
      role: "arn:aws:iam::1:role/r",
      policySha256: "ab",
      expiration: "2030-01-01T00:00:00Z",
    });
    // a careless caller passing credentials: redacted by the logger's own rules
    sink({
      decision: "denied",
      code: "X",
      reason: "r",
      ...({ credentials: { secretAccessKey: "SECRET1", sessionToken: "SECRET2" } } as object),
    } as never);
    logger.flush();
    await new Promise((r) => setTimeout(r, 200));
    const lines = readFileSync(file, "utf8").trim().split("\n");
    assert.equal(lines.length, 2);
    const first = JSON.parse(lines[0] as string);
    assert.equal(first.kind, "audit");
    assert.equal(first.decision, "allowed");
    assert.equal(first.pod.uid, "u");
    assert.match(first.time, /^\d{4}-\d\d-\d\dT/);
    assert.ok(!lines[1]?.includes("SECRET1") && !lines[1]?.includes("SECRET2"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
