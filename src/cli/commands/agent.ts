import type { Command } from "commander";
import { createLogger } from "../../common/logger.ts";
import { startAgent, parseHostPort, type AgentConfig } from "../../agent/agent.ts";
import { DEFAULT_CREDENTIAL_WAIT_MS, DEFAULT_UNKNOWN_POD_WAIT_MS } from "../../agent/answer-budget.ts";
import { Hook, type HookOptions } from "../../agent/hook/iptables.ts";

type Opts = Record<string, string | boolean | undefined>;

/** Where libcni (containerd, CRI-O) caches each attachment's result. */
export const DEFAULT_CNI_STATE_DIR = "/var/lib/cni/results";
type Env = Record<string, string | undefined>;

/** Flag → environment variable: --server-url → KEYCUTTER_SERVER_URL. */
export function envName(flag: string): string {
  return "KEYCUTTER_" + flag.replace(/^--/, "").replace(/-/g, "_").toUpperCase();
}

function camel(flag: string): string {
  return flag.replace(/^--/, "").replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

class Resolver {
  private readonly opts: Opts;
  private readonly env: Env;
  constructor(opts: Opts, env: Env) {
    this.opts = opts;
    this.env = env;
  }
  str(flag: string, ...fallbackEnv: string[]): string | undefined {
    const v = this.opts[camel(flag)];
    if (typeof v === "string") return v;
    for (const e of [envName(flag), ...fallbackEnv]) {
      const x = this.env[e];
      if (x !== undefined && x !== "") return x;
    }
    return undefined;
  }
  req(flag: string, ...fallbackEnv: string[]): string {
    const v = this.str(flag, ...fallbackEnv);
    if (v === undefined) throw new Error(`${flag} (or ${envName(flag)}) is required`);
    return v;
  }
  int(flag: string, def: number): number {
    const v = this.str(flag);
    if (v === undefined) return def;
    if (!/^-?\d+$/.test(v)) throw new Error(`${flag}: expected an integer, got "${v}"`);
    return Number(v);
  }
  /** An integer of at least 1: a cap of 0 would refuse every pod. */
  positive(flag: string, def: number): number {
    const v = this.int(flag, def);
    if (v < 1) throw new Error(`${flag}: expected at least 1, got ${v}`);
    return v;
  }
  bool(flag: string, def: boolean): boolean {
    const v = this.opts[camel(flag)];
    if (typeof v === "boolean") return v;
    const e = this.env[envName(flag)];
    if (e === undefined || e === "") return def;
    if (/^(1|true|yes|on)$/i.test(e)) return true;
    if (/^(0|false|no|off)$/i.test(e)) return false;
    throw new Error(`${envName(flag)}: expected true or false, got "${e}"`);
  }
  list(flag: string): string[] {
    const v = this.str(flag);
    return v === undefined
      ? []
      : v
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean);
  }
}

/** --hook-ipv6: auto (the node has IPv6), on or off. */
function hookIpv6(r: Resolver): boolean | undefined {
  const v = r.str("--hook-ipv6") ?? "auto";
  if (v === "auto") return undefined;
  if (v === "on" || v === "off") return v === "on";
  throw new Error(`--hook-ipv6: expected auto, on or off, got "${v}"`);
}

/** Hook options from flags; for `uninstall` only the chain and the binaries matter. */
function hookFrom(r: Resolver, forUninstall = false): Omit<HookOptions, "imdsPort" | "containerPort"> {
  const common = {
    chain: r.str("--hook-chain") ?? "KEYCUTTER",
    iptables: r.str("--iptables") ?? "iptables",
    ip6tables: r.str("--ip6tables"),
    ipv6: hookIpv6(r),
  };
  // removal finds our chains and jumps by name: pod selection and the DNAT target play no part
  if (forUninstall)
    return { ...common, podInterfaces: ["x"], podCidrs: [], agentIp: "127.0.0.1", flushConntrack: false };
  return {
    ...common,
    podInterfaces: r.list("--hook-pod-interface"),
    podCidrs: r.list("--hook-pod-cidr"),
    agentIp: r.req("--hook-agent-ip", "NODE_IP"),
    flushConntrack: r.bool("--conntrack-flush", true),
  };
}

/** Builds the agent configuration from parsed flags, falling back to environment variables. */
export function agentConfigFrom(opts: Opts, env: Env = process.env): AgentConfig {
  const r = new Resolver(opts, env);
  const region = r.str("--region", "AWS_REGION", "AWS_DEFAULT_REGION") ?? "us-east-1";
  const containerListen = r.str("--container-listen") ?? "0.0.0.0:8181";
  const hookOn = r.bool("--hook", true);
  return {
    nodeName: r.req("--node-name", "NODE_NAME"),
    serverUrl: r.req("--server-url"),
    serverCaFile: r.str("--server-ca-file"),
    tokenFile: r.str("--token-file") ?? "/var/run/secrets/keycutter/token",
    serverTimeoutMs: r.int("--server-timeout-ms", 5000),
    kubeconfig: r.str("--kubeconfig"),
    imdsListen: parseHostPort(r.str("--imds-listen") ?? "0.0.0.0:8180", "--imds-listen"),
    containerListen:
      containerListen === "off" ? undefined : parseHostPort(containerListen, "--container-listen"),
    opsListen: parseHostPort(r.str("--ops-listen") ?? "0.0.0.0:8182", "--ops-listen"),
    requireImdsV2: r.bool("--require-imdsv2", false),
    allowHostNetwork: r.bool("--allow-host-network", false),
    unknownPodWaitMs: r.int("--unknown-pod-wait-ms", DEFAULT_UNKNOWN_POD_WAIT_MS),
    credentialWaitMs: r.int("--credential-wait-ms", DEFAULT_CREDENTIAL_WAIT_MS),
    maxWaiting: r.int("--max-waiting", 1024),
    maxWaitingPerSource: r.int("--max-waiting-per-source", 4),
    maxConnections: r.positive("--max-connections", 4096),
    maxConnectionsPerSource: r.positive("--max-connections-per-source", 32),
    region,
    availabilityZone: r.str("--availability-zone") ?? `${region}a`,
    accountId: r.str("--account-id") ?? "000000000000",
    instanceId: r.str("--instance-id") ?? "i-00000000000000000",
    instanceType: r.str("--instance-type") ?? "m5.large",
    passthroughPaths: r.list("--passthrough"),
    upstreamImdsUrl: r.str("--upstream-imds-url") ?? "http://169.254.169.254",
    rateLimitRps: r.int("--rate-limit-rps", 50),
    rateLimitBurst: r.int("--rate-limit-burst", 100),
    imdsTokenKeyFile: r.str("--imds-token-key-file"),
    hook: hookOn ? hookFrom(r) : undefined,
    uninstallHookOnExit: r.bool("--uninstall-hook-on-exit", false),
    watchStaleAfterMs: r.int("--watch-stale-after-ms", 5 * 60_000),
    readyTaintKey: r.str("--ready-taint"),
    hookResyncMs: r.int("--hook-resync-ms", 30_000),
    imdsFastPath: r.bool("--imds-fast-path", true),
    // empty disables it (the pod watch alone then attributes IPs)
    cniStateDir: (r.str("--cni-state-dir") ?? DEFAULT_CNI_STATE_DIR) || undefined,
    cniRescanMs: 10_000,
    policyEpochMaxAgeMs: r.int("--policy-epoch-max-age-ms", 60_000),
  };
}

function addHookOptions(c: Command): Command {
  return c
    .option(
      "--hook-chain <name>",
      "iptables chain name (nat; the fail-closed filter chain is <name>-FC)",
      undefined,
    )
    .option(
      "--hook-pod-interface <ifaces>",
      "pod-facing interfaces, comma-separated, iptables syntax (cbr0, veth+, eni+)",
    )
    .option("--hook-pod-cidr <cidrs>", "pod CIDRs, comma-separated (used when no interface is given)")
    .option("--hook-agent-ip <ip>", "node IP the agent listens on; DNAT target (env NODE_IP also works)")
    .option("--no-conntrack-flush", "do not flush conntrack entries to the metadata addresses after install")
    .option(
      "--iptables <binary>",
      "iptables binary matching the node's backend (iptables, iptables-nft, iptables-legacy)",
    )
    .option(
      "--hook-ipv6 <mode>",
      "IPv6 fail-closed rules for fd00:ec2::254 and fd00:ec2::23: auto (when the node has IPv6), on, off",
    )
    .option(
      "--ip6tables <binary>",
      "ip6tables binary for the IPv6 fail-closed rules (default: the one matching --iptables)",
    );
}

export function registerAgentCommands(program: Command): void {
  const agent = program
    .command("agent")
    .description("run the node agent (IMDS-compatible endpoint behind the iptables hook)")
    .option("--node-name <name>", "this node's name (env KEYCUTTER_NODE_NAME or NODE_NAME)")
    .option("--server-url <url>", "credential service URL, https://…")
    .option("--server-ca-file <file>", "CA bundle for the credential service")
    .option("--token-file <file>", "the agent's projected service-account token (re-read on change)")
    .option("--server-timeout-ms <ms>", "timeout of one request to the credential service")
    .option("--kubeconfig <file>", "kubeconfig (default: in-cluster)")
    .option("--imds-listen <host:port>", "IMDS listener (default 0.0.0.0:8180)")
    .option("--container-listen <host:port>", "container-credentials listener, or off (default 0.0.0.0:8181)")
    .option("--ops-listen <host:port>", "/healthz, /readyz, /metrics (default 0.0.0.0:8182)")
    .option("--require-imdsv2", "refuse IMDSv1 GETs (no session token)")
    .option("--no-require-imdsv2", "allow IMDSv1 (default)")
    .option("--allow-host-network", "serve hostNetwork pods (only safe with one such pod per node)")
    .option(
      "--unknown-pod-wait-ms <ms>",
      "how long a request from an unknown IP waits for the pod watch (default 400)",
    )
    .option(
      "--credential-wait-ms <ms>",
      "how long a request waits for the credential service on a cache miss; both waits together at most the larger (default 400)",
    )
    .option("--max-waiting <n>", "requests waiting for unknown pods, at most (default 1024)")
    .option(
      "--max-waiting-per-source <n>",
      "requests waiting for an unknown pod from one IP, at most (default 4)",
    )
    .option("--max-connections <n>", "connections open on each pod-facing listener, at most (default 4096)")
    .option(
      "--max-connections-per-source <n>",
      "connections one IP may hold open on each pod-facing listener (default 32)",
    )
    .option(
      "--passthrough <paths>",
      "metadata paths passed to the real IMDS, comma-separated (trailing * = prefix)",
    )
    .option("--upstream-imds-url <url>", "the real IMDS (default http://169.254.169.254)")
    .option("--region <region>", "region served at placement/region (env AWS_REGION)")
    .option("--availability-zone <az>", "availability zone (default <region>a)")
    .option("--account-id <id>", "account id in the identity document")
    .option("--instance-id <id>", "instance id in the identity document")
    .option("--instance-type <type>", "instance type in the identity document")
    .option("--rate-limit-rps <n>", "per-pod request rate (0 = off)")
    .option("--rate-limit-burst <n>", "per-pod burst")
    .option("--imds-token-key-file <file>", "HMAC key for IMDSv2 tokens (default: random per process)")
    .option("--imds-fast-path", "answer cached IMDS requests without node:http (default)")
    .option("--no-imds-fast-path", "serve every IMDS request through node:http")
    .option("--hook", "install the iptables hook (default)")
    .option("--no-hook", "do not touch iptables")
    .option("--uninstall-hook-on-exit", "remove the hook on shutdown (default: keep it, fail closed)")
    .option("--watch-stale-after-ms <ms>", "pod watch without life for this long: not ready")
    .option(
      "--policy-epoch-max-age-ms <ms>",
      "credentials not confirmed by the policy-epoch channel for this long are revalidated on next use (default 60000)",
    )
    .option(
      "--hook-resync-ms <ms>",
      "re-check and repair the hook this often (0 = only at start; default 30000)",
    )
    .option("--ready-taint <key>", "remove this taint from the node once ready (needs get/patch on nodes)")
    .option(
      "--cni-state-dir <dir>",
      `the node's CNI result cache, which tells which pod holds an IP before the pod watch does (default ${DEFAULT_CNI_STATE_DIR}; empty: off)`,
    );
  addHookOptions(agent);
  agent.action(async (opts: Opts) => {
    const log = createLogger("agent");
    const cfg = agentConfigFrom(opts);
    const running = await startAgent(cfg, log);
    let stopping = false;
    const shutdown = (sig: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal: sig }, "shutting down");
      running.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: (err as Error).message }, "shutdown failed");
          process.exit(1);
        },
      );
    };
    process.on("SIGTERM", () => shutdown("SIGTERM"));
    process.on("SIGINT", () => shutdown("SIGINT"));
  });

  const hook = program.command("hook").description("install, check or remove the node's iptables hook");
  for (const [name, desc] of [
    ["init", "install (or repair) the hook; idempotent"],
    ["check", "exit 0 when the hook is fully in place, 1 otherwise"],
    ["uninstall", "remove every rule and chain the hook added, and nothing else"],
  ] as const) {
    const c = hook
      .command(name)
      .description(desc)
      .option("--imds-port <port>", "agent IMDS port (default 8180)")
      .option("--container-port <port>", "agent container-credentials port, or off (default 8181)");
    addHookOptions(c);
    c.action(async (opts: Opts) => {
      const r = new Resolver(opts, process.env);
      const base = hookFrom(r, name === "uninstall");
      const cp = r.str("--container-port") ?? "8181";
      const h = new Hook({
        ...base,
        imdsPort: r.int("--imds-port", 8180),
        containerPort: cp === "off" ? undefined : Number(cp),
      });
      if (name === "init") {
        const changed = await h.install();
        console.log(changed ? "hook installed" : "hook already in place");
      } else if (name === "check") {
        const ok = await h.check();
        console.log(ok ? "hook in place" : "hook missing or incomplete");
        process.exitCode = ok ? 0 : 1;
      } else {
        await h.uninstall();
        console.log("hook removed");
      }
    });
  }
}
