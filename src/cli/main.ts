#!/usr/bin/env node
import { basename } from "node:path";
import { Command, CommanderError } from "commander";
import { registerAgentCommands } from "./commands/agent.ts";
import { registerServerCommands } from "./commands/server.ts";
import { registerPolicyCommands } from "./commands/policy.ts";
import { registerDemoCommand } from "./commands/demo.ts";
import { registerExplainCommand } from "./commands/explain.ts";
import { registerDoctorCommand } from "./commands/doctor.ts";
import { EXIT, errorLine, exitCodeOf } from "./errors.ts";
import { VERSION } from "../common/version.ts";

// Installed as kubectl-keycutter, kubectl runs it for `kubectl keycutter …`: usage lines say so.
const invokedAs = basename(process.argv[1] ?? "keycutter").replace(/\.(js|ts)$/, "");
const name = invokedAs.startsWith("kubectl-") ? `kubectl ${invokedAs.slice("kubectl-".length)}` : "keycutter";
const debug = process.env.KEYCUTTER_DEBUG === "1" || process.argv.includes("--debug");

const program = new Command();
program
  .name(name)
  .description("Per-pod, least-privilege cloud credentials for multi-tenant Kubernetes")
  .version(VERSION)
  .option("--debug", "print the stack trace of an error (also KEYCUTTER_DEBUG=1)")
  // commander prints its own "error: …" line; the handler below only chooses the exit code
  .exitOverride();

registerAgentCommands(program);
registerServerCommands(program);
registerPolicyCommands(program);
registerDemoCommand(program);
registerExplainCommand(program);
registerDoctorCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  } else {
    process.stderr.write(`error: ${errorLine(err)}\n`);
    if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    // a command that failed half-way may hold sockets or timers open: end here
    process.exit(exitCodeOf(err));
  }
}
