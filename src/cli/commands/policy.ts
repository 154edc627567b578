import type { Command } from "commander";

export function registerPolicyCommands(program: Command): void {
  const policy = program.command("policy").description("work with AccessPolicy and RoleAllowance objects");
  policy
    .command("validate <files...>")
    .description(
      "validate AccessPolicy/RoleAllowance YAML or JSON files offline with the server's checks (exit 1 on errors)",
    )
    .option("-o, --output <format>", "text or json", "text")
    .option("--cluster-name <name>", "cluster name used when rendering templates", "")
    .option("--max-duration <seconds>", "the server's duration cap", "3600")
    .action(async (files: string[], o: { output: string; clusterName: string; maxDuration: string }) => {
      const { validateFiles } = await import("../../policy/offline.ts");
      const findings = validateFiles(files, {
        clusterName: o.clusterName,
        maxDurationSeconds: Number(o.maxDuration),
      });
      const failed = findings.some((f) => f.errors.length > 0);
      if (o.output === "json") {
        process.stdout.write(`${JSON.stringify({ valid: !failed, findings }, null, 2)}\n`);
      } else {
        for (const f of findings) {
          const what = `${f.file}[${f.index}] ${f.kind || "?"} ${f.namespace ? `${f.namespace}/` : ""}${f.name}`;
          process.stdout.write(`${f.errors.length ? "INVALID" : "ok     "} ${what}\n`);
          for (const e of f.errors) process.stdout.write(`  error:   ${e}\n`);
          for (const w of f.warnings) process.stdout.write(`  warning: ${w}\n`);
        }
        if (findings.length === 0) process.stdout.write("no objects found\n");
      }
      process.exitCode = failed || findings.length === 0 ? 1 : 0;
    });
}
