// Processes under test: the real `keycutter agent` CLI, the bare baseline, kube2iam, and the
// load generator, each in its own process so that they compete for the CPU as they would on a
// node. Helpers to read a process's RSS and CPU time from /proc.
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { createHash } from "node:crypto";
import { execFileSync, spawn } from "node:child_process";
import { ManagedProcess, buildImageApp, freePort, NODE, CACHE, ROOT } from "../../test/harness/index.ts";
import type { LoadOptions, LoadResult } from "./loadgen.ts";
import { chartCommandLines } from "../../test/e2e/chart-args.ts";

const BENCH_LIB = join(ROOT, "bench", "lib");

/**
 * The app as the image holds it (its bin/keycutter.js runs the compiled dist/), not the TypeScript
 * source through Node's type stripping, which loads a transpiler of its own (~35 MiB of RSS).
 * Built once per source tree into .cache/bench/app-<hash of src/ and bin/>.
 */
export function deployedApp(): string {
  const h = createHash("sha256");
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else h.update(relative(ROOT, p)).update("\0").update(readFileSync(p)).update("\0");
    }
  };
  walk(join(ROOT, "src"));
  walk(join(ROOT, "bin"));
  const app = join(CACHE, "bench", `app-${h.digest("hex").slice(0, 16)}`);
  if (!existsSync(join(app, "bin", "keycutter.js"))) {
    const tmp = `${app}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    buildImageApp(tmp, { sourceMap: false });
    rmSync(app, { recursive: true, force: true });
    renameSync(tmp, app);
    // builds of earlier sources are of no further use
    for (const d of readdirSync(join(CACHE, "bench"))) {
      if (/^app-[0-9a-f]{16}$/.test(d) && join(CACHE, "bench", d) !== app) {
        rmSync(join(CACHE, "bench", d), { recursive: true, force: true });
      }
    }
  }
  return app;
}

let chartEnv: Record<string, string> | undefined;
/** The agent container's env as the Helm chart renders it (NODE_OPTIONS). */
export function chartAgentEnv(): Record<string, string> {
  chartEnv ??= chartCommandLines("bench", {
    region: "us-east-1",
    stsEndpoint: "",
    requireImdsV2: false,
  }).agentEnv;
  return chartEnv;
}

/** RSS of a Node process that has only imported `modules` (no work done): the code's weight. */
export function importWeightMiB(modules: string[]): number {
  const code = `for (const m of ${JSON.stringify(modules)}) await import(m); setTimeout(() => console.log(process.memoryUsage().rss), 300);`;
  const out = execFileSync(NODE, ["--input-type=module", "-e", code], { cwd: ROOT, encoding: "utf8" });
  return Math.round((Number(out.trim()) / 1048576) * 10) / 10;
}

export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

/** User + system CPU time of a process, in milliseconds. */
export function cpuMs(pid: number): number {
  const c = cpuSplitMs(pid);
  return c.user + c.system;
}

/** User and system (kernel) CPU time of a process, in milliseconds. */
export function cpuSplitMs(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // USER_HZ is 100 on Linux
  return { user: Number(f[11]) * 10, system: Number(f[12]) * 10 };
}

export interface Started {
  proc: ManagedProcess;
  port: number;
  stop(): Promise<void>;
}

export async function startBaseline(host = "127.0.0.1", netns?: string): Promise<Started> {
  const port = await freePort(host === "0.0.0.0" ? "127.0.0.1" : host);
  const args = [join(BENCH_LIB, "baseline-main.ts"), host, String(port)];
  const proc = netns
    ? new ManagedProcess("baseline", "ip", ["netns", "exec", netns, NODE, ...args])
    : new ManagedProcess("baseline", NODE, args);
  await proc.waitForLine(/baseline listening/, 15_000);
  return { proc, port, stop: () => proc.stop() };
}

export interface AgentProc extends Started {
  opsPort: number;
}

export async function startAgentProcess(o: {
  nodeName: string;
  kubeconfig: string;
  serverUrl: string;
  serverCaFile?: string;
  tokenFile: string;
  dir: string;
  listenHost?: string;
  extraArgs?: string[];
  netns?: string;
  env?: NodeJS.ProcessEnv;
  nodeArgs?: string[];
  /** CLI entry to run (default: the compiled build, as in the image); a patched copy for before/after. */
  main?: string;
}): Promise<AgentProc> {
  const host = o.listenHost ?? "127.0.0.1";
  const port = await freePort(host === "0.0.0.0" ? "127.0.0.1" : host);
  const opsPort = await freePort();
  const keyFile = join(o.dir, "imds-token.key");
  writeFileSync(keyFile, "k".repeat(32), { mode: 0o600 });
  const args = [
    ...(o.nodeArgs ?? []),
    o.main ?? join(deployedApp(), "bin", "keycutter.js"),
    "agent",
    "--node-name",
    o.nodeName,
    "--kubeconfig",
    o.kubeconfig,
    "--server-url",
    o.serverUrl,
    ...(o.serverCaFile ? ["--server-ca-file", o.serverCaFile] : []),
    "--token-file",
    o.tokenFile,
    "--imds-listen",
    `${host}:${port}`,
    "--container-listen",
    "off",
    "--ops-listen",
    `${host === "0.0.0.0" ? "0.0.0.0" : "127.0.0.1"}:${opsPort}`,
    "--imds-token-key-file",
    keyFile,
    // no container runtime here: the pods exist only in the apiserver, so the host's libcni cache
    // (a real node's leftovers in /var/lib/cni/results) must not be read as this node's attachments
    "--cni-state-dir=",
    ...(o.extraArgs ?? ["--no-hook"]),
  ];
  // run as the chart runs it (its NODE_OPTIONS), unless the caller says otherwise
  const env = { ...process.env, ...chartAgentEnv(), KEYCUTTER_LOG_LEVEL: "warn", ...o.env };
  const proc = o.netns
    ? new ManagedProcess("agent", "ip", ["netns", "exec", o.netns, NODE, ...args], { env })
    : new ManagedProcess("agent", NODE, args, { env, cwd: ROOT });
  // warn level: wait for the ops port instead of the "listening" line
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (!proc.running) throw new Error(`agent exited:\n${proc.logs().slice(-3000)}`);
    const ok = await fetch(`http://127.0.0.1:${opsPort}/healthz`).then(
      () => true,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`agent did not start:\n${proc.logs().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { proc, port, opsPort, stop: () => proc.stop() };
}

/** Runs the load generator in its own process (optionally inside a network namespace). */
export function runLoadgen(opts: LoadOptions, netns?: string): Promise<LoadResult> {
  const args = [join(BENCH_LIB, "loadgen-main.ts"), JSON.stringify(opts)];
  const [cmd, argv] = netns ? ["ip", ["netns", "exec", netns, NODE, ...args]] : [NODE, args];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv as string[], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let errText = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (errText += d.toString()));
    child.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`loadgen exited ${code}: ${errText.slice(-2000)}`));
      try {
        resolve(JSON.parse(out.trim().split("\n").pop()!) as LoadResult);
      } catch (e) {
        reject(
          new Error(`loadgen output: ${(e as Error).message}: ${out.slice(-500)} ${errText.slice(-500)}`),
        );
      }
    });
  });
}
