import type { Command } from "commander";

export function registerPolicyCommands(program: Command): void {
  const policy = program.command("policy").description("work with AccessPolicy and RoleAllowance objects");
  policy
    .command("validate <files...>")
    .description("validate policy files offline with the server's checks")
    .action(() => {
      throw new Error("policy validate: not implemented yet");
    });
}
