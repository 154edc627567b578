// `keycutter server`'s configuration as a pure function of its flags and environment: the flags
// parsed by the command's own commander definition, then serverConfigFrom.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Command } from "commander";
import { goldenContainerArgs } from "./golden-chart.ts";
import { registerServerCommands, serverConfigFrom } from "../../../src/cli/commands/server.ts";
import { ConfigError, type Environment } from "../../../src/cli/flag-source.ts";
import { SERVER_DEFAULTS, type ServerConfig } from "../../../src/server/config.ts";
import { DEFAULT_SERVICE_OPTIONS } from "../../../src/server/service.ts";
import { DEFAULT_REVIEW_BUDGETS } from "../../../src/server/k8s/token-review.ts";

/** The flags as `keycutter server ARGS` hands them to its action. */
function flagsOf(args: string[]): Record<string, unknown> {
  const program = new Command().exitOverride();
  registerServerCommands(program);
  const server = program.commands.find((c) => c.name() === "server")!;
  const { unknown } = server.parseOptions(args);
  assert.deepEqual(unknown, [], `unknown flags: ${unknown.join(" ")}`);
  return server.opts();
}

function configOf(args: string[], env: Environment = {}): ServerConfig {
  return serverConfigFrom(flagsOf(args), env, "host-1");
}

/** The production defaults as a config: SERVER_DEFAULTS less what only the component reads. */
function defaultsAsConfig(): ServerConfig {
  const { statusIntervalMs: _componentOnly, ...fromCli } = SERVER_DEFAULTS;
  return { ...fromCli, identity: "host-1" };
}

describe("serverConfigFrom", () => {
  it("with nothing given is SERVER_DEFAULTS, the identity the host name", () => {
    assert.deepEqual(configOf([]), defaultsAsConfig());
  });

  it("SERVER_DEFAULTS are the service's and the TokenReviewer's own defaults", () => {
    for (const key of [
      "maxDurationSeconds",
      "sourceIdentity",
      "cacheMinRemainingSeconds",
      "stsRatePerSecond",
      "stsBurst",
    ] as const)
      assert.equal(SERVER_DEFAULTS[key], DEFAULT_SERVICE_OPTIONS[key], key);
    assert.deepEqual(SERVER_DEFAULTS.agentReviewBudget, DEFAULT_REVIEW_BUDGETS.agent);
    assert.deepEqual(SERVER_DEFAULTS.podReviewBudget, DEFAULT_REVIEW_BUDGETS.pod);
  });

  it("the chart's default command line is the production defaults with its self-managed TLS", () => {
    const [command, ...args] = goldenContainerArgs("Deployment", "keycutter-server", "server");
    assert.equal(command, "server");
    const config = configOf(args, {
      POD_NAME: "server-0",
      POD_NAMESPACE: "keycutter-system",
    });
    assert.deepEqual(config, {
      ...defaultsAsConfig(),
      tlsSecret: "keycutter-server-managed-tls",
      tlsSans: [
        "keycutter-server",
        "keycutter-server.keycutter-system",
        "keycutter-server.keycutter-system.svc",
        "keycutter-server.keycutter-system.svc.cluster.local",
      ],
      identity: "server-0",
    });
  });

  it("takes each setting from its flag, else its environment variable", () => {
    const env: Environment = {
      KEYCUTTER_STS_RATE: "10",
      KEYCUTTER_LISTEN: "127.0.0.1:1",
      AWS_REGION: "eu-west-1",
      AWS_ENDPOINT_URL_STS: "http://127.0.0.1:5000",
      KEYCUTTER_AGENT_SERVICE_ACCOUNTS: "a/b, c/d",
      KEYCUTTER_REDIS_URL: "rediss://cache:6380",
      KEYCUTTER_CACHE_KEY_FILE: "/k",
      POD_NAME: "replica-7",
      POD_NAMESPACE: "platform",
      KEYCUTTER_MAX_DURATION: "",
    };
    const fromEnv = configOf([], env);
    assert.equal(fromEnv.stsRatePerSecond, 10);
    assert.deepEqual([fromEnv.listenHost, fromEnv.listenPort], ["127.0.0.1", 1]);
    assert.equal(fromEnv.region, "eu-west-1");
    assert.equal(fromEnv.stsEndpoint, "http://127.0.0.1:5000");
    assert.deepEqual(fromEnv.agentServiceAccounts, ["a/b", "c/d"]);
    assert.equal(fromEnv.redisUrl, "rediss://cache:6380");
    assert.equal(fromEnv.cacheKeyFile, "/k");
    assert.equal(fromEnv.identity, "replica-7");
    assert.equal(fromEnv.leaseNamespace, "platform");
    // an empty variable is unset (a chart's `value: ""`)
    assert.equal(fromEnv.maxDurationSeconds, SERVER_DEFAULTS.maxDurationSeconds);

    const flagsWin = configOf(
      [
        "--sts-rate=0.5",
        "--region",
        "ap-south-1",
        "--agent-service-account=x/y",
        "--agent-service-account",
        "z/w",
      ],
      env,
    );
    assert.equal(flagsWin.stsRatePerSecond, 0.5);
    assert.equal(flagsWin.region, "ap-south-1");
    assert.deepEqual(flagsWin.agentServiceAccounts, ["x/y", "z/w"]);
  });

  it("turns switches off with --no-…", () => {
    const config = configOf(["--no-source-identity", "--no-leader-elect", "--insecure-http"]);
    assert.equal(config.sourceIdentity, false);
    assert.equal(config.leaderElection, false);
    assert.equal(config.insecureHttp, true);
  });

  it("scales each review budget's bursts with its rates, as the defaults do", () => {
    const config = configOf([
      "--agent-review-rate=10",
      "--agent-review-rate-per-source=1",
      "--pod-review-rate-per-node=5",
    ]);
    assert.deepEqual(config.agentReviewBudget, {
      ratePerSecond: 10,
      burst: 20,
      perSourceRatePerSecond: 1,
      perSourceBurst: 4,
    });
    assert.deepEqual(config.podReviewBudget, {
      ...DEFAULT_REVIEW_BUDGETS.pod,
      perSourceRatePerSecond: 5,
      perSourceBurst: 30,
    });
  });

  it("refuses bad values with one error naming the flag and its environment variable", () => {
    const cases: Array<[string[], Environment, RegExp]> = [
      [
        ["--sts-rate=abc"],
        {},
        /^--sts-rate \(env KEYCUTTER_STS_RATE\): expected a number above 0, got "abc"$/,
      ],
      [["--sts-rate=0"], {}, /--sts-rate .*above 0/],
      [
        [],
        { KEYCUTTER_MAX_DURATION: "0" },
        /^KEYCUTTER_MAX_DURATION \(flag --max-duration\): expected an integer from 1/,
      ],
      [["--max-duration=3600.5"], {}, /--max-duration/],
      [["--sts-burst=-1"], {}, /--sts-burst .*at least 1/],
      [["--sts-max-attempts=1e3"], {}, /--sts-max-attempts/],
      [["--listen=8443"], {}, /^--listen \(env KEYCUTTER_LISTEN\): expected host:port/],
      [["--ops-listen=:99999"], {}, /--ops-listen/],
      [["--agent-service-account=keycutter-agent"], {}, /--agent-service-account .*NAMESPACE\/NAME/],
      [
        [],
        { KEYCUTTER_AGENT_SERVICE_ACCOUNTS: "ns/ok,Bad" },
        /^KEYCUTTER_AGENT_SERVICE_ACCOUNTS \(flag --agent-service-account\)/,
      ],
      [["--redis-url=http://cache:6379"], {}, /--redis-url .*redis: or rediss:/],
      [[], { AWS_ENDPOINT_URL_STS: "sts.local" }, /^AWS_ENDPOINT_URL_STS \(flag --sts-endpoint\)/],
      [["--agent-review-rate=fast"], {}, /--agent-review-rate \(env KEYCUTTER_AGENT_REVIEW_RATE\)/],
    ];
    for (const [args, env, message] of cases)
      assert.throws(
        () => configOf(args, env),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
        args.join(" ") || JSON.stringify(env),
      );
  });
});
