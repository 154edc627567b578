// The benchmarks still run: `npm run bench:smoke` (tiny parameters) exits 0 and writes a report
// with every section filled in. Numbers are not checked — benchmarks are not timed unit tests.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NODE, ROOT } from "../harness/index.ts";

describe("bench:smoke", () => {
  it("runs every benchmark with tiny parameters and writes a complete JSON report", () => {
    const dir = mkdtempSync(join(tmpdir(), "kc-bench-smoke-"));
    try {
      const out = join(dir, "smoke.json");
      const r = spawnSync(NODE, [join(ROOT, "bench", "run.ts"), "--smoke", `--out=${out}`], {
        cwd: ROOT,
        encoding: "utf8",
        timeout: 9 * 60_000,
      });
      assert.equal(r.status, 0, `bench:smoke failed:\n${r.stdout}\n${r.stderr.slice(-4000)}`);
      assert.match(r.stdout, /Hot path/);
      const rep = JSON.parse(readFileSync(out, "utf8"));
      assert.deepEqual(rep.errors, []);

      const targets = new Set(rep.hotpath.summary.map((s: { target: string }) => s.target));
      assert.ok(targets.has("baseline") && targets.has("keycutter"), [...targets].join(","));
      for (const s of rep.hotpath.summary) {
        assert.ok(s.seqPerSec > 0, `${s.target}: no sequence completed`);
        assert.equal(s.errors, 0, `${s.target}: client errors`);
      }

      assert.equal(rep.dnat.summary.length, 2, "baseline and the agent through the hook");
      for (const s of rep.dnat.summary) {
        assert.ok(s.seqPerSec > 0, `${s.target}: no sequence completed`);
        assert.equal(s.errors, 0, `${s.target}: client errors`);
      }

      for (const st of [rep.storm, rep.stormContract]) {
        assert.ok(st, "storm section missing");
        assert.equal(st.summary.pods, 10);
        assert.equal(st.summary.neverServed, 0, "some pod never got credentials");
        assert.ok(st.summary.stsCalls >= 1, "no credential issuance counted");
      }
      // every pod in its own network namespace, through the agent's DNAT hook
      const sd = rep.stormDnat;
      assert.ok(sd, "storm-dnat section missing");
      assert.equal(sd.summary.pods, 10);
      assert.equal(sd.summary.neverServed, 0, "storm-dnat: some pod never got credentials");
      assert.ok(sd.summary.stsCalls >= 1, "storm-dnat: no credential issuance counted");
      assert.equal(sd.summary.leftoverAfterCleanup, 0, "storm-dnat: network left behind");

      assert.ok(rep.storm.memory.samples.length >= 2, "no memory samples");
      assert.ok(rep.storm.memory.summary.rssEndMiB > 0);

      assert.equal(rep.scale.steps.length, 1);
      assert.ok(rep.scale.steps[0].reached);
      assert.ok(rep.scale.steps[0].issued > 0, "the server issued nothing");

      // agent authentication without and with a junk-token flood, in the same run
      const fl = rep.flood;
      assert.ok(fl, "flood section missing");
      assert.deepEqual(
        fl.phases.map((ph: { phase: string }) => ph.phase),
        ["quiet", "flood"],
      );
      for (const ph of fl.phases) {
        assert.ok(ph.requests > 0, `flood/${ph.phase}: no authentication measured`);
        assert.equal(ph.errors, 0, `flood/${ph.phase}: agents refused: ${JSON.stringify(ph.statuses)}`);
      }
      assert.ok(fl.junk.sent > 0, "the hostile client sent nothing");
      assert.match(r.stdout, /junk-token flood/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
