// `keycutter agent`'s configuration as a pure function of its flags and environment: the flags
// parsed by the command's own commander definition, then agentConfigFrom.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Command } from "commander";
import { goldenContainerArgs } from "./golden-chart.ts";
import { agentConfigFrom, registerAgentCommands } from "../../../src/cli/commands/agent.ts";
import { ConfigError, type Environment } from "../../../src/cli/flag-source.ts";
import { AGENT_DEFAULTS } from "../../../src/agent/defaults.ts";
import type { AgentConfig } from "../../../src/agent/agent.ts";

const REQUIRED: Environment = {
  NODE_NAME: "node-1",
  KEYCUTTER_SERVER_URL: "https://server:8443",
  NODE_IP: "10.0.0.5",
};

function configOf(args: string[], env: Environment = REQUIRED): AgentConfig {
  const program = new Command().exitOverride();
  registerAgentCommands(program);
  const agent = program.commands.find((c) => c.name() === "agent")!;
  const { unknown } = agent.parseOptions(args);
  assert.deepEqual(unknown, [], `unknown flags: ${unknown.join(" ")}`);
  return agentConfigFrom(agent.opts(), env);
}

/** What a node gets with only the required settings: AGENT_DEFAULTS, and nothing else. */
function productionDefaults(): AgentConfig {
  const d = AGENT_DEFAULTS;
  return {
    nodeName: "node-1",
    serverUrl: "https://server:8443",
    serverCaFile: undefined,
    tokenFile: d.tokenFile,
    serverTimeoutMs: d.serverTimeoutMs,
    kubeconfig: undefined,
    imdsListen: d.imdsListen,
    containerListen: d.containerListen,
    opsListen: d.opsListen,
    requireImdsV2: d.requireImdsV2,
    allowHostNetwork: d.allowHostNetwork,
    unknownPodWaitMs: d.unknownPodWaitMs,
    credentialWaitMs: d.credentialWaitMs,
    maxWaiting: d.maxWaiting,
    maxWaitingPerSource: d.maxWaitingPerSource,
    maxConnections: d.maxConnections,
    maxConnectionsPerSource: d.maxConnectionsPerSource,
    region: d.region,
    availabilityZone: `${d.region}a`,
    accountId: d.accountId,
    instanceId: d.instanceId,
    instanceType: d.instanceType,
    passthroughPaths: [],
    upstreamImdsUrl: d.upstreamImdsUrl,
    rateLimitRps: d.rateLimitRps,
    rateLimitBurst: d.rateLimitBurst,
    imdsTokenKeyFile: undefined,
    hook: {
      chain: d.hookChain,
      iptables: d.iptables,
      ip6tables: undefined,
      ipv6: undefined,
      podInterfaces: [],
      podCidrs: [],
      agentIp: "10.0.0.5",
      flushConntrack: d.conntrackFlush,
    },
    uninstallHookOnExit: d.uninstallHookOnExit,
    watchStaleAfterMs: d.watchStaleAfterMs,
    readyTaintKey: undefined,
    hookResyncMs: d.hookResyncMs,
    imdsFastPath: d.imdsFastPath,
    cniStateDir: d.cniStateDir,
    cniRescanMs: d.cniRescanMs,
    policyEpochMaxAgeMs: d.policyEpochMaxAgeMs,
    handoverDir: undefined,
    handoverPortOffset: d.handoverPortOffset,
    handoverDrainMs: d.handoverDrainMs,
    handoverWarmTimeoutMs: d.handoverWarmTimeoutMs,
    handoverStopWaitMs: d.handoverStopWaitMs,
    handoverSuccessorWaitMs: d.handoverSuccessorWaitMs,
  };
}

describe("agentConfigFrom", () => {
  it("with only the required settings is AGENT_DEFAULTS", () => {
    assert.deepEqual(configOf([]), productionDefaults());
  });

  it("the chart's default command line differs from the defaults only where the chart says so", () => {
    const [command, ...rendered] = goldenContainerArgs("DaemonSet", "keycutter-agent", "agent");
    assert.equal(command, "agent");
    const args = rendered.map((a) =>
      a.replace("$(NODE_NAME)", "node-1").replace(/\$\(NODE_IP\)/g, "10.0.0.5"),
    );
    const defaults = productionDefaults();
    const node = { host: "10.0.0.5" };
    assert.deepEqual(configOf(args, {}), {
      ...defaults,
      serverUrl: "https://keycutter-server.keycutter-system.svc:8443",
      serverCaFile: "/etc/keycutter/ca/ca.crt",
      imdsListen: { ...defaults.imdsListen, ...node },
      containerListen: { ...defaults.containerListen!, ...node },
      opsListen: { ...defaults.opsListen, ...node },
      requireImdsV2: true,
      hook: { ...defaults.hook!, podInterfaces: ["eni+", "veth+", "cni0", "cbr0"] },
      // the chart turns the hand-over on (agent.handover)
      handoverDir: "/run/keycutter",
    });
  });

  it("refuses bad values with one error naming the flag and its environment variable", () => {
    const cases: Array<[string[], Environment, RegExp]> = [
      [
        ["--server-url=ftp://server"],
        REQUIRED,
        /^--server-url \(env KEYCUTTER_SERVER_URL\): expected a URL with scheme https: or http:/,
      ],
      [
        [],
        { ...REQUIRED, KEYCUTTER_SERVER_URL: "server:8443" },
        /^KEYCUTTER_SERVER_URL \(flag --server-url\)/,
      ],
      [
        ["--unknown-pod-wait-ms=-1"],
        REQUIRED,
        /^--unknown-pod-wait-ms \(env KEYCUTTER_UNKNOWN_POD_WAIT_MS\): expected an integer from 0/,
      ],
      [
        [],
        { ...REQUIRED, KEYCUTTER_HOOK_RESYNC_MS: "30s" },
        /^KEYCUTTER_HOOK_RESYNC_MS \(flag --hook-resync-ms\)/,
      ],
      [["--max-connections=0"], REQUIRED, /--max-connections .*at least 1/],
      [["--rate-limit-rps=-5"], REQUIRED, /--rate-limit-rps .*at least 0/],
      [["--upstream-imds-url=https://169.254.169.254"], REQUIRED, /--upstream-imds-url .*scheme http:/],
      [["--ops-listen=8182"], REQUIRED, /^--ops-listen \(env KEYCUTTER_OPS_LISTEN\): expected host:port/],
      [
        [],
        { ...REQUIRED, KEYCUTTER_REQUIRE_IMDSV2: "maybe" },
        /^KEYCUTTER_REQUIRE_IMDSV2 \(flag --require-imdsv2\): expected true or false/,
      ],
      [["--hook-ipv6=maybe"], REQUIRED, /^--hook-ipv6 \(env KEYCUTTER_HOOK_IPV6\): expected auto, on or off/],
      [
        [],
        { KEYCUTTER_SERVER_URL: "https://s" },
        /^--node-name \(or KEYCUTTER_NODE_NAME, NODE_NAME\) is required$/,
      ],
      [
        [],
        { NODE_NAME: "n", KEYCUTTER_SERVER_URL: "https://s" },
        /--hook-agent-ip \(or KEYCUTTER_HOOK_AGENT_IP, NODE_IP\) is required/,
      ],
    ];
    for (const [args, env, message] of cases)
      assert.throws(
        () => configOf(args, env),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
        args.join(" ") || JSON.stringify(env),
      );
  });
});
