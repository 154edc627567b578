// Is the iptables hook in place on this node, in the tables the node's packets go through?
// iptables has two backends (nft and legacy) with separate tables: rules written through the
// wrong one exist but are not the node's. So the hook is looked for in both, and where it is
// found only in the other backend's tables, that is what is reported.
import { basename, dirname, join } from "node:path";
import { Hook, defaultRunner, type HookOptions, type Runner } from "../../agent/hook/iptables.ts";
import { result, type CheckResult } from "./report.ts";

export interface HookCheckOptions {
  chain: string;
  /** The node's iptables (the backend kube-proxy and the CNI use), as the agent's --iptables. */
  iptables: string;
  /**
   * The agent's pod selection and ports, when known: then the rules are compared one by one, not
   * only found. Without them only the presence of the chains and jumps is checked.
   */
  exact?: Omit<HookOptions, "chain" | "iptables" | "flushConntrack">;
}

type Backend = "nft" | "legacy";

async function backendOf(bin: string, run: Runner): Promise<Backend | undefined> {
  const r = await run(bin, ["--version"]).catch(() => undefined);
  if (!r || r.code !== 0) return undefined;
  return /nf_tables/.test(r.stdout) ? "nft" : /legacy/.test(r.stdout) ? "legacy" : undefined;
}

function otherBinary(bin: string, other: Backend): string {
  const name = `iptables-${other}`;
  return bin.includes("/") ? join(dirname(bin), name) : name;
}

/** Which of the hook's pieces are in one backend's tables (chains, and the jumps to them). */
async function piecesIn(
  bin: string,
  chain: string,
  run: Runner,
): Promise<{ present: string[]; missing: string[] }> {
  const present: string[] = [];
  const missing: string[] = [];
  const pieces: Array<{ label: string; table: string; parent: string; target: string }> = [
    { label: `nat ${chain}`, table: "nat", parent: "", target: chain },
    { label: `filter ${chain}-FC`, table: "filter", parent: "", target: `${chain}-FC` },
    { label: `nat PREROUTING → ${chain}`, table: "nat", parent: "PREROUTING", target: chain },
    { label: `filter INPUT → ${chain}-FC`, table: "filter", parent: "INPUT", target: `${chain}-FC` },
    { label: `filter FORWARD → ${chain}-FC`, table: "filter", parent: "FORWARD", target: `${chain}-FC` },
  ];
  for (const p of pieces) {
    const r = await run(bin, ["-w", "5", "-t", p.table, "-S", p.parent || p.target]).catch(() => undefined);
    const ok =
      r !== undefined &&
      r.code === 0 &&
      (p.parent === "" ||
        r.stdout.split("\n").some((l) => l.startsWith(`-A ${p.parent} `) && l.endsWith(`-j ${p.target}`)));
    (ok ? present : missing).push(p.label);
  }
  return { present, missing };
}

export async function checkHook(o: HookCheckOptions, run: Runner = defaultRunner): Promise<CheckResult[]> {
  const mode = await backendOf(o.iptables, run);
  if (!mode)
    return [
      result(
        "hook",
        "fail",
        `cannot run ${o.iptables} --version`,
        "run doctor on the node as root (NET_ADMIN), or pass --iptables",
      ),
    ];
  const other: Backend = mode === "nft" ? "legacy" : "nft";
  const here = await piecesIn(o.iptables, o.chain, run);
  const otherBin = otherBinary(o.iptables, other);
  const there =
    (await backendOf(otherBin, run)) === other ? await piecesIn(otherBin, o.chain, run) : undefined;

  if (here.missing.length === 0) {
    const out: CheckResult[] = [];
    if (o.exact) {
      const hook = new Hook({ ...o.exact, chain: o.chain, iptables: o.iptables, flushConntrack: false }, run);
      if (!(await hook.check()))
        out.push(
          result(
            "hook",
            "fail",
            `chains ${o.chain}/${o.chain}-FC are in the ${mode} tables, but their rules differ from what the agent installs with these options`,
            "compare `iptables -t nat -S " +
              o.chain +
              "` with the agent's --hook-* flags; the agent repairs its hook every --hook-resync-ms",
          ),
        );
    }
    if (out.length === 0)
      out.push(
        result(
          "hook",
          "ok",
          `in place in the ${mode} tables (${o.chain}, ${o.chain}-FC and their jumps)${o.exact ? ", rules as the agent installs them" : ""}`,
        ),
      );
    if (there && there.present.length > 0)
      out.push(
        result(
          "hook",
          "warn",
          `leftover hook pieces in the ${other} tables too (${there.present.join(", ")})`,
          `remove them: keycutter hook uninstall --hook-chain=${o.chain} --iptables=${basename(otherBin)}`,
        ),
      );
    return out;
  }
  if (there && there.missing.length === 0)
    return [
      result(
        "hook",
        "fail",
        `found in the ${other} tables, not in this node's ${mode} tables: pods' metadata traffic is not redirected`,
        `the agent uses the wrong iptables backend: set agent.hook.iptablesMode=${mode} (or pass --iptables if ${mode} is not the node's backend)`,
      ),
    ];
  if (here.present.length === 0)
    return [
      result(
        "hook",
        "fail",
        `missing from the ${mode} tables (no ${o.chain} chains or jumps): pods on this node may reach the node's real IMDS`,
        "is the agent running on this node with --hook? It installs the hook at start; `keycutter hook init` with the agent's flags installs it by hand",
      ),
    ];
  return [
    result(
      "hook",
      "fail",
      `incomplete in the ${mode} tables: missing ${here.missing.join(", ")}`,
      "restart the agent (it repairs the hook), or run `keycutter hook init` with the agent's flags",
    ),
  ];
}
