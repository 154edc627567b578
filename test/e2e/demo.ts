// The README's demo: brings up the whole system from real parts, then tells its story in the
// terminal. Cleans up after itself, also on Ctrl-C.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { KEYCUTTER_MAIN, NODE } from "../harness/index.ts";
import { System, IMDS, type TestPod } from "./system.ts";
import {
  BUCKET_A,
  BUCKET_B,
  accessPolicy,
  applyTenantPolicies,
  createTenantAws,
  ROLE_A,
} from "./fixtures.ts";
import { banner, bold, cyan, dim, green, indent, red, say, step } from "./demo-output.ts";

const execFileP = promisify(execFile);
const shell = (pod: TestPod, cmd: string) =>
  console.log(`   ${cyan(`${pod.namespace}/${pod.name} $`)} ${cmd}`);

export async function runDemo(opts: { keep: boolean }): Promise<void> {
  const sys = new System({ nodes: ["node-1"], serverReplicas: 2 });
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      console.log(dim("\ncleaning up: stopping processes, removing network namespaces and iptables rules…"));
      await sys.stop().catch((e: Error) => console.error(e.message));
    })());
  const onSignal = () => void cleanup().then(() => process.exit(130));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    banner(
      "keycutter demo",
      "every part is real: etcd, kube-apiserver, moto (STS/S3), Redis,",
      "keycutter server ×2 and a node agent as processes, pods in network namespaces.",
    );
    step("Bringing the system up");
    const t0 = Date.now();
    await sys.start((m) => say(dim(`· ${m}`)));
    await createTenantAws(sys);
    await sys.moto.enableAuth();
    await applyTenantPolicies(sys);
    say(`· two tenants, each with a bucket and an IAM role; ${dim("RoleAllowance 'tenants' bounds them")}`);
    const appA = await sys.addPod("node-1", "tenant-a", "app", { serviceAccount: "reader" });
    const appB = await sys.addPod("node-1", "tenant-b", "app", { serviceAccount: "reader" });
    const batch = await sys.addPod("node-1", "tenant-a", "batch", { serviceAccount: "batch" });
    say(
      `· pods on node-1: tenant-a/app ${dim(appA.net.ip)}, tenant-b/app ${dim(appB.net.ip)}, tenant-a/batch ${dim(batch.net.ip)}`,
    );
    say(dim(`· network namespaces, links and rules of this run are named ${sys.net.prefix}*`));
    say(green(`ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`));

    step("Tenant A's pod reads its data with the unmodified AWS CLI");
    say(dim("No credentials are configured in the pod: the CLI asks 169.254.169.254, which the node's"));
    say(dim("iptables hook sends to the keycutter agent."));
    shell(appA, `aws s3 cp s3://${BUCKET_A}/tenant-a/report.csv -`);
    const ok = await sys.aws(appA, ["s3", "cp", `s3://${BUCKET_A}/tenant-a/report.csv`, "-"]);
    say(ok.code === 0 ? green(indent(ok.stdout)) : red(indent(ok.stderr)));
    const role = await sys.curl(appA, `${IMDS}/latest/meta-data/iam/security-credentials/`);
    shell(appA, "curl 169.254.169.254/latest/meta-data/iam/security-credentials/");
    say(indent(role.body));

    step("The same pod is denied on tenant B's bucket");
    shell(appA, `aws s3 cp s3://${BUCKET_B}/tenant-b/secret.csv -`);
    const denied = await sys.aws(appA, ["s3", "cp", `s3://${BUCKET_B}/tenant-b/secret.csv`, "-"]);
    say(
      denied.code !== 0
        ? red(indent(denied.stderr.split("\n").find((l) => l.trim()) ?? denied.stderr))
        : "unexpectedly allowed!",
    );

    step("keycutter explain shows why");
    console.log(
      `   ${cyan("$")} keycutter explain tenant-a/app --action s3:GetObject --resource arn:aws:s3:::${BUCKET_B}/tenant-b/secret.csv`,
    );
    const explain = await execFileP(
      NODE,
      [
        KEYCUTTER_MAIN,
        "explain",
        "tenant-a/app",
        "--kubeconfig",
        sys.cluster.kubeconfigPath,
        "--action",
        "s3:GetObject",
        "--resource",
        `arn:aws:s3:::${BUCKET_B}/tenant-b/secret.csv`,
      ],
      { env: { ...process.env, ...sys.serverEnv(), AWS_ENDPOINT_URL: sys.moto.endpoint }, timeout: 60_000 },
    ).catch((e: { stdout?: string; stderr?: string }) => ({
      stdout: e.stdout ?? "",
      stderr: e.stderr ?? "",
    }));
    say(indent(explain.stdout || explain.stderr));

    step("A pod with no policy gets nothing");
    shell(batch, "aws s3 ls s3://" + BUCKET_A);
    const none = await sys.aws(batch, ["s3", "ls", `s3://${BUCKET_A}`]);
    say(red(indent(none.stderr.split("\n").find((l) => l.trim()) ?? "")));
    const nothing = await sys.curl(batch, `${IMDS}/latest/meta-data/iam/security-credentials/`);
    shell(batch, "curl 169.254.169.254/latest/meta-data/iam/security-credentials/");
    say(indent(`HTTP ${nothing.status} ${nothing.body}`));

    step("A policy change takes effect");
    say(
      dim("tenant A adds an AccessPolicy for its batch service account (self-service, within the allowance)"),
    );
    await sys.apply(accessPolicy("tenant-a", "batch", ROLE_A, BUCKET_A, "batch"));
    const t1 = Date.now();
    let after = none;
    while (Date.now() - t1 < 20_000) {
      after = await sys.aws(batch, ["s3", "cp", `s3://${BUCKET_A}/tenant-a/report.csv`, "-"]);
      if (after.code === 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    shell(batch, `aws s3 cp s3://${BUCKET_A}/tenant-a/report.csv -`);
    say(
      after.code === 0
        ? green(indent(after.stdout)) + dim(`  (in force after ${Date.now() - t1} ms)`)
        : red(indent(after.stderr)),
    );

    step("A pod is deleted and its credentials stop");
    await sys.deletePod(appA, { keepNetwork: true });
    say(dim("tenant-a/app deleted; its network namespace (its IP) is still there"));
    const gone = await sys.curl(appA, `${IMDS}/latest/meta-data/iam/security-credentials/`);
    shell(appA, "curl 169.254.169.254/latest/meta-data/iam/security-credentials/");
    say(indent(`HTTP ${gone.status} ${gone.body}`));

    step("What the server audited");
    const audit = sys.servers
      .flatMap((s) => s.process.logs().split("\n"))
      .filter((l) => l.includes('"kind":"audit"'))
      .map(
        (l) =>
          JSON.parse(l) as {
            decision: string;
            code: string;
            pod?: { namespace: string; name: string };
            role?: string;
          },
      )
      .slice(-6);
    for (const a of audit) {
      const who = a.pod ? `${a.pod.namespace}/${a.pod.name}` : "?";
      say(
        `${a.decision === "allowed" ? green("allowed") : red("denied ")} ${who.padEnd(16)} ${a.role ?? a.code}`,
      );
    }
    say(dim("(no secret is ever written to logs or audit records)"));

    if (opts.keep) {
      console.log(`\nkubeconfig: ${sys.cluster.kubeconfigPath}  — Ctrl-C to stop.`);
      await new Promise(() => undefined);
    }
    console.log(bold("\nThat's keycutter."));
  } finally {
    await cleanup();
  }
}
