import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NODE, KEYCUTTER_MAIN } from "../harness/paths.ts";

const ALLOWANCE = `apiVersion: keycutter.dev/v1alpha1
kind: RoleAllowance
metadata: {name: tenants}
spec:
  namespaces: ["tenant-*"]
  roleArns: ["arn:aws:iam::123456789012:role/tenant-*"]
  denyStatements:
    - {Effect: Deny, Action: ["iam:*"], Resource: "*"}
`;
const policy = (
  name: string,
  role: string,
  resource: string,
  extra = "",
) => `apiVersion: keycutter.dev/v1alpha1
kind: AccessPolicy
metadata: {name: ${name}, namespace: tenant-a}
spec:
  podSelector: {serviceAccountName: reader}
  roleArn: ${role}
${extra}  sessionPolicy:
    Statement:
      - Effect: Allow
        Action: s3:GetObject
        Resource: "${resource}"
`;

test("keycutter policy validate: valid files pass, each kind of mistake is reported with exit 1", () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-validate-"));
  try {
    const good = join(dir, "good.yaml");
    writeFileSync(
      good,
      `${ALLOWANCE}---\n${policy("readers", "arn:aws:iam::123456789012:role/tenant-a", "arn:aws:s3:::b/${namespace}/${pod.labels['team']}/*")}`,
    );
    const out = execFileSync(NODE, [KEYCUTTER_MAIN, "policy", "validate", good], { encoding: "utf8" });
    assert.match(out, /ok\s+.*AccessPolicy tenant-a\/readers/);

    const bad = join(dir, "bad.yaml");
    const big = Array.from(
      { length: 40 },
      (_, i) =>
        `      - {Effect: Allow, Action: s3:GetObject, Resource: "arn:aws:s3:::bucket-${i}/\${namespace}/*"}`,
    ).join("\n");
    writeFileSync(
      bad,
      [
        ALLOWANCE,
        policy("unknown-var", "arn:aws:iam::123456789012:role/tenant-a", "arn:aws:s3:::b/${podname}/*"),
        policy(
          "typo",
          "arn:aws:iam::123456789012:role/tenant-a",
          "arn:aws:s3:::b/*",
          "  durationSecs: 900\n",
        ),
        policy("role", "arn:aws:iam::123456789012:role/admin", "arn:aws:s3:::b/*"),
        `apiVersion: keycutter.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: big, namespace: tenant-a}\nspec:\n  podSelector: {}\n  roleArn: arn:aws:iam::123456789012:role/tenant-a\n  sessionPolicy:\n    Statement:\n${big}\n`,
        `apiVersion: keycutter.dev/v1alpha1\nkind: RoleAllowance\nmetadata: {name: widen}\nspec:\n  namespaces: [x]\n  roleArns: ["arn:aws:iam::123456789012:role/x"]\n  denyStatements: [{Effect: Allow, Action: "*", Resource: "*"}]\n`,
      ].join("---\n"),
    );
    const r = spawnSync(NODE, [KEYCUTTER_MAIN, "policy", "validate", "-o", "json", bad], {
      encoding: "utf8",
    });
    assert.equal(r.status, 3, r.stderr);
    const res = JSON.parse(r.stdout) as { valid: boolean; findings: { name: string; errors: string[] }[] };
    assert.equal(res.valid, false);
    const errs = (n: string) => res.findings.find((f) => f.name === n)?.errors.join(" | ") ?? "";
    assert.match(errs("unknown-var"), /unknown variable \$\{podname\}/);
    assert.match(errs("typo"), /unknown field "durationSecs"/);
    assert.match(errs("role"), /RoleNotAllowed/);
    assert.match(errs("big"), /PolicyTooLarge/);
    assert.match(errs("widen"), /only "Deny"/);
    assert.equal(errs("tenants"), "");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("keycutter policy validate: session tag keys against the allowances given, and the policy Version", () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-validate-"));
  try {
    const tagged = (
      name: string,
      tags: string,
      version = '"2012-10-17"',
    ) => `apiVersion: keycutter.dev/v1alpha1
kind: AccessPolicy
metadata: {name: ${name}, namespace: tenant-a}
spec:
  podSelector: {}
  roleArn: arn:aws:iam::123456789012:role/tenant-a
  sessionTags: ${tags}
  sessionPolicy:
    Version: ${version}
    Statement: [{Effect: Allow, Action: s3:GetObject, Resource: "arn:aws:s3:::b/*"}]
`;
    const policies = [
      tagged("claims-team", "{team: team-b}"),
      tagged("own-prefix", "{tenant-a-cost: '7'}"),
      tagged("old-version", "{}", '"2008-10-17"'),
    ].join("---\n");
    const withAllowance = join(dir, "with.yaml");
    writeFileSync(withAllowance, `${ALLOWANCE}  sessionTagKeys: ["\${namespace}-*"]\n---\n${policies}`);
    const r = spawnSync(NODE, [KEYCUTTER_MAIN, "policy", "validate", "-o", "json", withAllowance], {
      encoding: "utf8",
    });
    assert.equal(r.status, 3, r.stderr);
    const res = JSON.parse(r.stdout) as {
      findings: { name: string; errors: string[]; warnings: string[]; ready?: { reason: string } }[];
    };
    const finding = (n: string) => res.findings.find((f) => f.name === n);
    assert.match(
      finding("claims-team")?.errors.join(" | ") ?? "",
      /TagKeyNotAllowed: .*"team" \(RoleAllowance tenants\)/,
    );
    assert.equal(finding("claims-team")?.ready?.reason, "TagKeyNotAllowed");
    assert.deepEqual(finding("own-prefix")?.errors, []);
    assert.match(finding("old-version")?.errors.join(" | ") ?? "", /Version: must be "2012-10-17"/);

    // no allowance among the files: the keys cannot be judged, and it says so rather than failing
    const alone = join(dir, "alone.yaml");
    writeFileSync(alone, tagged("claims-team", "{team: team-b}"));
    const a = spawnSync(NODE, [KEYCUTTER_MAIN, "policy", "validate", "-o", "json", alone], {
      encoding: "utf8",
    });
    assert.equal(a.status, 0, a.stdout);
    const only = (JSON.parse(a.stdout) as typeof res).findings[0];
    assert.match(only?.warnings.join(" | ") ?? "", /session tag keys cannot be checked offline/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("keycutter policy validate: sessions too short for IMDS clients are a warning, on the policy and on an allowance's cap", () => {
  const dir = mkdtempSync(join(tmpdir(), "kc-validate-"));
  try {
    const file = join(dir, "short.yaml");
    const role = "arn:aws:iam::123456789012:role/tenant-a";
    writeFileSync(
      file,
      [
        ALLOWANCE,
        policy("quarter-hour", role, "arn:aws:s3:::b/*", "  durationSeconds: 900\n"),
        policy("hour", role, "arn:aws:s3:::b/*", "  durationSeconds: 3600\n"),
        `apiVersion: keycutter.dev/v1alpha1\nkind: RoleAllowance\nmetadata: {name: capped}\nspec:\n  namespaces: [x]\n  roleArns: ["arn:aws:iam::123456789012:role/x"]\n  maxDurationSeconds: 1800\n`,
      ].join("---\n"),
    );
    const r = spawnSync(NODE, [KEYCUTTER_MAIN, "policy", "validate", "-o", "json", file], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const findings = (
      JSON.parse(r.stdout) as {
        findings: { name: string; warnings: string[]; ready?: { message: string } }[];
      }
    ).findings;
    const of = (n: string) => findings.find((f) => f.name === n)!;
    assert.match(
      of("quarter-hour").warnings.join(" | "),
      /900s sessions are shorter than 2700s: on IMDS, boto3/,
    );
    assert.match(
      of("quarter-hour").ready!.message,
      /^in force; warning: 900s sessions/,
      "the Ready condition says it too",
    );
    assert.deepEqual(of("hour").warnings, []);
    assert.match(of("capped").warnings.join(" | "), /spec.maxDurationSeconds: 1800s sessions are shorter/);
    assert.deepEqual(of("tenants").warnings, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
