// Benchmark 3 through the agent's real iptables DNAT hook: the pod-start storm of bench/storm.ts
// with every pod in its own network namespace on one node, reaching 169.254.169.254:80 through the
// hook, on the whole real system (System from test/e2e: etcd + kube-apiserver, moto as STS, Redis,
// server replicas, the agent in the node's namespace with its hook).
//
// The storm: every pod namespace exists and every pod object exists bound to the node, Pending (no
// IP), then the "kubelet" sets every pod's IP (its namespace's real address) at once; each pod's
// SDK-like client starts the moment its own IP update returns. The clients are one Go process
// (bench/netns-client, built here with `go build`) with one OS thread per pod, each thread moved
// into its pod's namespace with setns(2): 250 pods cost 250 threads, not 250 processes.
import { spawn, execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { System } from "../test/e2e/system.ts";
import { CACHE, ROOT, type PodNet } from "../test/harness/index.ts";
import { setUpStormTenant } from "./lib/storm-policy.ts";
import type { StormSummary } from "./storm.ts";
import { metricSum, podStatusPatcher, pool, percentile, sleep, type SdkResult } from "./lib/env.ts";
import { onAbort } from "./lib/abort.ts";

const execFileP = promisify(execFile);

export interface StormDnatParams {
  pods: number;
  /** Server replicas. */
  replicas: number;
  /** Pod namespaces created in parallel (each is ~10 `ip` commands). */
  netnsConcurrency?: number;
}

export interface StormDnatResult {
  params: StormDnatParams;
  server: string;
  summary: StormSummary & {
    /** Creating every pod's network namespace (netns, veth on the node's cbr0, address, route). */
    netnsSetupMs: number;
    /** The client process's threads entering every namespace. */
    clientPrepareMs: number;
    /** Namespaces, links and routes of the run still present after cleanup (should be 0). */
    leftoverAfterCleanup: number;
  };
  /** First tries, per step: median and slowest ms over the pods that reached the step. */
  firstTryPhases: Record<(typeof PHASES)[number], { reached: number; p50Ms: number; maxMs: number }>;
  /** The machine's 1, 5 and 15 min load averages when the IP updates started. */
  loadAvgAtStorm: number[];
  errorSamples: string[];
  notes: string[];
}

const PHASES = ["connect", "tokenPut", "roleList", "credentialsGet"] as const;

const NODE_NAME = "sd-node";
const NS = "stormdnat";
const CLIENT_SRC = join(ROOT, "bench", "netns-client");

/** Builds bench/netns-client once per source hash into .cache/bench/; returns the binary. */
export async function buildNetnsClient(): Promise<string> {
  const files = readdirSync(CLIENT_SRC)
    .filter((f) => f.endsWith(".go") || f === "go.mod")
    .sort();
  const h = createHash("sha256");
  for (const f of files)
    h.update(f)
      .update("\0")
      .update(readFileSync(join(CLIENT_SRC, f)))
      .update("\0");
  const dir = join(CACHE, "bench");
  const bin = join(dir, `netns-client-${h.digest("hex").slice(0, 16)}`);
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const tmp = `${bin}.tmp-${process.pid}`;
  try {
    await execFileP("go", ["build", "-trimpath", "-buildvcs=false", "-o", tmp, "."], {
      cwd: CLIENT_SRC,
      env: { ...process.env, CGO_ENABLED: "0" },
      timeout: 10 * 60_000,
    });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`go build bench/netns-client: ${err.stderr?.trim() || err.message}`, { cause: e });
  }
  renameSync(tmp, bin);
  // binaries of earlier sources
  for (const f of readdirSync(dir))
    if (/^netns-client-[0-9a-f]{16}$/.test(f) && join(dir, f) !== bin) rmSync(join(dir, f), { force: true });
  return bin;
}

interface ClientRow {
  i: number;
  ipAt: number;
  first: SdkResult & { phases: number[] | null };
  untilServed: number;
  servedAt: number;
  tries: number;
}

/** The Go client process: stdin commands, stdout JSON lines. */
function startClient(bin: string) {
  const proc = spawn(bin, [], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  // a client that died shows up as its exit; a write to it must not crash the bench
  proc.on("error", (e) => (stderr += `\nspawn: ${e.message}`));
  proc.stdin!.on("error", (e) => (stderr += `\nstdin: ${e.message}`));
  proc.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const rows: ClientRow[] = [];
  const prepared = new Map<number, string | undefined>();
  const waiters = new Set<() => void>();
  let ready = false;
  createInterface({ input: proc.stdout! }).on("line", (line) => {
    const m = JSON.parse(line) as Record<string, unknown>;
    if (m.ready) ready = true;
    else if ("prepared" in m) prepared.set(Number(m.prepared), m.error as string | undefined);
    else if ("i" in m) rows.push(m as unknown as ClientRow);
    else stderr += `\n${line}`;
    for (const w of waiters) w();
  });
  const exited = new Promise<number>((r) => proc.on("exit", (code) => r(code ?? -1)));
  let gone = false;
  void exited.then(() => {
    gone = true;
    for (const w of waiters) w();
  });
  const until = (what: string, cond: () => boolean, timeoutMs: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = () => {
        if (cond()) done(resolve);
        else if (gone)
          done(() => reject(new Error(`netns client exited while waiting for ${what}: ${stderr}`)));
      };
      const timer = setTimeout(
        () => done(() => reject(new Error(`netns client: timed out waiting for ${what}: ${stderr}`))),
        timeoutMs,
      );
      const done = (f: () => void) => {
        clearTimeout(timer);
        waiters.delete(check);
        f();
      };
      waiters.add(check);
      check();
    });
  return {
    proc,
    rows,
    prepared,
    exited,
    until,
    isReady: () => ready,
    send: (line: string) => proc.stdin!.write(line + "\n"),
    stderr: () => stderr,
  };
}

/** Sum of a Prometheus metric in the text exposition format (all label sets). */
function sumMetric(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split("\n"))
    if (line.startsWith(name + "{") || line.startsWith(name + " "))
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  return sum;
}

export async function benchStormDnat(p: StormDnatParams): Promise<StormDnatResult> {
  // pods get .2 … .251 of the node's /24 (the gateway is .1)
  if (p.pods < 1 || p.pods > 250) throw new Error("pods: 1..250");
  const notes: string[] = [];
  const bin = await buildNetnsClient();
  const sys = new System({ nodes: [], serverReplicas: p.replicas, redis: true });
  let client: ReturnType<typeof startClient> | undefined;
  // One cleanup for every way out: normal end, failure, Ctrl-C / SIGTERM. A signal can arrive
  // while a set-up step still creates things (processes, namespaces): the cleanup waits for that
  // step, the main flow stops after it, then the system stops and whatever of this run's network
  // is still there is removed.
  let aborted = false;
  let inflight: Promise<unknown> = Promise.resolve();
  // pod namespaces being created (pool() rejects on the first error while others still run)
  const adding = new Set<Promise<void>>();
  const step = async <T>(p: Promise<T>): Promise<T> => {
    inflight = p.catch(() => undefined);
    const r = await p;
    if (aborted) throw new Error("storm-dnat: interrupted");
    return r;
  };
  let cleaning: Promise<string[]> | undefined;
  const cleanup = (): Promise<string[]> =>
    (cleaning ??= (async () => {
      aborted = true;
      client?.proc.kill("SIGKILL");
      await Promise.race([Promise.all([inflight, ...adding]), sleep(60_000)]);
      await sys.stop().catch((e) => console.error(`storm-dnat cleanup: ${(e as Error).message}`));
      if (!sys.net) return [];
      const left = await sys.net.leftovers().catch((e) => [`leftovers: ${(e as Error).message}`]);
      for (const l of left) {
        const [kind, name] = l.split(" ");
        if (kind === "netns") await execFileP("ip", ["netns", "del", name!]).catch(() => undefined);
        if (kind === "link") await execFileP("ip", ["link", "del", name!]).catch(() => undefined);
      }
      if (left.length) console.error(`storm-dnat: left after the harness's cleanup: ${left.join(", ")}`);
      const still = await sys.net.leftovers().catch((e) => [`leftovers: ${(e as Error).message}`]);
      if (still.length) console.error(`storm-dnat: STILL PRESENT: ${still.join(", ")}`);
      return left;
    })());
  // an error nothing catches would end the process with every namespace still there
  const onFatal = (e: unknown) => {
    console.error(`storm-dnat: uncaught ${(e as Error).stack ?? String(e)}; cleaning up …`);
    void cleanup().finally(() => process.exit(1));
  };
  // Ctrl-C / SIGTERM: bench/lib/abort.ts runs this cleanup before exiting
  const unregister = onAbort(cleanup);
  process.on("uncaughtException", onFatal);
  let result: StormDnatResult | undefined;
  try {
    await step(sys.start());
    await step(setUpStormTenant(sys, "stormdnat", NS));
    const agent = await step(sys.addNode(NODE_NAME));
    const node = agent.node;
    const prefix = node.podGateway.slice(0, node.podGateway.lastIndexOf("."));

    // every pod's network namespace, on the node's cbr0
    const names = Array.from({ length: p.pods }, (_, i) => `s-${i}`);
    let t = performance.now();
    const nets: PodNet[] = await step(
      pool(names, p.netnsConcurrency ?? 8, (name, i) => {
        if (aborted) throw new Error("storm-dnat: interrupted");
        // with the record the runtime's libcni writes, which the agent confirms each IP against
        const add = sys.net.addPod(NODE_NAME, name, `${prefix}.${2 + i}`, { namespace: NS, name });
        const settled = add.then(
          () => undefined,
          () => undefined,
        );
        adding.add(settled);
        void settled.then(() => adding.delete(settled));
        return add;
      }),
    );
    const netnsSetupMs = performance.now() - t;

    // the client process: one thread per pod, each in its pod's namespace, waiting for "go"
    client = startClient(bin);
    const c = client;
    await c.until("start", c.isReady, 10_000);
    t = performance.now();
    nets.forEach((n, i) => c.send(`prepare ${i} /var/run/netns/${n.netns}`));
    await c.until("every thread in its namespace", () => c.prepared.size === p.pods, 60_000);
    const clientPrepareMs = performance.now() - t;
    const failed = [...c.prepared].filter(([, e]) => e !== undefined);
    if (failed.length) throw new Error(`setns failed for ${failed.length} pods: ${failed[0]![1]}`);

    // counted from before the pods exist: the agent fetches as soon as a pod is bound
    const stsCalls = async () =>
      (
        await Promise.all(
          sys.servers.map((s) =>
            metricSum(`http://127.0.0.1:${s.opsPort}/metrics`, "keycutter_server_sts_requests_total"),
          ),
        )
      ).reduce((x, y) => x + y, 0);
    const agentFetches = async () => {
      const r = await sys.net.exec(node.netns, "curl", [
        "-sf",
        `http://${agent.node.ip}:${agent.opsPort}/metrics`,
      ]);
      if (r.code !== 0) throw new Error(`agent metrics: curl exit ${r.code}`);
      return sumMetric(r.stdout, "keycutter_agent_credential_fetches_total");
    };
    const stsBefore = await stsCalls();
    const fetchesBefore = await agentFetches();

    // pods exist, bound to the node, Pending (no IP), before the storm
    await pool(names, 16, (name) =>
      sys.kubelet.createPod({ namespace: NS, name, nodeName: NODE_NAME, serviceAccountName: "app" }),
    );
    await sleep(1000);

    // the "kubelet" sets every pod's IP at once; each client starts when its own update returns
    const patcher = podStatusPatcher(sys.cluster);
    const loadAvgAtStorm = loadavg().map((x) => Math.round(x * 100) / 100);
    const t0 = performance.now();
    const patchDone: number[] = [];
    try {
      await pool(names, p.pods, async (name, i) => {
        await patcher.patch(NS, name, nets[i]!.ip, node.ip);
        patchDone.push(performance.now() - t0);
        c.send(`go ${i}`);
      });
    } finally {
      patcher.close();
    }
    c.send("end");
    // each client gives up after 60 s of retrying
    await c.until("every client's result", () => c.rows.length === p.pods, 90_000);
    const code = await c.exited;
    if (code !== 0) throw new Error(`netns client exited ${code}: ${c.stderr()}`);
    const rows = c.rows;
    await sleep(500);
    const stsAfter = await stsCalls();
    const fetchesAfter = await agentFetches();

    const c0 = Math.min(...rows.map((r) => r.ipAt));
    const served = rows.filter((r) => r.servedAt >= 0);
    const allServedMs = served.length ? Math.max(...served.map((r) => r.servedAt)) - c0 : -1;
    const firstMs = rows.map((r) => r.first.ms).sort((a, b) => a - b);
    const errs = rows.filter((r) => !r.first.ok);
    const okCount = rows.length - errs.length;
    const keys = new Set(rows.filter((r) => r.first.ok).map((r) => r.first.accessKeyId));
    if (keys.size !== okCount)
      notes.push(`distinct access keys: ${keys.size} for ${okCount} pods served on the first try (sharing!)`);
    else if (okCount)
      notes.push(`each pod served on the first try got its own credentials (${keys.size} keys)`);
    notes.push(
      `every pod in its own network namespace on ${NODE_NAME}, clients reach 169.254.169.254:80 through the agent's iptables DNAT hook; one Go client process, one OS thread per pod (setns)`,
      `first try: fresh connection, PUT token + GET role + GET credentials, 1 s for the whole try; then a try every 50 ms (5 s each) until served (${rows.reduce((a, r) => a + r.tries, 0)} tries in all)`,
    );
    const firstTryPhases = Object.fromEntries(
      PHASES.map((name, k) => {
        const xs = rows
          .map((r) => r.first.phases?.[k])
          .filter((x): x is number => x !== undefined)
          .sort((a, b) => a - b);
        return [
          name,
          { reached: xs.length, p50Ms: Math.round(percentile(xs, 0.5)), maxMs: Math.round(xs.at(-1) ?? 0) },
        ];
      }),
    ) as StormDnatResult["firstTryPhases"];
    notes.push(
      `first try per step, p50/slowest ms: ${PHASES.map((n) => `${n} ${firstTryPhases[n].p50Ms}/${firstTryPhases[n].maxMs}`).join(", ")} (the token PUT waits for the agent's pod watch to know the IP, the credentials GET for the issuance)`,
    );
    notes.push(`agent and server: src/ of ${await gitState()}`);
    result = {
      params: p,
      server: `real keycutter server ×${p.replicas} (TLS, Redis) + moto STS, agent in the node netns via its DNAT hook`,
      summary: {
        pods: p.pods,
        allServedMs: Math.round(allServedMs),
        neverServed: rows.length - served.length,
        firstTryOk: okCount,
        clientErrors: errs.length,
        slowestFirstTryMs: Math.round(firstMs[firstMs.length - 1]!),
        p50FirstTryMs: Math.round(percentile(firstMs, 0.5)),
        p99FirstTryMs: Math.round(percentile(firstMs, 0.99)),
        slowestUntilServedMs: Math.round(
          served.length < rows.length ? -1 : Math.max(...rows.map((r) => r.untilServed)),
        ),
        withinOneSecond: rows.filter((r) => r.untilServed >= 0 && r.untilServed <= 1000).length,
        ipUpdatesSpreadMs: Math.round(Math.max(...patchDone) - Math.min(...patchDone)),
        stsCalls: stsAfter - stsBefore,
        agentFetches: fetchesAfter - fetchesBefore,
        netnsSetupMs: Math.round(netnsSetupMs),
        clientPrepareMs: Math.round(clientPrepareMs),
        leftoverAfterCleanup: -1,
      },
      loadAvgAtStorm,
      firstTryPhases,
      // each distinct first-try error with how many pods saw it
      errorSamples: [
        ...errs.reduce((m, r) => {
          // one line per kind of error: the pod's own address masked
          const e = (r.first.error ?? "").replace(/\b\d+\.\d+\.\d+\.\d+\b/g, "<pod ip>");
          return m.set(e, (m.get(e) ?? 0) + 1);
        }, new Map<string, number>()),
      ]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 5)
        .map(([e, n]) => `${e} (×${n})`),
      notes,
    };
  } finally {
    const tc = performance.now();
    const left = await cleanup();
    unregister();
    process.off("uncaughtException", onFatal);
    if (result) {
      result.summary.leftoverAfterCleanup = left.length;
      result.notes.push(
        `cleanup (servers, agent, ${p.pods} namespaces, links, routes, nat rules) took ${Math.round(performance.now() - tc)} ms; left behind by the harness: ${left.length ? left.join(", ") + " (removed here)" : "nothing"}`,
      );
    }
  }
  return result!;
}

/** The commit the system under test runs, and whether src/ has uncommitted changes. */
async function gitState(): Promise<string> {
  const git = (...a: string[]) =>
    execFileP("git", a, { cwd: ROOT }).then(
      (r) => r.stdout.trim(),
      () => "?",
    );
  const [head, dirty] = await Promise.all([
    git("rev-parse", "--short", "HEAD"),
    git("status", "--porcelain", "--", "src"),
  ]);
  const n = dirty === "?" ? "?" : dirty.split("\n").filter(Boolean).length;
  return n === 0 ? head : `${head} + ${n} uncommitted file(s) in src/`;
}
