// Structural validation of AccessPolicy and RoleAllowance objects: the same checks the server
// applies before using an object and `keycutter policy validate` applies offline.

import { ACTION_PATTERN, MAX_BINDING_ACTIONS, MAX_BINDING_IDS, VPC_ID, VPCE_ID } from "./binding.ts";
import { checkTemplate, TemplateError } from "./template.ts";
import {
  SESSION_BINDING_ADDRESS_KEYS,
  SESSION_BINDING_TARGETS,
  IAM_MAX_ARN_CHARS,
  IAM_MAX_ROLE_NAME_CHARS,
  IAM_MAX_ROLE_PATH_CHARS,
  IAM_POLICY_VERSION,
  MAX_ROLE_PATH_DEPTH,
  STS_MAX_DURATION,
  STS_MAX_POLICY_ARNS,
  STS_MIN_DURATION,
  type AccessPolicy,
  type LabelSelector,
  type RoleAllowance,
} from "./types.ts";

export interface ValidationResult {
  errors: string[];
  warnings: string[];
}

// The ARN regexes are linear on any input (no nested quantifier can match the same text two ways:
// a path segment ends only at a '/', which the segment's own class excludes), and they only ever see
// strings already bounded to IAM's 2048 characters.
export const ROLE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/(?:[\w+=,.@-]+\/)*[\w+=,.@-]{1,64}$/;
export const POLICY_ARN = /^arn:aws[a-z-]*:iam::(?:\d{12}|aws):policy\/(?:[\w+=,.@-]+\/)*[\w+=,.@-]{1,128}$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
export const TAG_KEY = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]{1,128}$/u;
export const TAG_VALUE = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$/u;
/** Session tags keycutter always sets; a policy cannot override them (keys are case-insensitive). */
export const SYSTEM_TAG_KEYS = [
  "kubernetes-namespace",
  "kubernetes-service-account",
  "kubernetes-pod-name",
  "kubernetes-pod-uid",
  "kubernetes-node-name",
  "kubernetes-cluster-name",
] as const;
export const MAX_POLICY_TAGS = 50 - SYSTEM_TAG_KEYS.length;
/** The one variable a RoleAllowance's sessionTagKeys pattern may use: the pod's namespace. */
export const NAMESPACE_VARIABLE = "${namespace}";
/** A sessionTagKeys pattern once `${namespace}` is replaced: tag key characters plus * and ?. */
const TAG_KEY_PATTERN = /^[\p{L}\p{Z}\p{N}_.:/=+\-@*?]{1,128}$/u;
const MAX_TAG_KEY_PATTERNS = 64;

/**
 * Why a role ARN is outside IAM's limits (ARN ≤ 2048, path ≤ 512, name ≤ 64 characters) or deeper
 * than keycutter's path limit, or null. Checked before any pattern or regex sees the ARN, so that
 * a hostile roleArn costs a bounded amount of work.
 */
export function roleArnBoundsProblem(arn: string): string | null {
  if (arn.length > IAM_MAX_ARN_CHARS) return `longer than ${IAM_MAX_ARN_CHARS} characters`;
  const roleAt = arn.indexOf(":role/");
  if (roleAt === -1) return "not a role ARN";
  const resource = arn.slice(roleAt + ":role".length);
  const nameAt = resource.lastIndexOf("/") + 1;
  const path = resource.slice(0, nameAt);
  if (resource.length - nameAt > IAM_MAX_ROLE_NAME_CHARS)
    return `role name longer than ${IAM_MAX_ROLE_NAME_CHARS} characters`;
  if (path.length > IAM_MAX_ROLE_PATH_CHARS) return `path longer than ${IAM_MAX_ROLE_PATH_CHARS} characters`;
  const depth = path.split("/").length - 2;
  if (depth > MAX_ROLE_PATH_DEPTH) return `path deeper than ${MAX_ROLE_PATH_DEPTH} levels`;
  return null;
}

const ACCESS_POLICY_SPEC_FIELDS = new Set([
  "podSelector",
  "roleArn",
  "sessionPolicy",
  "managedPolicyArns",
  "sessionTags",
  "durationSeconds",
  "priority",
]);
const ROLE_ALLOWANCE_SPEC_FIELDS = new Set([
  "namespaces",
  "namespaceSelector",
  "roleArns",
  "maxDurationSeconds",
  "denyStatements",
  "sessionTagKeys",
  "bindSessions",
]);
const BINDING_FIELDS = new Set(["to", "via", "vpcIds", "vpceIds", "actions", "exemptAwsServiceCalls"]);
const POD_SELECTOR_FIELDS = new Set(["serviceAccountName", "matchLabels", "matchExpressions"]);
const LABEL_SELECTOR_FIELDS = new Set(["matchLabels", "matchExpressions"]);
const OPERATORS = new Set(["In", "NotIn", "Exists", "DoesNotExist"]);
const STATEMENT_FIELDS = new Set([
  "Sid",
  "Effect",
  "Action",
  "NotAction",
  "Resource",
  "NotResource",
  "Condition",
  "Principal",
  "NotPrincipal",
]);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function unknownFields(
  obj: Record<string, unknown>,
  allowed: Set<string>,
  path: string,
  errors: string[],
): void {
  for (const k of Object.keys(obj)) if (!allowed.has(k)) errors.push(`${path}: unknown field "${k}"`);
}

function checkLabelSelector(v: unknown, path: string, errors: string[], fields: Set<string>): void {
  if (!isObject(v)) {
    errors.push(`${path}: must be an object`);
    return;
  }
  unknownFields(v, fields, path, errors);
  if (v.matchLabels !== undefined) {
    if (!isObject(v.matchLabels)) errors.push(`${path}.matchLabels: must be a map of strings`);
    else
      for (const [k, x] of Object.entries(v.matchLabels))
        if (typeof x !== "string") errors.push(`${path}.matchLabels.${k}: must be a string`);
  }
  if (v.matchExpressions !== undefined) {
    if (!Array.isArray(v.matchExpressions)) errors.push(`${path}.matchExpressions: must be a list`);
    else
      v.matchExpressions.forEach((e: unknown, i: number) => {
        const p = `${path}.matchExpressions[${i}]`;
        if (!isObject(e)) return void errors.push(`${p}: must be an object`);
        if (typeof e.key !== "string" || e.key === "") errors.push(`${p}.key: required`);
        if (typeof e.operator !== "string" || !OPERATORS.has(e.operator))
          errors.push(`${p}.operator: must be one of In, NotIn, Exists, DoesNotExist`);
        const vals = e.values;
        if (e.operator === "In" || e.operator === "NotIn") {
          if (!Array.isArray(vals) || vals.length === 0 || !vals.every((x) => typeof x === "string"))
            errors.push(`${p}.values: a non-empty list of strings is required for ${String(e.operator)}`);
        } else if (vals !== undefined && (!Array.isArray(vals) || vals.length > 0)) {
          errors.push(`${p}.values: must be empty for ${String(e.operator)}`);
        }
      });
  }
}

function checkStatements(stmts: unknown, path: string, errors: string[], denyOnly: boolean): void {
  const list = Array.isArray(stmts) ? stmts : [stmts];
  if (list.length === 0) errors.push(`${path}: at least one statement is required`);
  list.forEach((s, i) => {
    const p = Array.isArray(stmts) ? `${path}[${i}]` : path;
    if (!isObject(s)) return void errors.push(`${p}: a statement must be an object`);
    unknownFields(s, STATEMENT_FIELDS, p, errors);
    if (s.Effect !== "Allow" && s.Effect !== "Deny") errors.push(`${p}.Effect: must be "Allow" or "Deny"`);
    if (denyOnly && s.Effect !== "Deny")
      errors.push(`${p}.Effect: only "Deny" statements may be mandatory (an Allow would widen access)`);
    if (s.Principal !== undefined || s.NotPrincipal !== undefined)
      errors.push(`${p}: Principal is not allowed in a session policy`);
    if ((s.Action === undefined) === (s.NotAction === undefined))
      errors.push(`${p}: exactly one of Action or NotAction is required`);
    if ((s.Resource === undefined) === (s.NotResource === undefined))
      errors.push(`${p}: exactly one of Resource or NotResource is required`);
    for (const f of ["Action", "NotAction", "Resource", "NotResource"]) {
      const x = s[f];
      if (x === undefined) continue;
      const ok =
        typeof x === "string" || (Array.isArray(x) && x.length > 0 && x.every((y) => typeof y === "string"));
      if (!ok) errors.push(`${p}.${f}: must be a string or a non-empty list of strings`);
    }
    if (s.Condition !== undefined && !isObject(s.Condition)) errors.push(`${p}.Condition: must be an object`);
  });
}

function checkTemplates(v: unknown, path: string, errors: string[]): void {
  try {
    checkTemplate(v, path);
  } catch (e) {
    if (e instanceof TemplateError) errors.push(e.message);
    else throw e;
  }
}

function checkDuration(v: unknown, path: string, errors: string[]): void {
  if (v === undefined) return;
  if (typeof v !== "number" || !Number.isInteger(v) || v < STS_MIN_DURATION || v > STS_MAX_DURATION) {
    errors.push(`${path}: must be an integer from ${STS_MIN_DURATION} to ${STS_MAX_DURATION}`);
  }
}

function checkMeta(obj: Record<string, unknown>, kind: string, namespaced: boolean, errors: string[]): void {
  if (obj.kind !== undefined && obj.kind !== kind) errors.push(`kind: expected ${kind}`);
  const meta = obj.metadata;
  if (!isObject(meta) || typeof meta.name !== "string" || meta.name === "")
    errors.push("metadata.name: required");
  else if (!DNS_LABEL.test(meta.name)) errors.push("metadata.name: not a valid name");
  if (!namespaced && isObject(meta) && meta.namespace !== undefined)
    errors.push(`metadata.namespace: ${kind} is cluster-scoped`);
}

export function validateAccessPolicy(obj: unknown): ValidationResult {
  const errors: string[] = [];
  const warnings: string[] = [];
  if (!isObject(obj)) return { errors: ["not an object"], warnings };
  checkMeta(obj, "AccessPolicy", true, errors);
  const spec = obj.spec;
  if (!isObject(spec)) return { errors: [...errors, "spec: required"], warnings };
  unknownFields(spec, ACCESS_POLICY_SPEC_FIELDS, "spec", errors);

  if (spec.podSelector === undefined)
    errors.push("spec.podSelector: required (use {} to select every pod in the namespace)");
  else {
    checkLabelSelector(spec.podSelector, "spec.podSelector", errors, POD_SELECTOR_FIELDS);
    const sa = isObject(spec.podSelector) ? spec.podSelector.serviceAccountName : undefined;
    if (sa !== undefined && (typeof sa !== "string" || !DNS_LABEL.test(sa)))
      errors.push("spec.podSelector.serviceAccountName: not a valid name");
    if (isObject(spec.podSelector) && Object.keys(spec.podSelector).length === 0)
      warnings.push("spec.podSelector is empty: every pod in the namespace is selected");
  }
  if (typeof spec.roleArn !== "string") errors.push("spec.roleArn: required");
  else {
    const bounds = roleArnBoundsProblem(spec.roleArn);
    if (bounds !== null) errors.push(`spec.roleArn: ${bounds}`);
    else if (!ROLE_ARN.test(spec.roleArn))
      errors.push("spec.roleArn: must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)");
  }

  if (spec.sessionPolicy !== undefined) {
    const sp = spec.sessionPolicy;
    if (!isObject(sp)) errors.push("spec.sessionPolicy: must be an IAM policy document (object)");
    else {
      unknownFields(sp, new Set(["Version", "Statement", "Id"]), "spec.sessionPolicy", errors);
      // 2008-10-17 would govern the merged document, the allowances' Deny statements included,
      // and IAM reads ${aws:...} there as literal text: such a Deny would silently match nothing.
      if (sp.Version !== undefined && sp.Version !== IAM_POLICY_VERSION)
        errors.push(`spec.sessionPolicy.Version: must be "${IAM_POLICY_VERSION}" (or left out)`);
      if (sp.Statement === undefined) errors.push("spec.sessionPolicy.Statement: required");
      else checkStatements(sp.Statement, "spec.sessionPolicy.Statement", errors, false);
      checkTemplates(sp, "spec.sessionPolicy", errors);
    }
  }
  if (spec.managedPolicyArns !== undefined) {
    const m = spec.managedPolicyArns;
    if (!Array.isArray(m)) errors.push("spec.managedPolicyArns: must be a list");
    else {
      if (m.length > STS_MAX_POLICY_ARNS)
        errors.push(`spec.managedPolicyArns: at most ${STS_MAX_POLICY_ARNS}`);
      m.forEach((a: unknown, i) => {
        if (typeof a !== "string" || a.length > IAM_MAX_ARN_CHARS || !POLICY_ARN.test(a))
          errors.push(`spec.managedPolicyArns[${i}]: must be an IAM policy ARN`);
      });
    }
  }
  if (spec.sessionTags !== undefined) {
    const t = spec.sessionTags;
    if (!isObject(t)) errors.push("spec.sessionTags: must be a map of strings");
    else {
      const keys = Object.keys(t);
      if (keys.length > MAX_POLICY_TAGS) errors.push(`spec.sessionTags: at most ${MAX_POLICY_TAGS} tags`);
      const seen = new Set<string>();
      for (const k of keys) {
        const lk = k.toLowerCase();
        if (!TAG_KEY.test(k)) errors.push(`spec.sessionTags: key "${k}" is not a valid tag key`);
        if (lk.startsWith("aws:")) errors.push(`spec.sessionTags: key "${k}" uses the reserved aws: prefix`);
        if ((SYSTEM_TAG_KEYS as readonly string[]).includes(lk))
          errors.push(`spec.sessionTags: key "${k}" is set by keycutter and cannot be overridden`);
        if (seen.has(lk))
          errors.push(`spec.sessionTags: key "${k}" is duplicated (tag keys are case-insensitive)`);
        seen.add(lk);
        const v = t[k];
        if (typeof v !== "string") errors.push(`spec.sessionTags.${k}: must be a string`);
        else if (!v.includes("${") && !TAG_VALUE.test(v))
          errors.push(`spec.sessionTags.${k}: not a valid tag value`);
      }
      checkTemplates(t, "spec.sessionTags", errors);
    }
  }
  checkDuration(spec.durationSeconds, "spec.durationSeconds", errors);
  if (
    spec.priority !== undefined &&
    (typeof spec.priority !== "number" || !Number.isInteger(spec.priority) || Math.abs(spec.priority) > 1000)
  ) {
    errors.push("spec.priority: must be an integer from -1000 to 1000");
  }
  return { errors, warnings };
}

export function validateRoleAllowance(obj: unknown): ValidationResult {
  const errors: string[] = [];
  const warnings: string[] = [];
  if (!isObject(obj)) return { errors: ["not an object"], warnings };
  checkMeta(obj, "RoleAllowance", false, errors);
  const spec = obj.spec;
  if (!isObject(spec)) return { errors: [...errors, "spec: required"], warnings };
  unknownFields(spec, ROLE_ALLOWANCE_SPEC_FIELDS, "spec", errors);
  if (spec.namespaces === undefined && spec.namespaceSelector === undefined)
    errors.push("spec: one of namespaces or namespaceSelector is required");
  if (spec.namespaces !== undefined) {
    if (
      !Array.isArray(spec.namespaces) ||
      !spec.namespaces.every((n) => typeof n === "string" && /^[a-z0-9*?][-a-z0-9.*?]*$/.test(n))
    ) {
      errors.push("spec.namespaces: must be a list of namespace names or globs");
    }
  }
  if (spec.namespaceSelector !== undefined)
    checkLabelSelector(spec.namespaceSelector, "spec.namespaceSelector", errors, LABEL_SELECTOR_FIELDS);
  if (isObject(spec.namespaceSelector) && Object.keys(spec.namespaceSelector as LabelSelector).length === 0)
    warnings.push("spec.namespaceSelector is empty: every namespace is covered");
  if (!Array.isArray(spec.roleArns) || spec.roleArns.length === 0)
    errors.push("spec.roleArns: a non-empty list of role ARN patterns is required");
  else
    spec.roleArns.forEach((p: unknown, i) => {
      if (
        typeof p !== "string" ||
        p.length > IAM_MAX_ARN_CHARS ||
        !/^arn:aws[a-z-]*:iam::[0-9*?]{1,12}:role\/\S+$/.test(p)
      )
        errors.push(
          `spec.roleArns[${i}]: must be a role ARN pattern (arn:aws:iam::<account>:role/<name or glob>)`,
        );
    });
  checkDuration(spec.maxDurationSeconds, "spec.maxDurationSeconds", errors);
  if (spec.sessionTagKeys !== undefined) checkTagKeyPatterns(spec.sessionTagKeys, errors, warnings);
  if (spec.denyStatements !== undefined) {
    if (!Array.isArray(spec.denyStatements)) errors.push("spec.denyStatements: must be a list of statements");
    else if (spec.denyStatements.length > 0) {
      checkStatements(spec.denyStatements, "spec.denyStatements", errors, true);
      checkTemplates(spec.denyStatements, "spec.denyStatements", errors);
    }
  }
  if (spec.bindSessions !== undefined) checkBinding(spec.bindSessions, errors);
  return { errors, warnings };
}

/** Each target takes exactly its own parameter: a stray one is a mistake the admin should see. */
function checkBinding(binding: unknown, errors: string[]): void {
  const path = "spec.bindSessions";
  if (!isObject(binding)) return void errors.push(`${path}: must be an object`);
  unknownFields(binding, BINDING_FIELDS, path, errors);
  const to = binding.to;
  if (typeof to !== "string" || !(SESSION_BINDING_TARGETS as readonly string[]).includes(to))
    return void errors.push(`${path}.to: must be one of ${SESSION_BINDING_TARGETS.join(", ")}`);
  const byAddress = to === "PodIP" || to === "NodeIP";
  if (byAddress) {
    if (
      typeof binding.via !== "string" ||
      !(SESSION_BINDING_ADDRESS_KEYS as readonly string[]).includes(binding.via)
    )
      errors.push(
        `${path}.via: required for ${to}, one of ${SESSION_BINDING_ADDRESS_KEYS.join(", ")} (SourceIp where the store sees the address, VpcSourceIp through VPC endpoints)`,
      );
  } else if (binding.via !== undefined) errors.push(`${path}.via: only for PodIP and NodeIP`);
  checkIds(binding.vpcIds, to === "SourceVpc", `${path}.vpcIds`, VPC_ID, "vpc-", to, errors);
  checkIds(binding.vpceIds, to === "SourceVpce", `${path}.vpceIds`, VPCE_ID, "vpce-", to, errors);
  if (binding.actions !== undefined) {
    const actions = binding.actions;
    if (!Array.isArray(actions) || actions.length === 0 || actions.length > MAX_BINDING_ACTIONS)
      errors.push(
        `${path}.actions: a list of 1 to ${MAX_BINDING_ACTIONS} action patterns (leave it out to bind every action)`,
      );
    else
      actions.forEach((action: unknown, i) => {
        if (typeof action !== "string" || !ACTION_PATTERN.test(action))
          errors.push(`${path}.actions[${i}]: must be an IAM action pattern such as s3:* or s3:GetObject`);
      });
  }
  if (binding.exemptAwsServiceCalls !== undefined && typeof binding.exemptAwsServiceCalls !== "boolean")
    errors.push(`${path}.exemptAwsServiceCalls: must be true or false`);
}

function checkIds(
  ids: unknown,
  wanted: boolean,
  path: string,
  pattern: RegExp,
  prefix: string,
  to: string,
  errors: string[],
): void {
  if (!wanted) {
    if (ids !== undefined) errors.push(`${path}: not used when binding to ${to}`);
    return;
  }
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > MAX_BINDING_IDS)
    return void errors.push(`${path}: required for ${to}, 1 to ${MAX_BINDING_IDS} IDs`);
  ids.forEach((id: unknown, i) => {
    if (typeof id !== "string" || !pattern.test(id))
      errors.push(`${path}[${i}]: must be an ID like ${prefix}0123456789abcdef0`);
  });
}

function checkTagKeyPatterns(patterns: unknown, errors: string[], warnings: string[]): void {
  const path = "spec.sessionTagKeys";
  if (!Array.isArray(patterns)) return void errors.push(`${path}: must be a list of tag keys or globs`);
  if (patterns.length > MAX_TAG_KEY_PATTERNS) errors.push(`${path}: at most ${MAX_TAG_KEY_PATTERNS} entries`);
  patterns.forEach((pattern: unknown, i) => {
    if (typeof pattern !== "string") return void errors.push(`${path}[${i}]: must be a string`);
    const literal = pattern.replaceAll(NAMESPACE_VARIABLE, "x");
    if (literal.includes("${"))
      errors.push(`${path}[${i}]: only the variable ${NAMESPACE_VARIABLE} is allowed in a tag key pattern`);
    else if (!TAG_KEY_PATTERN.test(literal))
      errors.push(
        `${path}[${i}]: must be a tag key or glob (1-128 of letters, digits, spaces, _.:/=+-@, and * ?)`,
      );
    else if (/^\*+$/.test(literal))
      warnings.push(
        `${path}[${i}]: "${pattern}" lets tenants set any tag key without '/' or ':', including keys that IAM conditions rely on`,
      );
  });
}

export function asAccessPolicy(obj: unknown): AccessPolicy {
  return obj as AccessPolicy;
}
export function asRoleAllowance(obj: unknown): RoleAllowance {
  return obj as RoleAllowance;
}
