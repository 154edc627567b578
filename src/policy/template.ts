// Template variables in session policies and session tags.
//
// Syntax: `${name}` inside a JSON *string value*. Known names:
//   ${namespace} ${serviceAccount} ${podName} ${podUID} ${nodeName} ${clusterName}
//   ${pod.ip} ${node.ip}   (the primary pod and node address from the live pod's status)
//   ${pod.labels['key']} ${pod.annotations['key']}   (single or double quotes)
// `${...}` whose content contains ':' or is exactly '*', '?' or '$' is an IAM policy variable
// (e.g. ${aws:PrincipalTag/team}) and is passed through untouched for IAM to evaluate.
// Anything else is an unknown variable: an error, never an empty string.
//
// Safety: substitution happens on parsed JSON strings and the document is re-serialised, so a
// value can never break out of its string. On top of that every inserted value must match
// SAFE_VALUE (letters, digits, '.', '_', '-'; starting with a letter or digit; at most 128
// characters): no '*', '?', ':', '/', '$', '{', quotes, whitespace or control characters, so a
// value can neither widen an ARN/wildcard pattern, nor add an ARN segment, nor introduce an IAM
// policy variable. Values that fail are refused, not escaped. A missing label or annotation is an
// error too (an empty value could widen `prefix-${x}*`). ${pod.ip} and ${node.ip} must instead be
// plain IPv4 or IPv6 addresses (an IPv6 address has ':'), and a pod without one is an error.

import { isPlainAddress, PodAddressUnknownError } from "./binding.ts";
import type { PodFacts } from "./types.ts";

export const SAFE_VALUE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TemplateError";
  }
}

export interface TemplateContext {
  pod: PodFacts;
  clusterName: string;
}

export type VariableRef =
  | {
      kind: "simple";
      name:
        | "namespace"
        | "serviceAccount"
        | "podName"
        | "podUID"
        | "nodeName"
        | "clusterName"
        | "pod.ip"
        | "node.ip";
    }
  | { kind: "label" | "annotation"; key: string };

const SIMPLE = new Set([
  "namespace",
  "serviceAccount",
  "podName",
  "podUID",
  "nodeName",
  "clusterName",
  "pod.ip",
  "node.ip",
]);
const ADDRESS_VARIABLES = new Set(["pod.ip", "node.ip"]);
const MAP_REF = /^pod\.(labels|annotations)\[(?:'([^'\\]*)'|"([^"\\]*)")\]$/;

/** Parses the inside of `${...}`; returns null for IAM policy variables (passed through). */
export function parseVariable(inner: string): VariableRef | null {
  const s = inner.trim();
  if (s === "*" || s === "?" || s === "$" || s.includes(":")) return null;
  if (SIMPLE.has(s)) return { kind: "simple", name: s as Extract<VariableRef, { kind: "simple" }>["name"] };
  const m = MAP_REF.exec(s);
  if (m) {
    const key = m[2] ?? m[3] ?? "";
    if (key.length === 0) throw new TemplateError(`empty key in variable \${${inner}}`);
    return { kind: m[1] === "labels" ? "label" : "annotation", key };
  }
  throw new TemplateError(`unknown variable \${${inner}}`);
}

interface Segment {
  text?: string;
  ref?: VariableRef;
  raw?: string;
}

/** Splits a template string; throws on unterminated or unknown variables. */
export function parseTemplateString(s: string): Segment[] {
  const out: Segment[] = [];
  let i = 0;
  while (i < s.length) {
    const start = s.indexOf("${", i);
    if (start < 0) {
      out.push({ text: s.slice(i) });
      break;
    }
    if (start > i) out.push({ text: s.slice(i, start) });
    const end = s.indexOf("}", start + 2);
    if (end < 0) throw new TemplateError(`unterminated variable in "${truncate(s)}"`);
    const inner = s.slice(start + 2, end);
    const ref = parseVariable(inner);
    if (ref === null) out.push({ text: s.slice(start, end + 1) });
    else out.push({ ref, raw: s.slice(start, end + 1) });
    i = end + 1;
  }
  return out;
}

export function describeVariable(ref: VariableRef): string {
  if (ref.kind === "simple") return ref.name;
  return `pod.${ref.kind === "label" ? "labels" : "annotations"}['${ref.key}']`;
}

export function resolveVariable(ref: VariableRef, ctx: TemplateContext): string {
  let v: string | undefined;
  if (ref.kind === "simple") {
    switch (ref.name) {
      case "namespace":
        v = ctx.pod.namespace;
        break;
      case "serviceAccount":
        v = ctx.pod.serviceAccountName;
        break;
      case "podName":
        v = ctx.pod.name;
        break;
      case "podUID":
        v = ctx.pod.uid;
        break;
      case "nodeName":
        v = ctx.pod.nodeName;
        break;
      case "clusterName":
        v = ctx.clusterName;
        break;
      case "pod.ip":
        v = ctx.pod.podIPs?.[0];
        break;
      case "node.ip":
        v = ctx.pod.hostIPs?.[0];
        break;
    }
    if (ADDRESS_VARIABLES.has(ref.name)) return addressValue(ref.name, v);
  } else {
    const map = ref.kind === "label" ? ctx.pod.labels : ctx.pod.annotations;
    v = Object.hasOwn(map, ref.key) ? map[ref.key] : undefined;
    if (v === undefined)
      throw new TemplateError(`pod has no ${ref.kind} "${ref.key}" (used as \${${describeVariable(ref)}})`);
  }
  if (v === undefined || v === "")
    throw new TemplateError(`variable \${${describeVariable(ref)}} is empty for this pod`);
  if (!SAFE_VALUE.test(v)) {
    // The value itself is not echoed: it is attacker-controlled and may be long or contain
    // control characters. Its length and the rule are enough to fix it.
    throw new TemplateError(
      `value of \${${describeVariable(ref)}} (${v.length} chars) is not safe to insert: only letters, digits, '.', '_', '-' are allowed, starting with a letter or digit, at most 128 chars`,
    );
  }
  return v;
}

function addressValue(name: string, v: string | undefined): string {
  if (v === undefined || v === "")
    throw new PodAddressUnknownError(
      `variable \${${name}} has no value yet: the pod has no ${name === "pod.ip" ? "status.podIP" : "status.hostIP"}`,
    );
  if (!isPlainAddress(v)) throw new TemplateError(`value of \${${name}} is not a plain IP address`);
  return v;
}

export function renderString(s: string, ctx: TemplateContext): string {
  if (!s.includes("${")) return s;
  return parseTemplateString(s)
    .map((seg) => (seg.ref ? resolveVariable(seg.ref, ctx) : (seg.text ?? "")))
    .join("");
}

/** Checks every string in a document for template syntax without a pod; returns the refs used. */
export function checkTemplate(doc: unknown, path = "$"): VariableRef[] {
  const refs: VariableRef[] = [];
  walk(doc, path, (s, p, isKey) => {
    if (!s.includes("${")) return;
    let segs: Segment[];
    try {
      segs = parseTemplateString(s);
    } catch (e) {
      throw new TemplateError(`${p}: ${(e as Error).message}`);
    }
    const own = segs.filter((x) => x.ref);
    if (isKey && own.length > 0)
      throw new TemplateError(`${p}: variables are only allowed in values, not in keys`);
    for (const seg of own) refs.push(seg.ref as VariableRef);
  });
  return refs;
}

/** Renders a JSON document: variables in string values are replaced, keys are checked. */
export function renderDocument<T>(doc: T, ctx: TemplateContext, path = "$"): T {
  checkTemplate(doc, path);
  return mapStrings(
    doc,
    (s, p) => {
      try {
        return renderString(s, ctx);
      } catch (e) {
        if (e instanceof PodAddressUnknownError) throw e;
        throw new TemplateError(`${p}: ${(e as Error).message}`);
      }
    },
    path,
  ) as T;
}

function walk(v: unknown, path: string, fn: (s: string, path: string, isKey: boolean) => void): void {
  if (typeof v === "string") fn(v, path, false);
  else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`, fn));
  else if (v !== null && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) {
      fn(k, `${path}.${k}`, true);
      walk(x, `${path}.${k}`, fn);
    }
  }
}

function mapStrings(v: unknown, fn: (s: string, path: string) => string, path: string): unknown {
  if (typeof v === "string") return fn(v, path);
  if (Array.isArray(v)) return v.map((x, i) => mapStrings(x, fn, `${path}[${i}]`));
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      // defineProperty: a "__proto__" key from JSON must stay a plain key, not set the prototype
      Object.defineProperty(out, k, {
        value: mapStrings(x, fn, `${path}.${k}`),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return v;
}

function truncate(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
