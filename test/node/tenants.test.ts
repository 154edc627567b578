// Two tenants' workloads on the real node (issue 14, items 2 and 3): a Deployment and a Job per
// tenant and per client (the unmodified AWS CLI, boto3 and the JS SDK v3, default credential
// chains, no retries) each get their own tenant's role on their first call, through the real CNI
// bridge and the agent's hook; a pod where no AccessPolicy applies gets nothing, and never the
// node's credentials, which a stand-in "real IMDS" on the node serves; and the
// container-credentials path with the projected token the kubelet mounts keeps working across
// the kubelet's rotation of that token.
//
// The store: moto with authentication on. moto enforces each role's own policy (tenant-a-reader
// reads only tenant-a-data), so the cross-tenant read is denied by the store itself; it ignores
// session policies, which test/e2e/minio-session-policy.test.ts checks against MinIO.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { CoreV1Api } from "@kubernetes/client-node";
import { MOTO_ACCOUNT_ID, applyObjects, type Moto } from "../harness/index.ts";
import { sessionNameFor } from "../../src/policy/decide.ts";
import { NODE_ACCESS_KEY } from "../harness/fake-imds.ts";
import {
  deleteWorkloads,
  deploymentObject,
  jobFinished,
  jobObject,
  waitForWorkloadPod,
  type WorkloadSpec,
} from "../harness/node-workloads.ts";
import {
  describeOnNode,
  secondsSince,
  startNodeWithTenants,
  type Installed,
  type NodeSuite,
} from "../harness/node-suite.ts";
import type { RealNode } from "../harness/realnode.ts";
import { BUCKET_A, BUCKET_B } from "../e2e/fixtures.ts";
import {
  launch,
  noPolicyProgram,
  parseCalls,
  parseReport,
  rotationProgram,
  tenantProgram,
  type Client,
  type RotationCall,
} from "./programs.ts";

const CLIENTS: Client[] = ["cli", "boto3", "js"];
const TENANTS = [
  {
    namespace: "tenant-a",
    role: "tenant-a-reader",
    own: BUCKET_A,
    ownKey: "tenant-a/report.csv",
    ownBody: "a,1",
  },
  {
    namespace: "tenant-b",
    role: "tenant-b-reader",
    own: BUCKET_B,
    ownKey: "tenant-b/secret.csv",
    ownBody: "b,2",
  },
] as const;
// RoleAllowance covers tenant-*; this one has a service account and no AccessPolicy
const NO_POLICY_NS = "tenant-c";
// the kubelet's minimum for a projected token; it rotates the token at 80% of it
const TOKEN_SECONDS = 600;
const TOKEN_DIR = "/var/run/secrets/keycutter";
const CONTAINER_ENV = {
  AWS_CONTAINER_CREDENTIALS_FULL_URI: "http://169.254.170.23/v1/credentials",
  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: `${TOKEN_DIR}/token`,
};

describeOnNode("a real node: two tenants' workloads, and the kubelet's projected token", () => {
  let suite: NodeSuite | undefined;
  let node: RealNode | undefined;
  let moto: Moto | undefined;
  let suiteStarted = 0;

  const imageOf = (client: Client) =>
    client === "js" ? node!.images.jsSdk.ref : node!.images.awsClients.ref;
  const awsEnv = () => ({
    AWS_REGION: moto!.region,
    AWS_DEFAULT_REGION: moto!.region,
    AWS_ENDPOINT_URL: moto!.endpointFor(node!.hostIP),
    // one attempt: the first call has to succeed, no SDK retry may hide a failed fetch
    AWS_MAX_ATTEMPTS: "1",
  });
  const tokenVolume = {
    podSpec: {
      volumes: [
        {
          name: "keycutter-token",
          projected: {
            sources: [
              {
                serviceAccountToken: {
                  audience: "keycutter-pod",
                  expirationSeconds: TOKEN_SECONDS,
                  path: "token",
                },
              },
            ],
          },
        },
      ],
    },
    container: { volumeMounts: [{ name: "keycutter-token", mountPath: TOKEN_DIR, readOnly: true }] },
  };

  before(async () => {
    suiteStarted = Date.now();
    let installed: Installed;
    ({ suite, installed } = await startNodeWithTenants({
      namespaces: ["tenant-a", "tenant-b", NO_POLICY_NS],
    }));
    ({ node, moto } = suite);
    console.log(`# helm install to Ready in ${Math.round(installed.readyMs / 1000)} s`);
  });
  after(async () => {
    await suite?.stop();
  });

  let rotationStarted = 0;
  it("container credentials: a pod with the kubelet's projected token (audience keycutter-pod) gets tenant-a's role", async () => {
    // boto3 and the JS SDK side by side in one pod, each polling through the container
    // endpoint; the rotation case below reads what they printed over the token's lifetime
    const spec: WorkloadSpec = {
      namespace: "tenant-a",
      name: "rotation",
      image: node!.images.jsSdk.ref,
      workingDir: "/opt/js-sdk",
      ...launch("js", rotationProgram("js")),
      env: { ...awsEnv(), ...CONTAINER_ENV, PROGRAM: rotationProgram("js") },
      ...tokenVolume,
    };
    const deployment = deploymentObject(spec) as { spec: { template: { spec: { containers: object[] } } } };
    const boto3 = launch("boto3", rotationProgram("boto3"));
    deployment.spec.template.spec.containers.push({
      name: "boto3",
      image: node!.images.awsClients.ref,
      imagePullPolicy: "Never",
      command: boto3.command,
      env: Object.entries({ ...awsEnv(), ...CONTAINER_ENV, ...boto3.env }).map(([name, value]) => ({
        name,
        value,
      })),
      volumeMounts: tokenVolume.container.volumeMounts,
    });
    rotationStarted = Date.now();
    await applyObjects(node!.cluster.kc, [deployment as never]);
    const run = await waitForWorkloadPod(
      node!,
      "tenant-a",
      "rotation",
      (pod, output) => parseCalls(output).length > 0 && pod.status?.phase === "Running",
    );
    const first = parseCalls(run.output)[0]!;
    assert.match(
      first.arn ?? first.error ?? "",
      /^arn:aws:sts::\d+:assumed-role\/tenant-a-reader\//,
      run.output,
    );
    assert.equal(first.exp - first.iat, TOKEN_SECONDS, "the kubelet asked for the short token");
  });

  it("each tenant's Deployment and Job, with the CLI, boto3 and the JS SDK, gets its own role on the first call; the other tenant's bucket is denied", async () => {
    const started = Date.now();
    const workloads: Array<{ tenant: (typeof TENANTS)[number]; client: Client; kind: "job" | "deploy" }> = [];
    const objects: object[] = [];
    for (const tenant of TENANTS) {
      const other = TENANTS.find((candidate) => candidate !== tenant)!;
      for (const client of CLIENTS) {
        for (const kind of ["job", "deploy"] as const) {
          const spec: WorkloadSpec = {
            namespace: tenant.namespace,
            name: `${client}-${kind}`,
            image: imageOf(client),
            workingDir: client === "js" ? "/opt/js-sdk" : undefined,
            ...launch(client, tenantProgram(client), kind === "deploy"),
          };
          spec.env = {
            ...awsEnv(),
            OWN_BUCKET: tenant.own,
            OWN_KEY: tenant.ownKey,
            OTHER_BUCKET: other.own,
            OTHER_KEY: other.ownKey,
            PROGRAM: tenantProgram(client),
          };
          objects.push(kind === "job" ? jobObject(spec) : deploymentObject(spec));
          workloads.push({ tenant, client, kind });
        }
      }
    }
    await applyObjects(node!.cluster.kc, objects as never);
    for (const { tenant, client, kind } of workloads) {
      const name = `${client}-${kind}`;
      const run =
        kind === "job"
          ? await jobFinished(node!, tenant.namespace, name)
          : await waitForWorkloadPod(
              node!,
              tenant.namespace,
              name,
              (pod, output) =>
                output.includes("DONE") || (pod.status?.containerStatuses?.[0]?.restartCount ?? 0) > 0,
            );
      const label = `${tenant.namespace}/${name}:\n${run.output}`;
      if (kind === "job") assert.equal(run.pod.status!.phase, "Succeeded", label);
      else assert.equal(run.pod.status!.containerStatuses![0]!.restartCount, 0, `no restart: ${label}`);
      const report = parseReport(run.output);
      // the pod's own session: its role, and a session name of its namespace, name and uid
      const session = sessionNameFor({
        namespace: tenant.namespace,
        name: run.pod.metadata!.name!,
        uid: run.pod.metadata!.uid!,
      });
      assert.equal(
        report.get("ARN"),
        `arn:aws:sts::${MOTO_ACCOUNT_ID}:assumed-role/${tenant.role}/${session}`,
        label,
      );
      assert.equal(report.get("OWN"), tenant.ownBody, label);
      assert.match(report.get("CROSS") ?? "", /^AccessDenied/, label);
      assert.ok(!run.output.includes(NODE_ACCESS_KEY), label);
    }
    console.log(`# ${workloads.length} tenant workloads done in ${secondsSince(started)} s`);
    for (const tenant of TENANTS) {
      const names = workloads
        .filter((workload) => workload.tenant === tenant)
        .map(({ client, kind }) => `${client}-${kind}`);
      await deleteWorkloads(node!, tenant.namespace, names);
    }
  });

  it("a pod where no AccessPolicy applies gets no credentials, and never the node's, over either endpoint", async () => {
    // the stand-in real IMDS is live on the node: without the hook a pod would reach it
    const direct = await node!.execInNode("curl", [
      "-sf",
      "http://169.254.169.254/latest/meta-data/iam/security-credentials/node-role",
    ]);
    assert.ok(
      direct.stdout.includes(NODE_ACCESS_KEY),
      `the node's IMDS answers on the node: ${direct.stderr}`,
    );
    const objects = CLIENTS.map((client) =>
      jobObject({
        namespace: NO_POLICY_NS,
        name: `${client}-nopolicy`,
        image: imageOf(client),
        workingDir: client === "js" ? "/opt/js-sdk" : undefined,
        ...launch(client, noPolicyProgram(client)),
        env: { ...awsEnv(), PROGRAM: noPolicyProgram(client), ...(client === "js" ? CONTAINER_ENV : {}) },
        ...(client === "js" ? tokenVolume : {}),
      }),
    );
    await applyObjects(node!.cluster.kc, objects as never);
    for (const client of CLIENTS) {
      const run = await jobFinished(node!, NO_POLICY_NS, `${client}-nopolicy`);
      const label = `${client}:\n${run.output}`;
      const report = parseReport(run.output);
      assert.ok(report.has("DONE"), label);
      assert.equal(report.get("ARN"), undefined, label);
      assert.ok(report.has("NOCREDS"), label);
      for (const nodeMark of [NODE_ACCESS_KEY, "NODE-IMDS", "node-role"])
        assert.ok(!run.output.includes(nodeMark), `${nodeMark} reached the pod: ${label}`);
      if (client === "js") {
        // the agent answered both: a session token, then no role; the container endpoint refuses
        assert.match(report.get("IMDS") ?? "", /^200 404 /, label);
        assert.match(report.get("CONTAINER") ?? "", /^404 .*NoPolicy/, label);
      }
    }
    await deleteWorkloads(
      node!,
      NO_POLICY_NS,
      CLIENTS.map((client) => `${client}-nopolicy`),
    );
  });

  it("the kubelet rotates the projected token at 80% of its lifetime; both SDKs keep getting credentials, also once the first token expired", async () => {
    const core = node!.cluster.kc.makeApiClient(CoreV1Api);
    let calls: Record<"workload" | "boto3", RotationCall[]> = { workload: [], boto3: [] };
    const firstExpiry = async (): Promise<number> => {
      const pods = await core.listNamespacedPod({
        namespace: "tenant-a",
        labelSelector: "workload=rotation",
      });
      const pod = pods.items[0]!.metadata!.name!;
      calls = {
        workload: parseCalls(node!.containerLogs("tenant-a", pod, "workload")),
        boto3: parseCalls(node!.containerLogs("tenant-a", pod, "boto3")),
      };
      return calls.workload[0]?.exp ?? 0;
    };
    const expiry = await firstExpiry();
    const waitMs = Math.max(0, (expiry + 25) * 1000 - Date.now());
    console.log(`# waiting ${Math.round(waitMs / 1000)} s for the first token to expire`);
    await new Promise((resolve) => setTimeout(resolve, waitMs));
    await firstExpiry();
    for (const [container, seen] of Object.entries(calls)) {
      const label = `${container}:\n${seen.map((call) => JSON.stringify(call)).join("\n")}`;
      assert.ok(seen.length > 10, label);
      for (const call of seen)
        assert.match(call.arn ?? call.error ?? "", /assumed-role\/tenant-a-reader\//, label);
      const digests = [...new Set(seen.map((call) => call.digest))];
      assert.ok(digests.length >= 2, `the token file changed: ${label}`);
      const [first, second] = [seen[0]!, seen.find((call) => call.digest !== seen[0]!.digest)!];
      const rotatedAfter = second.iat - first.iat;
      // the kubelet refreshes within 20% (plus up to 10 s of jitter) of expiry, then its sync
      assert.ok(rotatedAfter >= 0.8 * TOKEN_SECONDS - 15 && rotatedAfter < TOKEN_SECONDS, label);
      const afterExpiry = seen.filter((call) => call.at > first.exp && call.digest !== first.digest);
      assert.ok(afterExpiry.length > 0 && afterExpiry.every((call) => call.arn), label);
      console.log(
        `# ${container}: token rotated ${rotatedAfter} s after issue; ${seen.length} calls over ${seen.at(-1)!.at - first.at} s, ${afterExpiry.length} after the first token expired`,
      );
    }
    console.log(`# rotation case: ${secondsSince(rotationStarted)} s since the pod was created`);
  });

  it("teardown leaves no process, mount, namespace, veth, cgroup or iptables rule behind", async () => {
    const leftovers = await suite!.stop();
    assert.deepEqual(leftovers, []);
    console.log(`# whole file ${secondsSince(suiteStarted)} s`);
  });
});
