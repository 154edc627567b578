// `keycutter demo --node`: the demo's story on the real node of test/harness/realnode.ts
// (kubelet, containerd, the CNI bridge, kube-proxy, CoreDNS) with keycutter installed by
// `helm install`, the workloads the unmodified AWS CLI in Jobs. Needs the node's parts and images
// (scripts/demo.sh --node builds them); cleans up after itself, also on Ctrl-C.
import { startMoto, applyObjects, type Moto } from "../harness/index.ts";
import {
  deleteWorkloads,
  installKeycutter,
  jobFinished,
  jobObject,
  type Installed,
} from "../harness/node-workloads.ts";
import { startRealNode, type RealNode } from "../harness/realnode.ts";
import {
  BUCKET_A,
  BUCKET_B,
  ROLE_A,
  ROLE_B,
  accessPolicy,
  createTenantAws,
  roleAllowance,
} from "../e2e/fixtures.ts";
import { launch } from "./programs.ts";

const tty = process.stdout.isTTY;
const paint = (code: string) => (text: string) => (tty ? `\x1b[${code}m${text}\x1b[0m` : text);
const bold = paint("1");
const dim = paint("2");
const green = paint("32");
const red = paint("31");
const cyan = paint("36");

let stepNumber = 0;
const step = (title: string) => console.log(`\n${bold(`${++stepNumber}. ${title}`)}`);
const say = (text: string) => console.log(`   ${text}`);
const indent = (text: string) =>
  text
    .trimEnd()
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => `     ${line}`)
    .join("\n");

export async function runNodeDemo(opts: { keep: boolean }): Promise<void> {
  let node: RealNode | undefined;
  let moto: Moto | undefined;
  let installed: Installed | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      console.log(dim("\ncleaning up: the node's pods, processes, mounts, cgroups, namespace and rules…"));
      const left =
        (await node?.stop().catch((err: Error) => [{ kind: "teardown", what: err.message }])) ?? [];
      await moto?.stop();
      installed?.cleanup();
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
    console.log(
      bold("keycutter demo --node") + dim(" — a real kubelet, containerd, CNI bridge, kube-proxy and"),
    );
    console.log(dim("  CoreDNS on this machine, keycutter installed with helm from the image built here."));
    step("Bringing the node up and installing the chart");
    const started = Date.now();
    node = await startRealNode();
    say(
      dim(`· node ${node.name} Ready (${node.nodeIP}, pods in ${node.podSubnet}) in ${seconds(started)} s`),
    );
    moto = await startMoto();
    installed = await installKeycutter(node, moto);
    say(dim(`· helm install keycutter: server and agent Ready in ${Math.round(installed.readyMs / 1000)} s`));
    await createTenantAws({ moto });
    await moto.enableAuth();
    const objects: object[] = [roleAllowance()];
    for (const namespace of ["tenant-a", "tenant-b"]) {
      objects.push(
        { apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } },
        { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "reader", namespace } },
        { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "batch", namespace } },
      );
    }
    objects.push(
      accessPolicy("tenant-a", "readers", ROLE_A, BUCKET_A),
      accessPolicy("tenant-b", "readers", ROLE_B, BUCKET_B),
    );
    await applyObjects(node.cluster.kc, objects as never);
    say(`· two tenants, each with a bucket and an IAM role; ${dim("RoleAllowance 'tenants' bounds them")}`);
    say(green(`ready in ${seconds(started)} s`));

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
    console.log(bold(`\nThat's keycutter on a real node (${seconds(started)} s).`));
  } finally {
    await cleanup();
  }
}

function seconds(sinceMs: number): number {
  return Math.round((Date.now() - sinceMs) / 1000);
}
