import type { Command } from "commander";

export function registerDemoCommand(program: Command): void {
  program
    .command("demo")
    .description("bring up a local cluster with keycutter and walk through what it does")
    .action(async () => {
      const { runDemo } = await import("../demo.ts");
      await runDemo();
    });
}
