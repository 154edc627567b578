// The command lines of the server and agent exactly as the Helm chart renders them, with only
// what a real cluster provides and this machine does not substituted: the files of mounted
// Secrets and projected tokens, Kubernetes' $(VAR) expansion from the downward API, per-replica
// ports (replicas share one network namespace here), the Service's address, and an explicit
// kubeconfig in place of the in-cluster one.
import { containerArgs, findObject, renderChart, type K8sObject } from "../deploy/render.ts";

export const CHART_SERVER_PORT = 8443;
export const CHART_SERVER_OPS_PORT = 9090;

export interface ChartValuesInput {
  region: string;
  stsEndpoint: string;
  redisUrl?: string;
  requireImdsV2: boolean;
  /**
   * The chart's default, self-managed TLS (server.tls.selfManaged values, and the addresses the
   * server is reached at here as extraIpAddresses); undefined: an existing Secret, whose files
   * the tests make (test/harness/tls.ts).
   */
  selfManagedTls?: { values: Record<string, number>; ipAddresses: string[] };
}

export interface ChartCommandLines {
  server: string[];
  serverEnv: Record<string, string>;
  agent: string[];
  /** The agent container's literal env values (e.g. NODE_OPTIONS), not the downward API ones. */
  agentEnv: Record<string, string>;
  /** The ConfigMap publishing the server's settings (what `keycutter explain` reads). */
  serverConfig: K8sObject;
}

interface EnvVar {
  name: string;
  value?: string;
}

function containerEnv(workload: K8sObject, name: string): EnvVar[] {
  const spec = (
    workload as unknown as {
      spec: { template: { spec: { containers: { name: string; env?: EnvVar[] }[] } } };
    }
  ).spec.template.spec;
  return spec.containers.find((c) => c.name === name)?.env ?? [];
}

export function chartCommandLines(ns: string, v: ChartValuesInput): ChartCommandLines {
  const objs = renderChart(
    {
      clusterName: "e2e",
      aws: { region: v.region, stsEndpoint: v.stsEndpoint },
      server: {
        port: CHART_SERVER_PORT,
        opsPort: CHART_SERVER_OPS_PORT,
        tls: v.selfManagedTls
          ? { selfManaged: v.selfManagedTls.values, extraIpAddresses: v.selfManagedTls.ipAddresses }
          : { secretName: "keycutter-server-tls" },
      },
      agent: { hook: { podInterfaces: ["cbr0"] }, requireImdsV2: v.requireImdsV2 },
      ...(v.redisUrl ? { store: { url: v.redisUrl, encryptionKeySecret: "keycutter-cache-key" } } : {}),
    },
    { namespace: ns },
  );
  const server = findObject(objs, "Deployment", "keycutter-server");
  const agent = findObject(objs, "DaemonSet", "keycutter-agent");
  const serverEnv: Record<string, string> = {};
  for (const e of containerEnv(server, "server")) if (e.value !== undefined) serverEnv[e.name] = e.value;
  const agentEnv: Record<string, string> = {};
  // PATH picks the node's iptables backend inside the image; here the machine's own is used
  for (const e of containerEnv(agent, "agent"))
    if (e.value !== undefined && e.name !== "PATH") agentEnv[e.name] = e.value;
  return {
    server: containerArgs(server, "server"),
    serverEnv,
    agent: containerArgs(agent, "agent"),
    agentEnv,
    serverConfig: findObject(objs, "ConfigMap", "keycutter-config"),
  };
}

/** Replaces the value of `--flag=value` (the chart's form) in args; throws if the chart lacks it. */
export function setFlag(args: string[], flag: string, value: string): string[] {
  const i = args.findIndex((a) => a.startsWith(`${flag}=`));
  if (i < 0) throw new Error(`the chart's command line has no ${flag}`);
  return args.map((a, j) => (j === i ? `${flag}=${value}` : a));
}

/** Kubernetes' $(VAR) expansion in args. */
export function expandVars(args: string[], env: Record<string, string>): string[] {
  return args.map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string) => env[name] ?? m));
}
