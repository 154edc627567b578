import { existsSync } from "node:fs";
import type { Command } from "commander";

export function registerDemoCommand(program: Command): void {
  program
    .command("demo")
    .description(
      "bring up a local cluster with keycutter in it and walk through what it does (source checkout)",
    )
    .option("--keep", "keep everything running until Ctrl-C instead of tearing down at the end")
    .option("--node", "the same story on a real node (kubelet, containerd, CNI) with helm install")
    .action(async (opts: { keep?: boolean; node?: boolean }) => {
      // The demo drives the test environment (real etcd, apiserver, moto, network namespaces),
      // which only exists in a source checkout; the path is computed so builds do not bundle it.
      const demo = new URL(
        opts.node ? "../../../test/node/demo.ts" : "../../../test/e2e/demo.ts",
        import.meta.url,
      );
      if (!existsSync(demo)) {
        throw new Error("keycutter demo runs from a source checkout: use ./scripts/demo.sh");
      }
      const keep = opts.keep ?? false;
      if (opts.node) {
        const mod = (await import(demo.href)) as { runNodeDemo(o: { keep: boolean }): Promise<void> };
        await mod.runNodeDemo({ keep });
      } else {
        const mod = (await import(demo.href)) as { runDemo(o: { keep: boolean }): Promise<void> };
        await mod.runDemo({ keep });
      }
    });
}
