// `keycutter explain [<namespace>/]<pod>`: what the server would decide for a pod, and why.

import type { Command } from "commander";
import { EXIT, UsageError } from "../errors.ts";
import { addKubeFlags, resolveKubeContext, type KubeFlags } from "../kube-context.ts";
import { outputOption, renderStructured, type OutputFormat } from "../output.ts";
import { addServerConfigFlags, decisionSettings, type ServerConfigFlags } from "../server-config.ts";

interface ExplainOptions extends KubeFlags, ServerConfigFlags {
  action?: string;
  resource?: string;
  output: OutputFormat;
  region: string;
  iamEndpoint?: string;
  role?: boolean;
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** `ns/pod`, or `pod` in the namespace of -n / the context. */
export function parsePodArgument(
  arg: string,
  namespace: string,
  namespaceExplicit: boolean,
): [string, string] {
  const parts = arg.split("/");
  if (parts.length === 1 && NAME.test(arg)) return [namespace, arg];
  if (parts.length === 2 && NAME.test(parts[0]!) && NAME.test(parts[1]!)) {
    if (namespaceExplicit && parts[0] !== namespace)
      throw new UsageError(`${arg}: the namespace differs from -n ${namespace}`);
    return [parts[0]!, parts[1]!];
  }
  throw new UsageError(`expected [<namespace>/]<pod>, got "${arg}"`);
}

export function registerExplainCommand(program: Command): void {
  const command = program
    .command("explain <pod>")
    .description(
      "explain which AccessPolicy applies to [<namespace>/]<pod>, the allowance, the rendered session policy and tags (exit 3 when refused)",
    )
    .option("--action <action>", "an IAM action to evaluate, e.g. s3:GetObject")
    .option("--resource <arn>", "the resource ARN for --action")
    .addOption(outputOption())
    .option("--region <region>", "AWS region for IAM look-ups", process.env.AWS_REGION ?? "us-east-1")
    .option(
      "--iam-endpoint <url>",
      "IAM endpoint URL (to read the role's policies) [env AWS_ENDPOINT_URL_IAM]",
      process.env.AWS_ENDPOINT_URL_IAM,
    )
    .option("--no-role", "do not read the role's policies from IAM; evaluate the session policy alone");
  addKubeFlags(command);
  addServerConfigFlags(command);
  command.action(async (podArg: string, o: ExplainOptions) => {
    if ((o.action === undefined) !== (o.resource === undefined))
      throw new UsageError("--action and --resource go together");
    const ctx = await resolveKubeContext(o);
    const [namespace, pod] = parsePodArgument(podArg, ctx.namespace, ctx.namespaceExplicit);
    const settings = await decisionSettings(ctx.kc, o);
    const { explain, formatExplanation } = await import("../../server/explain.ts");
    const res = await explain({
      namespace,
      pod,
      kc: ctx.kc,
      clusterName: settings.clusterName,
      maxDurationSeconds: settings.maxDurationSeconds,
      settingsFrom: settings.from,
      ...(o.action && o.resource ? { action: o.action, resource: o.resource } : {}),
      region: o.region,
      ...(o.iamEndpoint ? { iamEndpoint: o.iamEndpoint } : {}),
      readRole: o.role !== false,
    });
    process.stdout.write(o.output === "text" ? formatExplanation(res) : renderStructured(o.output, res));
    process.exitCode = res.decision.ok ? EXIT.ok : EXIT.findings;
  });
}
