// `keycutter explain <namespace>/<pod>`: what the server would decide for a pod, and why.

import type { Command } from "commander";

interface ExplainOptions {
  action?: string;
  resource?: string;
  output: string;
  kubeconfig?: string;
  clusterName: string;
  maxDuration: string;
  region: string;
  iamEndpoint?: string;
  role?: boolean;
}

export function registerExplainCommand(program: Command): void {
  program
    .command("explain <pod>")
    .description(
      "explain which AccessPolicy applies to <namespace>/<pod>, the allowance, the rendered session policy and tags",
    )
    .option("--action <action>", "an IAM action to evaluate, e.g. s3:GetObject")
    .option("--resource <arn>", "the resource ARN for --action")
    .option("-o, --output <format>", "text or json", "text")
    .option("--kubeconfig <file>", "kubeconfig (default: $KUBECONFIG / ~/.kube/config / in-cluster)")
    .option(
      "--cluster-name <name>",
      "the server's --cluster-name (used in tags/templates)",
      process.env.KEYCUTTER_CLUSTER_NAME ?? "",
    )
    .option("--max-duration <seconds>", "the server's --max-duration", "3600")
    .option("--region <region>", "AWS region for IAM look-ups", process.env.AWS_REGION ?? "us-east-1")
    .option(
      "--iam-endpoint <url>",
      "IAM endpoint URL (to read the role's policies) [env AWS_ENDPOINT_URL_IAM]",
      process.env.AWS_ENDPOINT_URL_IAM,
    )
    .option("--no-role", "do not read the role's policies from IAM; evaluate the session policy alone")
    .action(async (podArg: string, o: ExplainOptions) => {
      const { explain, formatExplanation } = await import("../../server/explain.ts");
      const m = /^([a-z0-9][-a-z0-9]*)\/([a-z0-9][-a-z0-9.]*)$/.exec(podArg);
      if (!m) throw new Error(`expected <namespace>/<pod>, got "${podArg}"`);
      if ((o.action === undefined) !== (o.resource === undefined))
        throw new Error("--action and --resource go together");
      const res = await explain({
        namespace: m[1] as string,
        pod: m[2] as string,
        ...(o.kubeconfig ? { kubeconfig: o.kubeconfig } : {}),
        clusterName: o.clusterName,
        maxDurationSeconds: Number(o.maxDuration),
        ...(o.action && o.resource ? { action: o.action, resource: o.resource } : {}),
        region: o.region,
        ...(o.iamEndpoint ? { iamEndpoint: o.iamEndpoint } : {}),
        readRole: o.role !== false,
      });
      process.stdout.write(
        o.output === "json" ? `${JSON.stringify(res, null, 2)}\n` : formatExplanation(res),
      );
      process.exitCode = res.decision.ok ? 0 : 2;
    });
}
