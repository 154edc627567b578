// The whole keycutter system on one machine, from real parts: etcd + kube-apiserver with the
// CRDs and the chart's RBAC, moto (STS/S3, auth enforced), Redis, server replicas and node agents
// as real `keycutter` processes, nodes and pods in real network namespaces behind the agents'
// own iptables hooks.
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type KubernetesObject, type V1Pod } from "@kubernetes/client-node";
import {
  FatalError,
  FaultProxy,
  KEYCUTTER_MAIN,
  type Kubelet,
  ConfigMapVolume,
  ManagedProcess,
  NODE,
  PodNetwork,
  VENV_BIN,
  applyObjects,
  freePort,
  makeServingCert,
  waitFor,
  type Cluster,
  type ExecResult,
  type Moto,
  type NodeNet,
  type PodNet,
  type Redis,
  type TestPki,
} from "../harness/index.ts";
import { chartRbacObjects } from "../deploy/render.ts";
import { chartCommandLines, expandVars, setFlag, type ChartCommandLines } from "./chart-args.ts";
import { cacheKeyFile } from "../harness/keycutter-server.ts";
import * as worlds from "../harness/world.ts";
import { SYSTEM_NS, type BaseWorld } from "../harness/world.ts";

export { AGENT_SA, SERVER_SA, SYSTEM_NS } from "../harness/world.ts";
export const IMDS = "http://169.254.169.254";
export const CONTAINER_CREDS_URL = "http://169.254.170.23/v1/credentials";

export interface TestPod {
  namespace: string;
  name: string;
  uid: string;
  node: string;
  serviceAccount: string;
  net: PodNet;
}

export interface ServerReplica {
  name: string;
  port: number;
  opsPort: number;
  process: ManagedProcess;
}

export interface AgentInstance {
  node: NodeNet;
  process: ManagedProcess;
  opsPort: number;
  tokenFile: string;
}

export interface SystemOptions {
  nodes?: string[];
  serverReplicas?: number;
  redis?: boolean;
  requireImdsV2?: boolean;
  /** Put a fault-injecting proxy (sys.stsProxy) between the servers and moto's STS. */
  stsFaults?: boolean;
  /** Extra agent flags. */
  agentArgs?: string[];
  serverArgs?: string[];
  /**
   * Run the chart's default TLS: the servers make and rotate their own CA and certificate (these
   * server.tls.selfManaged values), agents read the bundle from the ConfigMap as the kubelet
   * mounts it (sys.caVolume). Default: an existing Secret's files.
   */
  selfManagedTls?: Record<string, number>;
}

const AGENT_OPS_PORT = 8182;

export class System {
  cluster!: Cluster;
  moto!: Moto;
  redis?: Redis;
  stsProxy?: FaultProxy;
  /** The server's and agent's command lines as the Helm chart renders them. */
  chart!: ChartCommandLines;
  net!: PodNetwork;
  kubelet!: Kubelet;
  pki!: TestPki;
  /** Scratch directory (the base world's), set by start(). */
  dir = "";
  private base?: BaseWorld;
  servers: ServerReplica[] = [];
  agents = new Map<string, AgentInstance>();
  pods = new Map<string, TestPod>();
  brokerCreds = { accessKeyId: "", secretAccessKey: "" };
  cacheKeyFile = "";
  /** A kube-proxy stand-in: the Service address agents use, DNATed to ready server replicas. */
  serviceIP = "";
  servicePort = 8443;
  /** Self-managed TLS: the agents' CA bundle file, kept from the server's ConfigMap. */
  caVolume?: ConfigMapVolume;
  private opts: Required<Omit<SystemOptions, "agentArgs" | "serverArgs" | "stsFaults" | "selfManagedTls">> &
    SystemOptions;

  constructor(opts: SystemOptions = {}) {
    this.opts = {
      nodes: ["node-a", "node-b"],
      serverReplicas: 2,
      redis: true,
      requireImdsV2: false,
      ...opts,
    };
  }

  async start(log: (s: string) => void = () => undefined): Promise<void> {
    const t0 = Date.now();
    const [base, net] = await Promise.all([
      worlds.startBaseWorld({ prefix: "kc-e2e", moto: true, redis: this.opts.redis }),
      PodNetwork.create(),
    ]);
    this.base = base;
    const { cluster, kubelet, redis, dir } = base;
    const moto = base.moto!;
    Object.assign(this, { cluster, kubelet, moto, redis, net, dir });
    this.serviceIP = `10.${net.octet}.254.1`;
    log(`apiserver, etcd, moto${redis ? ", redis" : ""} and the network up in ${Date.now() - t0} ms`);

    this.pki = await makeServingCert(
      [net.gatewayIP, this.serviceIP, "127.0.0.1"],
      ["localhost", "keycutter"],
    );
    this.cacheKeyFile = cacheKeyFile(this.dir);

    if (this.opts.stsFaults) this.stsProxy = await FaultProxy.start(moto.endpoint);
    this.chart = chartCommandLines(SYSTEM_NS, {
      region: moto.region,
      stsEndpoint: this.stsProxy?.url ?? moto.endpoint,
      redisUrl: redis?.url,
      requireImdsV2: this.opts.requireImdsV2,
      ...(this.opts.selfManagedTls
        ? {
            selfManagedTls: {
              values: this.opts.selfManagedTls,
              ipAddresses: [this.serviceIP, net.gatewayIP],
            },
          }
        : {}),
    });
    if (this.opts.selfManagedTls)
      this.caVolume = new ConfigMapVolume(
        cluster.kc,
        { namespace: SYSTEM_NS, name: "keycutter-server-ca", key: "ca.crt" },
        join(this.dir, "server-ca", "ca.crt"),
      ).start();
    await worlds.installKeycutterApi(this, chartRbacObjects(SYSTEM_NS) as KubernetesObject[]);
    // the chart's ConfigMap the CLI reads the server's settings from (explain in the demo)
    await applyObjects(this.cluster.kc, [this.chart.serverConfig as KubernetesObject]);
    // read-only IAM besides AssumeRole, so `keycutter explain` can simulate with the role's policies
    this.brokerCreds = await worlds.createServerUser(moto, { readIam: true });
    log("CRDs, RBAC, IAM roles and buckets in place");

    for (let i = 0; i < this.opts.serverReplicas; i++) await this.startServer(`server-${i}`);
    await this.syncService();
    log(`${this.servers.length} server replica(s) ready`);

    for (const name of this.opts.nodes) await this.addNode(name);
    log(`${this.agents.size} node(s) with agents and hooks`);
  }

  serverEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      AWS_ACCESS_KEY_ID: this.brokerCreds.accessKeyId,
      AWS_SECRET_ACCESS_KEY: this.brokerCreds.secretAccessKey,
      AWS_REGION: this.moto.region,
      KEYCUTTER_LOG_LEVEL: "info",
    };
  }

  async startServer(name: string): Promise<ServerReplica> {
    const port = await freePort("0.0.0.0");
    const opsPort = await freePort("0.0.0.0");
    const kubeconfig = await worlds.serverKubeconfig(this);
    let chartArgs = expandVars(this.chart.server, { POD_NAME: name, POD_NAMESPACE: SYSTEM_NS });
    chartArgs = setFlag(chartArgs, "--listen", `0.0.0.0:${port}`);
    chartArgs = setFlag(chartArgs, "--ops-listen", `0.0.0.0:${opsPort}`);
    if (!this.opts.selfManagedTls) {
      chartArgs = setFlag(chartArgs, "--tls-cert", this.pki.certFile);
      chartArgs = setFlag(chartArgs, "--tls-key", this.pki.keyFile);
    }
    if (this.redis) chartArgs = setFlag(chartArgs, "--cache-key-file", this.cacheKeyFile);
    const args = [
      KEYCUTTER_MAIN,
      ...chartArgs,
      `--kubeconfig=${kubeconfig}`,
      `--identity=${name}`,
      ...(this.opts.serverArgs ?? []),
    ];
    const process_ = new ManagedProcess(name, NODE, args, {
      env: { ...this.serverEnv(), ...this.chart.serverEnv, POD_NAME: name, POD_NAMESPACE: SYSTEM_NS },
    });
    const replica: ServerReplica = { name, port, opsPort, process: process_ };
    this.servers.push(replica);
    await waitFor(
      `${name} ready`,
      async () => {
        if (!process_.running) throw new FatalError(`${name} exited:\n${process_.tail()}`);
        const res = await fetch(`http://127.0.0.1:${opsPort}/readyz`).catch(() => undefined);
        return res?.ok ?? false;
      },
      { timeoutMs: 30_000, onTimeout: () => process_.tail() },
    );
    return replica;
  }

  /** Points the Service address at the running server replicas, as kube-proxy would. */
  async syncService(): Promise<void> {
    const live = this.servers.filter((s) => s.process.running);
    const chain = `${this.net.prefix}-SVC`;
    const ipt = (...a: string[]) => this.net.rootIptables(a);
    await ipt("-t", "nat", "-N", chain).catch(() => undefined);
    await ipt("-t", "nat", "-F", chain);
    for (const hook of ["PREROUTING", "OUTPUT"]) {
      const rule = [
        "-d",
        `${this.serviceIP}/32`,
        "-p",
        "tcp",
        "--dport",
        String(this.servicePort),
        "-j",
        chain,
      ];
      await ipt("-t", "nat", "-C", hook, ...rule).catch(() => ipt("-t", "nat", "-I", hook, ...rule));
    }
    for (let i = 0; i < live.length; i++) {
      const s = live[i]!;
      const prob =
        i === live.length - 1
          ? []
          : ["-m", "statistic", "--mode", "random", "--probability", String(1 / (live.length - i))];
      await ipt(
        "-t",
        "nat",
        "-A",
        chain,
        "-p",
        "tcp",
        ...prob,
        "-j",
        "DNAT",
        "--to-destination",
        `${this.net.gatewayIP}:${s.port}`,
      );
    }
  }

  get serverUrl(): string {
    return `https://${this.serviceIP}:${this.servicePort}`;
  }

  async addNode(name: string): Promise<AgentInstance> {
    // the node's container runtime records its pods' attachments here (libcni's result cache)
    const node = await this.net.addNode(name, { cniStateDir: join(this.dir, "cni", name, "results") });
    // The agent runs as a hostNetwork DaemonSet pod on its node: its tokens are bound to that pod.
    const agent = await worlds.agentOnNode(this, name, node.ip, {
      podCIDR: node.podCIDR,
      labels: { "app.kubernetes.io/name": "keycutter", "app.kubernetes.io/component": "agent" },
    });
    const serverToken = await agent.token([worlds.AGENT_AUDIENCE]);
    const apiToken = await agent.token([this.cluster.issuer]);
    const tokenFile = join(this.dir, `agent-${name}.token`);
    writeFileSync(tokenFile, serverToken, { mode: 0o600 });
    const inst: AgentInstance = {
      node,
      tokenFile,
      opsPort: AGENT_OPS_PORT,
      process: this.spawnAgent(node, tokenFile, this.cluster.kubeconfigFor(this.net.gatewayIP, apiToken)),
    };
    this.agents.set(name, inst);
    await this.waitAgentReady(inst);
    return inst;
  }

  private agentArgs(node: NodeNet, tokenFile: string, kubeconfig: string): string[] {
    let args = expandVars(this.chart.agent, { NODE_NAME: node.name, NODE_IP: node.ip });
    args = setFlag(args, "--server-url", this.serverUrl);
    args = setFlag(args, "--server-ca-file", this.caVolume?.file ?? this.pki.caFile);
    args = setFlag(args, "--token-file", tokenFile);
    // the host path the chart mounts, here this node's own directory
    args = setFlag(args, "--cni-state-dir", node.cniStateDir!);
    // the chart's host directory, here this node's own (nodes share this machine's filesystem)
    args = setFlag(args, "--handover-dir", join(this.dir, "handover", node.name));
    return [KEYCUTTER_MAIN, ...args, `--kubeconfig=${kubeconfig}`, ...(this.opts.agentArgs ?? [])];
  }

  private agentKubeconfigs = new Map<string, string>();

  private spawnAgent(node: NodeNet, tokenFile: string, kubeconfig: string): ManagedProcess {
    this.agentKubeconfigs.set(node.name, kubeconfig);
    return this.net.spawn(node.netns, NODE, this.agentArgs(node, tokenFile, kubeconfig), {
      name: `agent-${node.name}`,
      env: { ...process.env, ...this.chart.agentEnv, KEYCUTTER_LOG_LEVEL: "info" },
    });
  }

  async waitAgentReady(inst: AgentInstance): Promise<void> {
    await waitFor(
      `agent on ${inst.node.name} ready`,
      async () => {
        if (!inst.process.running) throw new FatalError(`agent exited:\n${inst.process.tail()}`);
        const r = await this.net.exec(inst.node.netns, "curl", [
          "-sf",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          // the chart binds the ops listener to the node IP
          `http://${inst.node.ip}:${inst.opsPort}/readyz`,
        ]);
        return r.stdout === "200";
      },
      { timeoutMs: 30_000, onTimeout: () => inst.process.tail() },
    );
  }

  async stopAgent(node: string): Promise<void> {
    await this.agents.get(node)!.process.stop();
  }

  async restartAgent(node: string): Promise<void> {
    const inst = this.agents.get(node)!;
    await inst.process.stop();
    inst.process = this.spawnAgent(inst.node, inst.tokenFile, this.agentKubeconfigs.get(node)!);
    await this.waitAgentReady(inst);
  }

  /**
   * The chart's rolling update (maxSurge 1, maxUnavailable 0): a second agent starts next to the
   * running one, takes over, then the old one gets SIGTERM (the controller deletes its pod).
   * Returns how long the successor took from start to owning the hook.
   */
  async rolloutAgent(node: string, opts: { sigtermAtStart?: boolean } = {}): Promise<{ takeOverMs: number }> {
    const inst = this.agents.get(node)!;
    const old = inst.process;
    const t0 = Date.now();
    const next = this.spawnAgent(inst.node, inst.tokenFile, this.agentKubeconfigs.get(node)!);
    // the controller deletes the old pod as soon as the new one looks Ready, which the old agent
    // itself can answer on the shared ops port: SIGTERM before the new process even connected
    const stopping = opts.sigtermAtStart ? old.stop(60_000) : undefined;
    await next.waitForLine(/hand-over complete/, 60_000);
    const takeOverMs = Date.now() - t0;
    if (stopping) await stopping;
    else {
      await old.waitForLine(/drained: waiting for SIGTERM/, 30_000);
      await old.stop();
    }
    inst.process = next;
    await this.waitAgentReady(inst);
    return { takeOverMs };
  }

  /** SIGKILL of the agent (a crash, an OOM kill) and the kubelet's immediate restart of it. */
  async crashAgent(node: string): Promise<{ listeningAfterMs: number; readyAfterMs: number }> {
    const inst = this.agents.get(node)!;
    const t0 = Date.now();
    await inst.process.kill();
    inst.process = this.spawnAgent(inst.node, inst.tokenFile, this.agentKubeconfigs.get(node)!);
    await inst.process.waitForLine(/"agent listening"/, 30_000);
    const listeningAfterMs = Date.now() - t0;
    await this.waitAgentReady(inst);
    return { listeningAfterMs, readyAfterMs: Date.now() - t0 };
  }

  /** A pod in its own network namespace on `node`, known to the apiserver with that IP. */
  async addPod(
    node: string,
    namespace: string,
    name: string,
    opts: {
      serviceAccount?: string;
      labels?: Record<string, string>;
      ip?: string;
      annotations?: Record<string, string>;
    } = {},
  ): Promise<TestPod> {
    const sa = opts.serviceAccount ?? "default";
    // a node's order: bound, the sandbox's CNI ADD recorded, then the kubelet reports the IP
    const bound: V1Pod = await this.kubelet.createPod({
      namespace,
      name,
      nodeName: node,
      serviceAccountName: sa,
      labels: opts.labels,
      annotations: opts.annotations,
    });
    const podNet = await this.net.addPod(node, `${namespace}-${name}`, opts.ip, {
      namespace,
      name,
      uid: bound.metadata!.uid!,
    });
    const pod = await this.kubelet.setPodIP(namespace, name, podNet.ip, this.agents.get(node)?.node.ip);
    const p: TestPod = { namespace, name, uid: pod.metadata!.uid!, node, serviceAccount: sa, net: podNet };
    this.pods.set(`${namespace}/${name}`, p);
    return p;
  }

  async deletePod(p: TestPod, opts: { keepNetwork?: boolean } = {}): Promise<void> {
    await this.kubelet.deletePod(p.namespace, p.name);
    this.pods.delete(`${p.namespace}/${p.name}`);
    if (!opts.keepNetwork) await this.net.removePod(p.net);
    // the namespace kept for reuse by another pod; its sandbox and CNI attachment are gone
    else this.net.cniDetach(p.net);
  }

  /** The pod's own projected token for the container-credentials endpoint. */
  podToken(p: TestPod, audience = "keycutter-pod"): Promise<string> {
    return this.kubelet.requestToken(p.namespace, p.serviceAccount, {
      podName: p.name,
      podUID: p.uid,
      audiences: [audience],
    });
  }

  async apply(obj: object): Promise<void> {
    await applyObjects(this.cluster.kc, [obj as never]);
  }

  /** Environment for an AWS client in a pod: only the endpoints are set, never credentials. */
  awsEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {
      PATH: `${VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin`,
      HOME: this.dir,
      AWS_DEFAULT_REGION: this.moto.region,
      AWS_REGION: this.moto.region,
      AWS_ENDPOINT_URL: this.moto.endpointFor(this.net.gatewayIP),
      AWS_CONFIG_FILE: "/dev/null",
      AWS_SHARED_CREDENTIALS_FILE: "/dev/null",
      AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE: "IPv4",
      ...extra,
    };
    return env;
  }

  /** Runs the unmodified AWS CLI inside the pod's network namespace. */
  aws(p: TestPod, args: string[], env: NodeJS.ProcessEnv = {}): Promise<ExecResult> {
    return this.net.exec(p.net.netns, join(VENV_BIN, "aws"), args, {
      env: this.awsEnv(env),
      timeoutMs: 60_000,
    });
  }

  /** curl inside the pod; returns status code and body. */
  async curl(
    p: TestPod | PodNet,
    url: string,
    opts: { method?: string; headers?: Record<string, string>; timeoutS?: number } = {},
  ): Promise<{ status: number; body: string; code: number }> {
    const netns = "net" in p ? p.net.netns : p.netns;
    const args = [
      "-s",
      "--max-time",
      String(opts.timeoutS ?? 5),
      "-w",
      "\n%{http_code}",
      "-X",
      opts.method ?? "GET",
    ];
    for (const [k, v] of Object.entries(opts.headers ?? {})) args.push("-H", `${k}: ${v}`);
    const r = await this.net.exec(netns, "curl", [...args, url]);
    const idx = r.stdout.lastIndexOf("\n");
    return {
      status: Number(r.stdout.slice(idx + 1)) || 0,
      body: r.stdout.slice(0, Math.max(idx, 0)),
      code: r.code,
    };
  }

  /** The IMDSv2 credential sequence an SDK performs; returns the credentials document. */
  async imdsCredentials(
    p: TestPod,
  ): Promise<{ status: number; creds?: Record<string, string>; body: string }> {
    const tok = await this.curl(p, `${IMDS}/latest/api/token`, {
      method: "PUT",
      headers: { "X-aws-ec2-metadata-token-ttl-seconds": "21600" },
    });
    if (tok.status !== 200) return { status: tok.status, body: tok.body };
    const h = { "X-aws-ec2-metadata-token": tok.body };
    const role = await this.curl(p, `${IMDS}/latest/meta-data/iam/security-credentials/`, { headers: h });
    if (role.status !== 200) return { status: role.status, body: role.body };
    const doc = await this.curl(p, `${IMDS}/latest/meta-data/iam/security-credentials/${role.body}`, {
      headers: h,
    });
    if (doc.status !== 200) return { status: doc.status, body: doc.body };
    return { status: 200, creds: JSON.parse(doc.body) as Record<string, string>, body: doc.body };
  }

  /** Every log line the system produced (servers, agents), for secret scans. */
  allLogs(): string {
    return [
      ...this.servers.map((s) => s.process.logs()),
      ...[...this.agents.values()].map((a) => a.process.logs()),
    ].join("\n");
  }

  async stop(): Promise<void> {
    this.caVolume?.stop();
    await Promise.all(this.servers.map((s) => s.process.stop()));
    for (const a of this.agents.values()) await a.process.stop();
    await this.net?.destroy();
    await Promise.all([this.base?.stop(), this.stsProxy?.stop()]);
    if (this.pki) rmSync(this.pki.dir, { recursive: true, force: true });
  }
}
