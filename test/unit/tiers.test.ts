// The test tiers' one rule: what lives under test/unit/ runs without root and without services
// (no apiserver, moto, Redis, network namespaces, helm, spawned keycutter processes), so that
// `npm run test:unit` stays fast. Everything else is `npm run test:system`.
import { it } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const TEST = join(import.meta.dirname, "..");
const UNIT = import.meta.dirname;

/** Modules that start or need a real part; a unit test imports none of them. */
const SYSTEM_ONLY =
  /from "[./]*(harness\/(index|cluster|moto|redis|netns|minio|kubelet|keycutter-server|fault-proxy|image-app|tls|world)|e2e\/system|server\/world|deploy\/render)\.ts"/;

function testFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts"))
    .map((e) => join(e.parentPath, e.name));
}

it("unit tests import nothing that starts a real part", () => {
  const offenders = testFiles(UNIT).filter((file) => SYSTEM_ONLY.test(readFileSync(file, "utf8")));
  assert.deepEqual(
    offenders.map((f) => relative(TEST, f)),
    [],
  );
});

it("one convention: unit tests by directory, no unit-* names left elsewhere", () => {
  const strays = testFiles(TEST).filter((f) => /(^|\/)unit-[^/]*\.test\.ts$/.test(f) && !f.startsWith(UNIT));
  assert.deepEqual(
    strays.map((f) => relative(TEST, f)),
    [],
  );
});
