import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const CACHE = join(ROOT, ".cache");
export const VENV_BIN = join(CACHE, "venv", "bin");
/** The Node 24 binary the project pins (node_modules/.bin/node), for child processes. */
export const NODE = join(ROOT, "node_modules", ".bin", "node");
export const KEYCUTTER_MAIN = join(ROOT, "src", "cli", "main.ts");

/** Pinned versions from scripts/versions.env, the single source the build script uses too. */
export function versions(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(join(ROOT, "scripts", "versions.env"), "utf8").split("\n")) {
    const m = /^([A-Z0-9_]+)=(\S+)/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

export function binary(name: "etcd" | "kube-apiserver"): string {
  const v = versions();
  const version = name === "etcd" ? v.ETCD_VERSION : v.K8S_VERSION;
  return join(CACHE, "bin", `${name}-${version}`);
}
