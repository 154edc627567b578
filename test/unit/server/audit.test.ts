import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { AUDIT_SCHEMA_VERSION, auditEntry, createAuditLogger } from "../../../src/server/audit.ts";

/** Waits (bounded) until the asynchronous file stream has written `lines` lines: a fixed wait is flaky on a busy machine. */
async function written(file: string, lines: number): Promise<void> {
  for (let waited = 0; waited < 5000; waited += 20) {
    if (existsSync(file) && readFileSync(file, "utf8").trim().split("\n").length >= lines) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

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
    await written(file, 2);
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

test("an entry has the schema version, a UUID event id, the access key id and STS's request id, and only allowlisted fields", () => {
  const allowlisted = {
    decision: "allowed",
    code: "issued",
    reason: "ok",
    pod: { namespace: "a", name: "p", uid: "u" },
    accessKeyId: "ASIAEXAMPLE",
    stsRequestId: "c6104cbe-af31-11e0-8154-cbc7ccf896c7",
  } as const;
  const secrets = { secretAccessKey: "SECRET1", credentials: { sessionToken: "SECRET2" } };
  const eventId = "0b8f2a6c-0f3e-4c1a-9d8e-2f7b6a5c4d3e";
  const entry = auditEntry({ ...allowlisted, ...(secrets as object) }, eventId);
  assert.deepEqual(entry, { schemaVersion: AUDIT_SCHEMA_VERSION, eventId, ...allowlisted });
  assert.equal(AUDIT_SCHEMA_VERSION, 1);
});

test("each written record has its own event id, and the level is a word", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-audit-"));
  try {
    const file = join(dir, "audit.log");
    const { sink, logger } = createAuditLogger(file);
    sink({ decision: "denied", code: "NoPolicy", reason: "r" });
    sink({ decision: "denied", code: "NoPolicy", reason: "r" });
    logger.flush();
    await written(file, 2);
    const [first, second] = readFileSync(file, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { eventId: string; level: unknown; schemaVersion: number });
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    assert.match(first!.eventId, uuid);
    assert.match(second!.eventId, uuid);
    assert.notEqual(first!.eventId, second!.eventId);
    assert.equal(first!.level, "info");
    assert.equal(first!.schemaVersion, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the application log goes to stderr with word levels, leaving stdout to the audit stream", () => {
  const script = `import { createLogger } from ${JSON.stringify(new URL("../../../src/common/logger.ts", import.meta.url).href)};
const log = createLogger("server"); log.warn({ n: 1 }, "hello"); log.flush?.();`;
  const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stdout, "");
  const line = JSON.parse(run.stderr.trim()) as { level: unknown; msg: string };
  assert.equal(line.level, "warn");
  assert.equal(line.msg, "hello");
});
