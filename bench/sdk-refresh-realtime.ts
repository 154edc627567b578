// The SDK refresh test of test/agent/sdk-timing.test.ts in real time, no clock moved: boto3 and
// the JS SDK v3 on IMDS and boto3 on the container path, side by side, each calling
// sts:GetCallerIdentity every 20 s through the real agent and hook, with 15-minute sessions (the
// shortest STS issues, where the serve rules matter most). Needs root, like the tests.
//   node bench/sdk-refresh-realtime.ts [--minutes=20]
// Writes bench/results/sdk-refresh-realtime.json: per SDK the calls, failed calls and keys seen.
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NODE, ROOT } from "../test/harness/index.ts";

const minutesArg = process.argv.find((a) => a.startsWith("--minutes="));
const minutes = Number(minutesArg?.slice("--minutes=".length) ?? 20);
if (!Number.isInteger(minutes) || minutes < 1) throw new Error("--minutes must be a whole number ≥ 1");

const child = spawn(
  NODE,
  [
    "--test",
    "--test-concurrency=1",
    `--test-timeout=${(minutes + 10) * 60_000}`,
    "--test-name-pattern=^real time",
    join(ROOT, "test/agent/sdk-timing.test.ts"),
  ],
  { cwd: ROOT, env: { ...process.env, KEYCUTTER_SDK_REALTIME_MINUTES: String(minutes) }, stdio: "pipe" },
);
let out = "";
child.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
child.stderr.on("data", (c: Buffer) => (out += c.toString("utf8")));
const code: number = await new Promise((resolve) => child.on("exit", (c) => resolve(c ?? 1)));
const runs = [...out.matchAll(/SDK-REFRESH (\{.*\})/g)].map(
  (m) => JSON.parse(m[1]!) as Record<string, unknown>,
);
const result = { when: new Date().toISOString(), minutes, passed: code === 0, runs };
mkdirSync(join(ROOT, "bench/results"), { recursive: true });
writeFileSync(join(ROOT, "bench/results/sdk-refresh-realtime.json"), JSON.stringify(result, null, 2) + "\n");
console.table(runs);
console.log(code === 0 ? "no failed call" : `FAILED\n${out.slice(-6000)}`);
process.exitCode = code;
