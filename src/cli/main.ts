#!/usr/bin/env node
import { Command } from "commander";
import { registerAgentCommands } from "./commands/agent.ts";
import { registerServerCommands } from "./commands/server.ts";
import { registerPolicyCommands } from "./commands/policy.ts";
import { registerDemoCommand } from "./commands/demo.ts";
import { registerExplainCommand } from "./commands/explain.ts";
import { VERSION } from "../common/version.ts";

const program = new Command();
program
  .name("keycutter")
  .description("Per-pod, least-privilege cloud credentials for multi-tenant Kubernetes")
  .version(VERSION);

registerAgentCommands(program);
registerServerCommands(program);
registerPolicyCommands(program);
registerDemoCommand(program);
registerExplainCommand(program);

await program.parseAsync(process.argv);
