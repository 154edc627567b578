// `keycutter demo --node`: the demo's story on the real node of test/harness/realnode.ts
// (kubelet, containerd, the CNI bridge, kube-proxy, CoreDNS) with keycutter installed by
// `helm install`, the workloads the unmodified AWS CLI in Jobs. Needs the node's parts and images
// (scripts/demo.sh --node builds them); cleans up after itself, also on Ctrl-C.
import { applyObjects, type Moto } from "../harness/index.ts";
import { deleteWorkloads, jobFinished, jobObject } from "../harness/node-workloads.ts";
import { secondsSince, startNodeWithTenants, type Installed, type NodeSuite } from "../harness/node-suite.ts";
import type { RealNode } from "../harness/realnode.ts";
import { BUCKET_A, BUCKET_B, ROLE_A, accessPolicy } from "../e2e/fixtures.ts";
import { launch } from "./programs.ts";
import { banner, bold, cyan, dim, green, indent, red, say, step } from "../e2e/demo-output.ts";

export async function runNodeDemo(opts: { keep: boolean }): Promise<void> {
  let suite: NodeSuite | undefined;
  let node: RealNode | undefined;
  let moto: Moto | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      console.log(dim("\ncleaning up: the node's pods, processes, mounts, cgroups, namespace and rules…"));
      const left =
        (await suite?.stop().catch((err: Error) => [{ kind: "teardown", what: err.message }])) ?? [];
      if (left.length) console.error(red(`left behind: ${JSON.stringify(left)}`));
    })());
  const onSignal = () => void cleanup().then(() => process.exit(130));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  /** Runs `command` with the AWS CLI in a one-pod Job and prints it and its output. */
  const cli = async (namespace: string, name: string, command: string, serviceAccountName = "reader") => {
    console.log(`   ${cyan(`${namespace}/${name} $`)} ${command}`);
    await applyObjects(node!.cluster.kc, [
      jobObject({
        namespace,
        name,
        serviceAccountName,
        image: node!.images.awsClients.ref,
        ...launch("cli", command),
        env: {
          AWS_DEFAULT_REGION: moto!.region,
          AWS_ENDPOINT_URL: moto!.endpointFor(node!.hostIP),
          PROGRAM: command,
        },
      }) as never,
    ]);
    const run = await jobFinished(node!, namespace, name);
    console.log((run.pod.status?.phase === "Succeeded" ? green : red)(indent(run.output || "(no output)")));
    await deleteWorkloads(node!, namespace, [name]);
  };

  try {
    banner(
      "keycutter demo --node",
      "a real kubelet, containerd, CNI bridge, kube-proxy and",
      "CoreDNS on this machine, keycutter installed with helm from the image built here.",
    );
    step("Bringing the node up and installing the chart");
    const started = Date.now();
    let installed: Installed;
    ({ suite, installed } = await startNodeWithTenants({
      quiet: true,
      serviceAccounts: ["reader", "batch"],
    }));
    ({ node, moto } = suite);
    say(dim(`· node ${node.name} (${node.nodeIP}, pods in ${node.podSubnet})`));
    say(dim(`· helm install keycutter: server and agent Ready in ${Math.round(installed.readyMs / 1000)} s`));
    say(`· two tenants, each with a bucket and an IAM role; ${dim("RoleAllowance 'tenants' bounds them")}`);
    say(green(`ready in ${secondsSince(started)} s`));

    step("Tenant A's pod reads its data with the unmodified AWS CLI");
    say(dim("No credentials in the pod: the CLI asks 169.254.169.254, which the agent's hook in the"));
    say(dim("node's iptables sends to the keycutter agent."));
    await cli(
      "tenant-a",
      "reader",
      `aws s3 cp s3://${BUCKET_A}/tenant-a/report.csv - && aws sts get-caller-identity --query Arn --output text`,
    );

    step("Tenant A is denied tenant B's bucket");
    await cli("tenant-a", "cross", `aws s3 cp s3://${BUCKET_B}/tenant-b/secret.csv -`);

    step("A pod no policy selects gets nothing");
    const batchRead = `aws s3 cp s3://${BUCKET_A}/tenant-a/report.csv -`;
    say(dim("tenant-a's service account batch: no AccessPolicy selects it"));
    await cli("tenant-a", "batch", batchRead, "batch");

    step("A policy change takes effect");
    say(dim("tenant A adds an AccessPolicy for its batch service account (within the allowance)"));
    await applyObjects(node.cluster.kc, [
      accessPolicy("tenant-a", "batch", ROLE_A, BUCKET_A, "batch") as never,
    ]);
    await cli("tenant-a", "batch-again", batchRead, "batch");

    if (opts.keep) {
      console.log(`\nkubeconfig: ${node.cluster.kubeconfigPath}  — Ctrl-C to stop.`);
      await new Promise(() => undefined);
    }
    console.log(bold(`\nThat's keycutter on a real node (${secondsSince(started)} s).`));
  } finally {
    await cleanup();
  }
}
