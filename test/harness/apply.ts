// `kubectl apply` for tests: objects are sent as the raw JSON they are, through the same small
// client the product uses (src/k8s/api-client.ts). Not through the typed client: its serializer
// drops keys it has no model field for — x-kubernetes-* on a CRD's nested schemas, i.e. its CEL
// rules — so a CRD applied that way would not enforce what the real one does.
import { readFileSync } from "node:fs";
import type { KubeConfig, KubernetesObject } from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { ApiClient, ApiError, kubeConfigConnection } from "../../src/k8s/api-client.ts";

export function parseYamlObjects(text: string): KubernetesObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJSON() as KubernetesObject | null)
    .filter((o): o is KubernetesObject => !!o && typeof o === "object" && !!o.kind);
}

interface ApiResource {
  name: string;
  kind: string;
  namespaced: boolean;
}

/** The collection path of `obj`'s kind, from the apiserver's discovery (no cache: CRDs come and go). */
async function collectionPath(api: ApiClient, obj: KubernetesObject): Promise<string> {
  const gv = obj.apiVersion ?? "";
  const base = gv.includes("/") ? `/apis/${gv}` : `/api/${gv}`;
  const list = await api.json<{ resources: ApiResource[] }>("GET", base);
  const r = list.resources.find((x) => x.kind === obj.kind && !x.name.includes("/"));
  if (!r) throw new Error(`the apiserver serves no ${obj.kind} in ${gv}`);
  if (!r.namespaced) return `${base}/${r.name}`;
  const ns = obj.metadata?.namespace;
  if (!ns) throw new Error(`${obj.kind} ${obj.metadata?.name} needs a namespace`);
  return `${base}/namespaces/${encodeURIComponent(ns)}/${r.name}`;
}

/** Creates or replaces each object, like `kubectl apply` for tests; returns what the apiserver stored. */
export async function applyObjects(
  kc: KubeConfig,
  objects: KubernetesObject[],
  opts: { dryRun?: boolean } = {},
): Promise<KubernetesObject[]> {
  const api = new ApiClient(kubeConfigConnection(kc));
  const q = opts.dryRun ? "?dryRun=All" : "";
  const out: KubernetesObject[] = [];
  try {
    for (const obj of objects) {
      const coll = await collectionPath(api, obj);
      try {
        out.push(await api.json<KubernetesObject>("POST", `${coll}${q}`, obj));
      } catch (err) {
        if (!(err instanceof ApiError && err.code === 409)) throw err;
        const path = `${coll}/${encodeURIComponent(obj.metadata?.name ?? "")}`;
        const existing = await api.json<KubernetesObject>("GET", path);
        const body = {
          ...obj,
          metadata: { ...obj.metadata, resourceVersion: existing.metadata?.resourceVersion },
        };
        out.push(await api.json<KubernetesObject>("PUT", `${path}${q}`, body));
      }
    }
  } finally {
    api.close();
  }
  return out;
}

export function applyFiles(kc: KubeConfig, files: string[]): Promise<KubernetesObject[]> {
  return applyObjects(
    kc,
    files.flatMap((f) => parseYamlObjects(readFileSync(f, "utf8"))),
  );
}
