// Session binding (RoleAllowance.spec.bindSessions) in the decision: the Deny statement appended to
// every session policy, what it compares with, what IAM's evaluation makes of it (the IAM
// simulator), and that no AccessPolicy can remove or widen it, nor get credentials without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { canonicalJson, decide, type Decision } from "../../../src/policy/decide.ts";
import { bindingStatement } from "../../../src/policy/binding.ts";
import { simulate } from "../../../src/policy/simulate.ts";
import { accessPolicyReadiness } from "../../../src/policy/readiness.ts";
import { validateAccessPolicy, validateRoleAllowance } from "../../../src/policy/validate.ts";
import { cacheKey } from "../../../src/server/issue/keys.ts";
import type {
  AccessPolicy,
  IamStatement,
  PodFacts,
  RoleAllowance,
  SessionBinding,
} from "../../../src/policy/types.ts";

const ROLE = "arn:aws:iam::123456789012:role/tenant-a";
const POD_IP = "10.244.1.17";
const NODE_IP = "10.0.3.4";

const pod: PodFacts = {
  namespace: "tenant-a",
  name: "web-1",
  uid: "0b6f1f9e-3c1d-4d7e-9a57-1b2c3d4e5f60",
  serviceAccountName: "app",
  nodeName: "node-1",
  labels: { app: "web" },
  annotations: {},
  podIPs: [POD_IP],
  hostIPs: [NODE_IP],
};

const READ_OWN_PREFIX = {
  Effect: "Allow",
  Action: ["s3:GetObject"],
  Resource: "arn:aws:s3:::bucket-a/${namespace}/*",
};

function policy(spec: Partial<AccessPolicy["spec"]> = {}): AccessPolicy {
  return {
    metadata: { name: "p", namespace: "tenant-a", uid: "uid-p", generation: 1 },
    spec: {
      podSelector: {},
      roleArn: ROLE,
      sessionPolicy: { Version: "2012-10-17", Statement: [READ_OWN_PREFIX] },
      ...spec,
    },
  };
}

function allowance(name: string, bindSessions?: SessionBinding, extra: Partial<RoleAllowance["spec"]> = {}) {
  const a: RoleAllowance = {
    metadata: { name, uid: `uid-${name}`, generation: 1 },
    spec: { namespaces: ["tenant-*"], roleArns: ["arn:aws:iam::123456789012:role/tenant-*"], ...extra },
  };
  if (bindSessions) a.spec.bindSessions = bindSessions;
  return a;
}

const ns = { name: "tenant-a", labels: {} };
const opts = { clusterName: "c", maxDurationSeconds: 3600 };

function run(allowances: RoleAllowance[], p = policy(), facts: PodFacts = pod): Decision {
  return decide({ pod: facts, namespace: ns, policies: [p], allowances }, opts);
}

function statementsOf(d: Decision): IamStatement[] {
  assert.equal(d.ok, true, d.ok ? "" : d.message);
  if (!d.ok) return [];
  return (JSON.parse(d.plan.sessionPolicy as string) as { Statement: IamStatement[] }).Statement;
}

const BIND_POD_SOURCE_IP: SessionBinding = { to: "PodIP", via: "SourceIp" };

test("PodIP via SourceIp: a Deny of everything from anywhere but the pod's /32, after the tenant's statements and the denies", () => {
  const d = run([
    allowance("bound", BIND_POD_SOURCE_IP, {
      denyStatements: [{ Effect: "Deny", Action: "s3:DeleteObject", Resource: "*" }],
    }),
  ]);
  const statements = statementsOf(d);
  assert.equal(statements.length, 3);
  assert.equal(statements[0]?.Effect, "Allow");
  assert.deepEqual(statements[1], { Effect: "Deny", Action: "s3:DeleteObject", Resource: "*" });
  assert.deepEqual(statements[2], {
    Effect: "Deny",
    Action: "*",
    Resource: "*",
    Condition: {
      BoolIfExists: { "aws:ViaAWSService": "false" },
      NotIpAddress: { "aws:SourceIp": [`${POD_IP}/32`] },
    },
  });
  if (d.ok)
    assert.deepEqual(d.plan.bindings, [
      { allowance: "bound", binding: BIND_POD_SOURCE_IP, values: [`${POD_IP}/32`] },
    ]);
});

test("each target compares its own key: NodeIP via VpcSourceIp, SourceVpc, SourceVpce; dual stack lists every address", () => {
  const condition = (binding: SessionBinding, facts = pod) =>
    (statementsOf(run([allowance("a", binding)], policy(), facts)).at(-1) as { Condition: unknown })
      .Condition;
  assert.deepEqual(condition({ to: "NodeIP", via: "VpcSourceIp" }), {
    BoolIfExists: { "aws:ViaAWSService": "false" },
    NotIpAddress: { "aws:VpcSourceIp": [`${NODE_IP}/32`] },
  });
  assert.deepEqual(condition({ to: "SourceVpc", vpcIds: ["vpc-0123456789abcdef0"] }), {
    BoolIfExists: { "aws:ViaAWSService": "false" },
    StringNotEquals: { "aws:SourceVpc": ["vpc-0123456789abcdef0"] },
  });
  assert.deepEqual(condition({ to: "SourceVpce", vpceIds: ["vpce-1a2b3c4d", "vpce-0123456789abcdef0"] }), {
    BoolIfExists: { "aws:ViaAWSService": "false" },
    StringNotEquals: { "aws:SourceVpce": ["vpce-1a2b3c4d", "vpce-0123456789abcdef0"] },
  });
  assert.deepEqual(condition(BIND_POD_SOURCE_IP, { ...pod, podIPs: [POD_IP, "fd00:10:244:1::11"] }), {
    BoolIfExists: { "aws:ViaAWSService": "false" },
    NotIpAddress: { "aws:SourceIp": [`${POD_IP}/32`, "fd00:10:244:1::11/128"] },
  });
  assert.deepEqual(condition({ ...BIND_POD_SOURCE_IP, exemptAwsServiceCalls: false }), {
    NotIpAddress: { "aws:SourceIp": [`${POD_IP}/32`] },
  });
});

test("IAM's evaluation of the bound policy: allowed from the pod, denied elsewhere, service calls exempt, missing keys denied", async () => {
  const simulateFrom = async (binding: SessionBinding, context: Record<string, string>) => {
    const d = run([allowance("a", binding)]);
    assert.ok(d.ok);
    if (!d.ok) return "";
    const out = await simulate({
      action: "s3:GetObject",
      resource: "arn:aws:s3:::bucket-a/tenant-a/x",
      accountId: "123456789012",
      principalArn: `arn:aws:sts::123456789012:assumed-role/tenant-a/${d.plan.sessionName}`,
      ...(d.plan.sessionPolicy ? { sessionPolicy: d.plan.sessionPolicy } : {}),
      contextVariables: context,
    });
    return out.result;
  };
  assert.equal(await simulateFrom(BIND_POD_SOURCE_IP, { "aws:SourceIp": POD_IP }), "Allowed");
  assert.equal(await simulateFrom(BIND_POD_SOURCE_IP, { "aws:SourceIp": "10.244.1.18" }), "ExplicitlyDenied");
  assert.equal(await simulateFrom(BIND_POD_SOURCE_IP, { "aws:SourceIp": NODE_IP }), "ExplicitlyDenied");
  assert.equal(
    await simulateFrom(BIND_POD_SOURCE_IP, { "aws:SourceIp": "203.0.113.9", "aws:ViaAWSService": "true" }),
    "Allowed",
    "a call a service makes on the session's behalf",
  );
  assert.equal(
    await simulateFrom(
      { ...BIND_POD_SOURCE_IP, exemptAwsServiceCalls: false },
      { "aws:SourceIp": "203.0.113.9", "aws:ViaAWSService": "true" },
    ),
    "ExplicitlyDenied",
  );
  const viaEndpoint: SessionBinding = { to: "PodIP", via: "VpcSourceIp" };
  assert.equal(await simulateFrom(viaEndpoint, { "aws:VpcSourceIp": POD_IP }), "Allowed");
  assert.equal(
    await simulateFrom(viaEndpoint, { "aws:SourceIp": POD_IP }),
    "ExplicitlyDenied",
    "not through a VPC endpoint: aws:VpcSourceIp is absent, and the binding fails closed",
  );
  const vpce: SessionBinding = { to: "SourceVpce", vpceIds: ["vpce-1a2b3c4d"] };
  assert.equal(await simulateFrom(vpce, { "aws:SourceVpce": "vpce-1a2b3c4d" }), "Allowed");
  assert.equal(await simulateFrom(vpce, { "aws:SourceVpce": "vpce-9a9b9c9d" }), "ExplicitlyDenied");
  assert.equal(await simulateFrom(vpce, {}), "ExplicitlyDenied");
});

test("a pod without the address its binding needs gets nothing, never an unbound session", () => {
  // no address yet: transient (Unavailable), the agent may ask before the CNI has given one
  for (const [binding, facts] of [
    [BIND_POD_SOURCE_IP, { ...pod, podIPs: [] }],
    [BIND_POD_SOURCE_IP, { ...pod, podIPs: undefined }],
    [
      { to: "NodeIP", via: "SourceIp" },
      { ...pod, hostIPs: [] },
    ],
  ] as [SessionBinding, PodFacts][]) {
    const d = run([allowance("bound", binding)], policy(), facts);
    assert.equal(d.ok, false, JSON.stringify(facts));
    if (d.ok) continue;
    assert.equal(d.code, "Unavailable");
    assert.equal(d.reason, "PodAddressUnknown");
    assert.match(d.message, /has no (node )?IP in its status yet .*session binding to (PodIP|NodeIP) needs/);
  }
  // an address that is not a plain IP: refused for good
  for (const podIPs of [["10.0.0.0/8"], ["fe80::1%eth0"], [POD_IP, "*"], [""]]) {
    const d = run([allowance("bound", BIND_POD_SOURCE_IP)], policy(), { ...pod, podIPs });
    assert.equal(d.ok, false, JSON.stringify(podIPs));
    if (d.ok) continue;
    assert.equal(d.code, "PolicyInvalid");
    assert.equal(d.reason, "BindingUnresolved");
    assert.match(
      d.message,
      /RoleAllowance bound .*not a plain IP address; no credentials are issued without it/,
    );
  }
  // an unbound allowance does not need the address
  assert.equal(run([allowance("free")], policy(), { ...pod, podIPs: [] }).ok, true);
});

test("actions: a binding can cover only the services that can meet it", () => {
  const binding: SessionBinding = { to: "PodIP", via: "VpcSourceIp", actions: ["s3:*", "dynamodb:*"] };
  const last = statementsOf(run([allowance("a", binding)])).at(-1);
  assert.deepEqual(last?.Action, ["s3:*", "dynamodb:*"]);
  assert.equal(last?.Resource, "*");
});

test("several allowances with bindings: every binding applies, in the allowances' name order", () => {
  const statements = statementsOf(
    run([
      allowance("z-vpce", { to: "SourceVpce", vpceIds: ["vpce-1a2b3c4d"] }),
      allowance("a-pod", BIND_POD_SOURCE_IP),
      allowance("m-unbound"),
    ]),
  );
  assert.equal(statements.length, 3);
  assert.deepEqual(statements[1], bindingStatement(BIND_POD_SOURCE_IP, pod));
  assert.deepEqual(statements[2], bindingStatement({ to: "SourceVpce", vpceIds: ["vpce-1a2b3c4d"] }, pod));
});

test("without a tenant session policy the session keeps the role minus the binding (Allow * first)", () => {
  const statements = statementsOf(
    run([allowance("bound", BIND_POD_SOURCE_IP)], policy({ sessionPolicy: undefined })),
  );
  assert.deepEqual(statements[0], { Effect: "Allow", Action: "*", Resource: "*" });
  assert.deepEqual(statements[1], bindingStatement(BIND_POD_SOURCE_IP, pod));
});

// Statements any valid AccessPolicy may hold, including ones that try to look like or undo the
// binding: Allow with the same condition keys, Allow * with IpAddress 0.0.0.0/0, NotAction.
const hostileStatement = fc.oneof(
  fc.record({
    Effect: fc.constantFrom("Allow", "Deny"),
    Action: fc.constantFrom("*", "s3:GetObject", ["s3:*", "kms:Decrypt"]),
    Resource: fc.constantFrom("*", "arn:aws:s3:::bucket-a/*"),
  }),
  fc.record({
    Effect: fc.constant("Allow"),
    NotAction: fc.constant("iam:*"),
    Resource: fc.constant("*"),
    Condition: fc.constantFrom(
      { IpAddress: { "aws:SourceIp": "0.0.0.0/0" } },
      { NotIpAddress: { "aws:SourceIp": `${POD_IP}/32` } },
      { Bool: { "aws:ViaAWSService": "true" } },
    ),
  }),
  fc.record({
    Effect: fc.constant("Allow"),
    Action: fc.constant("s3:GetObject"),
    Resource: fc
      .integer({ min: 1, max: 400 })
      .map((n) => `arn:aws:s3:::bucket-a/${"x".repeat(n)}/\${pod.ip}/*`),
  }),
);

test("property: whatever the AccessPolicy holds, credentials come only with the binding, last, at Version 2012-10-17", () => {
  const binding = BIND_POD_SOURCE_IP;
  const expected = canonicalJson(bindingStatement(binding, pod));
  fc.assert(
    fc.property(fc.array(hostileStatement, { minLength: 1, maxLength: 12 }), (statements) => {
      const p = policy({ sessionPolicy: { Version: "2012-10-17", Statement: statements } });
      if (validateAccessPolicy(p).errors.length > 0) return;
      const d = run([allowance("bound", binding)], p);
      if (!d.ok) {
        assert.equal(d.reason, "PolicyTooLarge", d.message);
        assert.match(d.message, /session bindings of RoleAllowance bound, which are never left out/);
        return;
      }
      const doc = JSON.parse(d.plan.sessionPolicy as string) as { Version: string; Statement: unknown[] };
      assert.equal(doc.Version, "2012-10-17");
      assert.equal(canonicalJson(doc.Statement.at(-1)), expected);
      assert.ok((d.plan.sessionPolicy as string).length <= 2048);
    }),
    { numRuns: 300 },
  );
});

test("a policy that fits alone but not with the binding is refused (PolicyTooLarge), statically too", () => {
  const filler = (n: number) => ({
    Effect: "Allow",
    Action: "s3:GetObject",
    Resource: `arn:aws:s3:::bucket-a/${"x".repeat(n)}/*`,
  });
  // largest single statement that still fits without a binding
  let n = 1900;
  while (!run([allowance("free")], policy({ sessionPolicy: { Statement: [filler(n)] } })).ok) n--;
  const tight = policy({ sessionPolicy: { Statement: [filler(n)] } });
  const bound = run([allowance("bound", BIND_POD_SOURCE_IP)], tight);
  assert.equal(bound.ok, false);
  if (!bound.ok) {
    assert.equal(bound.reason, "PolicyTooLarge");
    assert.match(bound.message, /about \d+ of them are the session bindings of RoleAllowance bound/);
  }
  const ready = accessPolicyReadiness(tight, [allowance("bound", BIND_POD_SOURCE_IP)], {}, "c", 3600);
  assert.equal(ready.status, "False");
  assert.equal(ready.reason, "PolicyTooLarge");
  // with the longest dual-stack addresses a bound policy that fits one short IPv4 address warns
  const near = policy({ sessionPolicy: { Statement: [filler(n - 160)] } });
  const warn = accessPolicyReadiness(near, [allowance("bound", BIND_POD_SOURCE_IP)], {}, "c", 3600);
  assert.equal(warn.status, "True");
  assert.match(warn.message, /warning/);
});

test("${pod.ip} and ${node.ip} in session policies: the live addresses, IPv6 too; none → TemplateInvalid", () => {
  const p = policy({
    sessionPolicy: {
      Statement: [
        {
          Effect: "Allow",
          Action: "s3:GetObject",
          Resource: "arn:aws:s3:::bucket-a/${pod.ip}/*",
          Condition: { IpAddress: { "aws:SourceIp": ["${pod.ip}/32", "${node.ip}/32"] } },
        },
      ],
    },
  });
  assert.deepEqual(validateAccessPolicy(p).errors, []);
  const first = statementsOf(run([allowance("free")], p))[0] as Record<string, unknown>;
  assert.equal(first.Resource, `arn:aws:s3:::bucket-a/${POD_IP}/*`);
  assert.deepEqual(first.Condition, { IpAddress: { "aws:SourceIp": [`${POD_IP}/32`, `${NODE_IP}/32`] } });
  const v6 = statementsOf(run([allowance("free")], p, { ...pod, podIPs: ["fd00::11", POD_IP] }))[0];
  assert.equal(v6?.Resource, "arn:aws:s3:::bucket-a/fd00::11/*");
  for (const facts of [
    { ...pod, podIPs: [] },
    { ...pod, hostIPs: undefined },
  ]) {
    const d = run([allowance("free")], p, facts);
    assert.equal(d.ok, false);
    if (!d.ok) {
      assert.equal(d.code, "Unavailable");
      assert.equal(d.reason, "PodAddressUnknown");
      assert.match(d.message, /\$\{(pod|node)\.ip\} has no value yet/);
    }
  }
  const bad = run([allowance("free")], p, { ...pod, podIPs: ["10.0.0.1/0"] });
  assert.equal(bad.ok, false);
  if (!bad.ok) {
    assert.equal(bad.reason, "TemplateInvalid");
    assert.match(bad.message, /\$\{pod\.ip\} is not a plain IP address/);
  }
});

test("the cache key follows the pod's IP when the binding uses it, so a pod whose IP changes gets new credentials", () => {
  const plan = (facts: PodFacts) => {
    const d = run([allowance("bound", BIND_POD_SOURCE_IP)], policy(), facts);
    assert.ok(d.ok);
    return d.ok ? d.plan : undefined;
  };
  const before = plan(pod)!;
  const after = plan({ ...pod, podIPs: ["10.244.1.99"] })!;
  assert.notEqual(before.policySha256, after.policySha256);
  assert.notEqual(cacheKey(before, pod.uid), cacheKey(after, pod.uid));
  assert.equal(cacheKey(before, pod.uid), cacheKey(plan(pod)!, pod.uid));
});

test("validation of bindSessions: each target takes exactly its own parameters", () => {
  const errorsOf = (bindSessions: unknown) =>
    validateRoleAllowance({
      ...allowance("a"),
      kind: "RoleAllowance",
      spec: { ...allowance("a").spec, bindSessions },
    }).errors;
  assert.deepEqual(errorsOf({ to: "PodIP", via: "SourceIp" }), []);
  assert.deepEqual(errorsOf({ to: "NodeIP", via: "VpcSourceIp", exemptAwsServiceCalls: false }), []);
  assert.deepEqual(errorsOf({ to: "SourceVpc", vpcIds: ["vpc-0123456789abcdef0", "vpc-1a2b3c4d"] }), []);
  assert.deepEqual(errorsOf({ to: "SourceVpce", vpceIds: ["vpce-1a2b3c4d"] }), []);
  const cases: [unknown, RegExp][] = [
    ["PodIP", /bindSessions: must be an object/],
    [{}, /\.to: must be one of PodIP, NodeIP, SourceVpc, SourceVpce/],
    [{ to: "Anywhere" }, /\.to: must be one of/],
    [{ to: "PodIP" }, /\.via: required for PodIP/],
    [{ to: "PodIP", via: "SourceVpc" }, /\.via: required for PodIP, one of SourceIp, VpcSourceIp/],
    [{ to: "SourceVpc" }, /\.vpcIds: required for SourceVpc/],
    [{ to: "SourceVpc", vpcIds: [] }, /\.vpcIds: required for SourceVpc/],
    [{ to: "SourceVpc", vpcIds: ["vpc-*"] }, /\.vpcIds\[0\]: must be an ID like vpc-/],
    [{ to: "SourceVpc", vpcIds: ["vpc-1a2b3c4d"], via: "SourceIp" }, /\.via: only for PodIP and NodeIP/],
    [
      { to: "SourceVpce", vpceIds: ["vpce-1a2b3c4d"], vpcIds: ["vpc-1a2b3c4d"] },
      /\.vpcIds: not used when binding to SourceVpce/,
    ],
    [{ to: "SourceVpce", vpceIds: Array.from({ length: 17 }, () => "vpce-1a2b3c4d") }, /1 to 16 IDs/],
    [
      { to: "PodIP", via: "SourceIp", exemptAwsServiceCalls: "no" },
      /exemptAwsServiceCalls: must be true or false/,
    ],
    [{ to: "PodIP", via: "SourceIp", cidrs: ["0.0.0.0/0"] }, /unknown field "cidrs"/],
    [{ to: "PodIP", via: "SourceIp", actions: [] }, /\.actions: a list of 1 to 32/],
    [
      { to: "PodIP", via: "SourceIp", actions: ["s3 GetObject"] },
      /\.actions\[0\]: must be an IAM action pattern/,
    ],
  ];
  for (const [binding, error] of cases) {
    const errors = errorsOf(binding);
    assert.ok(
      errors.some((e) => error.test(e)),
      `${JSON.stringify(binding)}: ${errors.join("; ")}`,
    );
  }
  // an invalid allowance applies to nothing: the pod gets no credentials under it (fail closed)
  const d = run([
    {
      ...allowance("broken"),
      spec: { ...allowance("broken").spec, bindSessions: { to: "PodIP" } as SessionBinding },
    },
  ]);
  assert.equal(d.ok, false);
});
