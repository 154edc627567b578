import { execFile } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { ManagedProcess } from "./process.ts";

const execFileP = promisify(execFile);

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface NodeNet {
  name: string;
  netns: string;
  /** The node's address on the uplink (what pods' hostIP is). */
  ip: string;
  podCIDR: string;
  /** The node's own address on the pod bridge: pods' default gateway. */
  podGateway: string;
  /**
   * Where this node's "container runtime" keeps libcni's result cache (as /var/lib/cni/results
   * on a real node); undefined: it keeps none.
   */
  cniStateDir?: string;
}

export interface PodNet {
  name: string;
  node: string;
  netns: string;
  ip: string;
  /** The sandbox's container ID, as the runtime passes it to CNI. */
  containerId?: string;
  /** The result cache file of its attachment, while attached. */
  cniFile?: string;
}

/** The pod an attachment is for, as the runtime passes it in CNI_ARGS. */
export interface CniPodArgs {
  namespace: string;
  name: string;
  /** K8S_POD_UID (containerd ≥ 1.6, CRI-O); omitted as older runtimes do. */
  uid?: string;
}

/** The network name of the test "CNI" (the bridge cbr0 of each node). */
export const CNI_NETWORK = "kc-test-bridge";

async function run(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(" ")}: ${e.stderr?.trim() || e.message}`, { cause: err });
  }
}

/**
 * Real network namespaces for one test run: a bridge in the root namespace (where the
 * apiserver, moto, Redis and the keycutter server listen), node namespaces on it, and pod
 * namespaces on each node's own bridge `cbr0`. Every name carries a random prefix so runs
 * never collide, and destroy() removes all of it.
 */
export class PodNetwork {
  readonly prefix: string;
  /** Second octet of this run's 10.x.0.0/16. */
  readonly octet: number;
  readonly bridge: string;
  readonly gatewayIP: string;
  readonly nodes = new Map<string, NodeNet>();
  readonly pods = new Map<string, PodNet>();
  private podCounter = 0;
  private routedPods = 0;
  private podsPerNode = new Map<string, number>();
  private processes: ManagedProcess[] = [];

  private constructor(prefix: string, octet: number) {
    this.prefix = prefix;
    this.octet = octet;
    this.bridge = `${prefix}br`;
    this.gatewayIP = `10.${octet}.255.1`;
  }

  static async create(): Promise<PodNetwork> {
    const routes = await run("ip", ["-4", "route", "show"]);
    let octet = 0;
    for (let i = 0; i < 50; i++) {
      const candidate = 100 + randomInt(0, 150);
      if (!routes.includes(`10.${candidate}.`)) {
        octet = candidate;
        break;
      }
    }
    if (!octet) throw new Error("no free 10.x.0.0/16 range for the test network");
    const net = new PodNetwork(`kc${randomBytes(2).toString("hex")}`, octet);
    try {
      await run("ip", ["link", "add", net.bridge, "type", "bridge"]);
      await run("ip", ["addr", "add", `${net.gatewayIP}/24`, "dev", net.bridge]);
      await run("ip", ["link", "set", net.bridge, "up"]);
    } catch (err) {
      await net.destroy();
      throw err;
    }
    return net;
  }

  private ipIn(netns: string, args: string[]): Promise<string> {
    return run("ip", ["-n", netns, ...args]);
  }

  async addNode(name: string, opts: { cniStateDir?: string } = {}): Promise<NodeNet> {
    const n = this.nodes.size;
    if (n > 200) throw new Error("too many nodes");
    const netns = `${this.prefix}-${name}`;
    const hostSide = `${this.prefix}n${n}`;
    const ip = `10.${this.octet}.255.${10 + n}`;
    const node: NodeNet = {
      name,
      netns,
      ip,
      podCIDR: `10.${this.octet}.${n}.0/24`,
      podGateway: `10.${this.octet}.${n}.1`,
      cniStateDir: opts.cniStateDir,
    };
    this.nodes.set(name, node);
    // as on a node whose runtime has run pods before (libcni creates it with its first record)
    if (opts.cniStateDir) mkdirSync(opts.cniStateDir, { recursive: true, mode: 0o700 });
    await run("ip", ["netns", "add", netns]);
    await run("ip", ["link", "add", hostSide, "type", "veth", "peer", "name", `${hostSide}x`]);
    await run("ip", ["link", "set", hostSide, "master", this.bridge, "up"]);
    await run("ip", ["link", "set", `${hostSide}x`, "netns", netns]);
    await this.ipIn(netns, ["link", "set", "lo", "up"]);
    await this.ipIn(netns, ["link", "set", `${hostSide}x`, "name", "eth0"]);
    await this.ipIn(netns, ["addr", "add", `${ip}/24`, "dev", "eth0"]);
    await this.ipIn(netns, ["link", "set", "eth0", "up"]);
    await this.ipIn(netns, ["route", "add", "default", "via", this.gatewayIP]);
    await this.ipIn(netns, ["link", "add", "cbr0", "type", "bridge"]);
    await this.ipIn(netns, ["addr", "add", `${node.podGateway}/24`, "dev", "cbr0"]);
    await this.ipIn(netns, ["link", "set", "cbr0", "up"]);
    await run("ip", ["netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // the root namespace reaches this node's pods through the node, as a cluster route would
    await run("ip", ["route", "add", node.podCIDR, "via", ip, "dev", this.bridge]);
    return node;
  }

  /**
   * A pod namespace with eth0 on the node's cbr0. `ip` defaults to the next free address. With
   * `cni` (and a node with a cniStateDir), the attachment is recorded as the runtime's libcni
   * does after a successful CNI ADD (cniAttach).
   */
  async addPod(nodeName: string, podName: string, ip?: string, cni?: CniPodArgs): Promise<PodNet> {
    const node = this.nodes.get(nodeName);
    if (!node) throw new Error(`unknown node ${nodeName}`);
    const k = this.podCounter++;
    const netns = `${this.prefix}-${nodeName}-${podName}`.slice(0, 200);
    const hostSide = `${this.prefix}p${k}`;
    const slot = this.podsPerNode.get(nodeName) ?? 0;
    if (ip === undefined && slot >= 240) throw new Error(`node ${nodeName} has no free pod address left`);
    this.podsPerNode.set(nodeName, slot + 1);
    const podIP = ip ?? `${node.podGateway.slice(0, node.podGateway.lastIndexOf("."))}.${10 + slot}`;
    const pod: PodNet = { name: podName, node: nodeName, netns, ip: podIP };
    this.pods.set(netns, pod);
    await run("ip", ["netns", "add", netns]);
    await run("ip", ["link", "add", hostSide, "type", "veth", "peer", "name", `${hostSide}x`]);
    await run("ip", ["link", "set", hostSide, "netns", node.netns]);
    await this.ipIn(node.netns, ["link", "set", hostSide, "master", "cbr0", "up"]);
    await run("ip", ["link", "set", `${hostSide}x`, "netns", netns]);
    await this.ipIn(netns, ["link", "set", "lo", "up"]);
    await this.ipIn(netns, ["link", "set", `${hostSide}x`, "name", "eth0"]);
    await this.ipIn(netns, ["addr", "add", `${podIP}/24`, "dev", "eth0"]);
    await this.ipIn(netns, ["link", "set", "eth0", "up"]);
    await this.ipIn(netns, ["route", "add", "default", "via", node.podGateway]);
    if (cni) this.cniAttach(pod, cni);
    return pod;
  }

  /**
   * A pod namespace routed, not bridged: a veth whose node side is named `hostIface` (as Calico's
   * `cali…`, Cilium's `lxc…` or a secondary network's interface would be) with a /30 of its own
   * from 10.x.250.0/24, off the node's pod bridge and pod CIDR.
   */
  async addRoutedPod(nodeName: string, podName: string, hostIface: string): Promise<PodNet> {
    const node = this.nodes.get(nodeName);
    if (!node) throw new Error(`unknown node ${nodeName}`);
    const k = this.podCounter++;
    const block = 4 * (this.routedPods++ % 60);
    const nodeSide = `10.${this.octet}.250.${block + 1}`;
    const podIP = `10.${this.octet}.250.${block + 2}`;
    const netns = `${this.prefix}-${nodeName}-${podName}`.slice(0, 200);
    const peer = `${this.prefix}r${k}`;
    const pod: PodNet = { name: podName, node: nodeName, netns, ip: podIP };
    this.pods.set(netns, pod);
    await run("ip", ["netns", "add", netns]);
    await run("ip", ["-n", node.netns, "link", "add", hostIface, "type", "veth", "peer", "name", peer]);
    await this.ipIn(node.netns, ["addr", "add", `${nodeSide}/30`, "dev", hostIface]);
    await this.ipIn(node.netns, ["link", "set", hostIface, "up"]);
    await this.ipIn(node.netns, ["link", "set", peer, "netns", netns]);
    await this.ipIn(netns, ["link", "set", "lo", "up"]);
    await this.ipIn(netns, ["link", "set", peer, "name", "eth0"]);
    await this.ipIn(netns, ["addr", "add", `${podIP}/30`, "dev", "eth0"]);
    await this.ipIn(netns, ["link", "set", "eth0", "up"]);
    await this.ipIn(netns, ["route", "add", "default", "via", nodeSide]);
    return pod;
  }

  /**
   * What libcni's cacheAdd writes once CNI ADD has succeeded (containernetworking/cni
   * libcni/api.go): <cacheDir>/results/<network>-<containerID>-<ifname>, a cniCacheV1 record with
   * the runtime's CNI_ARGS and the plugin's result, mode 0600 in a 0700 directory.
   */
  cniAttach(pod: PodNet, cni: CniPodArgs): void {
    const node = this.nodes.get(pod.node);
    if (!node?.cniStateDir) return;
    mkdirSync(node.cniStateDir, { recursive: true, mode: 0o700 });
    // every sandbox has its own ID, also one that reuses a namespace (and IP) here
    const containerId = randomBytes(32).toString("hex");
    const args: [string, string][] = [
      ["IgnoreUnknown", "1"],
      ["K8S_POD_NAMESPACE", cni.namespace],
      ["K8S_POD_NAME", cni.name],
      ["K8S_POD_INFRA_CONTAINER_ID", containerId],
    ];
    if (cni.uid !== undefined) args.push(["K8S_POD_UID", cni.uid]);
    const config = {
      cniVersion: "1.0.0",
      name: CNI_NETWORK,
      plugins: [{ type: "bridge", bridge: "cbr0", ipam: { type: "host-local", subnet: node.podCIDR } }],
    };
    const record = {
      kind: "cniCacheV1",
      containerId,
      config: Buffer.from(JSON.stringify(config)).toString("base64"),
      ifName: "eth0",
      networkName: CNI_NETWORK,
      netns: `/var/run/netns/${pod.netns}`,
      cniArgs: args,
      result: {
        cniVersion: "1.0.0",
        interfaces: [{ name: "eth0", sandbox: `/var/run/netns/${pod.netns}` }],
        ips: [{ interface: 0, address: `${pod.ip}/24`, gateway: node.podGateway }],
        routes: [{ dst: "0.0.0.0/0", gw: node.podGateway }],
        dns: {},
      },
    };
    const file = join(node.cniStateDir, `${CNI_NETWORK}-${containerId}-eth0`);
    writeFileSync(file, JSON.stringify(record), { mode: 0o600 });
    pod.containerId = containerId;
    pod.cniFile = file;
  }

  /** What libcni's cacheDel does once CNI DEL has succeeded (the IP is free for reuse). */
  cniDetach(pod: PodNet): void {
    if (pod.cniFile) rmSync(pod.cniFile, { force: true });
    pod.cniFile = undefined;
  }

  /**
   * Removes a pod's namespace (and with it its veth pair), freeing its IP for reuse: the sandbox
   * going, with its CNI DEL.
   */
  async removePod(pod: PodNet): Promise<void> {
    await run("ip", ["netns", "del", pod.netns]).catch(() => undefined);
    this.cniDetach(pod);
    this.pods.delete(pod.netns);
  }

  /** Runs a command to completion inside a namespace; never throws on a non-zero exit. */
  exec(
    netns: string,
    cmd: string,
    args: string[],
    opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {},
  ): Promise<ExecResult> {
    return new Promise((resolve) => {
      const child = execFile(
        "ip",
        ["netns", "exec", netns, cmd, ...args],
        { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
          resolve({ code, stdout, stderr });
        },
      );
      if (opts.input !== undefined) child.stdin?.end(opts.input);
      else child.stdin?.end();
    });
  }

  /** Starts a long-running process inside a namespace; destroy() stops it. */
  spawn(netns: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; name?: string } = {}) {
    const p = new ManagedProcess(
      opts.name ?? `${cmd}@${netns}`,
      "ip",
      ["netns", "exec", netns, cmd, ...args],
      {
        env: opts.env,
      },
    );
    this.processes.push(p);
    return p;
  }

  /**
   * iptables in the root namespace, for test infrastructure only (a Service stand-in): chains
   * must start with this run's prefix so cleanup finds them.
   */
  async rootIptables(args: string[]): Promise<string> {
    return run("iptables", ["-w", ...args]);
  }

  /** Removes every root-namespace nat chain of this run and every jump to it. */
  async rootIptablesCleanup(): Promise<void> {
    const rules = await run("iptables", ["-w", "-t", "nat", "-S"]).catch(() => "");
    for (const line of rules.split("\n")) {
      const m = /^-A (\S+) (.*-j (\S+).*)$/.exec(line);
      if (m && m[3]!.startsWith(this.prefix) && !m[1]!.startsWith(this.prefix)) {
        await run("iptables", ["-w", "-t", "nat", "-D", m[1]!, ...m[2]!.split(" ")]).catch(() => undefined);
      }
    }
    for (const line of rules.split("\n")) {
      const m = /^-N (\S+)$/.exec(line);
      if (m && m[1]!.startsWith(this.prefix)) {
        await run("iptables", ["-w", "-t", "nat", "-F", m[1]!]).catch(() => undefined);
        await run("iptables", ["-w", "-t", "nat", "-X", m[1]!]).catch(() => undefined);
      }
    }
  }

  /** Every namespace, root-namespace link, route and nat rule of this run that still exists. */
  async leftovers(): Promise<string[]> {
    const out: string[] = [];
    const ns = await run("ip", ["netns", "list"]);
    for (const line of ns.split("\n")) {
      const name = line.split(" ")[0];
      if (name?.startsWith(`${this.prefix}-`)) out.push(`netns ${name}`);
    }
    const links = await run("ip", ["-o", "link", "show"]);
    for (const line of links.split("\n")) {
      const m = /^\d+: ([^:@]+)/.exec(line);
      if (m?.[1]?.startsWith(this.prefix)) out.push(`link ${m[1]}`);
    }
    const routes = await run("ip", ["-4", "route", "show"]);
    for (const line of routes.split("\n"))
      if (line.startsWith(`10.${this.octet}.`)) out.push(`route ${line}`);
    return out;
  }

  async destroy(): Promise<void> {
    await Promise.all(this.processes.map((p) => p.stop(3000)));
    await this.rootIptablesCleanup();
    for (const pod of [...this.pods.values()]) await this.removePod(pod);
    let n = 0;
    for (const node of this.nodes.values()) {
      await run("ip", ["netns", "del", node.netns]).catch(() => undefined);
      // the kernel removes a veth's root-side peer asynchronously; delete it now instead
      await run("ip", ["link", "del", `${this.prefix}n${n++}`]).catch(() => undefined);
    }
    await run("ip", ["link", "del", this.bridge]).catch(() => undefined);
    for (const node of this.nodes.values()) {
      await run("ip", ["route", "del", node.podCIDR]).catch(() => undefined);
    }
  }
}
