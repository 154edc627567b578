// The README's demo command must keep working: run it as the README does (minus setup, which the
// suite has done) and check the story it tells, and that it leaves nothing behind.
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { KEYCUTTER_MAIN, NODE } from "../harness/index.ts";

const run = promisify(execFile);

it("keycutter demo tells the whole story and cleans up", async () => {
  const { stdout } = await run(NODE, [KEYCUTTER_MAIN, "demo"], {
    timeout: 300_000,
    maxBuffer: 32 * 1024 * 1024,
  });
  assert.match(stdout, /tenant-a\/app \$ aws s3 cp s3:\/\/tenant-a-data\/tenant-a\/report.csv -\n\s+a,1/);
  assert.match(stdout, /tenant-b-data.*(403|Forbidden|AccessDenied)/);
  assert.match(stdout, /Decision: credentials issued under readers/);
  assert.match(stdout, /result: ImplicitlyDenied/);
  assert.match(stdout, /HTTP 404 NoPolicy/);
  assert.match(stdout, /a,1 {2}\(in force after \d+ ms\)/);
  assert.match(stdout, /7\. A pod is deleted[\s\S]*HTTP 404/);
  assert.match(stdout, /That's keycutter\./);
  const prefix = /named (kc[0-9a-f]{4})\*/.exec(stdout)?.[1];
  assert.ok(prefix, "the demo names its network prefix");
  assert.ok(
    !(await run("ip", ["netns", "list"])).stdout.includes(prefix),
    "no network namespace left behind",
  );
  assert.ok(!(await run("ip", ["link", "show"])).stdout.includes(prefix), "no link left behind");
  assert.ok(
    !(await run("iptables", ["-w", "-t", "nat", "-S"])).stdout.includes(prefix),
    "no rule left behind",
  );
});
