// `keycutter policy validate`: the server's checks, offline, over YAML/JSON files.

import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { accessPolicyReadiness, roleAllowanceReadiness } from "./readiness.ts";
import { API_VERSION, type AccessPolicy, type RoleAllowance } from "./types.ts";
import { validateAccessPolicy, validateRoleAllowance } from "./validate.ts";

export interface FileFinding {
  file: string;
  index: number;
  kind: string;
  name: string;
  namespace?: string;
  errors: string[];
  warnings: string[];
  /** The Ready condition the server would write (when the object is valid). */
  ready?: { status: string; reason: string; message: string };
}

export interface ValidateOptions {
  clusterName?: string;
  maxDurationSeconds?: number;
}

export function loadDocuments(file: string): { index: number; doc: unknown; error?: string }[] {
  const text = readFileSync(file, "utf8");
  if (file.endsWith(".json")) {
    try {
      const v = JSON.parse(text) as unknown;
      const items = Array.isArray(v)
        ? v
        : typeof v === "object" && v !== null && Array.isArray((v as { items?: unknown }).items)
          ? (v as { items: unknown[] }).items
          : [v];
      return items.map((doc, index) => ({ index, doc }));
    } catch (e) {
      return [{ index: 0, doc: undefined, error: `invalid JSON: ${(e as Error).message}` }];
    }
  }
  const out: { index: number; doc: unknown; error?: string }[] = [];
  parseAllDocuments(text).forEach((d, index) => {
    if (d.errors.length > 0)
      out.push({ index, doc: undefined, error: `invalid YAML: ${d.errors[0]?.message ?? "parse error"}` });
    else {
      const v = d.toJS() as unknown;
      if (v === null || v === undefined) return;
      const list =
        typeof v === "object" &&
        (v as { kind?: string }).kind?.endsWith("List") &&
        Array.isArray((v as { items?: unknown }).items)
          ? (v as { items: unknown[] }).items
          : [v];
      for (const doc of list) out.push({ index, doc });
    }
  });
  return out;
}

export function validateFiles(files: string[], opts: ValidateOptions = {}): FileFinding[] {
  const findings: FileFinding[] = [];
  const docs: { file: string; index: number; doc: Record<string, unknown> }[] = [];
  for (const file of files) {
    let loaded: ReturnType<typeof loadDocuments>;
    try {
      loaded = loadDocuments(file);
    } catch (e) {
      findings.push({
        file,
        index: 0,
        kind: "",
        name: "",
        errors: [`cannot read: ${(e as Error).message}`],
        warnings: [],
      });
      continue;
    }
    for (const l of loaded) {
      if (l.error || typeof l.doc !== "object" || l.doc === null) {
        findings.push({
          file,
          index: l.index,
          kind: "",
          name: "",
          errors: [l.error ?? "not an object"],
          warnings: [],
        });
      } else docs.push({ file, index: l.index, doc: l.doc as Record<string, unknown> });
    }
  }
  const allowances = docs
    .filter((d) => d.doc.kind === "RoleAllowance")
    .map((d) => d.doc as unknown as RoleAllowance);
  for (const { file, index, doc } of docs) {
    const meta = (doc.metadata ?? {}) as { name?: string; namespace?: string };
    const f: FileFinding = {
      file,
      index,
      kind: String(doc.kind ?? ""),
      name: meta.name ?? "",
      errors: [],
      warnings: [],
    };
    if (meta.namespace) f.namespace = meta.namespace;
    if (doc.apiVersion !== API_VERSION) f.errors.push(`apiVersion: expected ${API_VERSION}`);
    if (doc.kind === "AccessPolicy") {
      const v = validateAccessPolicy(doc);
      f.errors.push(...v.errors);
      f.warnings.push(...v.warnings);
      if (!meta.namespace)
        f.warnings.push(
          "metadata.namespace is not set: the policy applies to the namespace it is created in",
        );
      if (f.errors.length === 0) {
        const p = doc as unknown as AccessPolicy;
        if (allowances.length === 0) {
          f.warnings.push(
            "no RoleAllowance among the files: the role and the session tag keys cannot be checked offline",
          );
          const r = accessPolicyReadiness(
            p,
            [standInAllowance(p)],
            {},
            opts.clusterName ?? "",
            opts.maxDurationSeconds ?? 3600,
          );
          f.ready = r;
          if (r.status === "False") f.errors.push(`${r.reason}: ${r.message}`);
          else if (r.message !== "in force") f.warnings.push(r.message);
        } else {
          if (allowances.some((a) => a.spec?.namespaceSelector))
            f.warnings.push(
              "namespaceSelector in RoleAllowances is not evaluated offline (namespace labels unknown)",
            );
          const r = accessPolicyReadiness(
            p,
            allowances,
            {},
            opts.clusterName ?? "",
            opts.maxDurationSeconds ?? 3600,
          );
          f.ready = r;
          if (r.status === "False") f.errors.push(`${r.reason}: ${r.message}`);
          else if (r.message !== "in force") f.warnings.push(r.message);
        }
      }
    } else if (doc.kind === "RoleAllowance") {
      const v = validateRoleAllowance(doc);
      f.errors.push(...v.errors);
      f.warnings.push(...v.warnings);
      if (f.errors.length === 0) {
        f.ready = roleAllowanceReadiness(doc as unknown as RoleAllowance);
        if (f.ready.message !== "in force") f.warnings.push(f.ready.message);
      }
    } else {
      f.errors.push(`kind: expected AccessPolicy or RoleAllowance, got ${JSON.stringify(doc.kind ?? null)}`);
    }
    findings.push(f);
  }
  return findings;
}

/**
 * With no RoleAllowance given, one that grants exactly what the policy asks (its role, its tag
 * keys), so that the remaining checks (rendering, size) still run. Role ARNs and tag keys cannot
 * contain '*' or '?' (validation), so they are their own exact patterns.
 */
function standInAllowance(p: AccessPolicy): RoleAllowance {
  return {
    metadata: { name: "offline" },
    spec: {
      namespaces: ["*"],
      roleArns: [p.spec.roleArn],
      sessionTagKeys: Object.keys(p.spec.sessionTags ?? {}),
    },
  };
}
