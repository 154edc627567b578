import type { Command } from "commander";
import type { DryRunResult } from "../dry-run.ts";
import { EXIT } from "../errors.ts";
import { addKubeFlags, resolveKubeContext, type KubeFlags } from "../kube-context.ts";
import { outputOption, renderStructured, type OutputFormat } from "../output.ts";
import {
  addServerConfigFlags,
  decisionSettings,
  positiveSeconds,
  type ServerConfigFlags,
} from "../server-config.ts";

interface ValidateOptions extends KubeFlags, ServerConfigFlags {
  output: OutputFormat;
  server?: boolean;
}

export function registerPolicyCommands(program: Command): void {
  const policy = program.command("policy").description("work with AccessPolicy and RoleAllowance objects");
  const validate = policy
    .command("validate <files...>")
    .description(
      "validate AccessPolicy/RoleAllowance YAML or JSON files with the server's checks, offline or also by the apiserver with --server (exit 3 on errors)",
    )
    .addOption(outputOption())
    .option(
      "--server",
      "also send each object to the apiserver as a dry run (dryRun=All: the CRDs' schema and CEL rules, admission, your RBAC; nothing is stored), with the installed server's cluster name and duration cap",
    );
  addKubeFlags(validate);
  addServerConfigFlags(validate);
  validate.action(async (files: string[], o: ValidateOptions) => {
    const { validateFiles } = await import("../../policy/offline.ts");
    let settings = {
      clusterName: o.clusterName ?? "",
      maxDurationSeconds:
        o.maxDuration === undefined ? 3600 : positiveSeconds(o.maxDuration, "--max-duration"),
    };
    let dryRun: DryRunResult[] = [];
    if (o.server) {
      const ctx = await resolveKubeContext(o);
      settings = await decisionSettings(ctx.kc, o);
      const { serverDryRun } = await import("../dry-run.ts");
      dryRun = await serverDryRun(ctx.kc, files, ctx.namespace);
    }
    const findings = validateFiles(files, settings);
    for (const d of dryRun) {
      const f = findings.find(
        (x) => x.file === d.file && x.index === d.index && x.kind === d.kind && x.name === d.name,
      );
      if (!f) continue;
      f.errors.push(...d.errors.map((e) => `apiserver: ${e}`));
      if (d.namespace && !f.namespace) f.namespace = d.namespace;
    }
    const failed = findings.some((f) => f.errors.length > 0);
    if (o.output !== "text") {
      process.stdout.write(renderStructured(o.output, { valid: !failed, findings }));
    } else {
      for (const f of findings) {
        const what = `${f.file}[${f.index}] ${f.kind || "?"} ${f.namespace ? `${f.namespace}/` : ""}${f.name}`;
        process.stdout.write(`${f.errors.length ? "INVALID" : "ok     "} ${what}\n`);
        for (const e of f.errors) process.stdout.write(`  error:   ${e}\n`);
        for (const w of f.warnings) process.stdout.write(`  warning: ${w}\n`);
      }
      if (findings.length === 0) process.stdout.write("no objects found\n");
    }
    process.exitCode = failed || findings.length === 0 ? EXIT.findings : EXIT.ok;
  });
}
