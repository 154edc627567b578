import type { KubernetesObject } from "@kubernetes/client-node";

/**
 * Configuration files of a real test node (containerd, CNI, kubelet, kube-proxy) and the
 * CoreDNS objects, as plain renderers: test/harness/realnode.ts writes them and starts the parts.
 */

export interface ContainerdPaths {
  root: string;
  state: string;
  socket: string;
  cniConfDir: string;
  cniBinDir: string;
  shim: string;
  runc: string;
  sandboxImage: string;
}

export function containerdConfig(paths: ContainerdPaths): string {
  const q = JSON.stringify;
  return `version = 3
root = ${q(paths.root)}
state = ${q(paths.state)}
# storage drivers this machine does not need, and NRI/tracing: nothing to start, nothing to clean
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = ${q(paths.socket)}

[ttrpc]
  address = ${q(paths.socket + ".ttrpc")}

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = ${q(paths.state + "/opt")}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  # every image is imported: a pull attempt is a test bug
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = ${q(paths.sandboxImage)}

[plugins."io.containerd.cri.v1.runtime"]
  # pod network namespaces under the state dir instead of /run/netns, so one run's stay its own
  netns_mounts_under_state_dir = true
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj below
  # 0: runc fails the sandbox's -998 (and the kubelet's -997 for critical pods) with "failed to
  # update /proc/self/oom_score_adj: Permission denied". Clamp to containerd's own (0) instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = ${q(paths.shim)}
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = ${q(paths.runc)}
        # runc's own state with the rest of this containerd's, not in /run/containerd/runc
        Root = ${q(paths.state + "/runc")}
        # cgroup v1 with the cgroupfs driver, as the kubelet (no systemd here)
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [${q(paths.cniBinDir)}]
    conf_dir = ${q(paths.cniConfDir)}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`;
}

export interface CniNetwork {
  name: string;
  bridge: string;
  subnet: string;
  gateway: string;
  ipamDataDir: string;
}

/** bridge + host-local + portmap (containerd adds loopback itself, from the same bin dir). */
export function cniConflist(net: CniNetwork): string {
  return JSON.stringify(
    {
      cniVersion: "1.0.0",
      name: net.name,
      plugins: [
        {
          type: "bridge",
          bridge: net.bridge,
          isGateway: true,
          ipMasq: true,
          // a pod reaching itself through a Service comes back over its own bridge port
          hairpinMode: true,
          ipam: {
            type: "host-local",
            ranges: [[{ subnet: net.subnet, gateway: net.gateway }]],
            routes: [{ dst: "0.0.0.0/0" }],
            dataDir: net.ipamDataDir,
          },
        },
        { type: "portmap", capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  );
}

export interface KubeletSettings {
  cgroupRoot: string;
  containerdSocket: string;
  address: string;
  port: number;
  healthzPort: number;
  clusterDNS: string;
  resolvConf: string;
  podLogsDir: string;
  maxPods: number;
  /** Taints the node registers with (e.g. an agent's startup taint, as a user sets it). */
  registerWithTaints: Array<{ key: string; value?: string; effect: string }>;
}

export function kubeletConfig(settings: KubeletSettings): string {
  return JSON.stringify(
    {
      apiVersion: "kubelet.config.k8s.io/v1beta1",
      kind: "KubeletConfiguration",
      // This machine has cgroup v1 (hybrid); since 1.35 the kubelet refuses v1 unless told, and
      // without systemd as PID 1 the cgroupfs driver is the only one (docs/TESTING.md).
      failCgroupV1: false,
      cgroupDriver: "cgroupfs",
      // a root of its own, so teardown finds (and removes) every cgroup this node created
      cgroupRoot: settings.cgroupRoot,
      containerRuntimeEndpoint: `unix://${settings.containerdSocket}`,
      address: settings.address,
      port: settings.port,
      readOnlyPort: 0,
      healthzBindAddress: "127.0.0.1",
      healthzPort: settings.healthzPort,
      authentication: {
        anonymous: { enabled: false },
        webhook: { enabled: true },
      },
      authorization: { mode: "Webhook" },
      clusterDomain: "cluster.local",
      clusterDNS: [settings.clusterDNS],
      resolvConf: settings.resolvConf,
      podLogsDir: settings.podLogsDir,
      maxPods: settings.maxPods,
      registerWithTaints: settings.registerWithTaints,
      failSwapOn: false,
      // -999 by default; this machine's root may not lower it (no CAP_SYS_RESOURCE)
      oomScoreAdj: 0,
      // the images are imported, never pulled: the kubelet must not collect them on a full disk
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      // a shared CI disk must not evict the suite's pods
      evictionHard: { "memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%" },
      // faster than the defaults, so the suite waits less for status and sync
      nodeStatusUpdateFrequency: "4s",
      syncFrequency: "10s",
      fileCheckFrequency: "5s",
      shutdownGracePeriod: "0s",
    },
    null,
    2,
  );
}

export interface KubeProxySettings {
  kubeconfig: string;
  hostname: string;
  clusterCIDR: string;
  healthzPort: number;
  metricsPort: number;
}

export function kubeProxyConfig(settings: KubeProxySettings): string {
  return JSON.stringify(
    {
      apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
      kind: "KubeProxyConfiguration",
      mode: "iptables",
      // -999 by default; this machine's root may not lower it (no CAP_SYS_RESOURCE)
      oomScoreAdj: 0,
      clientConnection: { kubeconfig: settings.kubeconfig },
      hostnameOverride: settings.hostname,
      clusterCIDR: settings.clusterCIDR,
      healthzBindAddress: `127.0.0.1:${settings.healthzPort}`,
      metricsBindAddress: `127.0.0.1:${settings.metricsPort}`,
      // nf_conntrack_max is machine-wide (only the initial namespace may set it): leave it, and
      // the per-namespace timeouts, as they are
      conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: "0s", tcpCloseWaitTimeout: "0s" },
      iptables: { minSyncPeriod: "0s", syncPeriod: "30s" },
    },
    null,
    2,
  );
}

export const COREDNS_PORT = 1053;

/** CoreDNS for cluster.local as a Deployment behind the kube-dns Service (no upstream: no network). */
export function corednsObjects(image: string, clusterIP: string): KubernetesObject[] {
  const labels = { "k8s-app": "kube-dns" };
  const corefile = [
    `.:${COREDNS_PORT} {`,
    "    errors",
    "    health :8080",
    "    ready :8181",
    "    kubernetes cluster.local in-addr.arpa ip6.arpa {",
    "        pods insecure",
    "        fallthrough in-addr.arpa ip6.arpa",
    "    }",
    "    cache 5",
    "}",
    "",
  ].join("\n");
  const objects: Array<KubernetesObject & Record<string, unknown>> = [
    { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "coredns", namespace: "kube-system" } },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRole",
      metadata: { name: "system:coredns" },
      rules: [
        {
          apiGroups: [""],
          resources: ["endpoints", "services", "pods", "namespaces"],
          verbs: ["list", "watch"],
        },
        { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] },
      ],
    },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { name: "system:coredns" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "system:coredns" },
      subjects: [{ kind: "ServiceAccount", name: "coredns", namespace: "kube-system" }],
    },
    {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "coredns", namespace: "kube-system" },
      data: { Corefile: corefile },
    },
    {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "coredns", namespace: "kube-system", labels },
      spec: {
        replicas: 1,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels },
          spec: {
            serviceAccountName: "coredns",
            priorityClassName: "system-cluster-critical",
            dnsPolicy: "Default",
            tolerations: [{ operator: "Exists" }],
            containers: [
              {
                name: "coredns",
                image,
                imagePullPolicy: "Never",
                args: ["-conf", "/etc/coredns/Corefile"],
                ports: [
                  { name: "dns", containerPort: COREDNS_PORT, protocol: "UDP" },
                  { name: "dns-tcp", containerPort: COREDNS_PORT, protocol: "TCP" },
                ],
                readinessProbe: { httpGet: { path: "/ready", port: 8181 }, periodSeconds: 2 },
                livenessProbe: { httpGet: { path: "/health", port: 8080 }, periodSeconds: 10 },
                securityContext: {
                  allowPrivilegeEscalation: false,
                  readOnlyRootFilesystem: true,
                  capabilities: { drop: ["ALL"] },
                },
                resources: { requests: { cpu: "10m", memory: "32Mi" }, limits: { memory: "128Mi" } },
                volumeMounts: [{ name: "config", mountPath: "/etc/coredns", readOnly: true }],
              },
            ],
            volumes: [{ name: "config", configMap: { name: "coredns" } }],
          },
        },
      },
    },
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "kube-dns", namespace: "kube-system", labels },
      spec: {
        selector: labels,
        clusterIP,
        ports: [
          { name: "dns", port: 53, targetPort: COREDNS_PORT, protocol: "UDP" },
          { name: "dns-tcp", port: 53, targetPort: COREDNS_PORT, protocol: "TCP" },
        ],
      },
    },
  ];
  return objects;
}
