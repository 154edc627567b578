// Before/after in one run: a copy of src/ with the proposed agent fixes (bench/patches/*.patch)
// applied, run as a second agent process next to the unmodified one. When a patch no longer
// applies (the fix has landed in src/), it is skipped and said so.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { CACHE, ROOT } from "../../test/harness/index.ts";

export function patchedAgentMain(): { main: string | undefined; notes: string[] } {
  const patchDir = join(ROOT, "bench", "patches");
  const patches = existsSync(patchDir)
    ? readdirSync(patchDir)
        .filter((f) => f.endsWith(".patch"))
        .sort()
    : [];
  if (patches.length === 0) return { main: undefined, notes: ["no agent patches to compare"] };
  const tree = join(CACHE, "bench", "patched-tree");
  rmSync(tree, { recursive: true, force: true });
  cpSync(join(ROOT, "src"), join(tree, "src"), { recursive: true });
  const applied: string[] = [];
  const notes: string[] = [];
  for (const p of patches) {
    try {
      // checked against the real checkout first (outside a repository git apply is lenient)
      execFileSync("git", ["apply", "--check", join(patchDir, p)], { cwd: ROOT, stdio: "pipe" });
      execFileSync("git", ["apply", "--directory=", join(patchDir, p)], { cwd: tree, stdio: "pipe" });
      applied.push(p);
    } catch {
      notes.push(`patch ${p} does not apply to src/ (already landed?); skipped`);
    }
  }
  if (applied.length === 0) return { main: undefined, notes };
  notes.push(`"keycutter+fix" = src/ with ${applied.join(", ")}`);
  return { main: join(tree, "src", "cli", "main.ts"), notes };
}
