import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Hook,
  filterRules,
  filterRules6,
  ip6tablesFor,
  natRules,
  splitWords,
  type Runner,
} from "../../../src/agent/hook/iptables.ts";
import { agentConfigFrom, envName } from "../../../src/cli/commands/agent.ts";

const base = {
  chain: "KEYCUTTER",
  podInterfaces: ["cbr0"],
  podCidrs: [],
  agentIp: "10.1.255.10",
  imdsPort: 8180,
  containerPort: 8181,
  flushConntrack: false,
  ipv6: false,
};

test("hook rules: DNAT both metadata addresses per selector; fail-closed REJECTs", () => {
  const nat = natRules(base).map((r) => r.join(" "));
  assert.equal(nat.length, 2);
  assert.match(
    nat[0]!,
    /-d 169\.254\.169\.254\/32 -i cbr0 .*--dport 80 .*-j DNAT --to-destination 10\.1\.255\.10:8180/,
  );
  assert.match(nat[1]!, /-d 169\.254\.170\.23\/32 -i cbr0 .*-j DNAT --to-destination 10\.1\.255\.10:8181/);
  const byCidr = natRules({ ...base, podInterfaces: [], podCidrs: ["10.1.0.0/24", "10.1.1.0/24"] });
  assert.equal(byCidr.length, 4);
  assert.ok(byCidr.every((r) => r.includes("-s")));
  const fc = filterRules(base).map((r) => r.join(" "));
  assert.deepEqual(fc, [
    "-d 169.254.169.254/32 ! -i lo -p tcp -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
    "-d 169.254.169.254/32 ! -i lo -m comment --comment keycutter -j REJECT --reject-with icmp-port-unreachable",
    "-d 169.254.170.23/32 ! -i lo -p tcp -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
    "-d 169.254.170.23/32 ! -i lo -m comment --comment keycutter -j REJECT --reject-with icmp-port-unreachable",
    "! -i lo -p tcp -m tcp --dport 8180 -m addrtype --dst-type LOCAL -m conntrack ! --ctstate DNAT -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
    "! -i lo -p tcp -m tcp --dport 8181 -m addrtype --dst-type LOCAL -m conntrack ! --ctstate DNAT -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
  ]);
});

test("fail-closed rules do not depend on the pod selection (interfaces or CIDRs)", () => {
  const byCidr = { ...base, podInterfaces: [], podCidrs: ["10.1.0.0/24"] };
  assert.deepEqual(filterRules(byCidr), filterRules(base));
  assert.deepEqual(filterRules6(byCidr), filterRules6(base));
  const noContainer = filterRules({ ...base, containerPort: undefined }).map((r) => r.join(" "));
  assert.ok(noContainer.some((r) => r.includes("--dport 8180")));
  assert.ok(!noContainer.some((r) => r.includes("--dport 8181")));
});

test("IPv6: the metadata addresses are rejected from anywhere but the node; no off-node connection to the agent", () => {
  const v6 = filterRules6(base).map((r) => r.join(" "));
  assert.deepEqual(v6, [
    "-d fd00:ec2::254/128 ! -i lo -p tcp -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
    "-d fd00:ec2::254/128 ! -i lo -m comment --comment keycutter -j REJECT --reject-with icmp6-port-unreachable",
    "-d fd00:ec2::23/128 ! -i lo -p tcp -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
    "-d fd00:ec2::23/128 ! -i lo -m comment --comment keycutter -j REJECT --reject-with icmp6-port-unreachable",
    "! -i lo -p tcp -m tcp --dport 8180 -m addrtype --dst-type LOCAL -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
    "! -i lo -p tcp -m tcp --dport 8181 -m addrtype --dst-type LOCAL -m comment --comment keycutter -j REJECT --reject-with tcp-reset",
  ]);
  assert.equal(ip6tablesFor("iptables"), "ip6tables");
  assert.equal(ip6tablesFor("iptables-nft"), "ip6tables-nft");
  assert.equal(ip6tablesFor("/usr/sbin/iptables-legacy"), "/usr/sbin/ip6tables-legacy");
});

test("hook validates its options (no shell injection possible)", () => {
  assert.throws(() => new Hook({ ...base, chain: "a;b" }));
  assert.throws(() => new Hook({ ...base, podInterfaces: ["eth0 -j ACCEPT"] }));
  assert.throws(() => new Hook({ ...base, podInterfaces: [], podCidrs: [] }));
  assert.throws(() => new Hook({ ...base, agentIp: "example.com" }));
});

/** A fake iptables/ip6tables: chains and jumps per binary; records "<binary> <args>" of each call. */
function fakeIptables(calls: string[]): Runner {
  const state = new Set<string>();
  return async (cmd, args) => {
    const a = `${cmd} ${args.slice(2).join(" ")}`;
    calls.push(a);
    if (a.includes(" -C "))
      return { code: state.has(a.replace(" -C ", " X ")) ? 0 : 1, stdout: "", stderr: "" };
    if (a.includes(" -I ")) state.add(a.replace(/ -I (\S+) 1 /, " X $1 "));
    const n = / -N (\S+)/.exec(a);
    if (n) state.add(`${cmd} chain ${n[1]}`);
    const sc = / -S (\S+)/.exec(a);
    if (sc)
      return state.has(`${cmd} chain ${sc[1]}`)
        ? { code: 0, stdout: "", stderr: "" }
        : { code: 1, stdout: "", stderr: "no chain" };
    return { code: 0, stdout: "", stderr: "" };
  };
}

test("install adds each jump once, in front; with IPv6, the fail-closed jumps in ip6tables too", async () => {
  const calls: string[] = [];
  const h = new Hook(base, fakeIptables(calls));
  await h.install();
  const inserted = (): string[] =>
    calls.filter((c) => c.includes(" -I ")).map((c) => c.split(" ").slice(0, 6).join(" "));
  assert.deepEqual(inserted(), [
    "iptables -t nat -I PREROUTING 1",
    "iptables -t filter -I INPUT 1",
    "iptables -t filter -I FORWARD 1",
  ]);
  calls.length = 0;
  await h.install();
  assert.equal(inserted().length, 0, "jumps not duplicated");

  calls.length = 0;
  const h6 = new Hook({ ...base, ipv6: true, iptables: "iptables-nft" }, fakeIptables(calls));
  assert.equal(h6.ipv6, true);
  await h6.install();
  assert.deepEqual(inserted(), [
    "iptables-nft -t nat -I PREROUTING 1",
    "iptables-nft -t filter -I INPUT 1",
    "iptables-nft -t filter -I FORWARD 1",
    "ip6tables-nft -t filter -I INPUT 1",
    "ip6tables-nft -t filter -I FORWARD 1",
  ]);
  assert.ok(calls.some((c) => c.startsWith("ip6tables-nft -t filter -A KEYCUTTER-FC -d fd00:ec2::254/128")));
  assert.ok(!calls.some((c) => c.startsWith("ip6tables-nft -t nat")), "no IPv6 DNAT: refused, not served");
});

test("splitWords keeps quoted comments", () => {
  assert.deepEqual(splitWords('-A X -m comment --comment "a b" -j DNAT'), [
    "-A",
    "X",
    "-m",
    "comment",
    "--comment",
    "a b",
    "-j",
    "DNAT",
  ]);
});

test("agent config: flags win over env; env fallbacks; hook needs an agent IP", () => {
  assert.equal(envName("--server-url"), "KEYCUTTER_SERVER_URL");
  const env = {
    KEYCUTTER_SERVER_URL: "https://env:8443",
    NODE_NAME: "node-from-env",
    NODE_IP: "10.0.0.5",
    KEYCUTTER_REQUIRE_IMDSV2: "true",
    AWS_REGION: "eu-west-1",
  };
  const c = agentConfigFrom({ serverUrl: "https://flag:8443", hookPodInterface: "cbr0,veth+" }, env);
  assert.equal(c.serverUrl, "https://flag:8443");
  assert.equal(c.nodeName, "node-from-env");
  assert.equal(c.requireImdsV2, true);
  assert.equal(c.region, "eu-west-1");
  assert.equal(c.availabilityZone, "eu-west-1a");
  assert.deepEqual(c.hook?.podInterfaces, ["cbr0", "veth+"]);
  assert.equal(c.hook?.agentIp, "10.0.0.5");
  assert.deepEqual(c.imdsListen, { host: "0.0.0.0", port: 8180 });
  assert.equal(agentConfigFrom({ hook: false, containerListen: "off" }, env).hook, undefined);
  assert.equal(agentConfigFrom({ hook: false, containerListen: "off" }, env).containerListen, undefined);
  assert.throws(() => agentConfigFrom({}, { NODE_NAME: "n" }), /--server-url/);
  assert.throws(() => agentConfigFrom({ imdsListen: "nope" }, env), /host:port/);
  assert.equal(c.hook?.ipv6, undefined, "IPv6 rules: auto by default");
  assert.equal(agentConfigFrom({ hookIpv6: "off" }, env).hook?.ipv6, false);
  assert.equal(
    agentConfigFrom({ hookIpv6: "on", ip6tables: "/sbin/ip6tables-legacy" }, env).hook?.ip6tables,
    "/sbin/ip6tables-legacy",
  );
  assert.throws(() => agentConfigFrom({ hookIpv6: "maybe" }, env), /--hook-ipv6/);
  assert.deepEqual(
    [c.maxWaiting, c.maxWaitingPerSource, c.maxConnections, c.maxConnectionsPerSource],
    [1024, 4, 4096, 32],
  );
  assert.equal(agentConfigFrom({ maxConnectionsPerSource: "8" }, env).maxConnectionsPerSource, 8);
  assert.throws(() => agentConfigFrom({ maxConnectionsPerSource: "0" }, env), /at least 1/);
});

test("the nat chain is replaced in one iptables-restore --noflush transaction, with the owner's generation", async () => {
  const restores: Array<{ cmd: string; args: string[]; input: string | undefined }> = [];
  const calls: string[] = [];
  const fake = fakeIptables(calls);
  const run: Runner = async (cmd, args, input) => {
    if (cmd.endsWith("-restore")) {
      restores.push({ cmd, args, input });
      return { code: 0, stdout: "", stderr: "" };
    }
    return fake(cmd, args);
  };
  await new Hook(
    { ...base, iptables: "iptables-nft", generation: 4, extraGuardedPorts: [8190, 8191] },
    run,
  ).install();
  assert.equal(restores.length, 1);
  assert.equal(restores[0]!.cmd, "iptables-nft-restore", "the same backend as the other rules");
  assert.deepEqual(restores[0]!.args, ["-w", "5", "--noflush"]);
  const lines = restores[0]!.input!.split("\n");
  assert.deepEqual(lines.slice(0, 2), ["*nat", ":KEYCUTTER - [0:0]"]);
  assert.ok(lines.includes("COMMIT"));
  assert.equal(lines.filter((l) => l.includes("--comment keycutter:gen=4 -j DNAT")).length, 2);
  assert.ok(!calls.some((c) => c.includes("-t nat -A KEYCUTTER")), "no rule-by-rule nat writes");
  // the fail-closed chain guards the other slot's ports too
  assert.ok(calls.some((c) => c.includes("-A KEYCUTTER-FC") && c.includes("--dport 8190")));
  assert.ok(calls.some((c) => c.includes("-A KEYCUTTER-FC") && c.includes("--dport 8191")));
});
