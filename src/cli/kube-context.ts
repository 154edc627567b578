// Which cluster, user and namespace a CLI command talks to, chosen the way kubectl chooses them,
// so that `kubectl keycutter …` reaches the cluster `kubectl …` reaches:
//   --kubeconfig FILE  >  $KUBECONFIG (a list of files, merged)  >  ~/.kube/config  >  in-cluster;
//   --context NAME overrides the current context; -n/--namespace overrides the context's namespace.
// Merging follows kubectl (clientcmd): the first file to name a cluster, user or context wins, the
// first file to set current-context wins, and files in the list that do not exist are skipped.
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";
// types only: the official client loads every generated API (~55 MiB of RSS), and this module is
// part of the CLI that `keycutter agent` starts too; resolveKubeContext() loads it when it runs
import type { Cluster, Context, KubeConfig, User } from "@kubernetes/client-node";
import { Option, type Command } from "commander";
import { CliError, UsageError } from "./errors.ts";

const SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token";

export interface KubeFlags {
  kubeconfig?: string;
  context?: string;
  namespace?: string;
}

export interface KubeContext {
  kc: KubeConfig;
  /** -n, else the context's namespace, else "default" (as kubectl). */
  namespace: string;
  /** True when -n was given (commands that default to every namespace only narrow then). */
  namespaceExplicit: boolean;
  /** Where the configuration came from, for messages. */
  source: string;
}

export interface KubeEnvironment {
  env: NodeJS.ProcessEnv;
  home: string;
  /** The in-cluster service-account token, whose presence means "running in a pod". */
  serviceAccountToken: string;
}

const DEFAULT_ENVIRONMENT: KubeEnvironment = {
  env: process.env,
  home: homedir(),
  serviceAccountToken: SERVICE_ACCOUNT_TOKEN,
};

/** Adds kubectl's connection flags to a command. */
export function addKubeFlags(command: Command): Command {
  return command
    .addOption(
      new Option("--kubeconfig <file>", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"),
    )
    .addOption(new Option("--context <name>", "the kubeconfig context to use"))
    .addOption(new Option("-n, --namespace <namespace>", "namespace (default: the context's)"));
}

/** An empty KubeConfig of the client loaded by resolveKubeContext(). */
type NewConfig = () => KubeConfig;

function loadFile(kc: KubeConfig, file: string): void {
  try {
    kc.loadFromFile(file);
  } catch (err) {
    throw new CliError(`cannot load kubeconfig ${file}: ${(err as Error).message}`);
  }
}

/** $KUBECONFIG's files merged, first one wins. */
function mergeFiles(newConfig: NewConfig, files: string[]): KubeConfig {
  const clusters = new Map<string, Cluster>();
  const users = new Map<string, User>();
  const contexts = new Map<string, Context>();
  let currentContext = "";
  for (const file of files) {
    const one = newConfig();
    loadFile(one, file);
    for (const c of one.getClusters()) if (!clusters.has(c.name)) clusters.set(c.name, c);
    for (const u of one.getUsers()) if (!users.has(u.name)) users.set(u.name, u);
    for (const c of one.getContexts()) if (!contexts.has(c.name)) contexts.set(c.name, c);
    if (!currentContext && one.getCurrentContext()) currentContext = one.getCurrentContext();
  }
  const kc = newConfig();
  kc.loadFromOptions({
    clusters: [...clusters.values()],
    users: [...users.values()],
    contexts: [...contexts.values()],
    currentContext,
  });
  return kc;
}

function loadConfig(
  newConfig: NewConfig,
  flags: KubeFlags,
  environment: KubeEnvironment,
): { kc: KubeConfig; source: string } {
  if (flags.kubeconfig !== undefined) {
    if (!existsSync(flags.kubeconfig)) throw new CliError(`--kubeconfig ${flags.kubeconfig}: no such file`);
    const kc = newConfig();
    loadFile(kc, flags.kubeconfig);
    return { kc, source: flags.kubeconfig };
  }
  const list = environment.env.KUBECONFIG;
  if (list) {
    const files = list.split(delimiter).filter((f) => f !== "" && existsSync(f));
    if (files.length === 0) throw new CliError(`KUBECONFIG=${list}: none of its files exists`);
    return { kc: mergeFiles(newConfig, files), source: `KUBECONFIG=${list}` };
  }
  const home = join(environment.home, ".kube", "config");
  if (existsSync(home)) {
    const kc = newConfig();
    loadFile(kc, home);
    return { kc, source: home };
  }
  if (environment.env.KUBERNETES_SERVICE_HOST && existsSync(environment.serviceAccountToken)) {
    const kc = newConfig();
    kc.loadFromCluster();
    return { kc, source: "in-cluster service account" };
  }
  throw new CliError("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config");
}

export async function resolveKubeContext(
  flags: KubeFlags,
  environment: KubeEnvironment = DEFAULT_ENVIRONMENT,
): Promise<KubeContext> {
  const { KubeConfig } = await import("@kubernetes/client-node");
  const { kc, source } = loadConfig(() => new KubeConfig(), flags, environment);
  if (flags.context !== undefined) {
    if (!kc.getContextObject(flags.context))
      throw new UsageError(`--context ${flags.context}: no such context in ${source}`);
    kc.setCurrentContext(flags.context);
  }
  const current = kc.getCurrentContext();
  if (!current || !kc.getContextObject(current))
    throw new CliError(`${source}: no current context (pass --context)`);
  if (!kc.getCurrentCluster()) throw new CliError(`${source}: context ${current} names no known cluster`);
  const fromContext = kc.getContextObject(current)?.namespace;
  if (flags.namespace !== undefined && !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(flags.namespace))
    throw new UsageError(`-n ${flags.namespace}: not a namespace name`);
  return {
    kc,
    namespace: flags.namespace ?? (fromContext || "default"),
    namespaceExplicit: flags.namespace !== undefined,
    source,
  };
}
