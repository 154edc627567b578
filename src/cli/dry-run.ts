// `policy validate --server`: each object is sent to the apiserver as a dry run (dryRun=All, strict
// field validation): created, or updated when it exists, with nothing stored. The apiserver then
// applies what only it can: the installed CRDs' schema and CEL rules (x-kubernetes-validations,
// including transition rules on update), admission (ValidatingAdmissionPolicies, webhooks) and
// the caller's RBAC.
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { loadDocuments } from "../policy/offline.ts";
import { ACCESS_POLICY_PLURAL, API_VERSION, GROUP, ROLE_ALLOWANCE_PLURAL, VERSION } from "../policy/types.ts";
import { apiStatusMessage } from "./errors.ts";

export interface DryRunResult {
  file: string;
  index: number;
  kind: string;
  name: string;
  namespace?: string;
  /** "create" or "update": what the dry run was. */
  operation?: "create" | "update";
  /** The apiserver's objections, one per cause. */
  errors: string[];
}

interface StatusCause {
  field?: string;
  message?: string;
}

/** The apiserver's causes (one per field), else its message. */
function objections(err: unknown): string[] {
  const body = (err as { body?: unknown }).body;
  let status: { details?: { causes?: StatusCause[] } } | undefined;
  try {
    status = (typeof body === "string" ? JSON.parse(body) : body) as typeof status;
  } catch {
    status = undefined;
  }
  const causes = status?.details?.causes ?? [];
  if (causes.length > 0)
    return causes.map((c) => `${c.field ? `${c.field}: ` : ""}${c.message ?? "invalid"}`.slice(0, 500));
  const message = apiStatusMessage(err);
  if (message !== undefined) return [message];
  throw err;
}

const isConflict = (err: unknown): boolean =>
  (err as { code?: unknown }).code === 409 && apiStatusMessage(err) !== undefined;

export async function serverDryRun(
  kc: KubeConfig,
  files: string[],
  defaultNamespace: string,
): Promise<DryRunResult[]> {
  const custom = kc.makeApiClient(CustomObjectsApi);
  const out: DryRunResult[] = [];
  for (const file of files) {
    let docs: ReturnType<typeof loadDocuments>;
    try {
      docs = loadDocuments(file);
    } catch {
      continue; // unreadable: the offline checks report it
    }
    for (const { index, doc } of docs) {
      if (typeof doc !== "object" || doc === null) continue;
      const obj = structuredClone(doc) as {
        apiVersion?: unknown;
        kind?: unknown;
        metadata?: { name?: string; namespace?: string; resourceVersion?: string };
      };
      const kind = String(obj.kind ?? "");
      if (obj.apiVersion !== API_VERSION || (kind !== "AccessPolicy" && kind !== "RoleAllowance")) continue;
      const name = obj.metadata?.name ?? "";
      const namespaced = kind === "AccessPolicy";
      const namespace = namespaced ? (obj.metadata?.namespace ?? defaultNamespace) : undefined;
      const result: DryRunResult = {
        file,
        index,
        kind,
        name,
        errors: [],
        ...(namespace ? { namespace } : {}),
      };
      out.push(result);
      if (!name) {
        result.errors.push("metadata.name: required");
        continue;
      }
      obj.metadata = { ...obj.metadata, ...(namespace ? { namespace } : {}) };
      delete obj.metadata.resourceVersion;
      const plural = namespaced ? ACCESS_POLICY_PLURAL : ROLE_ALLOWANCE_PLURAL;
      const where = { group: GROUP, version: VERSION, plural, ...(namespace ? { namespace } : {}) };
      const options = { dryRun: "All", fieldValidation: "Strict" };
      try {
        result.operation = "create";
        try {
          if (namespace)
            await custom.createNamespacedCustomObject({ ...where, namespace, body: obj, ...options });
          else await custom.createClusterCustomObject({ ...where, body: obj, ...options });
        } catch (err) {
          if (!isConflict(err)) throw err;
          // it exists: an update, which also runs the CRDs' transition rules (oldSelf)
          result.operation = "update";
          const current = (
            namespace
              ? await custom.getNamespacedCustomObject({ ...where, namespace, name })
              : await custom.getClusterCustomObject({ ...where, name })
          ) as { metadata?: { resourceVersion?: string } };
          obj.metadata.resourceVersion = current.metadata?.resourceVersion ?? "";
          if (namespace)
            await custom.replaceNamespacedCustomObject({ ...where, namespace, name, body: obj, ...options });
          else await custom.replaceClusterCustomObject({ ...where, name, body: obj, ...options });
        }
      } catch (err) {
        result.errors.push(...objections(err));
      }
    }
  }
  return out;
}
