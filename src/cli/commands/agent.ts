import type { Command } from "commander";
import { createLogger } from "../../common/logger.ts";
import { startAgent, type AgentConfig } from "../../agent/agent.ts";
import { AGENT_DEFAULTS, DEFAULT_CNI_STATE_DIR, defaultAvailabilityZone } from "../../agent/defaults.ts";
import { Hook, type HookOptions } from "../../agent/hook/iptables.ts";
import { InvalidValue, parseInteger } from "../../common/config-values.ts";
import { FlagSource, configOrExit, type Environment, type ParsedFlags } from "../flag-source.ts";

export { envName } from "../flag-source.ts";
export { DEFAULT_CNI_STATE_DIR } from "../../agent/defaults.ts";

const PORT = { min: 0, max: 65535 };

/** --hook-ipv6: auto (the node has IPv6), on or off. */
function hookIpv6(flags: FlagSource): boolean | undefined {
  return flags.custom("--hook-ipv6", (text) => {
    if (text === "auto") return undefined;
    if (text === "on" || text === "off") return text === "on";
    throw new InvalidValue(`expected auto, on or off, got "${text}"`);
  });
}

/** Hook options from flags; for `uninstall` only the chain and the binaries matter. */
function hookFrom(flags: FlagSource, forUninstall = false): Omit<HookOptions, "imdsPort" | "containerPort"> {
  const common = {
    chain: flags.string("--hook-chain") ?? AGENT_DEFAULTS.hookChain,
    iptables: flags.string("--iptables") ?? AGENT_DEFAULTS.iptables,
    ip6tables: flags.string("--ip6tables"),
    ipv6: hookIpv6(flags),
  };
  // removal finds our chains and jumps by name: pod selection and the DNAT target play no part
  if (forUninstall)
    return { ...common, podInterfaces: ["x"], podCidrs: [], agentIp: "127.0.0.1", flushConntrack: false };
  return {
    ...common,
    podInterfaces: flags.list("--hook-pod-interface", []),
    podCidrs: flags.list("--hook-pod-cidr", []),
    agentIp: flags.required("--hook-agent-ip", "NODE_IP"),
    flushConntrack: flags.boolean("--conntrack-flush", AGENT_DEFAULTS.conntrackFlush),
  };
}

/**
 * The agent configuration from parsed flags and the environment, as a pure function: defaults
 * (AGENT_DEFAULTS) → flag, else environment variable → validated values. Bad values throw one
 * ConfigError naming the flag and its environment variable.
 */
export function agentConfigFrom(opts: ParsedFlags, env: Environment = process.env): AgentConfig {
  const flags = new FlagSource(opts, env);
  const defaults = AGENT_DEFAULTS;
  const region = flags.string("--region", "AWS_REGION", "AWS_DEFAULT_REGION") ?? defaults.region;
  const containerOff = flags.string("--container-listen") === "off";
  const hookOn = flags.boolean("--hook", defaults.hookEnabled);
  return {
    nodeName: flags.required("--node-name", "NODE_NAME"),
    serverUrl: flags.url("--server-url", ["https:", "http:"]) ?? flags.required("--server-url"),
    serverCaFile: flags.string("--server-ca-file"),
    tokenFile: flags.string("--token-file") ?? defaults.tokenFile,
    serverTimeoutMs: flags.duration("--server-timeout-ms", "ms", defaults.serverTimeoutMs, { min: 1 }),
    kubeconfig: flags.string("--kubeconfig"),
    imdsListen: flags.hostPort("--imds-listen", defaults.imdsListen),
    containerListen: containerOff
      ? undefined
      : flags.hostPort("--container-listen", defaults.containerListen),
    opsListen: flags.hostPort("--ops-listen", defaults.opsListen),
    requireImdsV2: flags.boolean("--require-imdsv2", defaults.requireImdsV2),
    allowHostNetwork: flags.boolean("--allow-host-network", defaults.allowHostNetwork),
    unknownPodWaitMs: flags.duration("--unknown-pod-wait-ms", "ms", defaults.unknownPodWaitMs),
    credentialWaitMs: flags.duration("--credential-wait-ms", "ms", defaults.credentialWaitMs),
    maxWaiting: flags.integer("--max-waiting", defaults.maxWaiting, { min: 0 }),
    maxWaitingPerSource: flags.integer("--max-waiting-per-source", defaults.maxWaitingPerSource, { min: 0 }),
    // a cap of 0 would refuse every pod
    maxConnections: flags.integer("--max-connections", defaults.maxConnections, { min: 1 }),
    maxConnectionsPerSource: flags.integer("--max-connections-per-source", defaults.maxConnectionsPerSource, {
      min: 1,
    }),
    region,
    availabilityZone: flags.string("--availability-zone") ?? defaultAvailabilityZone(region),
    accountId: flags.string("--account-id") ?? defaults.accountId,
    instanceId: flags.string("--instance-id") ?? defaults.instanceId,
    instanceType: flags.string("--instance-type") ?? defaults.instanceType,
    passthroughPaths: flags.list("--passthrough", []),
    upstreamImdsUrl: flags.url("--upstream-imds-url", ["http:"]) ?? defaults.upstreamImdsUrl,
    rateLimitRps: flags.integer("--rate-limit-rps", defaults.rateLimitRps, { min: 0 }),
    rateLimitBurst: flags.integer("--rate-limit-burst", defaults.rateLimitBurst, { min: 0 }),
    imdsTokenKeyFile: flags.string("--imds-token-key-file"),
    hook: hookOn ? hookFrom(flags) : undefined,
    uninstallHookOnExit: flags.boolean("--uninstall-hook-on-exit", defaults.uninstallHookOnExit),
    watchStaleAfterMs: flags.duration("--watch-stale-after-ms", "ms", defaults.watchStaleAfterMs),
    readyTaintKey: flags.string("--ready-taint"),
    hookResyncMs: flags.duration("--hook-resync-ms", "ms", defaults.hookResyncMs),
    imdsFastPath: flags.boolean("--imds-fast-path", defaults.imdsFastPath),
    // empty disables it (the pod watch alone then attributes IPs)
    cniStateDir: (flags.string("--cni-state-dir") ?? defaults.cniStateDir) || undefined,
    cniRescanMs: defaults.cniRescanMs,
    policyEpochMaxAgeMs: flags.duration("--policy-epoch-max-age-ms", "ms", defaults.policyEpochMaxAgeMs),
    handoverDir: (flags.string("--handover-dir") ?? defaults.handoverDir) || undefined,
    handoverPortOffset: flags.integer("--handover-port-offset", defaults.handoverPortOffset, {
      min: 1,
      max: 1000,
    }),
    handoverDrainMs: defaults.handoverDrainMs,
    handoverWarmTimeoutMs: defaults.handoverWarmTimeoutMs,
    handoverStopWaitMs: defaults.handoverStopWaitMs,
    handoverSuccessorWaitMs: defaults.handoverSuccessorWaitMs,
  };
}

/** The hook subcommands' ports: the agent's listeners' defaults, or off for the container port. */
function hookPorts(flags: FlagSource): { imdsPort: number; containerPort: number | undefined } {
  const containerPort = flags.custom("--container-port", (text) =>
    text === "off" ? null : parseInteger(text, PORT),
  );
  return {
    imdsPort: flags.integer("--imds-port", AGENT_DEFAULTS.imdsListen.port, PORT),
    containerPort:
      containerPort === null ? undefined : (containerPort ?? AGENT_DEFAULTS.containerListen.port),
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
      "how long a request from an unknown IP waits for the pod watch (default 800)",
    )
    .option(
      "--credential-wait-ms <ms>",
      "how long a request waits for the credential service on a cache miss; both waits together at most the larger (default 800)",
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
      "--handover-dir <dir>",
      "root-only host directory of the hand-over socket: a new agent on the node takes over the token key, credentials and hook from the running one (empty: off)",
    )
    .option(
      "--handover-port-offset <n>",
      "the second port slot agents alternate to across hand-overs: IMDS and container ports plus this (default 10)",
    )
    .option(
      "--cni-state-dir <dir>",
      `the node's CNI result cache, which tells which pod holds an IP before the pod watch does (default ${DEFAULT_CNI_STATE_DIR}; empty: off)`,
    );
  addHookOptions(agent);
  agent.action(async (opts: ParsedFlags) => {
    const log = createLogger("agent");
    const cfg = configOrExit("agent", () => agentConfigFrom(opts));
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
    c.action(async (opts: ParsedFlags) => {
      const flags = new FlagSource(opts, process.env);
      const h = new Hook(
        configOrExit(`hook ${name}`, () => ({
          ...hookFrom(flags, name === "uninstall"),
          ...hookPorts(flags),
        })),
      );
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
