// Where the self-managed certificates live: a Secret (CA key, serving key: only the server's
// service account reads it, by name) and a ConfigMap with the CA bundle agents trust (public).
// Every write names the resourceVersion it read, so replicas racing to create or rotate agree:
// the first write wins, the others read it back.

import { CoreV1Api, type KubeConfig, type V1ConfigMap, type V1Secret } from "@kubernetes/client-node";

export const BUNDLE_KEY = "ca.crt";
export const NEXT_CA_PUBLISHED_ANNOTATION = "keycutter.dev/next-ca-published-at";
/** On what the server writes; a Secret without it is someone else's and is never overwritten. */
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "keycutter-server";

/** The Secret's keys; tls.crt/tls.key/ca.crt as cert-manager names them. */
export interface TlsMaterial {
  "tls.crt": string;
  "tls.key": string;
  "ca.crt": string;
  "ca.key": string;
  "next-ca.crt"?: string;
  "next-ca.key"?: string;
  "previous-ca.crt"?: string;
}

export interface StoredSecret {
  material: TlsMaterial;
  nextCaPublishedAtMs?: number;
  resourceVersion: string;
}

export interface StoredBundle {
  pem: string;
  resourceVersion: string;
}

export interface TlsStoreLocation {
  namespace: string;
  secretName: string;
  bundleConfigMap: string;
}

function statusCode(e: unknown): number | undefined {
  const code = (e as { code?: unknown }).code;
  return typeof code === "number" ? code : undefined;
}

const REQUIRED_KEYS = ["tls.crt", "tls.key", "ca.crt", "ca.key"] as const;

function decode(secret: V1Secret): StoredSecret | undefined {
  const data = secret.data ?? {};
  const material: Record<string, string> = {};
  for (const [k, v] of Object.entries(data)) material[k] = Buffer.from(v, "base64").toString("utf8");
  // a Secret that lacks a key was not written by keycutter: treated as absent, replaced whole
  if (!REQUIRED_KEYS.every((k) => material[k])) return undefined;
  const published = secret.metadata?.annotations?.[NEXT_CA_PUBLISHED_ANNOTATION];
  const publishedMs = published ? Date.parse(published) : NaN;
  return {
    material: material as unknown as TlsMaterial,
    ...(Number.isFinite(publishedMs) ? { nextCaPublishedAtMs: publishedMs } : {}),
    resourceVersion: secret.metadata?.resourceVersion ?? "",
  };
}

function encode(material: TlsMaterial): Record<string, string> {
  const data: Record<string, string> = {};
  for (const [k, v] of Object.entries(material))
    if (typeof v === "string") data[k] = Buffer.from(v).toString("base64");
  return data;
}

export type WriteOutcome = "written" | "conflict";

export class TlsStore {
  private readonly api: CoreV1Api;
  private readonly at: TlsStoreLocation;

  constructor(kc: KubeConfig, at: TlsStoreLocation) {
    this.api = kc.makeApiClient(CoreV1Api);
    this.at = at;
  }

  /**
   * The Secret as last written; `present` false when it does not exist. A Secret of that name
   * that keycutter did not write is an error: the server refuses to start rather than replace it.
   */
  async readSecret(): Promise<{ present: boolean; stored?: StoredSecret; resourceVersion?: string }> {
    let secret: V1Secret;
    try {
      secret = await this.api.readNamespacedSecret({
        namespace: this.at.namespace,
        name: this.at.secretName,
      });
    } catch (e) {
      if (statusCode(e) === 404) return { present: false };
      throw e;
    }
    if (secret.metadata?.labels?.[MANAGED_BY_LABEL] !== MANAGED_BY)
      throw new Error(
        `Secret ${this.at.namespace}/${this.at.secretName} exists but keycutter did not make it (no label ${MANAGED_BY_LABEL}=${MANAGED_BY}): not overwriting it; name another with --tls-secret`,
      );
    const stored = decode(secret);
    return {
      present: true,
      ...(stored ? { stored } : {}),
      resourceVersion: secret.metadata?.resourceVersion ?? "",
    };
  }

  async readBundle(): Promise<StoredBundle | undefined> {
    try {
      const cm = await this.api.readNamespacedConfigMap({
        namespace: this.at.namespace,
        name: this.at.bundleConfigMap,
      });
      return { pem: cm.data?.[BUNDLE_KEY] ?? "", resourceVersion: cm.metadata?.resourceVersion ?? "" };
    } catch (e) {
      if (statusCode(e) === 404) return undefined;
      throw e;
    }
  }

  /**
   * Creates the Secret, or replaces the version `resourceVersion` names; a conflict (another
   * replica wrote first) is an outcome, not an error.
   */
  async writeSecret(
    material: TlsMaterial,
    nextCaPublishedAtMs: number | undefined,
    resourceVersion: string | undefined,
  ): Promise<WriteOutcome> {
    const body: V1Secret = {
      apiVersion: "v1",
      kind: "Secret",
      type: "kubernetes.io/tls",
      metadata: {
        ...this.managedMetadata(this.at.secretName, resourceVersion),
        ...(nextCaPublishedAtMs !== undefined
          ? { annotations: { [NEXT_CA_PUBLISHED_ANNOTATION]: new Date(nextCaPublishedAtMs).toISOString() } }
          : {}),
      },
      data: encode(material),
    };
    const { namespace, secretName: name } = this.at;
    return writeUnlessChanged(() =>
      resourceVersion
        ? this.api.replaceNamespacedSecret({ namespace, name, body })
        : this.api.createNamespacedSecret({ namespace, body }),
    );
  }

  /** An object's metadata as this store writes it: labelled as keycutter's, at `resourceVersion`. */
  private managedMetadata(
    name: string,
    resourceVersion: string | undefined,
  ): NonNullable<V1Secret["metadata"]> {
    return {
      name,
      namespace: this.at.namespace,
      labels: { [MANAGED_BY_LABEL]: MANAGED_BY },
      ...(resourceVersion ? { resourceVersion } : {}),
    };
  }

  async writeBundle(pem: string, resourceVersion: string | undefined): Promise<WriteOutcome> {
    const body: V1ConfigMap = {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: this.managedMetadata(this.at.bundleConfigMap, resourceVersion),
      data: { [BUNDLE_KEY]: pem },
    };
    const { namespace, bundleConfigMap: name } = this.at;
    return writeUnlessChanged(() =>
      resourceVersion
        ? this.api.replaceNamespacedConfigMap({ namespace, name, body })
        : this.api.createNamespacedConfigMap({ namespace, body }),
    );
  }
}

/**
 * A create (no resourceVersion) or a replace at the resourceVersion read: "conflict" when another
 * replica wrote first (409 either way), so that the caller reads again instead of overwriting.
 */
async function writeUnlessChanged(write: () => Promise<unknown>): Promise<WriteOutcome> {
  try {
    await write();
    return "written";
  } catch (err) {
    if (statusCode(err) === 409) return "conflict";
    throw err;
  }
}
