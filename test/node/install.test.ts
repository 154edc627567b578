// keycutter installed the way a user installs it, on a real node: the kubelet, containerd and
// the CNI bridge run the image built from deploy/Dockerfile here, and `helm install` of
// deploy/helm/keycutter has to come up through the real controllers. `npm run test:node` runs
// this suite (it is skipped elsewhere: its cold setup builds the node's parts and images).
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { CoreV1Api } from "@kubernetes/client-node";
import { applyObjects, waitFor, type Moto } from "../harness/index.ts";
import type { Leftover, RealNode } from "../harness/realnode.ts";
import { jobFinished, jobObject } from "../harness/node-workloads.ts";
import {
  describeOnNode,
  STARTUP_TAINT,
  installKeycutter,
  secondsSince,
  startNodeSuite,
  tenantNamespaces,
  waitStartupTaintRemoved,
  type NodeSuite,
} from "../harness/node-suite.ts";
import { BUCKET_A, ROLE_A, accessPolicy, roleAllowance } from "../e2e/fixtures.ts";

const NS = "keycutter-system";

function inSubnet(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split("/") as [string, string];
  const toInt = (addr: string) => addr.split(".").reduce((acc, octet) => acc * 256 + Number(octet), 0);
  const size = 2 ** (32 - Number(bits));
  return Math.floor(toInt(ip) / size) === Math.floor(toInt(base) / size);
}

describeOnNode("a real node: keycutter installed with helm", () => {
  let suite: NodeSuite | undefined;
  let node: RealNode | undefined;
  let moto: Moto | undefined;
  let leftovers: Leftover[] | undefined;
  let started = 0;

  before(async () => {
    started = Date.now();
    suite = await startNodeSuite({ registerWithTaints: [STARTUP_TAINT] });
    ({ node, moto } = suite);
  });
  after(async () => {
    await suite?.stop();
  });

  const core = () => node!.cluster.kc.makeApiClient(CoreV1Api);

  it("the node registers Ready, reporting its real kubelet, containerd and address", async () => {
    const registered = await core().readNode({ name: node!.name });
    const info = registered.status!.nodeInfo!;
    assert.equal(info.kubeletVersion, "v1.36.3");
    assert.match(info.containerRuntimeVersion, /^containerd:\/\/2\./);
    assert.deepEqual(
      registered.status!.addresses!.filter((addr) => addr.type === "InternalIP").map((addr) => addr.address),
      [node!.nodeIP],
    );
    const ready = registered.status!.conditions!.find((cond) => cond.type === "Ready");
    assert.equal(ready?.status, "True", JSON.stringify(registered.status!.conditions));
    // the kubelet registered it with the startup taint: nothing without a toleration lands yet
    assert.ok(registered.spec!.taints!.some((taint) => taint.key === STARTUP_TAINT.key));
  });

  it("helm install: the server Deployment and agent DaemonSet become Ready on the node", async () => {
    // what a user sets (no TLS Secret: the server makes its own); no server toleration: with
    // agent.startupTaint.enabled the chart adds it (on a node that registers with the taint,
    // here the only one, the server would stay Pending, the agent never become Ready without
    // it, and never remove the taint)
    const installed = await installKeycutter(suite!, { agent: { startupTaint: { enabled: true } } });
    console.log(`# helm install to Ready in ${Math.round(installed.readyMs / 1000)} s`);
    // the Ready agent took its startup taint off its own node (the admission policy lets it)
    await waitStartupTaintRemoved(node!);
    // Ready through the real parts: the kubelet ran the agent in the node's namespace, where its
    // hook is now in the node's own iptables
    const nat = await node!.execInNode("iptables-save", ["-t", "nat"]);
    assert.match(nat.stdout, /169\.254\.169\.254/, "the agent's DNAT hook is in the node's nat table");
  });

  it("once the agent removed the startup taint, a pause pod runs with an address from the CNI range", async () => {
    await applyObjects(node!.cluster.kc, [
      {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: "pause", namespace: "default" },
        spec: {
          containers: [{ name: "pause", image: node!.images.pause.ref, imagePullPolicy: "Never" }],
          automountServiceAccountToken: false,
        },
      } as never,
    ]);
    const pod = await waitFor(
      "the pause pod Running",
      async () => {
        const current = await core().readNamespacedPod({ name: "pause", namespace: "default" });
        return current.status?.phase === "Running" ? current : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 500, onTimeout: () => node!.logs(30) },
    );
    const podIP = pod.status!.podIP!;
    assert.ok(inSubnet(podIP, node!.podSubnet), `${podIP} in ${node!.podSubnet}`);
    assert.equal(pod.status!.hostIP, node!.nodeIP);
    // the address is really on the pod's eth0, behind the node's bridge
    const route = await node!.execInNode("ip", ["route", "get", podIP]);
    assert.match(route.stdout, /dev cni0/, route.stderr);
    const sandboxes = await node!.crictl(["pods", "--name", "pause", "-q"]);
    assert.equal(sandboxes.trim().split("\n").length, 1);
    await core().deleteNamespacedPod({ name: "pause", namespace: "default", gracePeriodSeconds: 0 });
  });

  /** Runs `command` in a one-pod Job of the aws-clients image; resolves with its phase and output. */
  const runAwsPod = async (namespace: string, name: string, command: string[]) => {
    const env = { AWS_DEFAULT_REGION: moto!.region, AWS_ENDPOINT_URL: moto!.endpointFor(node!.hostIP) };
    const image = node!.images.awsClients.ref;
    await applyObjects(node!.cluster.kc, [jobObject({ namespace, name, image, command, env }) as never]);
    const run = await jobFinished(node!, namespace, name);
    return { phase: run.pod.status!.phase!, output: run.output };
  };

  it("a workload pod's unmodified AWS CLI gets its own role through the hook; a pod without a policy gets nothing", async () => {
    await moto!.createRole("tenant-a-reader", {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: ["s3:GetObject", "s3:ListBucket"], Resource: "*" }],
    });
    await applyObjects(node!.cluster.kc, [
      ...tenantNamespaces(["tenant-a", "tenant-b"]),
      roleAllowance(),
      accessPolicy("tenant-a", "readers", ROLE_A, BUCKET_A),
    ] as never);

    const identity = ["aws", "sts", "get-caller-identity", "--output", "json"];
    const tenantA = await runAwsPod("tenant-a", "whoami", identity);
    assert.equal(tenantA.phase, "Succeeded", tenantA.output);
    const arn = (JSON.parse(tenantA.output) as { Arn: string }).Arn;
    assert.match(arn, /^arn:aws:sts::\d+:assumed-role\/tenant-a-reader\//, tenantA.output);

    // tenant-b has a service account but no AccessPolicy: the agent answers, with no credentials
    const tenantB = await runAwsPod("tenant-b", "whoami", identity);
    assert.equal(tenantB.phase, "Failed", tenantB.output);
    assert.match(tenantB.output, /Unable to locate credentials/, tenantB.output);
  });

  it("helm test: the chart's test pod (keycutter doctor, the chart's image) passes on the fresh install", async () => {
    const started = Date.now();
    // (no --logs: helm reads them through the apiserver's node proxy, and this node's name does
    // not resolve from the apiserver; the doctor's output is checked in chart-system.test.ts)
    const r = suite!.helm.spawn(["test", "keycutter", "--namespace", NS, "--timeout", "180s"], {
      timeoutMs: 240_000,
    });
    const out = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 0, `helm test\n${out}\n${await node!.describePods(NS)}`);
    assert.match(out, /TEST SUITE:\s+keycutter-test/);
    assert.match(out, /Phase:\s+Succeeded/);
    console.log(`# helm test in ${Math.round((Date.now() - started) / 1000)} s`);
  });

  it("teardown leaves no process, mount, namespace, veth, cgroup or iptables rule behind", async () => {
    // the check sees each kind while the node runs, so an empty list after teardown means gone
    const running = new Set((await node!.scan()).map((found) => found.kind));
    for (const kind of ["process", "mount", "netns", "link", "cgroup", "directory"]) {
      assert.ok(running.has(kind), `the scan finds the running node's ${kind}: ${[...running].join(", ")}`);
    }
    leftovers = await suite!.stop();
    assert.deepEqual(leftovers, []);
    console.log(`# whole suite ${secondsSince(started)} s`);
  });
});
