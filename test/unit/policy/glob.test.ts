// The RoleAllowance glob matcher (src/policy/glob.ts): '*' and '?' never match '/' or ':', the
// cost is linear in the tenant's value (no backtracking), and hostile role ARNs are refused on
// their length and depth before any matching.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { globMatches, type MatchCounter } from "../../../src/policy/glob.ts";
import { allowanceCoversNamespace, allowanceCoversRole } from "../../../src/policy/match.ts";
import {
  POLICY_ARN,
  ROLE_ARN,
  roleArnBoundsProblem,
  validateAccessPolicy,
} from "../../../src/policy/validate.ts";
import type { RoleAllowance } from "../../../src/policy/types.ts";

const ACCOUNT_ARN = "arn:aws:iam::123456789012";

const allowance = (...roleArns: string[]): RoleAllowance => ({
  metadata: { name: "a" },
  spec: { namespaces: ["tenant-*"], roleArns },
});

/** The reference semantics, spelled as a RegExp: fine for the short strings of a property test. */
function referenceMatches(pattern: string, value: string): boolean {
  let source = "^";
  for (const ch of pattern) {
    if (ch === "*") source += "[^/:]*";
    else if (ch === "?") source += "[^/:]";
    else source += ch.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
  }
  return new RegExp(`${source}$`).test(value);
}

test("a role pattern's * does not cross a path segment: role/team-a-* never reaches team-b's roles", () => {
  const a = allowance(`${ACCOUNT_ARN}:role/team-a-*`);
  assert.equal(allowanceCoversRole(a, `${ACCOUNT_ARN}:role/team-a-reader`), true);
  assert.equal(allowanceCoversRole(a, `${ACCOUNT_ARN}:role/team-a-x/team-b-db`), false);
  assert.equal(allowanceCoversRole(a, `${ACCOUNT_ARN}:role/team-a-/x`), false);
  // paths are allowed by naming them
  const byPath = allowance(`${ACCOUNT_ARN}:role/team-a/*`);
  assert.equal(allowanceCoversRole(byPath, `${ACCOUNT_ARN}:role/team-a/reader`), true);
  assert.equal(allowanceCoversRole(byPath, `${ACCOUNT_ARN}:role/team-a/deeper/reader`), false);
  assert.equal(allowanceCoversRole(byPath, `${ACCOUNT_ARN}:role/team-a-x/reader`), false);
  // '?' is one character, never a separator; ':' still fences the account
  assert.equal(globMatches("role/a?b", "role/a/b"), false);
  assert.equal(globMatches("role/a?b", "role/axb"), true);
  assert.equal(
    allowanceCoversRole(allowance("arn:aws:iam::*:role/x"), "arn:aws:iam::123456789012:role/x"),
    true,
  );
  assert.equal(globMatches("arn:aws:iam::1*:role/x", "arn:aws:iam::1:2:role/x"), false);
  // namespace globs keep their meaning
  assert.equal(allowanceCoversNamespace(allowance("x"), { name: "tenant-a", labels: {} }), true);
  assert.equal(allowanceCoversNamespace(allowance("x"), { name: "tenant", labels: {} }), false);
});

test("property: the matcher agrees with the reference semantics", () => {
  const alphabet = fc.constantFrom("a", "b", "/", ":", "-");
  const patternAlphabet = fc.constantFrom("a", "b", "/", ":", "-", "*", "?", "*");
  const word = (chars: fc.Arbitrary<string>) =>
    fc.array(chars, { maxLength: 14 }).map((parts) => parts.join(""));
  fc.assert(
    fc.property(word(patternAlphabet), word(alphabet), (pattern, value) => {
      assert.equal(globMatches(pattern, value), referenceMatches(pattern, value), `${pattern} ~ ${value}`);
    }),
    { numRuns: 20_000 },
  );
  // values built to match, so that the property is not mostly about mismatches
  fc.assert(
    fc.property(
      word(patternAlphabet),
      fc.array(word(fc.constantFrom("a", "b", "-")), { maxLength: 8 }),
      (pattern, fills) => {
        let i = 0;
        const value = pattern.replace(/[*?]/g, (w) =>
          w === "?" ? "a" : (fills[i++ % Math.max(fills.length, 1)] ?? ""),
        );
        assert.equal(globMatches(pattern, value), referenceMatches(pattern, value), `${pattern} ~ ${value}`);
      },
    ),
    { numRuns: 5_000 },
  );
});

// Four stars against a roleArn of many one-character path segments: with the old RegExp matcher
// (each '*' a backtracking [^:]*) this pair took about 4 s on this machine, at 1000 segments 68 s.
const HOSTILE_PATTERN = `${ACCOUNT_ARN}:role/*/*/*/*x`;
const hostileArn = (segments: number) => `${ACCOUNT_ARN}:role/${Array(segments).fill("a").join("/")}`;

test("ReDoS: a hostile pattern/roleArn pair is decided in milliseconds, at a cost linear in the value", () => {
  const arn = hostileArn(500);
  const started = performance.now();
  assert.equal(globMatches(HOSTILE_PATTERN, arn), false);
  assert.equal(allowanceCoversRole(allowance(HOSTILE_PATTERN), arn), false);
  const elapsed = performance.now() - started;
  assert.ok(elapsed < 50, `took ${elapsed.toFixed(1)} ms`);

  // the cost in character comparisons grows linearly with the value, not with a power of it
  const cost = (pattern: string, value: string) => {
    const counter: MatchCounter = { steps: 0 };
    globMatches(pattern, value, counter);
    return counter.steps;
  };
  // middle chunks that almost match everywhere: the most comparisons per position
  const nearMisses = [`${ACCOUNT_ARN}:role/*a*a*ab*`, `${ACCOUNT_ARN}:role/*aaaaaaaaab*`];
  for (const pattern of [HOSTILE_PATTERN, ...nearMisses]) {
    for (const make of [
      (n: number) => hostileArn(n),
      (n: number) => `${ACCOUNT_ARN}:role/${"a".repeat(n)}`,
    ]) {
      const small = cost(pattern, make(1000));
      const large = cost(pattern, make(4000));
      // 4x the input: about 4x the cost (a quadratic matcher would be 16x, the old one far worse)
      assert.ok(large < 4.5 * small, `${pattern}: ${small} → ${large} steps for 4x the input`);
    }
  }
});

test("role ARNs are bounded before matching: length, path and depth", () => {
  const name = (n: number) => "r".repeat(n);
  assert.equal(roleArnBoundsProblem(`${ACCOUNT_ARN}:role/${name(64)}`), null);
  assert.match(roleArnBoundsProblem(`${ACCOUNT_ARN}:role/${name(65)}`) ?? "", /role name longer than 64/);
  assert.match(
    roleArnBoundsProblem(`${ACCOUNT_ARN}:role/${"p".repeat(511)}/x`) ?? "",
    /path longer than 512/,
  );
  assert.equal(roleArnBoundsProblem(`${ACCOUNT_ARN}:role/${"a/".repeat(32)}x`), null);
  assert.match(roleArnBoundsProblem(`${ACCOUNT_ARN}:role/${"a/".repeat(33)}x`) ?? "", /deeper than 32/);
  assert.match(roleArnBoundsProblem(`${ACCOUNT_ARN}:role/${"a/".repeat(1100)}x`) ?? "", /longer than 2048/);
  // the hostile ARN of the ReDoS test is refused as a policy's roleArn and covered by nothing
  const v = validateAccessPolicy({
    kind: "AccessPolicy",
    metadata: { name: "p" },
    spec: { podSelector: {}, roleArn: hostileArn(500) },
  });
  assert.ok(
    v.errors.some((e) => /spec\.roleArn: path longer than 512/.test(e)),
    v.errors.join("; "),
  );
  assert.equal(allowanceCoversRole(allowance(`${ACCOUNT_ARN}:role/*`), hostileArn(40)), false);
});

test("the ARN regexes stay linear on long hostile input", () => {
  const long = 50_000;
  for (const body of [
    "a/".repeat(long / 2) + "!",
    "a".repeat(long) + "!",
    "ab/".repeat(long / 3),
    `${"a".repeat(100)}/`.repeat(long / 101) + "!",
  ]) {
    const started = performance.now();
    ROLE_ARN.test(`${ACCOUNT_ARN}:role/${body}`);
    POLICY_ARN.test(`${ACCOUNT_ARN}:policy/${body}`);
    const elapsed = performance.now() - started;
    assert.ok(elapsed < 50, `${body.slice(0, 12)}…: ${elapsed.toFixed(1)} ms`);
  }
});
