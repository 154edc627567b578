// The error catalogue (src/api/errors.ts) is the one place a refusal's status is chosen, and
// docs/OPERATIONS.md documents every code in it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join, relative } from "node:path";
import { ERRORS, ERROR_CODES, KeycutterError, httpStatus, isErrorCode } from "../../../src/api/errors.ts";

const ROOT = join(import.meta.dirname, "..", "..", "..");

/** The rows of the table under "### Error codes" in docs/OPERATIONS.md, by code. */
function documentedRows(): Map<string, string[]> {
  const doc = readFileSync(join(ROOT, "docs", "OPERATIONS.md"), "utf8");
  const start = doc.indexOf("### Error codes");
  assert.ok(start >= 0, "docs/OPERATIONS.md has a section '### Error codes'");
  const section = doc.slice(start, doc.indexOf("\n### ", start + 1));
  const rows = new Map<string, string[]>();
  for (const line of section.split("\n")) {
    const cells = line
      .split("|")
      .slice(1, -1)
      .map((cell) => cell.trim());
    const code = /^`(\w+)`$/.exec(cells[0] ?? "")?.[1];
    if (code !== undefined) rows.set(code, cells.slice(1));
  }
  return rows;
}

test("every code is documented in docs/OPERATIONS.md, as the catalogue has it, and nothing else is", () => {
  const rows = documentedRows();
  for (const code of ERROR_CODES) {
    const row = rows.get(code);
    assert.ok(row, `docs/OPERATIONS.md documents ${code}`);
    const spec = ERRORS[code];
    const yesNo = (flag: boolean): string => (flag ? "yes" : "no");
    assert.deepEqual(
      row,
      [
        String(spec.status),
        String(spec.imdsStatus),
        yesNo(spec.definite),
        yesNo(spec.retryable),
        spec.raisedBy,
        spec.meaning,
      ],
      `the documented row of ${code}`,
    );
  }
  for (const code of rows.keys()) assert.ok(isErrorCode(code), `documented code ${code} is in the catalogue`);
});

test("the catalogue: definite denials are exactly the cacheable ones; retryable ones are never definite", () => {
  const definite = ERROR_CODES.filter((code) => ERRORS[code].definite).sort();
  assert.deepEqual(definite, [
    "AmbiguousPolicy",
    "NoPolicy",
    "PodNotEligible",
    "PolicyInvalid",
    "RoleNotAllowed",
    "StsDenied",
  ]);
  for (const code of ERROR_CODES) {
    const spec = ERRORS[code];
    assert.ok(!(spec.definite && spec.retryable), `${code} is not both definite and retryable`);
    assert.ok(spec.status >= 400 && spec.status <= 599, `${code}: an error status`);
    assert.ok(spec.imdsStatus >= 400 && spec.imdsStatus <= 599, `${code}: an IMDS error status`);
    assert.ok(spec.meaning.length > 0, `${code} says what it means`);
  }
});

test("one error class: the status comes from the catalogue, the cause is kept", () => {
  const cause = new Error("ECONNRESET");
  const err = new KeycutterError("Unavailable", "cannot read the pod", { cause });
  assert.equal(err.status, 503);
  assert.equal(err.cause, cause);
  assert.equal(err.code, "Unavailable");
  assert.equal(httpStatus("MethodNotAllowed"), 405);
  assert.equal(isErrorCode("toString"), false, "prototype names are not codes");
});

/** Source files whose refusals must take their status from the catalogue. */
function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith(".ts"))
    .map((entry) => relative(ROOT, join(entry.parentPath, entry.name)));
}

/** The code with comments and string and template literals blanked out (lengths kept). */
function codeOnly(text: string): string {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const two = text.slice(i, i + 2);
    const quote = text[i];
    let end: number;
    if (two === "//") end = text.indexOf("\n", i);
    else if (two === "/*") end = text.indexOf("*/", i) + 2;
    else if (quote === '"' || quote === "'" || quote === "`") {
      end = i + 1;
      while (end < text.length && text[end] !== quote) end += text[end] === "\\" ? 2 : 1;
      end += 1;
    } else {
      out += text[i];
      i++;
      continue;
    }
    if (end <= i) end = text.length;
    out += text.slice(i, end).replace(/[^\n]/g, " ");
    i = end;
  }
  return out;
}

/** Numbers in the 400s and 500s that are not statuses: `file: text before the number`. */
const NOT_STATUSES = new Set([
  "src/agent/agent.ts:setTimeout(tick, ",
  "src/agent/cred-cache.ts:retryInitialMs: ",
  "src/agent/server-client.ts:slice(0, ",
  "src/api/contract.ts:MAX_EPOCH_NAMESPACES = ",
  "src/server/config.ts:podReviewBudget: { ratePerSecond: 200, burst: ",
  "src/agent/answer-budget.ts:export const DEFAULT_UNKNOWN_POD_WAIT_MS = ",
  "src/agent/answer-budget.ts:export const DEFAULT_CREDENTIAL_WAIT_MS = ",
  "src/server/k8s/pod-lookup.ts:const q = new URLSearchParams({ limit: String(Math.min(",
  "src/server/k8s/policy-informers.ts:let delay = ",
  "src/server/k8s/policy-informers.ts:delay = ",
  "src/server/k8s/token-review.ts:pod: { ratePerSecond: 200, burst: ",
]);

test("no refusal status is chosen outside the catalogue (agent, server, contract)", () => {
  const files = [...sourceFiles("src/agent"), ...sourceFiles("src/server"), "src/api/contract.ts"];
  const found: string[] = [];
  for (const file of files) {
    const lines = codeOnly(readFileSync(join(ROOT, file), "utf8")).split("\n");
    lines.forEach((line, index) => {
      for (const m of line.matchAll(/\b[45]\d\d\b/g)) {
        const before = line.slice(0, m.index);
        // comparing a status someone else answered with is reading one, not choosing one
        if (/[!=]==\s*$/.test(before)) continue;
        if (
          [...NOT_STATUSES].some(
            (allowed) => allowed.startsWith(`${file}:`) && before.endsWith(allowed.slice(file.length + 1)),
          )
        )
          continue;
        found.push(`${file}:${index + 1}: ${line.trim()}`);
      }
    });
  }
  assert.deepEqual(found, [], "status literals outside src/api/errors.ts");
});
