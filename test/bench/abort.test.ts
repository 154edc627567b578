// An interrupted benchmark cleans up after itself: SIGTERM in the middle of a section stops the
// cluster, servers, agent and network namespaces the section started, then exits 130. Needs root
// (network namespaces), like the benchmarks.
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { NODE, ROOT } from "../harness/index.ts";

/** Command lines of the processes whose environment carries `mark`. */
function marked(mark: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (!readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").includes(`KC_BENCH_MARK=${mark}`))
        continue;
      out.push(readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").join(" ").trim());
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}

const netns = (): string[] =>
  execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0]!)
    .filter(Boolean);

it("SIGTERM mid-section: every process, namespace and rule the section started is gone, exit 130", async () => {
  const mark = randomBytes(6).toString("hex");
  const dir = mkdtempSync(join(tmpdir(), "kc-bench-abort-"));
  const nsBefore = new Set(netns());
  const run = spawn(
    NODE,
    [join(ROOT, "bench", "run.ts"), "--smoke", "--only=dnat", `--out=${join(dir, "r.json")}`],
    {
      cwd: ROOT,
      env: { ...process.env, KC_BENCH_MARK: mark },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let err = "";
  run.stderr.on("data", (d: Buffer) => (err += d.toString()));
  run.stdout.resume();
  const exited = once(run, "exit");
  try {
    // the section is in full swing once its agent runs (the whole system is up by then)
    const deadline = Date.now() + 180_000;
    while (!marked(mark).some((c) => / agent .*--node-name/.test(c))) {
      assert.ok(Date.now() < deadline, `the dnat section's agent never started:\n${err.slice(-3000)}`);
      assert.equal(run.exitCode, null, `bench exited early:\n${err.slice(-3000)}`);
      await sleep(250);
    }
    const started = marked(mark).length;
    assert.ok(started > 5, `processes of this run: ${started}`);
    run.kill("SIGTERM");
    // unref'd: a pending 2-minute timer would hold the test file open after the test passed
    const [code] = (await Promise.race([
      exited,
      sleep(120_000, undefined, { ref: false }).then(() => [undefined]),
    ])) as [number | null];
    assert.equal(code, 130, `exit code; stderr:\n${err.slice(-3000)}`);
    assert.match(err, /SIGTERM: stopping what this run started/);
    await sleep(500);
    assert.deepEqual(marked(mark), [], "processes of the interrupted run left behind");
    assert.deepEqual(
      netns().filter((n) => !nsBefore.has(n)),
      [],
      "network namespaces of the interrupted run left behind",
    );
  } finally {
    run.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
