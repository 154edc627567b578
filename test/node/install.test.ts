// keycutter installed the way a user installs it, on a real node: the kubelet, containerd and
// the CNI bridge run the image built from deploy/Dockerfile here, and `helm install` of
// deploy/helm/keycutter has to come up through the real controllers. `npm run test:node` runs
// this suite (it is skipped elsewhere: its cold setup builds the node's parts and images).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppsV1Api, CoreV1Api } from "@kubernetes/client-node";
import { applyObjects, startMoto, waitFor, type Moto } from "../harness/index.ts";
import { startRealNode, type Leftover, type RealNode } from "../harness/realnode.ts";
import { mergeValues, userInstallValues } from "../harness/node-workloads.ts";
import { CHART_DIR, helmBinary } from "../deploy/render.ts";
import { BUCKET_A, ROLE_A, accessPolicy, roleAllowance } from "../e2e/fixtures.ts";

const NS = "keycutter-system";
// the chart's default startup taint, which a user has the kubelet register with
const STARTUP_TAINT = { key: "keycutter.dev/agent-not-ready", effect: "NoSchedule" };
const enabled = process.env.KEYCUTTER_TEST_NODE === "1";

function inSubnet(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split("/") as [string, string];
  const toInt = (addr: string) => addr.split(".").reduce((acc, octet) => acc * 256 + Number(octet), 0);
  const size = 2 ** (32 - Number(bits));
  return Math.floor(toInt(ip) / size) === Math.floor(toInt(base) / size);
}

describe(
  "a real node: keycutter installed with helm",
  { skip: !enabled && "run by npm run test:node (KEYCUTTER_TEST_NODE=1)", timeout: 3_600_000 },
  () => {
    let node: RealNode | undefined;
    let moto: Moto | undefined;
    let helmDir: string | undefined;
    let leftovers: Leftover[] | undefined;
    let started = 0;

    before(async () => {
      started = Date.now();
      node = await startRealNode({ registerWithTaints: [STARTUP_TAINT] });
      console.log(`# node ${node.name} Ready with CoreDNS in ${Math.round((Date.now() - started) / 1000)} s`);
      moto = await startMoto();
      helmDir = mkdtempSync(join(tmpdir(), "kc-node-helm-"));
    });

    const stopAll = async (): Promise<Leftover[]> => {
      const left = (await node?.stop()) ?? [];
      node = undefined;
      await moto?.stop();
      moto = undefined;
      if (helmDir) rmSync(helmDir, { recursive: true, force: true });
      helmDir = undefined;
      return left;
    };
    after(async () => {
      await stopAll();
    });

    const core = () => node!.cluster.kc.makeApiClient(CoreV1Api);
    const apps = () => node!.cluster.kc.makeApiClient(AppsV1Api);

    it("the node registers Ready, reporting its real kubelet, containerd and address", async () => {
      const registered = await core().readNode({ name: node!.name });
      const info = registered.status!.nodeInfo!;
      assert.equal(info.kubeletVersion, "v1.36.3");
      assert.match(info.containerRuntimeVersion, /^containerd:\/\/2\./);
      assert.deepEqual(
        registered
          .status!.addresses!.filter((addr) => addr.type === "InternalIP")
          .map((addr) => addr.address),
        [node!.nodeIP],
      );
      const ready = registered.status!.conditions!.find((cond) => cond.type === "Ready");
      assert.equal(ready?.status, "True", JSON.stringify(registered.status!.conditions));
      // the kubelet registered it with the startup taint: nothing without a toleration lands yet
      assert.ok(registered.spec!.taints!.some((taint) => taint.key === STARTUP_TAINT.key));
    });

    it("helm install: the server Deployment and agent DaemonSet become Ready on the node", async () => {
      const cluster = node!.cluster;
      // what a user sets (no TLS Secret: the server makes its own); no server toleration: with
      // agent.startupTaint.enabled the chart adds it (on a node that registers with the taint,
      // here the only one, the server would stay Pending, the agent never become Ready without
      // it, and never remove the taint)
      const values = mergeValues(await userInstallValues(node!, moto!), {
        agent: { startupTaint: { enabled: true } },
      });
      const started = Date.now();
      const helm = spawnSync(
        helmBinary(),
        ["install", "keycutter", CHART_DIR, "--namespace", NS, "--values", "-"],
        {
          input: JSON.stringify(values),
          encoding: "utf8",
          timeout: 300_000,
          env: {
            ...process.env,
            KUBECONFIG: cluster.kubeconfigPath,
            HELM_CACHE_HOME: join(helmDir!, "cache"),
            HELM_CONFIG_HOME: join(helmDir!, "config"),
            HELM_DATA_HOME: join(helmDir!, "data"),
          },
        },
      );
      assert.equal(helm.status, 0, `helm install\n${helm.stdout}${helm.stderr}`);
      await waitFor(
        "the server Deployment and the agent DaemonSet Ready",
        async () => {
          const server = await apps().readNamespacedDeployment({ name: "keycutter-server", namespace: NS });
          const agent = await apps().readNamespacedDaemonSet({ name: "keycutter-agent", namespace: NS });
          const serverReady = (server.status?.readyReplicas ?? 0) === server.spec!.replicas;
          const agentReady = agent.status?.desiredNumberScheduled === 1 && agent.status.numberReady === 1;
          return serverReady && agentReady;
        },
        { timeoutMs: 300_000, intervalMs: 1000, onTimeout: () => "" },
      ).catch(async (err: Error) => {
        throw new Error(`${err.message}\n${await node!.describePods(NS)}`, { cause: err });
      });
      console.log(`# helm install to Ready in ${Math.round((Date.now() - started) / 1000)} s`);
      // the Ready agent took its startup taint off its own node (the admission policy lets it)
      await waitFor(
        "the agent to remove the startup taint",
        async () => {
          const current = await core().readNode({ name: node!.name });
          return !(current.spec?.taints ?? []).some((taint) => taint.key === STARTUP_TAINT.key);
        },
        { timeoutMs: 60_000, intervalMs: 500 },
      );
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

    /** Runs `command` in a one-shot pod of the aws-clients image; resolves with its phase and output. */
    const runAwsPod = async (
      namespace: string,
      name: string,
      command: string[],
    ): Promise<{ phase: string; output: string }> => {
      await applyObjects(node!.cluster.kc, [
        {
          apiVersion: "v1",
          kind: "Pod",
          metadata: { name, namespace },
          spec: {
            serviceAccountName: "reader",
            restartPolicy: "Never",
            containers: [
              {
                name: "aws",
                image: node!.images.awsClients.ref,
                imagePullPolicy: "Never",
                command,
                env: [
                  { name: "AWS_DEFAULT_REGION", value: moto!.region },
                  { name: "AWS_ENDPOINT_URL", value: moto!.endpointFor(node!.hostIP) },
                ],
              },
            ],
          },
        } as never,
      ]);
      const phase = await waitFor(
        `pod ${namespace}/${name} finished`,
        async () => {
          const pod = await core().readNamespacedPod({ name, namespace });
          return ["Succeeded", "Failed"].includes(pod.status?.phase ?? "") ? pod.status!.phase! : undefined;
        },
        { timeoutMs: 180_000, intervalMs: 500 },
      ).catch(async (err: Error) => {
        throw new Error(`${err.message}\n${await node!.describePods(namespace)}`, { cause: err });
      });
      return { phase, output: node!.containerLogs(namespace, name, "aws") };
    };

    it("a workload pod's unmodified AWS CLI gets its own role through the hook; a pod without a policy gets nothing", async () => {
      await moto!.createRole("tenant-a-reader", {
        Version: "2012-10-17",
        Statement: [{ Effect: "Allow", Action: ["s3:GetObject", "s3:ListBucket"], Resource: "*" }],
      });
      const objects: object[] = [roleAllowance()];
      for (const namespace of ["tenant-a", "tenant-b"]) {
        objects.push(
          { apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } },
          { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "reader", namespace } },
        );
      }
      objects.push(accessPolicy("tenant-a", "readers", ROLE_A, BUCKET_A));
      await applyObjects(node!.cluster.kc, objects as never);

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
      const r = spawnSync(helmBinary(), ["test", "keycutter", "--namespace", NS, "--timeout", "180s"], {
        encoding: "utf8",
        timeout: 240_000,
        env: {
          ...process.env,
          KUBECONFIG: node!.cluster.kubeconfigPath,
          HELM_CACHE_HOME: join(helmDir!, "cache"),
          HELM_CONFIG_HOME: join(helmDir!, "config"),
          HELM_DATA_HOME: join(helmDir!, "data"),
        },
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
      leftovers = await stopAll();
      assert.deepEqual(leftovers, []);
      console.log(`# whole suite ${Math.round((Date.now() - started) / 1000)} s`);
    });
  },
);
