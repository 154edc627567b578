// The node hook: our own iptables chains that DNAT pod traffic for the metadata addresses to the
// agent, plus a fail-closed chain that rejects whatever is not DNATed (so with the agent down or
// the DNAT missing, pods get a refused connection, never the real IMDS), and any connection to
// the agent's pod-facing ports that did not come through the DNAT. Idempotent: install
// rewrites our chains only when they differ and adds each jump once; uninstall removes exactly
// the jumps and chains install added.
//
// The IPv6 metadata addresses (an instance with the IMDS IPv6 endpoint on, EKS's fd00:ec2::23)
// are not served: pods' traffic to them is only rejected, by the same fail-closed chain in
// ip6tables, so a dual-stack pod cannot take the node's role over IPv6 either.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export const IMDS_IP = "169.254.169.254";
export const CONTAINER_IP = "169.254.170.23";
export const IMDS_IP6 = "fd00:ec2::254";
export const CONTAINER_IP6 = "fd00:ec2::23";

export interface HookOptions {
  /** Base chain name (nat table); the fail-closed chain is `${chain}-FC` (filter table). */
  chain: string;
  /** Pod-facing interfaces (iptables -i syntax, `+` wildcard), e.g. ["cbr0", "veth+"]. */
  podInterfaces: string[];
  /** Pod CIDRs (iptables -s syntax). Used when no interface is given. */
  podCidrs: string[];
  /** Where the agent listens (an address of this node). */
  agentIp: string;
  imdsPort: number;
  /** Container-credentials port; undefined: 169.254.170.23 is not hooked. */
  containerPort: number | undefined;
  /** Flush conntrack entries to the metadata addresses after install. */
  flushConntrack: boolean;
  iptables?: string;
  /** Default: the ip6tables of the same backend as `iptables` (iptables-nft → ip6tables-nft). */
  ip6tables?: string;
  /** Whether this node has IPv6 (default: /proc/net/if_inet6 exists); without it, no IPv6 rules. */
  ipv6?: boolean;
  conntrack?: string;
  /**
   * Further agent ports the fail-closed chain guards like imdsPort and containerPort: the other
   * hand-over slot's (handover.ts), so that whichever agent owns the DNAT, no connection from
   * off the node reaches either.
   */
  extraGuardedPorts?: number[];
  /**
   * The hand-over generation written into the DNAT rules' comment (`keycutter:gen=N`): the
   * ownership marker, which only moves forward; undefined: plain `keycutter`.
   */
  generation?: number;
}

/** Who the DNAT rules point at, read back from the nat chain. */
export interface HookOwner {
  generation: number;
  imdsPort: number;
}

/** Runs a command, `input` (iptables-restore's) on its standard input when given. */
export type Runner = (
  cmd: string,
  args: string[],
  input?: string,
) => Promise<{ code: number; stdout: string; stderr: string }>;

export const defaultRunner: Runner = (cmd, args, input) =>
  new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err
        ? typeof (err as { code?: unknown }).code === "number"
          ? (err as { code: number }).code
          : 127
        : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(input ?? "");
  });

const COMMENT = "keycutter";
const NAME = /^[A-Za-z0-9_-]{1,25}$/;
const IFACE = /^[A-Za-z0-9_.:@-]{1,15}\+?$/;
const CIDR = /^[0-9.]+(\/[0-9]{1,2})?$/;
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function validateHookOptions(o: HookOptions): void {
  if (!NAME.test(o.chain)) throw new Error(`invalid chain name "${o.chain}" (1-25 of [A-Za-z0-9_-])`);
  for (const i of o.podInterfaces) if (!IFACE.test(i)) throw new Error(`invalid interface "${i}"`);
  for (const c of o.podCidrs) if (!CIDR.test(c)) throw new Error(`invalid pod CIDR "${c}"`);
  if (o.podInterfaces.length === 0 && o.podCidrs.length === 0) {
    throw new Error("the hook needs a pod interface or a pod CIDR to select pod traffic");
  }
  if (!IPV4.test(o.agentIp)) throw new Error(`invalid agent IP "${o.agentIp}"`);
}

function selectors(o: HookOptions): string[][] {
  return o.podInterfaces.length > 0
    ? o.podInterfaces.map((i) => ["-i", i])
    : o.podCidrs.map((c) => ["-s", c]);
}

/** The rules of our nat chain, in `iptables -S` form (without the `-A CHAIN` prefix). */
export function natRules(o: HookOptions): string[][] {
  const rules: string[][] = [];
  const targets: [string, number][] = [[IMDS_IP, o.imdsPort]];
  if (o.containerPort !== undefined) targets.push([CONTAINER_IP, o.containerPort]);
  for (const sel of selectors(o)) {
    for (const [ip, port] of targets) {
      rules.push([
        "-d",
        `${ip}/32`,
        ...sel,
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "80",
        "-m",
        "comment",
        "--comment",
        o.generation === undefined ? COMMENT : `${COMMENT}:gen=${o.generation}`,
        "-j",
        "DNAT",
        "--to-destination",
        `${o.agentIp}:${port}`,
      ]);
    }
  }
  return rules;
}

const REJECT_TAIL = ["-m", "comment", "--comment", COMMENT, "-j", "REJECT", "--reject-with"];

/** The agent's pod-facing ports: the only ports the hook guards on INPUT. */
function agentPorts(o: HookOptions): number[] {
  const own = o.containerPort === undefined ? [o.imdsPort] : [o.imdsPort, o.containerPort];
  return [...own, ...(o.extraGuardedPorts ?? []).filter((p) => !own.includes(p))];
}

/**
 * Rejects TCP to the agent's pod-facing ports on this node unless the hook DNATed it (or it is
 * the node's own, `lo`): a host that reaches the node IP directly is not a pod of this node, and
 * must not hold the agent's connections or waits. `addrtype LOCAL` keeps the rule to INPUT,
 * since the chain also sees FORWARD, where a pod's own service may use the same port.
 */
function agentPortRules(o: HookOptions, notDnated: string[]): string[][] {
  return agentPorts(o).map((port) => [
    "!",
    "-i",
    "lo",
    "-p",
    "tcp",
    "-m",
    "tcp",
    "--dport",
    String(port),
    "-m",
    "addrtype",
    "--dst-type",
    "LOCAL",
    ...notDnated,
    ...REJECT_TAIL,
    "tcp-reset",
  ]);
}

/**
 * The fail-closed filter chain (jumped to from INPUT and FORWARD). Everything still addressed to
 * a metadata IP was not DNATed to the agent, and is rejected whatever interface it came from: a
 * pod behind an interface nobody listed (`cali*`, `lxc*`, a Multus `net1`) is refused, never
 * forwarded to the real IMDS. Only the node itself (`lo`; its own processes leave through
 * OUTPUT, which the hook does not touch) is exempt. Then the agent's ports, DNATed traffic only.
 */
export function filterRules(o: HookOptions): string[][] {
  const rules: string[][] = [];
  for (const ip of [IMDS_IP, CONTAINER_IP]) {
    const match = ["-d", `${ip}/32`, "!", "-i", "lo"];
    rules.push([...match, "-p", "tcp", ...REJECT_TAIL, "tcp-reset"]);
    rules.push([...match, ...REJECT_TAIL, "icmp-port-unreachable"]);
  }
  rules.push(...agentPortRules(o, ["-m", "conntrack", "!", "--ctstate", "DNAT"]));
  return rules;
}

/**
 * The IPv6 fail-closed chain: the same rejects for the IPv6 metadata addresses. Nothing is
 * DNATed over IPv6, so no connection from off the node may reach the agent's ports either.
 */
export function filterRules6(o: HookOptions): string[][] {
  const rules: string[][] = [];
  for (const ip of [IMDS_IP6, CONTAINER_IP6]) {
    const match = ["-d", `${ip}/128`, "!", "-i", "lo"];
    rules.push([...match, "-p", "tcp", ...REJECT_TAIL, "tcp-reset"]);
    rules.push([...match, ...REJECT_TAIL, "icmp6-port-unreachable"]);
  }
  rules.push(...agentPortRules(o, []));
  return rules;
}

/** iptables-restore of the same backend as `iptables` (iptables-nft → iptables-nft-restore). */
export function restoreFor(iptables: string): string {
  return `${iptables}-restore`;
}

/** The owner marker of DNAT rules in `iptables -S` words, or undefined when they carry none. */
export function ownerOf(rules: string[][]): HookOwner | undefined {
  for (const words of rules) {
    const comment = words[words.indexOf("--comment") + 1]?.replace(/^"(.*)"$/, "$1") ?? "";
    const gen = /^keycutter:gen=([0-9]{1,15})$/.exec(comment);
    const to = words[words.indexOf("--to-destination") + 1] ?? "";
    const port = /:([0-9]{1,5})$/.exec(to);
    if (gen && port && words.includes("DNAT"))
      return { generation: Number(gen[1]), imdsPort: Number(port[1]) };
  }
  return undefined;
}

/** ip6tables of the same backend as `iptables` (same directory, same suffix). */
export function ip6tablesFor(iptables: string): string {
  const b = basename(iptables);
  if (!b.startsWith("iptables")) return "ip6tables";
  const six = "ip6" + b.slice(2);
  return iptables.includes("/") ? join(dirname(iptables), six) : six;
}

interface Jump {
  table: string;
  parent: string;
  chain: string;
}

function jumps(o: HookOptions): Jump[] {
  const fc = `${o.chain}-FC`;
  return [
    { table: "nat", parent: "PREROUTING", chain: o.chain },
    { table: "filter", parent: "INPUT", chain: fc },
    { table: "filter", parent: "FORWARD", chain: fc },
  ];
}

function jumpSpec(j: Jump): string[] {
  return ["-m", "comment", "--comment", COMMENT, "-j", j.chain];
}

/** One address family's tables: its binary, our chains with their rules, and the jumps to them. */
interface Family {
  bin: string;
  chains: Array<{ table: string; chain: string; rules: string[][] }>;
  jumps: Jump[];
}

export class Hook {
  private readonly o: HookOptions;
  private readonly run: Runner;
  private readonly families: Family[];

  constructor(o: HookOptions, run: Runner = defaultRunner) {
    validateHookOptions(o);
    this.o = o;
    this.run = run;
    const fc = `${o.chain}-FC`;
    const ipt = o.iptables ?? "iptables";
    // fail-closed chains first, so that no window exists where pod traffic reaches the real IMDS
    this.families = [
      {
        bin: ipt,
        chains: [
          { table: "filter", chain: fc, rules: filterRules(o) },
          { table: "nat", chain: o.chain, rules: natRules(o) },
        ],
        jumps: jumps(o),
      },
    ];
    if (o.ipv6 ?? existsSync("/proc/net/if_inet6")) {
      this.families.push({
        bin: o.ip6tables ?? ip6tablesFor(ipt),
        chains: [{ table: "filter", chain: fc, rules: filterRules6(o) }],
        jumps: jumps(o).filter((j) => j.table === "filter"),
      });
    }
  }

  /** True when the hook also guards the IPv6 metadata addresses. */
  get ipv6(): boolean {
    return this.families.length > 1;
  }

  private async ipt(
    f: Family,
    args: string[],
    allowFail = false,
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    const r = await this.run(f.bin, ["-w", "5", ...args]);
    if (r.code !== 0 && !allowFail)
      throw new Error(`${f.bin} ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
    return r;
  }

  private async chainExists(f: Family, table: string, chain: string): Promise<boolean> {
    return (await this.ipt(f, ["-t", table, "-S", chain], true)).code === 0;
  }

  /** Current rules of one of our chains, as arrays of words. */
  private async chainRules(f: Family, table: string, chain: string): Promise<string[][]> {
    const r = await this.ipt(f, ["-t", table, "-S", chain]);
    return r.stdout
      .split("\n")
      .filter((l) => l.startsWith(`-A ${chain} `))
      .map((l) => splitWords(l).slice(2));
  }

  private async syncChain(f: Family, table: string, chain: string, want: string[][]): Promise<boolean> {
    if (!(await this.chainExists(f, table, chain))) await this.ipt(f, ["-t", table, "-N", chain]);
    const have = await this.chainRules(f, table, chain);
    if (sameRules(have, want)) return false;
    if (table === "nat") {
      // One transaction: the DNAT target moves from one agent to the other with no moment where
      // a new connection finds neither (a hand-over switches exactly this chain).
      await this.restore(f, table, chain, want);
      return true;
    }
    // Append the new rules first, then delete the old ones from the top: there is never a
    // moment where the chain is empty.
    for (const r of want) await this.ipt(f, ["-t", table, "-A", chain, ...r]);
    for (let i = 0; i < have.length; i++) await this.ipt(f, ["-t", table, "-D", chain, "1"]);
    return true;
  }

  /** Replaces `chain`'s rules with `rules` in one iptables-restore --noflush transaction. */
  private async restore(f: Family, table: string, chain: string, rules: string[][]): Promise<void> {
    // declaring an existing chain in --noflush mode flushes just that chain, inside the commit
    const text = [
      `*${table}`,
      `:${chain} - [0:0]`,
      ...rules.map((r) => `-A ${chain} ${r.join(" ")}`),
      "COMMIT",
      "",
    ];
    const r = await this.run(restoreFor(f.bin), ["-w", "5", "--noflush"], text.join("\n"));
    if (r.code !== 0)
      throw new Error(`${restoreFor(f.bin)} --noflush failed (${r.code}): ${r.stderr.trim()}`);
  }

  /** The owner marker the DNAT rules carry now; undefined: no nat chain, or rules without one. */
  async owner(): Promise<HookOwner | undefined> {
    const f = this.families[0]!;
    if (!(await this.chainExists(f, "nat", this.o.chain))) return undefined;
    return ownerOf(await this.chainRules(f, "nat", this.o.chain));
  }

  /**
   * Installs (or repairs) the hook. Returns true when something changed. `keepConntrack`: a
   * hand-over's switch, where the tracked connections are the old agent's established ones,
   * which it drains (flushing them would reset them mid-request).
   */
  async install(opts: { keepConntrack?: boolean } = {}): Promise<boolean> {
    let changed = false;
    for (const f of this.families) {
      for (const c of f.chains) changed = (await this.syncChain(f, c.table, c.chain, c.rules)) || changed;
      for (const j of f.jumps) {
        const exists = await this.ipt(f, ["-t", j.table, "-C", j.parent, ...jumpSpec(j)], true);
        if (exists.code !== 0) {
          await this.ipt(f, ["-t", j.table, "-I", j.parent, "1", ...jumpSpec(j)]);
          changed = true;
        }
      }
    }
    // Connections opened before the DNAT existed would keep reaching the real IMDS: cut them.
    if (this.o.flushConntrack && changed && !opts.keepConntrack) await this.flushConntrack();
    return changed;
  }

  /** Deletes connections already tracked to the metadata addresses (opened before the DNAT). */
  async flushConntrack(): Promise<void> {
    const ct = this.o.conntrack ?? "conntrack";
    for (const ip of this.ipv6 ? [IMDS_IP, CONTAINER_IP, IMDS_IP6, CONTAINER_IP6] : [IMDS_IP, CONTAINER_IP]) {
      // Exit status 1 means "nothing deleted": fine.
      await this.run(ct, ["-D", "--orig-dst", ip]);
    }
  }

  /** True when every jump, chain and rule of the hook is in place. */
  async check(): Promise<boolean> {
    for (const f of this.families) {
      for (const j of f.jumps)
        if ((await this.ipt(f, ["-t", j.table, "-C", j.parent, ...jumpSpec(j)], true)).code !== 0)
          return false;
      for (const c of f.chains) {
        if (!(await this.chainExists(f, c.table, c.chain))) return false;
        if (!sameRules(await this.chainRules(f, c.table, c.chain), c.rules)) return false;
      }
    }
    return true;
  }

  /** Removes every jump and chain install added, and nothing else. Idempotent. */
  async uninstall(): Promise<void> {
    for (const f of this.families) {
      for (const j of f.jumps) {
        for (let i = 0; i < 16; i++) {
          const r = await this.ipt(f, ["-t", j.table, "-D", j.parent, ...jumpSpec(j)], true);
          if (r.code !== 0) break;
        }
      }
      // The DNAT jump went first and the fail-closed jumps after it, so a crash half-way leaves
      // pods refused, never pointed at the real IMDS. No traffic enters our chains any more.
      for (const c of [...f.chains].reverse()) {
        if (await this.chainExists(f, c.table, c.chain)) {
          await this.ipt(f, ["-t", c.table, "-F", c.chain]);
          await this.ipt(f, ["-t", c.table, "-X", c.chain]);
        }
      }
    }
    // Tracked connections keep their DNAT binding to the (gone) agent: drop them too.
    await this.flushConntrack();
  }
}

function sameRules(a: string[][], b: string[][]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (normalise(a[i]!) !== normalise(b[i]!)) return false;
  }
  return true;
}

function normalise(words: string[]): string {
  return words.map((w) => w.replace(/^"(.*)"$/, "$1")).join(" ");
}

/** Splits an `iptables -S` line, keeping quoted words together. */
export function splitWords(line: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null) out.push(m[1] ?? m[2]!);
  return out;
}
