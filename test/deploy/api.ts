// A few raw apiserver calls for the chart tests: create with ?dryRun=All&fieldValidation=Strict
// (the client library cannot ask for strict field validation), with discovery of the resource.
import { request } from "node:https";
import { readFileSync } from "node:fs";
import type { Cluster } from "../harness/index.ts";
import type { K8sObject } from "./render.ts";

export interface ApiResult {
  status: number;
  body: unknown;
  warnings: string[];
}

export interface CallOptions {
  /** Content type of the body (default application/json). */
  contentType?: string;
  /** Accept header (default application/json), e.g. for the Table kubectl get asks for. */
  accept?: string;
  /** Acts as this user (Impersonate-User; the admin token may impersonate anyone). */
  impersonateUser?: string;
}

export function apiCall(
  cluster: Cluster,
  method: string,
  path: string,
  body?: unknown,
  opts: CallOptions = {},
): Promise<ApiResult> {
  const ca = readFileSync(cluster.caFile);
  const url = new URL(path, cluster.server);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method,
        ca,
        headers: {
          authorization: `Bearer ${cluster.adminToken}`,
          accept: opts.accept ?? "application/json",
          ...(body === undefined ? {} : { "content-type": opts.contentType ?? "application/json" }),
          ...(opts.impersonateUser ? { "impersonate-user": opts.impersonateUser } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON
          }
          const w = res.headers.warning;
          resolve({
            status: res.statusCode ?? 0,
            body: parsed,
            warnings: w === undefined ? [] : Array.isArray(w) ? w : [w],
          });
        });
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

interface ApiResource {
  name: string;
  kind: string;
  namespaced: boolean;
}

const discovery = new Map<string, ApiResource[]>();

async function resourceFor(cluster: Cluster, apiVersion: string, kind: string): Promise<ApiResource> {
  const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  const key = `${cluster.server}${base}`;
  let list = discovery.get(key);
  if (!list || !list.some((r) => r.kind === kind)) {
    const res = await apiCall(cluster, "GET", base);
    if (res.status !== 200) throw new Error(`discovery ${base}: HTTP ${res.status}`);
    list = (res.body as { resources: ApiResource[] }).resources.filter((r) => !r.name.includes("/"));
    discovery.set(key, list);
  }
  const r = list.find((x) => x.kind === kind);
  if (!r) throw new Error(`the apiserver serves no ${kind} in ${apiVersion}`);
  return r;
}

async function collectionPath(cluster: Cluster, obj: K8sObject, namespace?: string): Promise<string> {
  const r = await resourceFor(cluster, obj.apiVersion, obj.kind);
  const base = obj.apiVersion.includes("/") ? `/apis/${obj.apiVersion}` : `/api/${obj.apiVersion}`;
  const ns = obj.metadata.namespace ?? namespace;
  if (r.namespaced && !ns) throw new Error(`${obj.kind} ${obj.metadata.name} has no namespace`);
  return r.namespaced ? `${base}/namespaces/${ns}/${r.name}` : `${base}/${r.name}`;
}

/** Creates an object; dryRun: the apiserver validates and admits it, and stores nothing. */
export async function createObject(
  cluster: Cluster,
  obj: K8sObject,
  opts: { dryRun: boolean; namespace?: string; impersonateUser?: string },
): Promise<ApiResult> {
  const path = await collectionPath(cluster, obj, opts.namespace);
  const q = new URLSearchParams({ fieldValidation: "Strict", fieldManager: "keycutter-chart-test" });
  if (opts.dryRun) q.set("dryRun", "All");
  return apiCall(cluster, "POST", `${path}?${q.toString()}`, obj, {
    ...(opts.impersonateUser ? { impersonateUser: opts.impersonateUser } : {}),
  });
}

/**
 * Server-side apply, dry-run: validates an object that may already exist (a CRD the test created
 * for real) as the update `helm upgrade` would make, with strict field validation.
 */
export async function applyObjectDryRun(
  cluster: Cluster,
  obj: K8sObject,
  namespace?: string,
): Promise<ApiResult> {
  const path = await collectionPath(cluster, obj, namespace);
  const q = new URLSearchParams({
    fieldValidation: "Strict",
    fieldManager: "keycutter-chart-test",
    force: "true",
    dryRun: "All",
  });
  return apiCall(cluster, "PATCH", `${path}/${obj.metadata.name}?${q.toString()}`, obj, {
    contentType: "application/apply-patch+yaml",
  });
}
