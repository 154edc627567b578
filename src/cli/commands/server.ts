import type { Command } from "commander";

export function registerServerCommands(program: Command): void {
  program
    .command("server")
    .description("run the central security service")
    .action(() => {
      throw new Error("server: not implemented yet");
    });
}
