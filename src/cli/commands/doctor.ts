// `keycutter doctor`: what is wrong, in plain words, one line per check. On a node (as root, with
// the node's IP) it looks at the hook, the agent and the server as the agent reaches it; from
// anywhere with a kubeconfig at the installation, the rollout, the TLS Secrets and the policies.
// Exit 3 when a check fails.
import { Option, type Command } from "commander";
import { CliError, EXIT, UsageError, errorLine } from "../errors.ts";
import { addKubeFlags, resolveKubeContext, type KubeFlags } from "../kube-context.ts";
import { outputOption, renderStructured, type OutputFormat } from "../output.ts";
import { discoverServerConfig, type ServerConfig } from "../server-config.ts";
import { checkAgentReady, checkServerApi, checkServerReady } from "../doctor/endpoint-checks.ts";
import { checkHook } from "../doctor/hook-check.ts";
import { anyFailed, formatResults, result, type CheckResult } from "../doctor/report.ts";
import type { ExpiryPolicy } from "../doctor/tls-expiry.ts";

interface DoctorOptions extends KubeFlags {
  output: OutputFormat;
  serverNamespace?: string;
  cluster?: boolean;
  hook?: boolean;
  hookChain?: string;
  hookAgentIp?: string;
  hookPodInterface?: string;
  hookPodCidr?: string;
  imdsPort: string;
  containerPort: string;
  iptables: string;
  agentOpsUrl?: string;
  serverUrl?: string;
  serverCaFile?: string;
  serverOpsUrl?: string;
  tlsWarnDays: string;
}

const list = (v?: string): string[] =>
  (v ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

function port(value: string, flag: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535)
    throw new UsageError(`${flag}: expected a port, got "${value}"`);
  return Number(value);
}

function httpUrl(value: string, flag: string): string {
  try {
    const url = new URL(value);
    if (url.protocol === "http:" || url.protocol === "https:") return value;
  } catch {
    // reported below
  }
  throw new UsageError(`${flag}: expected an http(s) URL, got "${value}"`);
}

async function clusterChecks(
  o: DoctorOptions,
  expiry: ExpiryPolicy,
): Promise<{ results: CheckResult[]; config?: ServerConfig }> {
  let ctx;
  try {
    ctx = await resolveKubeContext(o);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    return {
      results: [
        result("cluster", "skip", errorLine(err), "pass --kubeconfig to check the installation and policies"),
      ],
    };
  }
  const results: CheckResult[] = [];
  let config: ServerConfig | undefined;
  try {
    config = await discoverServerConfig(ctx.kc, o.serverNamespace);
    results.push(
      result("installation", "ok", `keycutter in namespace ${config.namespace} (ConfigMap ${config.source})`),
    );
  } catch (err) {
    if (!(err instanceof CliError))
      return {
        results: [
          result(
            "cluster",
            "fail",
            `the apiserver is unreachable: ${errorLine(err)}`,
            `kubeconfig: ${ctx.source}`,
          ),
        ],
      };
    results.push(result("installation", "warn", errorLine(err)));
  }
  try {
    // loaded here: it needs the official client, which the rest of the CLI loads only when used
    const { checkPolicies, checkRollout, checkTlsSecrets } = await import("../doctor/cluster-checks.ts");
    if (config) {
      results.push(...(await checkRollout(ctx.kc, config)));
      results.push(...(await checkTlsSecrets(ctx.kc, config, expiry)));
    }
    results.push(...(await checkPolicies(ctx.kc, ctx.namespaceExplicit ? ctx.namespace : undefined)));
  } catch (err) {
    results.push(result("cluster", "fail", `reading the cluster failed: ${errorLine(err)}`));
  }
  return { results, ...(config ? { config } : {}) };
}

export function registerDoctorCommand(program: Command): void {
  const command = program
    .command("doctor")
    .description(
      "say what is wrong: on a node the hook, the agent and the server as the agent reaches it; with a kubeconfig the installation, TLS and policies (exit 3 when a check fails)",
    )
    .addOption(outputOption())
    .addOption(
      new Option(
        "--server-namespace <namespace>",
        "namespace keycutter is installed in (default: found by label)",
      ).env("KEYCUTTER_SERVER_NAMESPACE"),
    )
    .option("--no-cluster", "do not look at the cluster through the apiserver")
    .option("--no-hook", "do not look at the node's iptables hook")
    .addOption(
      new Option("--hook-agent-ip <ip>", "this node's IP, the agent's (checks the hook and the agent)").env(
        "NODE_IP",
      ),
    )
    .option("--hook-chain <name>", "the hook's chain (default: the installed chart's, else KEYCUTTER)")
    .option("--hook-pod-interface <ifaces>", "the agent's --hook-pod-interface: compare the rules one by one")
    .option("--hook-pod-cidr <cidrs>", "the agent's --hook-pod-cidr")
    .option("--imds-port <port>", "the agent's IMDS port", "8180")
    .option("--container-port <port>", "the agent's container-credentials port, or off", "8181")
    .option("--iptables <binary>", "the node's iptables (the backend kube-proxy uses)", "iptables")
    .option("--agent-ops-url <url>", "the agent's ops endpoint (default http://<node IP>:<agent ops port>)")
    .addOption(
      new Option("--server-url <url>", "the server's API as agents reach it (https://…)").env(
        "KEYCUTTER_SERVER_URL",
      ),
    )
    .addOption(
      new Option("--server-ca-file <file>", "the CA agents verify the server with").env(
        "KEYCUTTER_SERVER_CA_FILE",
      ),
    )
    .option("--server-ops-url <url>", "the server's ops endpoint (http://…:9090)")
    .option("--tls-warn-days <days>", "warn when a certificate has fewer days left", "14");
  addKubeFlags(command);
  command.action(async (o: DoctorOptions) => {
    const warnDays = Number(o.tlsWarnDays);
    if (!/^\d+(\.\d+)?$/.test(o.tlsWarnDays))
      throw new UsageError(`--tls-warn-days: expected a number, got "${o.tlsWarnDays}"`);
    const expiry: ExpiryPolicy = { warnDays, now: () => Date.now() };
    const results: CheckResult[] = [];

    let config: ServerConfig | undefined;
    if (o.cluster !== false) {
      const cluster = await clusterChecks(o, expiry);
      results.push(...cluster.results);
      config = cluster.config;
    }

    const agentIp = o.hookAgentIp;
    if (o.hook !== false) {
      if (!agentIp) {
        results.push(
          result(
            "hook",
            "skip",
            "not on a node",
            "on a node, as root: keycutter doctor --hook-agent-ip=<node IP> (or NODE_IP)",
          ),
        );
      } else {
        const interfaces = list(o.hookPodInterface);
        const cidrs = list(o.hookPodCidr);
        const exact =
          interfaces.length > 0 || cidrs.length > 0
            ? {
                podInterfaces: interfaces,
                podCidrs: cidrs,
                agentIp,
                imdsPort: port(o.imdsPort, "--imds-port"),
                containerPort:
                  o.containerPort === "off" ? undefined : port(o.containerPort, "--container-port"),
              }
            : undefined;
        results.push(
          ...(await checkHook({
            chain: o.hookChain ?? config?.data.hookChain ?? "KEYCUTTER",
            iptables: o.iptables,
            ...(exact ? { exact } : {}),
          })),
        );
      }
    }

    const agentOps =
      o.agentOpsUrl ??
      (agentIp
        ? `http://${agentIp.includes(":") ? `[${agentIp}]` : agentIp}:${config?.data.agentOpsPort ?? "8182"}`
        : undefined);
    if (agentOps) results.push(await checkAgentReady(httpUrl(agentOps, "--agent-ops-url")));
    else results.push(result("agent", "skip", "not on a node", "pass --agent-ops-url or --hook-agent-ip"));

    if (o.serverOpsUrl) results.push(await checkServerReady(httpUrl(o.serverOpsUrl, "--server-ops-url")));
    if (o.serverUrl)
      results.push(
        ...(await checkServerApi({
          url: httpUrl(o.serverUrl, "--server-url"),
          ...(o.serverCaFile ? { caFile: o.serverCaFile } : {}),
          expiry,
        })),
      );
    if (!o.serverOpsUrl && !o.serverUrl)
      results.push(
        result(
          "server",
          "skip",
          "no --server-url / --server-ops-url",
          `from a node or a pod: --server-url=${config?.data.serverUrl ?? "https://<release>-server.<namespace>.svc:8443"} --server-ca-file=<the agents' CA>`,
        ),
      );

    process.stdout.write(
      o.output === "text"
        ? formatResults(results)
        : renderStructured(o.output, { ok: !anyFailed(results), checks: results }),
    );
    process.exitCode = anyFailed(results) ? EXIT.findings : EXIT.ok;
  });
}
