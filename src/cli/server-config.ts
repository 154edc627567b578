// The installed server's settings, as the chart publishes them: a ConfigMap `<release>-config`
// (templates/server-config.yaml) rendered from the same values as the server's flags, so that
// `explain` and `policy validate --server` decide with the cluster name and duration cap the
// server uses instead of flags someone has to keep in step by hand.
//
// Found by its labels in every namespace (who may list ConfigMaps cluster-wide), else in the
// namespace given with --server-namespace, else by its default name in keycutter-system; the
// chart lets every authenticated user read that one ConfigMap, by name.
// types only at load time (see kube-context.ts): discoverServerConfig() loads the client
import type { CoreV1Api, KubeConfig, V1ConfigMap } from "@kubernetes/client-node";
import { Option, type Command } from "commander";
import { CliError, UsageError, apiStatusMessage } from "./errors.ts";

export const SERVER_CONFIG_SELECTOR =
  "app.kubernetes.io/part-of=keycutter,app.kubernetes.io/component=server-config";
export const DEFAULT_INSTALL_NAMESPACE = "keycutter-system";
export const DEFAULT_CONFIG_NAME = "keycutter-config";

export interface ServerConfig {
  /** namespace/name of the ConfigMap it came from. */
  source: string;
  namespace: string;
  clusterName: string;
  maxDurationSeconds: number;
  /** The rest of the published keys (names of the server's objects, ports, TLS Secrets). */
  data: Record<string, string>;
}

export interface ServerConfigFlags {
  serverNamespace?: string;
  clusterName?: string;
  maxDuration?: string;
}

/** The settings a decision depends on, after flags and the published configuration. */
export interface DecisionSettings {
  clusterName: string;
  maxDurationSeconds: number;
  /** Where each came from ("flag" or the ConfigMap), for the reader. */
  from: string;
}

export function addServerConfigFlags(command: Command): Command {
  return command
    .addOption(
      new Option(
        "--server-namespace <namespace>",
        "namespace keycutter is installed in (default: found by label)",
      ).env("KEYCUTTER_SERVER_NAMESPACE"),
    )
    .addOption(
      new Option(
        "--cluster-name <name>",
        "override the server's --cluster-name (default: the installed server's)",
      ).env("KEYCUTTER_CLUSTER_NAME"),
    )
    .addOption(
      new Option(
        "--max-duration <seconds>",
        "override the server's --max-duration (default: the installed server's)",
      ).env("KEYCUTTER_MAX_DURATION"),
    );
}

function isStatus(err: unknown, code: number): boolean {
  return (err as { code?: unknown }).code === code && apiStatusMessage(err) !== undefined;
}

export function positiveSeconds(value: string, what: string): number {
  if (!/^\d{1,9}$/.test(value) || Number(value) < 1)
    throw new UsageError(`${what}: expected a positive number of seconds, got "${value}"`);
  return Number(value);
}

function parseConfig(cm: V1ConfigMap): ServerConfig {
  const namespace = cm.metadata?.namespace ?? "";
  const source = `${namespace}/${cm.metadata?.name ?? ""}`;
  const data = { ...(cm.data ?? {}) };
  const max = data.maxDurationSeconds ?? "";
  if (!/^\d{1,9}$/.test(max) || Number(max) < 1)
    throw new CliError(`ConfigMap ${source}: maxDurationSeconds "${max}" is not a positive integer`);
  return { source, namespace, clusterName: data.clusterName ?? "", maxDurationSeconds: Number(max), data };
}

async function listIn(core: CoreV1Api, namespace?: string): Promise<V1ConfigMap[]> {
  const list = namespace
    ? await core.listNamespacedConfigMap({ namespace, labelSelector: SERVER_CONFIG_SELECTOR })
    : await core.listConfigMapForAllNamespaces({ labelSelector: SERVER_CONFIG_SELECTOR });
  return list.items;
}

async function getDefault(core: CoreV1Api, namespace: string): Promise<V1ConfigMap[]> {
  try {
    const cm = await core.readNamespacedConfigMap({ namespace, name: DEFAULT_CONFIG_NAME });
    const labels = cm.metadata?.labels ?? {};
    return labels["app.kubernetes.io/component"] === "server-config" ? [cm] : [];
  } catch (err) {
    if (isStatus(err, 404) || isStatus(err, 403)) return [];
    throw err;
  }
}

/** The installed server's published configuration; an error when there is none or more than one. */
export async function discoverServerConfig(kc: KubeConfig, namespace?: string): Promise<ServerConfig> {
  const { CoreV1Api } = await import("@kubernetes/client-node");
  const core = kc.makeApiClient(CoreV1Api);
  let found: V1ConfigMap[];
  try {
    found = await listIn(core, namespace);
  } catch (err) {
    if (!isStatus(err, 403)) throw err;
    found = await getDefault(core, namespace ?? DEFAULT_INSTALL_NAMESPACE);
  }
  if (found.length === 0)
    throw new CliError(
      `no keycutter installation found (a ConfigMap labelled ${SERVER_CONFIG_SELECTOR}${namespace ? ` in ${namespace}` : ""}): pass --server-namespace, or --cluster-name and --max-duration`,
    );
  if (found.length > 1) {
    const names = found.map((c) => `${c.metadata?.namespace}/${c.metadata?.name}`).join(", ");
    throw new CliError(`more than one keycutter installation found (${names}): pass --server-namespace`);
  }
  return parseConfig(found[0]!);
}

/** Flags first; the installed server's configuration for whatever they leave open. */
export async function decisionSettings(kc: KubeConfig, flags: ServerConfigFlags): Promise<DecisionSettings> {
  const maxFlag =
    flags.maxDuration === undefined ? undefined : positiveSeconds(flags.maxDuration, "--max-duration");
  if (flags.clusterName !== undefined && maxFlag !== undefined)
    return { clusterName: flags.clusterName, maxDurationSeconds: maxFlag, from: "flags" };
  const installed = await discoverServerConfig(kc, flags.serverNamespace);
  return {
    clusterName: flags.clusterName ?? installed.clusterName,
    maxDurationSeconds: maxFlag ?? installed.maxDurationSeconds,
    from: `ConfigMap ${installed.source}${flags.clusterName !== undefined || maxFlag !== undefined ? " and flags" : ""}`,
  };
}
