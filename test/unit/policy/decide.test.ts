import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { decide, sessionNameFor } from "../../../src/policy/decide.ts";
import { renderDocument, TemplateError, SAFE_VALUE } from "../../../src/policy/template.ts";
import { validateAccessPolicy, validateRoleAllowance } from "../../../src/policy/validate.ts";
import { accessPolicyReadiness } from "../../../src/policy/readiness.ts";
import type { AccessPolicy, PodFacts, RoleAllowance } from "../../../src/policy/types.ts";

const pod: PodFacts = {
  namespace: "tenant-a",
  name: "web-1",
  uid: "0b6f1f9e-3c1d-4d7e-9a57-1b2c3d4e5f60",
  serviceAccountName: "app",
  nodeName: "node-1",
  labels: { team: "blue", app: "web" },
  annotations: { "keycutter.dev/prefix": "reports", evil: 'x"}],"Effect":"Allow' },
};

function policy(name: string, spec: Partial<AccessPolicy["spec"]> = {}): AccessPolicy {
  return {
    metadata: { name, namespace: "tenant-a", uid: `uid-${name}`, generation: 3 },
    spec: {
      podSelector: { serviceAccountName: "app" },
      roleArn: "arn:aws:iam::123456789012:role/tenant-a",
      sessionPolicy: {
        Version: "2012-10-17",
        Statement: [
          {
            Effect: "Allow",
            Action: ["s3:GetObject", "s3:PutObject"],
            Resource: "arn:aws:s3:::bucket-a/${namespace}/${pod.labels['team']}/*",
          },
        ],
      },
      ...spec,
    },
  };
}

const allowance: RoleAllowance = {
  metadata: { name: "tenants", uid: "ra-1", generation: 2 },
  spec: {
    namespaces: ["tenant-*"],
    roleArns: ["arn:aws:iam::123456789012:role/tenant-*"],
    maxDurationSeconds: 1800,
    denyStatements: [{ Effect: "Deny", Action: "s3:DeleteBucket", Resource: "*" }],
  },
};

const ns = { name: "tenant-a", labels: {} };
const opts = { clusterName: "test", maxDurationSeconds: 3600 };

test("decide renders the template, appends denies, caps duration, sets tags", () => {
  const d = decide({ pod, namespace: ns, policies: [policy("p1")], allowances: [allowance] }, opts);
  assert.equal(d.ok, true);
  if (!d.ok) return;
  const doc = JSON.parse(d.plan.sessionPolicy as string);
  assert.equal(doc.Statement[0].Resource, "arn:aws:s3:::bucket-a/tenant-a/blue/*");
  assert.deepEqual(doc.Statement[1], { Effect: "Deny", Action: "s3:DeleteBucket", Resource: "*" });
  assert.ok(!(d.plan.sessionPolicy as string).includes(" "), "minified");
  assert.equal(d.plan.durationSeconds, 1800);
  assert.equal(d.plan.policy.generation, 3);
  assert.deepEqual(
    d.plan.tags.map((t) => t.Key),
    [
      "kubernetes-namespace",
      "kubernetes-service-account",
      "kubernetes-pod-name",
      "kubernetes-pod-uid",
      "kubernetes-node-name",
      "kubernetes-cluster-name",
    ],
  );
  assert.match(d.plan.sessionName, /^[\w+=,.@-]{2,64}$/);
  assert.equal(d.plan.policySha256.length, 64);
});

test("no policy, ambiguous, priority, disallowed role", () => {
  const none = decide(
    {
      pod,
      namespace: ns,
      policies: [policy("p1", { podSelector: { serviceAccountName: "other" } })],
      allowances: [allowance],
    },
    opts,
  );
  assert.equal(none.ok, false);
  if (!none.ok) assert.equal(none.code, "NoPolicy");
  const amb = decide(
    {
      pod,
      namespace: ns,
      policies: [policy("p1"), policy("p2", { podSelector: { matchLabels: { team: "blue" } } })],
      allowances: [allowance],
    },
    opts,
  );
  assert.equal(amb.ok, false);
  if (!amb.ok) {
    assert.equal(amb.code, "AmbiguousPolicy");
    assert.match(amb.message, /p1, p2/);
  }
  const pr = decide(
    { pod, namespace: ns, policies: [policy("p1"), policy("p2", { priority: 5 })], allowances: [allowance] },
    opts,
  );
  assert.equal(pr.ok, true);
  if (pr.ok) assert.equal(pr.plan.policy.name, "p2");
  const role = decide(
    {
      pod,
      namespace: ns,
      policies: [policy("p1", { roleArn: "arn:aws:iam::123456789012:role/admin" })],
      allowances: [allowance],
    },
    opts,
  );
  assert.equal(role.ok, false);
  if (!role.ok) assert.equal(role.code, "RoleNotAllowed");
  const otherNs = decide(
    {
      pod: { ...pod, namespace: "other" },
      namespace: { name: "other", labels: {} },
      policies: [{ ...policy("p1"), metadata: { ...policy("p1").metadata, namespace: "other" } }],
      allowances: [allowance],
    },
    opts,
  );
  assert.equal(otherNs.ok, false);
  if (!otherNs.ok) assert.equal(otherNs.code, "RoleNotAllowed");
});

test("hostile annotation values are refused, never inserted", () => {
  const p = policy("p1", {
    sessionPolicy: {
      Statement: [
        { Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::b/${pod.annotations['evil']}" },
      ],
    },
  });
  const d = decide({ pod, namespace: ns, policies: [p], allowances: [allowance] }, opts);
  assert.equal(d.ok, false);
  if (!d.ok) {
    assert.equal(d.code, "PolicyInvalid");
    assert.equal(d.reason, "TemplateInvalid");
    assert.ok(!d.message.includes('"Effect"'), "value not echoed");
  }
  for (const bad of ["*", "a*", "a/b", "a:b", "a?b", "${x}", "", " a", "a\nb", ".."]) {
    assert.throws(
      () =>
        renderDocument(
          { R: "x/${pod.labels['v']}" },
          { pod: { ...pod, labels: { v: bad } }, clusterName: "c" },
        ),
      TemplateError,
      bad,
    );
  }
});

test("unknown variables are errors; IAM variables pass through", () => {
  assert.throws(() => renderDocument({ R: "${podname}" }, { pod, clusterName: "c" }), /unknown variable/);
  assert.throws(() => renderDocument({ R: "${namespace" }, { pod, clusterName: "c" }), /unterminated/);
  assert.throws(
    () => renderDocument({ "${namespace}": "x" }, { pod, clusterName: "c" }),
    /only allowed in values/,
  );
  assert.deepEqual(
    renderDocument({ R: "${aws:PrincipalTag/team}/${*}/${namespace}" }, { pod, clusterName: "c" }),
    { R: "${aws:PrincipalTag/team}/${*}/tenant-a" },
  );
  assert.throws(
    () => renderDocument({ R: "${pod.labels['missing']}" }, { pod, clusterName: "c" }),
    /no label/,
  );
});

test("property: any label value either renders verbatim (safe) or is refused; output is valid JSON", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 80 }), (v) => {
      const ctx = { pod: { ...pod, labels: { v } }, clusterName: "c" };
      try {
        const out = renderDocument({ R: "arn:aws:s3:::b/${pod.labels['v']}/*" }, ctx);
        assert.ok(SAFE_VALUE.test(v));
        assert.equal(out.R, `arn:aws:s3:::b/${v}/*`);
        assert.equal(JSON.parse(JSON.stringify(out)).R.split(":").length, 6);
      } catch (e) {
        assert.ok(e instanceof TemplateError);
        assert.ok(!SAFE_VALUE.test(v));
      }
    }),
  );
});

test("oversized rendered policy is refused with PolicyTooLarge", () => {
  const stmts = Array.from({ length: 40 }, (_, i) => ({
    Effect: "Allow",
    Action: "s3:GetObject",
    Resource: `arn:aws:s3:::bucket-number-${i}/\${namespace}/*`,
  }));
  const d = decide(
    {
      pod,
      namespace: ns,
      policies: [policy("big", { sessionPolicy: { Statement: stmts } })],
      allowances: [allowance],
    },
    opts,
  );
  assert.equal(d.ok, false);
  if (!d.ok) {
    assert.equal(d.reason, "PolicyTooLarge");
    assert.equal(d.code, "PolicyInvalid");
  }
});

test("session names are valid and unique per pod", () => {
  const long = { namespace: "n".repeat(63), name: "p".repeat(253), uid: "u1" };
  const a = sessionNameFor(long);
  const b = sessionNameFor({ ...long, uid: "u2" });
  assert.ok(a.length <= 64 && /^[\w+=,.@-]+$/.test(a));
  assert.notEqual(a, b);
});

test("validation catches unknown fields, Allow in allowance denies, bad ARNs", () => {
  const v = validateAccessPolicy({
    kind: "AccessPolicy",
    metadata: { name: "x" },
    spec: { podSelector: {}, roleArn: "nope", typo: 1, sessionTags: { "kubernetes-namespace": "x" } },
  });
  assert.ok(v.errors.some((e) => e.includes('unknown field "typo"')));
  assert.ok(v.errors.some((e) => e.includes("spec.roleArn")));
  assert.ok(v.errors.some((e) => e.includes("cannot be overridden")));
  const r = validateRoleAllowance({
    kind: "RoleAllowance",
    metadata: { name: "r" },
    spec: {
      namespaces: ["a"],
      roleArns: ["arn:aws:iam::1:role/x"],
      denyStatements: [{ Effect: "Allow", Action: "*", Resource: "*" }],
    },
  });
  assert.ok(r.errors.some((e) => e.includes('only "Deny"')));
  assert.deepEqual(validateRoleAllowance(allowance).errors, []);
  assert.deepEqual(validateAccessPolicy(policy("ok")).errors, []);
});

test("session tag keys: none by default; every applicable allowance must permit each key", () => {
  const claimsTeam = policy("p1", { sessionTags: { team: "team-b" } });
  const refused = decide({ pod, namespace: ns, policies: [claimsTeam], allowances: [allowance] }, opts);
  assert.equal(refused.ok, false);
  if (!refused.ok) {
    assert.equal(refused.code, "RoleNotAllowed");
    assert.equal(refused.reason, "TagKeyNotAllowed");
    assert.match(refused.message, /"team" \(RoleAllowance tenants\)/);
    assert.match(refused.message, /spec\.sessionTagKeys/);
  }
  const permitting = (name: string, sessionTagKeys: string[]): RoleAllowance => ({
    ...allowance,
    metadata: { ...allowance.metadata, name },
    spec: { ...allowance.spec, sessionTagKeys },
  });
  const issued = (p: AccessPolicy, allowances: RoleAllowance[]) => {
    const d = decide({ pod, namespace: ns, policies: [p], allowances }, opts);
    return d.ok ? d.plan.tags.filter((t) => !t.Key.startsWith("kubernetes-")) : d;
  };
  // an exact key, case-insensitively (STS and IAM treat Team and team as one key)
  assert.deepEqual(issued(claimsTeam, [permitting("tenants", ["Team"])]), [{ Key: "team", Value: "team-b" }]);
  assert.deepEqual(issued(policy("p1", { sessionTags: { TEAM: "x" } }), [permitting("t", ["team"])]), [
    { Key: "TEAM", Value: "x" },
  ]);
  // a per-namespace prefix: tenant-a may set tenant-a-* keys, not team or another namespace's
  const own = [permitting("tenants", ["${namespace}-*"])];
  assert.deepEqual(issued(policy("p1", { sessionTags: { "tenant-a-cost": "1" } }), own), [
    { Key: "tenant-a-cost", Value: "1" },
  ]);
  for (const key of ["team", "tenant-b-cost", "tenant-a-x/y", "tenant-a-x:y"]) {
    const d = issued(policy("p1", { sessionTags: { [key]: "1" } }), own);
    assert.ok(!Array.isArray(d) && !d.ok && d.reason === "TagKeyNotAllowed", key);
  }
  // two allowances apply: a key permitted by one only is refused, and the refusing one is named
  const both = [permitting("broad", ["*"]), permitting("narrow", ["cost-center"])];
  assert.deepEqual(issued(policy("p1", { sessionTags: { "cost-center": "7" } }), both), [
    { Key: "cost-center", Value: "7" },
  ]);
  const d = issued(claimsTeam, both);
  assert.ok(!Array.isArray(d) && !d.ok);
  if (!Array.isArray(d) && !d.ok) {
    assert.equal(d.reason, "TagKeyNotAllowed");
    assert.match(d.message, /"team" \(RoleAllowance narrow\)/);
    assert.doesNotMatch(d.message, /broad/);
  }
  // an allowance that covers another namespace or role does not count, either way
  const elsewhere: RoleAllowance = {
    ...permitting("elsewhere", []),
    spec: { namespaces: ["x"], roleArns: ["arn:aws:iam::123456789012:role/tenant-a"] },
  };
  assert.deepEqual(issued(claimsTeam, [permitting("tenants", ["team"]), elsewhere]), [
    { Key: "team", Value: "team-b" },
  ]);
});

test("the Ready condition says why a tag key is refused; sessionTagKeys patterns are validated", () => {
  const r = accessPolicyReadiness(policy("p1", { sessionTags: { team: "x" } }), [allowance], {}, "c", 3600);
  assert.equal(r.status, "False");
  assert.equal(r.reason, "TagKeyNotAllowed");
  assert.match(r.message, /"team" \(RoleAllowance tenants\)/);
  const bad = validateRoleAllowance({
    ...allowance,
    spec: { ...allowance.spec, sessionTagKeys: ["${pod.labels['x']}-*", "a b", "ok?", "", 7] },
  });
  assert.match(bad.errors.join("\n"), /sessionTagKeys\[0\]: only the variable \$\{namespace\}/);
  assert.doesNotMatch(bad.errors.join("\n"), /sessionTagKeys\[[12]\]/);
  assert.match(bad.errors.join("\n"), /sessionTagKeys\[3\]: must be a tag key or glob/);
  assert.match(bad.errors.join("\n"), /sessionTagKeys\[4\]: must be a string/);
  const any = validateRoleAllowance({ ...allowance, spec: { ...allowance.spec, sessionTagKeys: ["*"] } });
  assert.deepEqual(any.errors, []);
  assert.match(any.warnings.join("\n"), /lets tenants set any tag key/);
});

test("policy Version: only 2012-10-17 is accepted, and it is what every session policy is sent with", () => {
  const old = policy("p1", {
    sessionPolicy: {
      Version: "2008-10-17",
      Statement: [{ Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::b/*" }],
    },
  });
  assert.ok(
    validateAccessPolicy(old).errors.some((e) =>
      /spec\.sessionPolicy\.Version: must be "2012-10-17"/.test(e),
    ),
  );
  const refused = decide({ pod, namespace: ns, policies: [old], allowances: [allowance] }, opts);
  assert.equal(refused.ok, false);
  if (!refused.ok) assert.equal(refused.code, "PolicyInvalid");
  // without a Version (and without a session policy at all, with the allowance's Deny), 2012-10-17
  const noVersion = policy("p1", {
    sessionPolicy: { Statement: [{ Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::b/*" }] },
  });
  const bare: AccessPolicy = {
    ...policy("p1"),
    spec: { podSelector: {}, roleArn: policy("p1").spec.roleArn },
  };
  for (const p of [noVersion, bare, policy("p1")]) {
    const d = decide({ pod, namespace: ns, policies: [p], allowances: [allowance] }, opts);
    assert.equal(d.ok, true);
    if (d.ok) assert.equal(JSON.parse(d.plan.sessionPolicy as string).Version, "2012-10-17");
  }
});

test("a role pattern does not cross '/': role/tenant-* does not allow role/tenant-x/team-b-db", () => {
  const d = decide(
    {
      pod,
      namespace: ns,
      policies: [policy("p1", { roleArn: "arn:aws:iam::123456789012:role/tenant-x/team-b-db" })],
      allowances: [allowance],
    },
    opts,
  );
  assert.equal(d.ok, false);
  if (!d.ok) assert.equal(d.reason, "RoleNotAllowed");
});

test("an invalid RoleAllowance that covers the namespace and role refuses, instead of being skipped", () => {
  // The broad allowance alone would issue; the narrow one carrying a deny is broken (an Allow
  // among its mandatory statements). Skipping it would issue without its deny: fail open.
  const broad: RoleAllowance = {
    metadata: { name: "broad", uid: "ra-broad", generation: 1 },
    spec: { namespaces: ["tenant-*"], roleArns: ["arn:aws:iam::123456789012:role/tenant-*"] },
  };
  const broken: RoleAllowance = {
    metadata: { name: "deny-deletes", uid: "ra-broken", generation: 4 },
    spec: {
      namespaces: ["tenant-a"],
      roleArns: ["arn:aws:iam::123456789012:role/tenant-a"],
      denyStatements: [{ Effect: "Allow", Action: "s3:DeleteObject", Resource: "*" }],
    },
  };
  const d = decide({ pod, namespace: ns, policies: [policy("p1")], allowances: [broad, broken] }, opts);
  assert.ok(!d.ok);
  assert.equal(d.code, "RoleNotAllowed");
  assert.equal(d.reason, "AllowanceInvalid");
  assert.match(d.message, /deny-deletes/);
  assert.equal(
    accessPolicyReadiness(policy("p1"), [broad, broken], {}, "test", 3600).reason,
    "AllowanceInvalid",
  );

  // One that covers another namespace, or too malformed to read, does not get in the way.
  const elsewhere = { ...broken, spec: { ...broken.spec, namespaces: ["tenant-z"] } };
  const unreadable = { metadata: { name: "junk" }, spec: { namespaces: 7 } } as unknown as RoleAllowance;
  const ok = decide(
    { pod, namespace: ns, policies: [policy("p1")], allowances: [broad, elsewhere, unreadable] },
    opts,
  );
  assert.ok(ok.ok);
});

test("managed session policies with allowance denies: no inline Allow-all that would undo their narrowing", () => {
  const managedOnly = policy("managed", {
    sessionPolicy: undefined,
    managedPolicyArns: ["arn:aws:iam::123456789012:policy/read-only-reports"],
  });
  const d = decide({ pod, namespace: ns, policies: [managedOnly], allowances: [allowance] }, opts);
  assert.ok(d.ok);
  const doc = JSON.parse(d.plan.sessionPolicy as string) as { Statement: { Effect: string }[] };
  assert.deepEqual(
    doc.Statement.map((st) => st.Effect),
    ["Deny"],
    "the inline document holds the allowance's deny only; the managed policies grant",
  );
  assert.deepEqual(d.plan.policyArns, ["arn:aws:iam::123456789012:policy/read-only-reports"]);

  // Without managed policies nor tenant statements the role's permissions minus the denies apply.
  const bare = policy("bare", { sessionPolicy: undefined });
  const b = decide({ pod, namespace: ns, policies: [bare], allowances: [allowance] }, opts);
  assert.ok(b.ok);
  const bareDoc = JSON.parse(b.plan.sessionPolicy as string) as { Statement: { Effect: string }[] };
  assert.deepEqual(
    bareDoc.Statement.map((st) => st.Effect),
    ["Allow", "Deny"],
  );
});
