import type { Command } from "commander";

export function registerAgentCommands(program: Command): void {
  program
    .command("agent")
    .description("run the node agent (IMDS-compatible endpoint behind the iptables hook)")
    .action(() => {
      throw new Error("agent: not implemented yet");
    });
}
