/**
 * A real Kubernetes node on this machine, on top of test/harness/cluster.ts' etcd and
 * kube-apiserver: kube-controller-manager, kube-scheduler, containerd 2 with runc, the CNI
 * bridge/host-local/loopback/portmap plugins, the kubelet, kube-proxy (iptables) and CoreDNS as
 * a pod, running the images scripts/build-images.sh builds here. docs/TESTING.md says why each
 * setting is what it is.
 *
 * The node lives in a network namespace of its own (its iptables, conntrack, bridge and pods are
 * its own, as on a real machine), joined to the root namespace by a veth pair: the apiserver,
 * moto and Redis listen there, on the address `hostIP`. Its parts run in that namespace through
 * `nsenter --net` only, not `ip netns exec`: the latter remounts /sys, which hides the cgroup
 * mounts under /sys/fs/cgroup that the kubelet and runc need.
 */
import { randomBytes, randomInt } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppsV1Api, CoreV1Api, type V1Node } from "@kubernetes/client-node";
import { applyObjects } from "./apply.ts";
import { startCluster, type Cluster } from "./cluster.ts";
import { buildNodeImages, type NodeImages } from "./images.ts";
import {
  cniConflist,
  containerdConfig,
  corednsObjects,
  kubeProxyConfig,
  kubeletConfig,
} from "./node-config.ts";
import {
  KUBELET_KERNEL_TUNABLES,
  cgroupLeftovers,
  cgroupPids,
  createCgroupRoot,
  filesWithPrefix,
  iptablesRules,
  killProcesses,
  mountsUnder,
  netnsInode,
  ownedProcesses,
  readSysctls,
  removeCgroupRoot,
  listTree,
  removeEmptyDirs,
  removeFiles,
  run,
  symlinksInto,
  unmountAll,
  writeSysctls,
} from "./node-host.ts";
import { CACHE, versions } from "./paths.ts";
import { FatalError, ManagedProcess, freePort, waitFor } from "./process.ts";
import type { ExecResult } from "./netns.ts";

export type NodeBinaryName =
  | "kubelet"
  | "kube-controller-manager"
  | "kube-scheduler"
  | "kube-proxy"
  | "containerd"
  | "ctr"
  | "containerd-shim-runc-v2"
  | "crictl";

/** .cache/bin/<name>-<pinned version>, as scripts/build-node.sh builds it. */
export function nodeBinary(name: NodeBinaryName): string {
  const pinned = versions();
  const version =
    name === "crictl"
      ? pinned.CRICTL_VERSION
      : name.startsWith("containerd") || name === "ctr"
        ? pinned.CONTAINERD_VERSION
        : pinned.K8S_VERSION;
  const path = join(CACHE, "bin", `${name}-${version}`);
  if (!existsSync(path)) throw new Error(`${path} is missing: run scripts/build-node.sh`);
  return path;
}

const CNI_BIN_DIR = "/usr/lib/cni"; // Debian's containernetworking-plugins
const RUNC = "/usr/sbin/runc"; // Debian's runc
const CNI_CACHE_DIR = "/var/lib/cni/results"; // libcni's, not configurable through containerd
const KUBELET_CONTAINER_LOG_LINKS = "/var/log/containers"; // fixed in the kubelet
// Machine directories a node writes to whatever its configuration: containerd's shims put their
// sockets in /run/containerd/s; the kubelet serves its device-plugin socket at a fixed
// /var/lib/kubelet/device-plugins/kubelet.sock and links container logs in /var/log/containers;
// libcni caches results in /var/lib/cni/results. Those this run creates, it removes (once empty).
const CONTAINERD_RUN_DIR = "/run/containerd";
const KUBELET_DEVICE_PLUGIN_SOCKET = "/var/lib/kubelet/device-plugins/kubelet.sock";
const MACHINE_DIRS = [CONTAINERD_RUN_DIR, "/var/lib/kubelet", KUBELET_CONTAINER_LOG_LINKS, "/var/lib/cni"];
export const CLUSTER_DNS_IP = "10.0.0.10";

export interface RealNodeOptions {
  /** Node name; default kc-node. */
  name?: string;
  /** Prefix length of the pod range host-local hands out (default 26: 61 addresses). */
  podPrefixLength?: number;
  /** Skip CoreDNS (a test of the node itself). */
  withoutDns?: boolean;
  /** Taints the kubelet registers the node with (CoreDNS tolerates every taint). */
  registerWithTaints?: Array<{ key: string; value?: string; effect: string }>;
}

export interface Leftover {
  kind: string;
  what: string;
}

export interface RealNode {
  name: string;
  cluster: Cluster;
  images: NodeImages;
  /** The node's network namespace (under /run/netns). */
  netns: string;
  /** The node's InternalIP (its end of the link to the root namespace). */
  nodeIP: string;
  /** The root namespace's address on that link: apiserver, moto, Redis as seen from the node and pods. */
  hostIP: string;
  podSubnet: string;
  /** This run's directory (containerd root/state, kubelet root, CNI state, logs). */
  dir: string;
  /** Runs a command in the node's network namespace (never throws on a non-zero exit). */
  execInNode(cmd: string, args: string[], opts?: { timeoutMs?: number }): Promise<ExecResult>;
  crictl(args: string[]): Promise<string>;
  ctr(args: string[]): Promise<string>;
  /** Every part's recent output, for a failing test. */
  logs(lines?: number): string;
  /** A container's output as the kubelet logged it (CRI log format stripped). */
  containerLogs(namespace: string, pod: string, container: string): string;
  /** The namespace's pods (status, container states, log tails from the kubelet) and events. */
  describePods(namespace: string): Promise<string>;
  /** What the node has on the machine now, as teardown's check sees it (while running: plenty). */
  scan(): Promise<Leftover[]>;
  /** Tears everything down; returns what is still left (empty when clean). */
  stop(): Promise<Leftover[]>;
}

interface NodeLayout {
  prefix: string;
  name: string;
  netns: string;
  netnsPath: string;
  hostLink: string;
  hostIP: string;
  nodeIP: string;
  podSubnet: string;
  podGateway: string;
  bridge: string;
  cniNetwork: string;
  cgroupRoot: string;
  dir: string;
  socket: string;
}

async function chooseLayout(opts: RealNodeOptions): Promise<NodeLayout> {
  const routes = await run("ip", ["-4", "route", "show"]);
  let octet = 0;
  for (let attempt = 0; attempt < 50 && !octet; attempt++) {
    const candidate = 100 + randomInt(0, 150);
    if (!routes.includes(`10.${candidate}.`)) octet = candidate;
  }
  if (!octet) throw new Error("no free 10.x.0.0/16 range for the node");
  const prefix = `kn${randomBytes(2).toString("hex")}`;
  const prefixLength = opts.podPrefixLength ?? 26;
  if (prefixLength < 20 || prefixLength > 29) throw new Error(`podPrefixLength ${prefixLength}: want 20..29`);
  const dir = mkdtempSync(join(tmpdir(), `${NODE_DIR_STEM}${prefix}-`));
  writeFileSync(join(dir, OWNER_FILE), String(process.pid));
  return {
    ...hostNames(prefix),
    name: opts.name ?? "kc-node",
    hostIP: `10.${octet}.255.1`,
    nodeIP: `10.${octet}.255.2`,
    podSubnet: `10.${octet}.0.0/${prefixLength}`,
    podGateway: `10.${octet}.0.1`,
    bridge: "cni0",
    dir,
    socket: join(dir, "containerd", "containerd.sock"),
  };
}

const NODE_DIR_STEM = "kc-node-";
/** The PID of the test process that made a node, in its directory: alive means the node is in use. */
const OWNER_FILE = "owner.pid";

/** What a node's prefix names on the machine (so that a dead run's leftovers can be found by it). */
function hostNames(prefix: string) {
  return {
    prefix,
    netns: `${prefix}-node`,
    netnsPath: `/run/netns/${prefix}-node`,
    hostLink: `${prefix}h`,
    cniNetwork: `kc-${prefix}`,
    cgroupRoot: `/kc-${prefix}`,
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes what a node whose test process is gone left on the machine (a run killed by a timeout
 * or a restart never reaches its teardown): its processes, mounts, cgroups, network namespace,
 * veth, libcni result files and log links. Left in place, they make the next run's figures (and
 * agents that read /var/lib/cni/results) depend on that dead run.
 */
export async function sweepDeadNodes(): Promise<string[]> {
  const swept: string[] = [];
  for (const entry of readdirSync(tmpdir())) {
    const match = new RegExp(`^${NODE_DIR_STEM}(kn[0-9a-f]{4})-`).exec(entry);
    if (!match) continue;
    const dir = join(tmpdir(), entry);
    const names = hostNames(match[1]!);
    const inode = existsSync(names.netnsPath) ? netnsInode(names.netnsPath) : undefined;
    const owned = ownedProcesses({ dir, netnsInode: inode, cgroupRoot: names.cgroupRoot });
    const ownerFile = join(dir, OWNER_FILE);
    // without an owner file (a node from before it was written), only a node with no process left
    if (existsSync(ownerFile) ? isAlive(Number(readFileSync(ownerFile, "utf8"))) : owned.length > 0) continue;
    await killProcesses(owned);
    await unmountAll(dir);
    removeCgroupRoot(names.cgroupRoot);
    await run("ip", ["netns", "del", names.netns]).catch(() => undefined);
    await run("ip", ["link", "del", names.hostLink]).catch(() => undefined);
    // containerd's loopback attachment of each of its sandboxes is cached under the same ID
    const results = filesWithPrefix(CNI_CACHE_DIR, `${names.cniNetwork}-`);
    const sandboxIds = results.flatMap((file) => /-([0-9a-f]{64})-[^-]+$/.exec(file)?.[1] ?? []);
    removeFiles(results);
    removeFiles(sandboxIds.flatMap((id) => filesWithPrefix(CNI_CACHE_DIR, `cni-loopback-${id}-`)));
    removeFiles(symlinksInto(KUBELET_CONTAINER_LOG_LINKS, dir));
    rmSync(dir, { recursive: true, force: true });
    swept.push(names.prefix);
  }
  return swept;
}

async function createNodeNetwork(layout: NodeLayout): Promise<void> {
  const inNode = (args: string[]) => run("ip", ["-n", layout.netns, ...args]);
  await run("ip", ["netns", "add", layout.netns]);
  await run("ip", ["link", "add", layout.hostLink, "type", "veth", "peer", "name", `${layout.hostLink}x`]);
  await run("ip", ["link", "set", `${layout.hostLink}x`, "netns", layout.netns]);
  await run("ip", ["addr", "add", `${layout.hostIP}/30`, "dev", layout.hostLink]);
  await run("ip", ["link", "set", layout.hostLink, "up"]);
  await inNode(["link", "set", "lo", "up"]);
  await inNode(["link", "set", `${layout.hostLink}x`, "name", "eth0"]);
  await inNode(["addr", "add", `${layout.nodeIP}/30`, "dev", "eth0"]);
  await inNode(["link", "set", "eth0", "up"]);
  await inNode(["route", "add", "default", "via", layout.hostIP]);
  // the root namespace reaches pods through the node, as a cluster route would
  await run("ip", ["route", "add", layout.podSubnet, "via", layout.nodeIP, "dev", layout.hostLink]);
  // Per-namespace sysctls: forwarding for pod traffic, and bridged pod-to-pod traffic through
  // iptables so kube-proxy's DNAT of a Service on the same bridge is undone on the way back.
  for (const setting of ["net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"]) {
    await run("ip", ["netns", "exec", layout.netns, "sysctl", "-qw", setting]);
  }
}

class NodeParts {
  readonly processes: ManagedProcess[] = [];
  private readonly layout: NodeLayout;

  constructor(layout: NodeLayout) {
    this.layout = layout;
  }

  /** A process in the root namespace. */
  start(name: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): ManagedProcess {
    const proc = new ManagedProcess(name, cmd, args, { env });
    this.processes.push(proc);
    return proc;
  }

  /** A process in the node's network namespace (mounts stay the machine's: see the file comment). */
  startInNode(name: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): ManagedProcess {
    return this.start(name, "nsenter", [`--net=${this.layout.netnsPath}`, "--", cmd, ...args], env);
  }

  logs(lines = 60): string {
    return this.processes
      .map((proc) => `--- ${proc.name} (pid ${proc.pid}) ---\n${proc.tail(lines)}`)
      .join("\n");
  }
}

/** Starts the node; on any failure it tears down what it started and throws with the logs. */
export async function startRealNode(opts: RealNodeOptions = {}): Promise<RealNode> {
  const images = await buildNodeImages();
  await sweepDeadNodes();
  const layout = await chooseLayout(opts);
  const parts = new NodeParts(layout);
  const sysctlsBefore = readSysctls(KUBELET_KERNEL_TUNABLES);
  const rootRulesBefore = new Set(await iptablesRules());
  const machineDirsCreated = MACHINE_DIRS.filter((dir) => !existsSync(dir));
  const deviceSocketExisted = existsSync(KUBELET_DEVICE_PLUGIN_SOCKET);
  let cluster: Cluster | undefined;
  let inode: number | undefined;

  const crictl = (args: string[]): Promise<string> =>
    run(nodeBinary("crictl"), [`--runtime-endpoint=unix://${layout.socket}`, "--timeout=60s", ...args]);
  const ctr = (args: string[]): Promise<string> =>
    run(nodeBinary("ctr"), [`--address=${layout.socket}`, "--namespace=k8s.io", ...args], {
      timeoutMs: 600_000,
    });
  const execInNode = async (
    cmd: string,
    args: string[],
    execOpts: { timeoutMs?: number } = {},
  ): Promise<ExecResult> => {
    try {
      const stdout = await run("nsenter", [`--net=${layout.netnsPath}`, "--", cmd, ...args], execOpts);
      return { code: 0, stdout, stderr: "" };
    } catch (err) {
      return { code: 1, stdout: "", stderr: (err as Error).message };
    }
  };

  const teardown = async (): Promise<Leftover[]> => {
    const stopByName = async (name: string): Promise<void> => {
      for (const proc of parts.processes.filter((candidate) => candidate.name === name))
        await proc.stop(10_000);
    };
    // no new pods, then no kubelet to restart them; then every sandbox through CRI, so the CNI
    // plugins release addresses, veths and their caches, and containerd unmounts rootfs and shm
    await stopByName("kube-controller-manager");
    await stopByName("kube-scheduler");
    await stopByName("kubelet");
    if (parts.processes.some((proc) => proc.name === "containerd" && proc.running)) {
      await crictl(["rmp", "--force", "--all"]).catch(() => undefined);
    }
    await stopByName("containerd");
    await stopByName("kube-proxy");
    for (const proc of parts.processes) await proc.stop();
    // whatever survived (shims, container processes) was started by this node: end it by PID
    await killProcesses(
      ownedProcesses({ dir: layout.dir, netnsInode: inode, cgroupRoot: layout.cgroupRoot }),
    );
    await unmountAll(layout.dir);
    removeCgroupRoot(layout.cgroupRoot);
    await run("ip", ["netns", "del", layout.netns]).catch(() => undefined);
    await run("ip", ["link", "del", layout.hostLink]).catch(() => undefined);
    removeFiles(filesWithPrefix(CNI_CACHE_DIR, `${layout.cniNetwork}-`));
    removeFiles(symlinksInto(KUBELET_CONTAINER_LOG_LINKS, layout.dir));
    await cluster?.stop();
    writeSysctls(sysctlsBefore);
    rmSync(layout.dir, { recursive: true, force: true });
    if (!deviceSocketExisted) removeFiles([KUBELET_DEVICE_PLUGIN_SOCKET]);
    for (const dir of machineDirsCreated) removeEmptyDirs(dir);
    const left = await findLeftovers(layout, inode, rootRulesBefore);
    for (const dir of machineDirsCreated.filter((created) => existsSync(created))) {
      left.push({ kind: "directory", what: `${dir}: ${listTree(dir).join(", ")}` });
    }
    return left;
  };

  try {
    await createNodeNetwork(layout);
    inode = netnsInode(layout.netnsPath);
    const nodeToken = randomBytes(24).toString("hex");
    cluster = await startCluster({
      advertiseAddress: layout.hostIP,
      extraTokenLines: [`${nodeToken},system:node:${layout.name},node-${layout.prefix},"system:nodes"`],
      extraApiserverArgs: ["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction"],
    });
    const theCluster = cluster;
    const nodeKubeconfig = theCluster.kubeconfigFor(layout.hostIP, nodeToken);
    const proxyKubeconfig = theCluster.kubeconfigFor(layout.hostIP);

    await startControllers(parts, theCluster, layout);
    await startContainerd(parts, layout, images, ctr);
    await startKubelet(parts, layout, nodeKubeconfig, theCluster, opts.registerWithTaints);
    await startKubeProxy(parts, layout, proxyKubeconfig, execInNode);
    if (!opts.withoutDns) await startCoreDns(theCluster, images);
  } catch (err) {
    const logs = parts.logs();
    const leftovers = await teardown().catch((teardownErr: Error) => [
      { kind: "teardown", what: teardownErr.message },
    ]);
    const left = leftovers.length ? `\nleft behind: ${JSON.stringify(leftovers)}` : "";
    throw new Error(`${(err as Error).message}\n${logs}${left}`, { cause: err });
  }

  return {
    name: layout.name,
    cluster,
    images,
    netns: layout.netns,
    nodeIP: layout.nodeIP,
    hostIP: layout.hostIP,
    podSubnet: layout.podSubnet,
    dir: layout.dir,
    execInNode,
    crictl,
    ctr,
    logs: (lines) => parts.logs(lines),
    containerLogs: (namespace, pod, container) =>
      containerLogs(join(layout.dir, "pod-logs"), namespace, pod, container),
    describePods: (namespace) => describePods(cluster, join(layout.dir, "pod-logs"), namespace, parts),
    scan: () => findLeftovers(layout, inode, rootRulesBefore),
    stop: teardown,
  };
}

async function startControllers(parts: NodeParts, cluster: Cluster, layout: NodeLayout): Promise<void> {
  const common = (port: number) => [
    `--kubeconfig=${cluster.kubeconfigPath}`,
    `--authentication-kubeconfig=${cluster.kubeconfigPath}`,
    `--authorization-kubeconfig=${cluster.kubeconfigPath}`,
    "--bind-address=127.0.0.1",
    `--secure-port=${port}`,
    `--cert-dir=${join(layout.dir, "controllers-certs")}`,
    "--leader-elect=false",
    "--v=1",
  ];
  const kcmPort = await freePort();
  const controllers = parts.start("kube-controller-manager", nodeBinary("kube-controller-manager"), [
    ...common(kcmPort),
    "--service-cluster-ip-range=10.0.0.0/24",
    `--cluster-cidr=${layout.podSubnet}`,
    "--allocate-node-cidrs=false",
    // the CA pods get in kube-root-ca.crt, to trust the apiserver at kubernetes.default
    `--root-ca-file=${cluster.caFile}`,
    "--use-service-account-credentials=false",
    "--node-monitor-grace-period=20s",
  ]);
  const schedulerPort = await freePort();
  const scheduler = parts.start("kube-scheduler", nodeBinary("kube-scheduler"), common(schedulerPort));
  for (const [proc, port] of [
    [controllers, kcmPort],
    [scheduler, schedulerPort],
  ] as const) {
    await waitFor(
      `${proc.name} /healthz`,
      async () => {
        if (!proc.running) throw new FatalError(`${proc.name} exited:\n${proc.tail()}`);
        const res = await run("curl", [
          "-ksf",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          `https://127.0.0.1:${port}/healthz`,
        ]).catch(() => "");
        return res === "200";
      },
      { timeoutMs: 60_000, intervalMs: 300, onTimeout: () => proc.tail() },
    );
  }
}

async function startContainerd(
  parts: NodeParts,
  layout: NodeLayout,
  images: NodeImages,
  ctr: (args: string[]) => Promise<string>,
): Promise<void> {
  const base = join(layout.dir, "containerd");
  const cniConfDir = join(layout.dir, "cni", "net.d");
  mkdirSync(cniConfDir, { recursive: true });
  writeFileSync(
    join(cniConfDir, "10-keycutter-test.conflist"),
    cniConflist({
      name: layout.cniNetwork,
      bridge: layout.bridge,
      subnet: layout.podSubnet,
      gateway: layout.podGateway,
      ipamDataDir: join(layout.dir, "cni", "ipam"),
    }),
  );
  const configPath = join(base, "config.toml");
  mkdirSync(base, { recursive: true });
  writeFileSync(
    configPath,
    containerdConfig({
      root: join(base, "root"),
      state: join(base, "state"),
      socket: layout.socket,
      cniConfDir,
      cniBinDir: CNI_BIN_DIR,
      shim: nodeBinary("containerd-shim-runc-v2"),
      runc: RUNC,
      sandboxImage: images.pause.ref,
    }),
  );
  // the shim by its plain name on PATH too: containerd resolves it so for anything but CRI (ctr run)
  const shimDir = join(base, "bin");
  mkdirSync(shimDir, { recursive: true });
  symlinkSync(nodeBinary("containerd-shim-runc-v2"), join(shimDir, "containerd-shim-runc-v2"));
  const containerd = parts.startInNode("containerd", nodeBinary("containerd"), [`--config=${configPath}`], {
    ...process.env,
    PATH: `${shimDir}:${process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin"}`,
  });
  await waitFor(
    "containerd",
    async () => {
      if (!containerd.running) throw new FatalError(`containerd exited:\n${containerd.tail()}`);
      if (!existsSync(layout.socket)) return false;
      return (await ctr(["version"]).catch(() => "")).includes("Server:");
    },
    { timeoutMs: 30_000, intervalMs: 200, onTimeout: () => containerd.tail() },
  );
  for (const image of [images.pause, images.coredns, images.keycutter, images.awsClients, images.jsSdk]) {
    await ctr(["images", "import", "--local", image.archive]);
  }
}

async function startKubelet(
  parts: NodeParts,
  layout: NodeLayout,
  kubeconfig: string,
  cluster: Cluster,
  taints: RealNodeOptions["registerWithTaints"] = [],
): Promise<void> {
  createCgroupRoot(layout.cgroupRoot);
  const kubeletDir = join(layout.dir, "kubelet");
  mkdirSync(kubeletDir, { recursive: true });
  const resolvConf = join(layout.dir, "resolv.conf");
  // no upstream resolver: nothing here may depend on the outside network
  writeFileSync(resolvConf, "");
  const configPath = join(layout.dir, "kubelet-config.json");
  writeFileSync(
    configPath,
    kubeletConfig({
      cgroupRoot: layout.cgroupRoot,
      containerdSocket: layout.socket,
      address: layout.nodeIP,
      port: await freePort(),
      healthzPort: await freePort(),
      clusterDNS: CLUSTER_DNS_IP,
      resolvConf,
      podLogsDir: join(layout.dir, "pod-logs"),
      maxPods: 110,
      registerWithTaints: taints,
    }),
  );
  const kubelet = parts.startInNode("kubelet", nodeBinary("kubelet"), [
    `--config=${configPath}`,
    `--kubeconfig=${kubeconfig}`,
    `--root-dir=${kubeletDir}`,
    // its default is /var/lib/kubelet/pki whatever the root dir
    `--cert-dir=${join(kubeletDir, "pki")}`,
    `--hostname-override=${layout.name}`,
    `--node-ip=${layout.nodeIP}`,
    "--v=1",
  ]);
  const core = cluster.kc.makeApiClient(CoreV1Api);
  await waitFor(
    `node ${layout.name} Ready`,
    async () => {
      if (!kubelet.running) throw new FatalError(`kubelet exited:\n${kubelet.tail()}`);
      const node: V1Node | undefined = await core.readNode({ name: layout.name }).catch(() => undefined);
      return (
        node?.status?.conditions?.some((cond) => cond.type === "Ready" && cond.status === "True") ?? false
      );
    },
    { timeoutMs: 120_000, intervalMs: 500, onTimeout: () => kubelet.tail(80) },
  );
}

async function startKubeProxy(
  parts: NodeParts,
  layout: NodeLayout,
  kubeconfig: string,
  execInNode: RealNode["execInNode"],
): Promise<void> {
  const configPath = join(layout.dir, "kube-proxy-config.json");
  writeFileSync(
    configPath,
    kubeProxyConfig({
      kubeconfig,
      hostname: layout.name,
      clusterCIDR: layout.podSubnet,
      healthzPort: await freePort(),
      metricsPort: await freePort(),
    }),
  );
  const proxy = parts.startInNode("kube-proxy", nodeBinary("kube-proxy"), [
    `--config=${configPath}`,
    "--v=1",
  ]);
  await waitFor(
    "kube-proxy's rules for the kubernetes Service",
    async () => {
      if (!proxy.running) throw new FatalError(`kube-proxy exited:\n${proxy.tail()}`);
      const rules = await execInNode("iptables-save", ["-t", "nat"]);
      return rules.stdout.includes("default/kubernetes:https");
    },
    { timeoutMs: 60_000, intervalMs: 500, onTimeout: () => proxy.tail() },
  );
}

async function startCoreDns(cluster: Cluster, images: NodeImages): Promise<void> {
  await applyObjects(cluster.kc, corednsObjects(images.coredns.ref, CLUSTER_DNS_IP));
  const apps = cluster.kc.makeApiClient(AppsV1Api);
  await waitFor(
    "CoreDNS available",
    async () => {
      const deployment = await apps.readNamespacedDeployment({ name: "coredns", namespace: "kube-system" });
      return (deployment.status?.availableReplicas ?? 0) >= 1;
    },
    { timeoutMs: 120_000, intervalMs: 500 },
  );
}

/** Every log file of the container, oldest first, with the CRI prefix (time, stream, tag) removed. */
function containerLogs(podLogsDir: string, namespace: string, pod: string, container: string): string {
  const podDirs = existsSync(podLogsDir)
    ? readdirSync(podLogsDir).filter((name) => name.startsWith(`${namespace}_${pod}_`))
    : [];
  const lines: string[] = [];
  for (const podDir of podDirs) {
    const dir = join(podLogsDir, podDir, container);
    if (!existsSync(dir)) continue;
    for (const file of readdirSync(dir).sort()) {
      for (const line of readFileSync(join(dir, file), "utf8").split("\n")) {
        const match = /^\S+ (?:stdout|stderr) [FP] (.*)$/.exec(line);
        if (match) lines.push(match[1]!);
      }
    }
  }
  return lines.join("\n");
}

function tailOfFile(path: string, lines: number): string {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-lines).join("\n");
  } catch (err) {
    return `(${(err as Error).message})`;
  }
}

async function describePods(
  cluster: Cluster,
  podLogsDir: string,
  namespace: string,
  parts: NodeParts,
): Promise<string> {
  const core = cluster.kc.makeApiClient(CoreV1Api);
  const out: string[] = [];
  const pods = await core.listNamespacedPod({ namespace }).catch(() => undefined);
  for (const pod of pods?.items ?? []) {
    const name = pod.metadata!.name!;
    out.push(
      `pod ${name}: ${pod.status?.phase} ${pod.status?.podIP ?? ""} node=${pod.spec?.nodeName ?? "-"}`,
    );
    for (const cond of pod.status?.conditions ?? []) {
      if (cond.status !== "True")
        out.push(`  ${cond.type}=${cond.status} ${cond.reason ?? ""} ${cond.message ?? ""}`);
    }
    for (const status of [
      ...(pod.status?.initContainerStatuses ?? []),
      ...(pod.status?.containerStatuses ?? []),
    ]) {
      out.push(
        `  container ${status.name}: ready=${status.ready} restarts=${status.restartCount} ${JSON.stringify(status.state)}`,
      );
      const dir = join(podLogsDir, `${namespace}_${name}_${pod.metadata!.uid}`, status.name);
      const logs = existsSync(dir) ? readdirSync(dir).sort() : [];
      if (logs.length) out.push(tailOfFile(join(dir, logs[logs.length - 1]!), 25).replace(/^/gm, "    | "));
    }
  }
  const events = await core.listNamespacedEvent({ namespace }).catch(() => undefined);
  for (const event of (events?.items ?? []).slice(-30)) {
    out.push(
      `event ${event.involvedObject.kind}/${event.involvedObject.name}: ${event.reason} ${event.message ?? ""}`,
    );
  }
  out.push(parts.logs(25));
  return out.join("\n");
}

async function findLeftovers(
  layout: NodeLayout,
  inode: number | undefined,
  rootRulesBefore: Set<string>,
): Promise<Leftover[]> {
  const left: Leftover[] = [];
  for (const owned of ownedProcesses({ dir: layout.dir, netnsInode: inode, cgroupRoot: layout.cgroupRoot })) {
    left.push({ kind: "process", what: `${owned.pid} (${owned.why}): ${owned.cmdline}` });
  }
  for (const mountPoint of mountsUnder(layout.dir)) left.push({ kind: "mount", what: mountPoint });
  const namespaces = await run("ip", ["netns", "list"]);
  for (const line of namespaces.split("\n")) {
    if (line.startsWith(layout.prefix)) left.push({ kind: "netns", what: line });
  }
  const links = await run("ip", ["-o", "link", "show"]);
  for (const line of links.split("\n")) {
    if (line.includes(layout.prefix)) left.push({ kind: "link", what: line.slice(0, 120) });
  }
  for (const dir of cgroupLeftovers(layout.cgroupRoot)) left.push({ kind: "cgroup", what: dir });
  if (cgroupPids(layout.cgroupRoot).length) left.push({ kind: "cgroup", what: "tasks left" });
  for (const file of filesWithPrefix(CNI_CACHE_DIR, `${layout.cniNetwork}-`))
    left.push({ kind: "cni-cache", what: file });
  for (const link of symlinksInto(KUBELET_CONTAINER_LOG_LINKS, layout.dir))
    left.push({ kind: "log-link", what: link });
  const subnetStem = layout.podSubnet.split(".").slice(0, 2).join(".") + ".";
  for (const rule of await iptablesRules()) {
    const ours = rule.includes(layout.prefix) || rule.includes(subnetStem) || /\b(KUBE|CNI)-/.test(rule);
    if (ours && !rootRulesBefore.has(rule)) left.push({ kind: "iptables (root namespace)", what: rule });
  }
  if (existsSync(layout.dir)) left.push({ kind: "directory", what: layout.dir });
  return left;
}
