// The image's /app as deploy/Dockerfile builds it: the compiled build (npm run build = tsc -p
// tsconfig.build.json) in dist/, bin/ and package.json, with this checkout's node_modules linked
// in place of the image's production install.
import { spawnSync } from "node:child_process";
import { cpSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { NODE, ROOT } from "./paths.ts";

/** Builds the app into `app` (an empty or missing directory); returns its bin/keycutter.js. */
export function buildImageApp(app: string, opts: { sourceMap?: boolean } = {}): string {
  const tsc = spawnSync(
    NODE,
    [
      join(ROOT, "node_modules", "typescript", "bin", "tsc"),
      "-p",
      join(ROOT, "tsconfig.build.json"),
      "--outDir",
      join(app, "dist"),
      ...(opts.sourceMap === false ? ["--sourceMap", "false"] : []),
    ],
    { encoding: "utf8", cwd: ROOT },
  );
  if (tsc.status !== 0) throw new Error(`npm run build (tsc) failed:\n${tsc.stdout}${tsc.stderr}`);
  cpSync(join(ROOT, "bin"), join(app, "bin"), { recursive: true });
  cpSync(join(ROOT, "package.json"), join(app, "package.json"));
  symlinkSync(join(ROOT, "node_modules"), join(app, "node_modules"));
  return join(app, "bin", "keycutter.js");
}
