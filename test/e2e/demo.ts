// The README's demo: brings up the local system and tells its story in the terminal.
// Interim version (until the end-to-end system lands): the real test cluster and what runs in it.
import { CoreV1Api } from "@kubernetes/client-node";
import { Kubelet, PodNetwork, startCluster, startMoto, startRedis } from "../harness/index.ts";

const bold = (s: string) => `\x1b[1m${s}\x1b[0m`;
const dim = (s: string) => `\x1b[2m${s}\x1b[0m`;
const step = (s: string) => console.log(`\n${bold("▶ " + s)}`);

export async function runDemo(opts: { keep: boolean }): Promise<void> {
  const cleanups: Array<() => Promise<void>> = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      console.log(dim("\ncleaning up…"));
      for (const c of cleanups.reverse()) await c().catch((e: Error) => console.error(e.message));
    })());
  const onSignal = () => void cleanup().then(() => process.exit(130));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    step("starting etcd + kube-apiserver, moto (STS/S3) and Redis");
    const t0 = Date.now();
    const [cluster, moto, redis, net] = await Promise.all([
      startCluster(),
      startMoto(),
      startRedis(),
      PodNetwork.create(),
    ]);
    cleanups.push(cluster.stop, moto.stop, redis.stop, () => net.destroy());
    console.log(
      `  apiserver ${cluster.server}, moto ${moto.endpoint}, redis ${redis.url} (${Date.now() - t0} ms)`,
    );

    step("creating a node and two tenants' pods in real network namespaces");
    const kubelet = new Kubelet(cluster.kc);
    const node = await net.addNode("node-1");
    await kubelet.createNode("node-1", node.ip, node.podCIDR);
    for (const [ns, name] of [
      ["tenant-a", "app-a"],
      ["tenant-b", "app-b"],
    ] as const) {
      const pod = await net.addPod("node-1", name);
      await kubelet.createPod({ namespace: ns, name, nodeName: "node-1", podIP: pod.ip, hostIP: node.ip });
    }
    const pods = await cluster.kc.makeApiClient(CoreV1Api).listPodForAllNamespaces();
    console.log(dim("  NAMESPACE   NAME    NODE    PHASE    IP"));
    for (const p of pods.items) {
      console.log(
        `  ${p.metadata!.namespace!.padEnd(11)} ${p.metadata!.name!.padEnd(7)} ${p.spec!.nodeName!.padEnd(7)} ${p.status!.phase!.padEnd(8)} ${p.status!.podIP}`,
      );
    }
    if (opts.keep) {
      console.log(`\nkubeconfig: ${cluster.kubeconfigPath}\nCtrl-C to stop.`);
      await new Promise(() => undefined);
    }
  } finally {
    await cleanup();
  }
}
