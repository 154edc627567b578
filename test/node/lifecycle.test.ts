// keycutter's lifecycle on a real node (issue 14, items 4 to 7): pods that start before the
// agent is Ready, IP reuse through the real CNI, in-place resize of the agent on the real
// kubelet, and helm upgrade then uninstall leaving the node's iptables as they were. One node
// for the whole file, with a stand-in for the node's real IMDS serving node credentials in the
// node's namespace, so that a pod whose metadata traffic escaped the hook would be seen.
// `npm run test:node` runs it (KEYCUTTER_TEST_NODE=1), under /work/realnode.lock.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  KubernetesObjectApi,
  type KubernetesObject,
  type V1Pod,
} from "@kubernetes/client-node";
import { MOTO_ACCOUNT_ID, applyObjects, parseYamlObjects, waitFor } from "../harness/index.ts";
import type { Moto } from "../harness/index.ts";
import { mergeValues } from "../harness/node-workloads.ts";
import {
  KEYCUTTER_NAMESPACE as NS,
  STARTUP_TAINT,
  describeOnNode,
  nodeHasStartupTaint,
  TENANTS,
  secondsSince,
  startNodeSuite,
  tenantNamespaces,
  tenantPolicies,
  userInstallValues,
  waitStartupTaintRemoved,
  type NodeSuite,
  type Tenant,
} from "../harness/node-suite.ts";
import type { RealNode } from "../harness/realnode.ts";
import {
  AddressWatch,
  diffSnapshots,
  iptablesSnapshot,
  parsePollSamples,
  pollerPod,
  reuseFigures,
  serviceRoutedToEndpoints,
  type PollSample,
  type RuleSnapshot,
} from "../harness/node-lifecycle.ts";
import { NODE_ACCESS_KEY } from "../harness/fake-imds.ts";
import { CHART_DIR } from "../deploy/render.ts";
import { createTenantAws } from "../e2e/fixtures.ts";
import { sessionNameFor } from "../../src/policy/decide.ts";

const RELEASE = "keycutter";
const TAINT_TOLERATION = { key: STARTUP_TAINT.key, operator: "Exists", effect: STARTUP_TAINT.effect };
const ROLE_OF: Record<Tenant, string> = { "tenant-a": "tenant-a-reader", "tenant-b": "tenant-b-reader" };
const NODE_KEY_HASH = createHash("sha256").update(NODE_ACCESS_KEY).digest("hex").slice(0, 12);

/** What one poll got, relative to the pod that made it. */
type Verdict = "own" | "node" | "foreign" | "refused";

function verdictOf(sample: PollSample, expectedArn: string): Verdict {
  if (sample.err !== undefined) return "refused";
  if (sample.role === "node-role" || sample.key === NODE_KEY_HASH) return "node";
  return sample.arn === expectedArn ? "own" : "foreign";
}

function containerIdOf(pod: V1Pod): string {
  return pod.status!.containerStatuses![0]!.containerID!.replace(/^\w+:\/\//, "");
}

function countVerdicts(samples: PollSample[], expectedArn: string): Record<Verdict, number> {
  const counts: Record<Verdict, number> = { own: 0, node: 0, foreign: 0, refused: 0 };
  for (const sample of samples) counts[verdictOf(sample, expectedArn)]++;
  return counts;
}

describeOnNode(
  "a real node: keycutter's lifecycle (pods before the agent, IP reuse, resize, upgrade and uninstall)",
  () => {
    let suite: NodeSuite | undefined;
    let node: RealNode | undefined;
    let moto: Moto | undefined;
    let rulesBeforeInstall: RuleSnapshot | undefined;
    let installValues: Record<string, unknown> = {};
    const started = Date.now();

    before(async () => {
      // a /29: five addresses for CoreDNS, the server and the workloads, so they are reused
      suite = await startNodeSuite({ registerWithTaints: [STARTUP_TAINT], podPrefixLength: 29 });
      ({ node, moto } = suite);
      // a settled node's rules: CoreDNS tolerates the startup taint and may still be starting when
      // the node is Ready, and kube-proxy's rules change once it has seen the Service's endpoints
      rulesBeforeInstall = await waitFor(
        "kube-proxy's rules with CoreDNS's endpoints",
        async () => {
          const snapshot = await iptablesSnapshot(node!);
          return serviceRoutedToEndpoints(snapshot, "kube-system/kube-dns", ["dns", "dns-tcp"])
            ? snapshot
            : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 500 },
      );
    });
    after(async () => {
      await suite?.stop();
    });
    /** helm on the node: `command` of the release, with the current install values where it takes them. */
    const helm = (args: string[], values?: object) => suite!.helm.run(args, values ? { values } : {});

    const core = () => node!.cluster.kc.makeApiClient(CoreV1Api);
    const apps = () => node!.cluster.kc.makeApiClient(AppsV1Api);
    const clientEnv = () => ({
      AWS_DEFAULT_REGION: moto!.region,
      AWS_ENDPOINT_URL: moto!.endpointFor(node!.hostIP),
    });

    const startPoller = async (tenant: Tenant, name: string, tolerations?: object[]) => {
      await applyObjects(node!.cluster.kc, [
        pollerPod({
          namespace: tenant,
          name,
          image: node!.images.awsClients.ref,
          serviceAccount: "reader",
          env: clientEnv(),
          tolerations,
        }),
      ] as never);
    };
    const readPod = (namespace: string, name: string) => core().readNamespacedPod({ name, namespace });
    const samplesOf = (namespace: string, name: string) =>
      parsePollSamples(node!.containerLogs(namespace, name, "poll"));
    const expectedArn = (pod: V1Pod) =>
      `arn:aws:sts::${MOTO_ACCOUNT_ID}:assumed-role/${ROLE_OF[pod.metadata!.namespace as Tenant]}/${sessionNameFor(
        {
          namespace: pod.metadata!.namespace!,
          name: pod.metadata!.name!,
          uid: pod.metadata!.uid!,
        },
      )}`;
    /** Waits until the poller has `wanted` polls answered with its own credentials; returns its pod. */
    const awaitOwnCredentials = async (namespace: string, name: string, wanted = 1, timeoutMs = 120_000) =>
      waitFor(
        `${namespace}/${name} polled its own credentials ${wanted} times`,
        async () => {
          const pod = await readPod(namespace, name);
          if (!pod.metadata?.uid || pod.status?.phase !== "Running") return undefined;
          const own = samplesOf(namespace, name).filter(
            (sample) => verdictOf(sample, expectedArn(pod)) === "own",
          );
          return own.length >= wanted ? pod : undefined;
        },
        {
          timeoutMs,
          intervalMs: 250,
          onTimeout: () =>
            samplesOf(namespace, name)
              .slice(-5)
              .map((sample) => JSON.stringify(sample))
              .join("\n"),
        },
      ).catch(async (err: Error) => {
        throw new Error(
          `${err.message}\n${await node!.describePods(namespace)}\n${await node!.describePods(NS)}`,
          {
            cause: err,
          },
        );
      });
    const deletePod = async (namespace: string, name: string) => {
      await core()
        .deleteNamespacedPod({ name, namespace, gracePeriodSeconds: 0 })
        .catch(() => undefined);
      await waitFor(
        `${namespace}/${name} gone`,
        async () =>
          (await readPod(namespace, name)
            .then(() => false)
            .catch(() => true)) || undefined,
        { timeoutMs: 60_000, intervalMs: 200 },
      );
    };
    /** Every poller pod gone (a failed case leaves its own; the /29 has three addresses for them). */
    const removePollers = async () => {
      for (const tenant of TENANTS) {
        const pods = await core().listNamespacedPod({
          namespace: tenant,
          labelSelector: "keycutter-test=poller",
        });
        for (const pod of pods.items) await deletePod(tenant, pod.metadata!.name!);
      }
    };
    const agentPod = async (): Promise<V1Pod> => {
      const pods = await core().listNamespacedPod({
        namespace: NS,
        labelSelector: "app.kubernetes.io/component=agent",
      });
      const live = pods.items.filter((pod) => !pod.metadata?.deletionTimestamp);
      assert.equal(live.length, 1, `one agent pod: ${live.map((pod) => pod.metadata!.name).join(", ")}`);
      return live[0]!;
    };
    const agentReadyz = async (): Promise<number> => {
      const probe = await node!.execInNode("curl", [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
        `http://${node!.nodeIP}:8182/readyz`,
      ]);
      return Number(probe.stdout.trim() || 0);
    };
    const agentMetric = async (name: string): Promise<number | undefined> => {
      const scraped = await node!.execInNode("curl", [
        "-s",
        "--max-time",
        "2",
        `http://${node!.nodeIP}:8182/metrics`,
      ]);
      const line = scraped.stdout.split("\n").find((candidate) => candidate.startsWith(`${name} `));
      return line ? Number(line.split(" ")[1]) : undefined;
    };
    const waitAgentReady = (what: string) =>
      waitFor(
        what,
        async () => {
          const agent = await apps().readNamespacedDaemonSet({ name: "keycutter-agent", namespace: NS });
          const status = agent.status;
          return (
            status?.desiredNumberScheduled === 1 &&
            status.numberReady === 1 &&
            status.updatedNumberScheduled === 1 &&
            status.observedGeneration === agent.metadata?.generation
          );
        },
        { timeoutMs: 300_000, intervalMs: 500 },
      ).catch(async (err: Error) => {
        throw new Error(`${err.message}\n${await node!.describePods(NS)}`, { cause: err });
      });
    const setServerReplicas = async (replicas: number) => {
      await apps().patchNamespacedDeployment({
        name: "keycutter-server",
        namespace: NS,
        body: [{ op: "replace", path: "/spec/replicas", value: replicas }],
      });
      await waitFor(
        `server at ${replicas} ready replicas`,
        async () => {
          const pods = await core().listNamespacedPod({
            namespace: NS,
            labelSelector: "app.kubernetes.io/component=server",
          });
          const ready = pods.items.filter((pod) =>
            pod.status?.conditions?.some((cond) => cond.type === "Ready" && cond.status === "True"),
          );
          return pods.items.length === replicas && ready.length === replicas;
        },
        { timeoutMs: 120_000, intervalMs: 500 },
      );
    };

    describe("5. a pod scheduled before the agent is Ready never gets the node's credentials", () => {
      it("with the startup taint: the pod waits for the agent; a pod that ignores the taint shows the hole it closes", async () => {
        const cluster = node!.cluster;
        await createTenantAws(suite!);
        const objects: object[] = [
          { apiVersion: "v1", kind: "Namespace", metadata: { name: NS } },
          ...tenantNamespaces(TENANTS),
        ];
        await applyObjects(cluster.kc, objects as never);

        // Before the chart: a pod that tolerates the taint (as every pod does on a node without
        // one) runs with no hook on the node and reaches the stand-in: what the taint prevents,
        // and the proof that the stand-in is reachable from pods through the real CNI.
        await startPoller("tenant-a", "no-taint-early", [TAINT_TOLERATION]);
        await waitFor(
          "the pod that ignores the taint to get the node's credentials",
          async () => samplesOf("tenant-a", "no-taint-early").some((sample) => sample.role === "node-role"),
          {
            timeoutMs: 120_000,
            intervalMs: 250,
            onTimeout: () => node!.containerLogs("tenant-a", "no-taint-early", "poll"),
          },
        );
        // the pod that does not tolerate it stays Pending until the agent removes the taint
        await startPoller("tenant-a", "tainted-early");
        const pending = await waitFor(
          "the scheduler to refuse the pod for the taint",
          async () => {
            const pod = await readPod("tenant-a", "tainted-early");
            const scheduled = pod.status?.conditions?.find((cond) => cond.type === "PodScheduled");
            return scheduled?.status === "False" ? scheduled : undefined;
          },
          { timeoutMs: 30_000, intervalMs: 250 },
        );
        assert.match(pending.message ?? "", /untolerated taint/, JSON.stringify(pending));

        installValues = mergeValues(await userInstallValues(suite!), {
          // one replica, so that scaling it to 0 leaves the agent without a server; the chart
          // refuses a PodDisruptionBudget that would then block every drain
          server: { replicas: 1, pdb: { enabled: false } },
          agent: { startupTaint: { enabled: true } },
        });
        // when the taint goes, seen within 100 ms (the DaemonSet reports Ready seconds later); the
        // last poll that still saw it was sent before the removal
        let taintGoneAt: number | undefined;
        let lastTaintedAt: number | undefined;
        const taintWatch = setInterval(() => {
          const askedAt = Date.now();
          void nodeHasStartupTaint(node!).then(
            (tainted) => {
              if (tainted) lastTaintedAt = Math.max(lastTaintedAt ?? 0, askedAt);
              else taintGoneAt ??= Date.now();
            },
            () => undefined,
          );
        }, 100);
        const installStarted = Date.now();
        helm(["install", RELEASE, CHART_DIR, "--namespace", NS], installValues);
        await applyObjects(cluster.kc, tenantPolicies() as never);
        await waitAgentReady("the agent DaemonSet Ready");
        await waitStartupTaintRemoved(node!);
        clearInterval(taintWatch);
        const untainted = taintGoneAt ?? Date.now();
        const tainted = await awaitOwnCredentials("tenant-a", "tainted-early", 3);
        const early = await awaitOwnCredentials("tenant-a", "no-taint-early", 3);
        console.log(`# helm install to taint removed ${Math.round((untainted - installStarted) / 1000)} s`);

        const taintedCounts = countVerdicts(samplesOf("tenant-a", "tainted-early"), expectedArn(tainted));
        assert.equal(taintedCounts.node, 0, JSON.stringify(taintedCounts));
        assert.equal(taintedCounts.foreign, 0, JSON.stringify(taintedCounts));
        const scheduledAt = new Date(
          tainted.status!.conditions!.find((cond) => cond.type === "PodScheduled")!.lastTransitionTime!,
        ).getTime();
        // lastTransitionTime is cut to whole seconds: the pod was scheduled before the taint went
        // only if even the end of that second is before a poll that still saw the taint
        assert.ok(
          scheduledAt + 1000 > (lastTaintedAt ?? installStarted),
          `scheduled ${new Date(scheduledAt).toISOString()}, taint still there at ${new Date(lastTaintedAt ?? installStarted).toISOString()}, seen gone ${new Date(untainted).toISOString()}`,
        );

        // The pod that ran before the agent: node credentials until the hook went in, and never
        // again after (the hook flushes conntrack and rejects whatever is not DNATed, so not even
        // its open connection to the real IMDS survives).
        const earlySamples = samplesOf("tenant-a", "no-taint-early");
        const lastNode = Math.max(
          ...earlySamples.filter((sample) => sample.role === "node-role").map((sample) => sample.at),
        );
        const firstOwn = Math.min(
          ...earlySamples
            .filter((sample) => verdictOf(sample, expectedArn(early)) === "own")
            .map((sample) => sample.at),
        );
        assert.ok(lastNode < firstOwn, "no node credentials once the agent served the pod");
        const afterHook = earlySamples.filter((sample) => sample.at > lastNode);
        const afterCounts = countVerdicts(afterHook, expectedArn(early));
        assert.equal(afterCounts.node + afterCounts.foreign, 0, JSON.stringify(afterCounts));
        console.log(
          `# without the taint: ${earlySamples.filter((sample) => sample.role === "node-role").length} polls got the node's credentials before the hook; ` +
            `with it: ${JSON.stringify(taintedCounts)}`,
        );
        // the chart's agent reads the runtime's CNI result cache where the harness's libcni writes it
        const cniActive = await agentMetric("keycutter_agent_cni_state_active");
        const attachments = await agentMetric("keycutter_agent_cni_attachments");
        assert.equal(cniActive, 1, `cni state active: ${cniActive}`);
        assert.ok((attachments ?? 0) >= 3, `CNI attachments: ${attachments}`);
        await deletePod("tenant-a", "no-taint-early");
        await deletePod("tenant-a", "tainted-early");
      });

      it("without the taint: a pod started while the restarted agent is not Ready is refused, then served", async () => {
        await removePollers();
        // no server: the agent cannot become Ready; restart it so that it starts unready
        await setServerReplicas(0);
        const before = await agentPod();
        await core().deleteNamespacedPod({ name: before.metadata!.name!, namespace: NS });
        const restarted = await waitFor(
          "a new agent pod running, not Ready",
          async () => {
            const pods = await core().listNamespacedPod({
              namespace: NS,
              labelSelector: "app.kubernetes.io/component=agent",
            });
            const fresh = pods.items.find(
              (pod) => pod.metadata!.uid !== before.metadata!.uid && pod.status?.phase === "Running",
            );
            return fresh && (await agentReadyz()) === 503 ? fresh : undefined;
          },
          { timeoutMs: 120_000, intervalMs: 500, onTimeout: () => "" },
        );
        await startPoller("tenant-b", "while-unready");
        await waitFor(
          "the pod to poll while the agent is unready",
          async () => samplesOf("tenant-b", "while-unready").length >= 10,
          { timeoutMs: 120_000, intervalMs: 250 },
        );
        const pod = await readPod("tenant-b", "while-unready");
        const unready = countVerdicts(samplesOf("tenant-b", "while-unready"), expectedArn(pod));
        assert.equal(unready.node + unready.foreign + unready.own, 0, JSON.stringify(unready));
        assert.equal((await core().readNode({ name: node!.name })).spec?.taints?.length ?? 0, 0, "no taint");
        await setServerReplicas(1);
        await awaitOwnCredentials("tenant-b", "while-unready", 3);
        const all = countVerdicts(samplesOf("tenant-b", "while-unready"), expectedArn(pod));
        assert.equal(all.node + all.foreign, 0, JSON.stringify(all));
        console.log(
          `# agent ${restarted.metadata!.name} unready: ${JSON.stringify(unready)}; then ${JSON.stringify(all)}`,
        );
        await deletePod("tenant-b", "while-unready");
      });
    });

    it("4. IP reuse through the real CNI: no pod ever gets another pod's credentials", async () => {
      await removePollers();
      const watch = new AddressWatch(join(node!.dir, "cni", "ipam"));
      const podsPerTenant = 18;
      const results: Array<{
        name: string;
        tenant: Tenant;
        ip: string;
        counts: Record<Verdict, number>;
        firstOwnMs: number;
      }> = [];
      const cycle = async (tenant: Tenant) => {
        for (let index = 0; index < podsPerTenant; index++) {
          const name = `reuse-${index}`;
          await startPoller(tenant, name);
          const pod = await awaitOwnCredentials(tenant, name, 2);
          const samples = samplesOf(tenant, name);
          const counts = countVerdicts(samples, expectedArn(pod));
          const firstOwn = samples.find((sample) => verdictOf(sample, expectedArn(pod)) === "own")!;
          results.push({
            name,
            tenant,
            ip: pod.status!.podIP!,
            counts,
            firstOwnMs: firstOwn.at - samples[0]!.at,
          });
          await deletePod(tenant, name);
        }
      };
      const cycleStarted = Date.now();
      try {
        await Promise.all(TENANTS.map((tenant) => cycle(tenant)));
      } finally {
        watch.stop();
      }
      const figures = reuseFigures(watch.holdings);
      const bad = results.filter((result) => result.counts.node + result.counts.foreign > 0);
      assert.deepEqual(bad, [], "a pod got credentials that were not its own");
      assert.ok(figures.reuses >= 30, `addresses reused ${figures.reuses} times`);
      // an address went from one tenant's pod to the other's
      const tenantsByIp = new Map<string, Set<Tenant>>();
      for (const result of results)
        tenantsByIp.set(result.ip, (tenantsByIp.get(result.ip) ?? new Set()).add(result.tenant));
      assert.ok(
        [...tenantsByIp.values()].some((tenants) => tenants.size === 2),
        "an IP changed tenants",
      );
      const polls = results.reduce(
        (sum, result) => sum + Object.values(result.counts).reduce((a, b) => a + b, 0),
        0,
      );
      const refused = results.reduce((sum, result) => sum + result.counts.refused, 0);
      const firstOwn = results.map((result) => result.firstOwnMs).sort((a, b) => a - b);
      console.log(
        `# IP reuse: ${results.length} pods on ${figures.addresses} addresses, ${figures.reuses} reuses, ` +
          `shortest gap release→allocation ${figures.shortestGapMs} ms (host-local's allocation files), ` +
          `${polls} polls, ${refused} refused before the agent knew the pod, first own credentials after ` +
          `${firstOwn[0]}..${firstOwn[firstOwn.length - 1]} ms (median ${firstOwn[Math.floor(firstOwn.length / 2)]}), ` +
          `${Math.round((Date.now() - cycleStarted) / 1000)} s`,
      );
    });

    describe("6. in-place resize of the agent while clients poll", () => {
      const resizeAgent = async (resources: object) => {
        const pod = await agentPod();
        const restartsBefore = pod.status!.containerStatuses![0]!.restartCount;
        const resizeStarted = Date.now();
        await core().patchNamespacedPodResize({
          name: pod.metadata!.name!,
          namespace: NS,
          body: [{ op: "replace", path: "/spec/containers/0/resources", value: resources }],
        });
        const limits = (resources as { limits: { memory: string } }).limits;
        const done = await waitFor(
          "the kubelet to apply the resize",
          async () => {
            const current = await readPod(NS, pod.metadata!.name!);
            const status = current.status!.containerStatuses![0]!;
            const pendingResize = current.status?.conditions?.some((cond) =>
              ["PodResizePending", "PodResizeInProgress"].includes(cond.type),
            );
            return !pendingResize && status.ready && status.resources?.limits?.memory === limits.memory
              ? current
              : undefined;
          },
          {
            timeoutMs: 120_000,
            intervalMs: 250,
            onTimeout: () => node!.logs(20),
          },
        ).catch(async (err: Error) => {
          const current = await readPod(NS, pod.metadata!.name!);
          throw new Error(`${err.message}\n${JSON.stringify(current.status, null, 1)}`, { cause: err });
        });
        const resizeMs = Date.now() - resizeStarted;
        const status = done.status!.containerStatuses![0]!;
        return {
          pod: done,
          containerId: containerIdOf(done),
          restartsBefore,
          restartsAfter: status.restartCount,
          resizeStarted,
          resizeMs,
        };
      };
      // figures read inside the agent's container; a failed read is reported, not thrown, so
      // that the assertions on the kubelet's view still run
      const inAgent = async (containerId: string, command: string[]) =>
        (
          await node!
            .crictl(["exec", "--sync", containerId, ...command])
            .catch((err: Error) => `unreadable: ${err.message}`)
        ).trim();
      const heapLimitMiB = async (containerId: string) =>
        Math.round(
          Number(
            await inAgent(containerId, [
              "node",
              "-e",
              "console.log(require('v8').getHeapStatistics().heap_size_limit)",
            ]),
          ) /
            2 ** 20,
        );
      const startClients = async (label: string) => {
        for (const tenant of TENANTS) await startPoller(tenant, `${label}-client`);
        for (const tenant of TENANTS) await awaitOwnCredentials(tenant, `${label}-client`, 2);
      };
      /** Clients of both tenants polling, the agent resized, and what they got around it. */
      const resizeWithClients = async (label: string, resources: object, settleMs: number) => {
        await startClients(label);
        const resized = await resizeAgent(resources);
        await new Promise((resolve) => setTimeout(resolve, settleMs));
        return { resized, window: await clientWindow(label, resized.resizeStarted - 2000, Date.now()) };
      };
      const clientWindow = async (label: string, from: number, until: number) => {
        const out: Record<Tenant, Record<Verdict, number>> = {} as never;
        for (const tenant of TENANTS) {
          const pod = await readPod(tenant, `${label}-client`);
          const samples = samplesOf(tenant, `${label}-client`).filter(
            (sample) => sample.at >= from && sample.at <= until,
          );
          out[tenant] = countVerdicts(samples, expectedArn(pod));
        }
        return out;
      };

      it("NotRequired: CPU and memory change without a restart and no client call fails", async () => {
        await removePollers();
        const before = await agentPod();
        const containerId = containerIdOf(before);
        const heapBefore = await heapLimitMiB(containerId);
        const cgroupBefore = await inAgent(containerId, [
          "cat",
          "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]);
        const { resized, window } = await resizeWithClients(
          "notreq",
          { requests: { cpu: "100m", memory: "64Mi" }, limits: { memory: "384Mi" } },
          2000,
        );
        const cgroupAfter = await inAgent(resized.containerId, [
          "cat",
          "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]);
        const cpuShares = await inAgent(resized.containerId, ["cat", "/sys/fs/cgroup/cpu/cpu.shares"]);
        const heapAfter = await heapLimitMiB(resized.containerId);
        console.log(
          `# resize NotRequired: ${resized.resizeMs} ms, restarts ${resized.restartsBefore}→${resized.restartsAfter}, ` +
            `memory.limit_in_bytes ${cgroupBefore}→${cgroupAfter}, cpu.shares ${cpuShares}, ` +
            `V8 heap limit of a new process ${heapBefore}→${heapAfter} MiB (the running agent keeps ${heapBefore}), ` +
            `clients ${JSON.stringify(window)}`,
        );
        assert.equal(resized.restartsAfter, resized.restartsBefore, "not restarted");
        assert.equal(resized.containerId, containerId, "the same container, resized in place");
        if (!cgroupAfter.startsWith("unreadable"))
          assert.equal(cgroupAfter, String(384 * 2 ** 20), "the kubelet applied the new limit to the cgroup");
        if (!cpuShares.startsWith("unreadable")) assert.equal(cpuShares, "102", "100m of CPU is 102 shares");
        for (const tenant of TENANTS) {
          assert.equal(
            window[tenant].refused + window[tenant].node + window[tenant].foreign,
            0,
            JSON.stringify(window),
          );
          assert.ok(window[tenant].own > 5, JSON.stringify(window));
        }
        for (const tenant of TENANTS) await deletePod(tenant, "notreq-client");
      });

      it("RestartContainer (memory): the agent restarts in place and the hook keeps pods fail closed meanwhile", async () => {
        await removePollers();
        installValues = {
          ...installValues,
          agent: {
            ...(installValues.agent as object),
            resizePolicy: [
              { resourceName: "cpu", restartPolicy: "NotRequired" },
              { resourceName: "memory", restartPolicy: "RestartContainer" },
            ],
          },
        };
        helm(["upgrade", RELEASE, CHART_DIR, "--namespace", NS], installValues);
        await waitAgentReady("the agent rolled with the RestartContainer policy");
        const before = await agentPod();
        assert.deepEqual(
          before.spec!.containers[0]!.resizePolicy?.map((policy) => policy.restartPolicy),
          ["NotRequired", "RestartContainer"],
        );
        const heapBefore = await heapLimitMiB(containerIdOf(before));
        const { resized, window } = await resizeWithClients(
          "restart",
          { requests: { cpu: "50m", memory: "64Mi" }, limits: { memory: "384Mi" } },
          3000,
        );
        const heapAfter = await heapLimitMiB(resized.containerId);
        // the longest run of refused polls: the time pods were refused while the agent restarted
        let outage = 0;
        for (const tenant of TENANTS) {
          const samples = samplesOf(tenant, "restart-client").filter(
            (sample) => sample.at >= resized.resizeStarted - 2000,
          );
          let runStart: number | undefined;
          for (const sample of samples) {
            if (sample.err !== undefined) runStart ??= sample.at;
            else if (runStart !== undefined) {
              outage = Math.max(outage, sample.at - runStart);
              runStart = undefined;
            }
          }
        }
        console.log(
          `# resize RestartContainer: ${resized.resizeMs} ms to Ready, restarts ${resized.restartsBefore}→${resized.restartsAfter}, ` +
            `V8 heap limit ${heapBefore}→${heapAfter} MiB, longest refusal ${outage} ms, clients ${JSON.stringify(window)}`,
        );
        assert.equal(resized.restartsAfter, resized.restartsBefore + 1, "restarted once");
        for (const tenant of TENANTS) {
          assert.equal(window[tenant].node + window[tenant].foreign, 0, JSON.stringify(window));
          assert.ok(window[tenant].own > 5, JSON.stringify(window));
        }
        for (const tenant of TENANTS) await deletePod(tenant, "restart-client");
      });
    });

    it("7. helm upgrade rolls the agent, helm uninstall leaves no rule, chain, pod, Job or object behind", async () => {
      await removePollers();
      const cluster = node!.cluster;
      const before = await agentPod();
      await startPoller("tenant-a", "upgrade-client");
      await awaitOwnCredentials("tenant-a", "upgrade-client", 2);
      installValues = {
        ...installValues,
        agent: { ...(installValues.agent as object), podAnnotations: { "keycutter.dev/rollout": "2" } },
      };
      const upgradeStarted = Date.now();
      helm(["upgrade", RELEASE, CHART_DIR, "--namespace", NS], installValues);
      await waitAgentReady("the agent DaemonSet rolled");
      const rolled = await agentPod();
      assert.notEqual(rolled.metadata!.uid, before.metadata!.uid, "a new agent pod");
      const upgradeMs = Date.now() - upgradeStarted;
      await awaitOwnCredentials("tenant-a", "upgrade-client", 1);
      const client = await readPod("tenant-a", "upgrade-client");
      const during = countVerdicts(
        samplesOf("tenant-a", "upgrade-client").filter((sample) => sample.at >= upgradeStarted),
        expectedArn(client),
      );
      assert.equal(during.node + during.foreign, 0, JSON.stringify(during));
      await deletePod("tenant-a", "upgrade-client");

      // everything the release made (its manifest and its hooks), to check each is gone after
      let objects = [
        ...parseYamlObjects(helm(["get", "manifest", RELEASE, "--namespace", NS])),
        ...parseYamlObjects(helm(["get", "hooks", RELEASE, "--namespace", NS])),
      ].filter((obj) => obj?.kind);
      // the CRDs stay by design (helm.sh/resource-policy: keep): deleting them deletes every policy
      const kept = objects.filter((obj) => obj.metadata?.annotations?.["helm.sh/resource-policy"] === "keep");
      assert.deepEqual(
        kept.map((obj) => obj.kind),
        ["CustomResourceDefinition", "CustomResourceDefinition"],
        "only the CRDs are kept",
      );
      objects = objects.filter((obj) => !kept.includes(obj));
      assert.ok(objects.length > 10, `${objects.length} objects in the release`);
      const uninstallStarted = Date.now();
      try {
        helm(["uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout", "5m"]);
      } catch (err) {
        // the post-delete hooks' pods, their events and the node's logs say why a hook did not finish
        throw new Error(`${(err as Error).message}\n${await node!.describePods(NS)}`, { cause: err });
      }
      const uninstallMs = Date.now() - uninstallStarted;

      const generic = KubernetesObjectApi.makeApiClient(cluster.kc);
      const left = await waitFor(
        "every object of the release gone",
        async () => {
          const present: string[] = [];
          for (const obj of objects) {
            const spec: KubernetesObject = {
              apiVersion: obj.apiVersion,
              kind: obj.kind,
              metadata: {
                name: obj.metadata!.name,
                namespace: obj.metadata!.namespace ?? (isNamespaced(obj.kind!) ? NS : undefined),
              },
            };
            const found = await generic.read(spec as never).then(
              () => true,
              () => false,
            );
            if (found) present.push(`${obj.kind}/${obj.metadata!.name}`);
          }
          const pods = await core().listNamespacedPod({ namespace: NS });
          present.push(...pods.items.map((pod) => `Pod/${pod.metadata!.name}`));
          const jobs = await cluster.kc.makeApiClient(BatchV1Api).listNamespacedJob({ namespace: NS });
          present.push(...jobs.items.map((job) => `Job/${job.metadata!.name}`));
          const daemonSets = await apps().listNamespacedDaemonSet({ namespace: NS });
          present.push(...daemonSets.items.map((ds) => `DaemonSet/${ds.metadata!.name}`));
          return present.length === 0 ? [] : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 1000 },
      ).catch(async (err: Error) => {
        throw new Error(`${err.message}\n${await node!.describePods(NS)}`, { cause: err });
      });
      assert.deepEqual(left, []);

      // kube-proxy drops the release's Services on its next sync; then the node's tables are as
      // they were before helm install
      let diff: string[] = [];
      await waitFor(
        "the node's iptables back to what they were before the install",
        async () => {
          diff = diffSnapshots(rulesBeforeInstall!, await iptablesSnapshot(node!));
          return diff.length === 0;
        },
        { timeoutMs: 60_000, intervalMs: 1000, onTimeout: () => diff.join("\n") },
      );
      const nat = await node!.execInNode("iptables-save", []);
      assert.doesNotMatch(nat.stdout, /KEYCUTTER|169\.254\.169\.254/);
      console.log(
        `# helm upgrade to rolled ${Math.round(upgradeMs / 1000)} s (${JSON.stringify(during)} polls meanwhile), ` +
          `uninstall ${Math.round(uninstallMs / 1000)} s, ${objects.length} release objects checked`,
      );
    });

    it("teardown leaves no process, mount, namespace, veth, cgroup or iptables rule behind", async () => {
      const left = await suite!.stop();
      assert.deepEqual(left, []);
      console.log(`# whole file ${secondsSince(started)} s`);
    });
  },
);

const CLUSTER_SCOPED = new Set([
  "ClusterRole",
  "ClusterRoleBinding",
  "ValidatingAdmissionPolicy",
  "ValidatingAdmissionPolicyBinding",
  "CustomResourceDefinition",
  "PriorityClass",
  "Namespace",
]);

function isNamespaced(kind: string): boolean {
  return !CLUSTER_SCOPED.has(kind);
}
