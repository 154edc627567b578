import { readFileSync } from "node:fs";
import { KubernetesObjectApi, type KubeConfig, type KubernetesObject } from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";

export function parseYamlObjects(text: string): KubernetesObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJSON() as KubernetesObject | null)
    .filter((o): o is KubernetesObject => !!o && typeof o === "object" && !!o.kind);
}

/** Creates or replaces each object, like `kubectl apply` for tests. */
export async function applyObjects(
  kc: KubeConfig,
  objects: KubernetesObject[],
  opts: { dryRun?: boolean } = {},
): Promise<KubernetesObject[]> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  const out: KubernetesObject[] = [];
  for (const obj of objects) {
    const dryRun = opts.dryRun ? "All" : undefined;
    try {
      out.push(await api.create(obj, undefined, dryRun));
    } catch (err) {
      if ((err as { code?: number }).code !== 409) throw err;
      const existing = await api.read(obj as never);
      out.push(
        await api.replace(
          { ...obj, metadata: { ...obj.metadata, resourceVersion: existing.metadata?.resourceVersion } },
          undefined,
          dryRun,
        ),
      );
    }
  }
  return out;
}

export function applyFiles(kc: KubeConfig, files: string[]): Promise<KubernetesObject[]> {
  return applyObjects(
    kc,
    files.flatMap((f) => parseYamlObjects(readFileSync(f, "utf8"))),
  );
}
