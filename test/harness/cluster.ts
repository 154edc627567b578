import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { binary } from "./paths.ts";
import { FatalError, ManagedProcess, freePort, waitFor } from "./process.ts";

export interface Cluster {
  /** https://127.0.0.1:<port> */
  server: string;
  port: number;
  adminToken: string;
  /** The apiserver's self-signed serving certificate (with its CA), to trust in clients. */
  caFile: string;
  /** Admin kubeconfig for 127.0.0.1. */
  kubeconfigPath: string;
  kc: KubeConfig;
  /** etcd's client URL (its HTTP gateway serves /v3/kv/…, e.g. for compaction in fault tests). */
  etcdUrl: string;
  /** Issuer the apiserver puts in service-account tokens. */
  issuer: string;
  /** A kubeconfig reaching the apiserver at host (e.g. from a node namespace), verified as "localhost". */
  kubeconfigFor(host: string, token?: string): string;
  apiserver: ManagedProcess;
  etcd: ManagedProcess;
  /** Restarts the apiserver on the same port and data (etcd keeps running). */
  restartApiserver(): Promise<void>;
  stop(): Promise<void>;
}

function requireBinary(name: "etcd" | "kube-apiserver"): string {
  const bin = binary(name);
  if (!existsSync(bin)) {
    throw new Error(`${bin} is missing: run scripts/setup.sh (it builds etcd and kube-apiserver)`);
  }
  return bin;
}

export function kubeconfigYaml(
  server: string,
  caFile: string,
  token: string,
  tlsServerName?: string,
): string {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: test",
    "  cluster:",
    `    server: ${server}`,
    `    certificate-authority: ${caFile}`,
    ...(tlsServerName ? [`    tls-server-name: ${tlsServerName}`] : []),
    "users:",
    "- name: user",
    "  user:",
    `    token: ${token}`,
    "contexts:",
    "- name: test",
    "  context: {cluster: test, user: user}",
    "current-context: test",
    "",
  ].join("\n");
}

export interface ClusterOptions {
  /**
   * Address the apiserver advertises (the `kubernetes` Service's endpoint). Pods on a real node
   * reach the apiserver through it, so it must be routable from their namespaces, not loopback.
   */
  advertiseAddress?: string;
  /** More lines for the static token file (`token,user,uid,"group1,group2"`), e.g. a node's identity. */
  extraTokenLines?: string[];
  /** More apiserver flags (`--name=value`); one named like a default flag replaces it. */
  extraApiserverArgs?: string[];
}

/** Starts a real etcd and kube-apiserver (RBAC on) on free ports. */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const etcdBin = requireBinary("etcd");
  const apiBin = requireBinary("kube-apiserver");
  const dir = mkdtempSync(join(tmpdir(), "kc-cluster-"));
  const [etcdPort, etcdPeer, port] = [await freePort(), await freePort(), await freePort("0.0.0.0")];

  const etcd = new ManagedProcess("etcd", etcdBin, [
    `--data-dir=${join(dir, "etcd")}`,
    `--listen-client-urls=http://127.0.0.1:${etcdPort}`,
    `--advertise-client-urls=http://127.0.0.1:${etcdPort}`,
    `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
    `--initial-cluster=default=http://127.0.0.1:${etcdPeer}`,
    "--unsafe-no-fsync",
    "--log-level=warn",
  ]);

  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  writeFileSync(join(dir, "sa.pub"), publicKey.export({ type: "spki", format: "pem" }));
  writeFileSync(join(dir, "sa.key"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
  const adminToken = randomBytes(24).toString("hex");
  const tokenLines = [`${adminToken},admin,admin-uid,"system:masters"`, ...(opts.extraTokenLines ?? [])];
  writeFileSync(join(dir, "tokens.csv"), tokenLines.join("\n") + "\n", { mode: 0o600 });
  const issuer = "https://kubernetes.default.svc.cluster.local";

  // The self-signed serving certificate names the advertised address (and localhost), not
  // 127.0.0.1 unless that is the one advertised: clients of 127.0.0.1 then verify it as localhost.
  const advertiseAddress = opts.advertiseAddress ?? "127.0.0.1";
  const serverName = advertiseAddress === "127.0.0.1" ? undefined : "localhost";
  const apiArgs = [
    `--etcd-servers=http://127.0.0.1:${etcdPort}`,
    "--bind-address=0.0.0.0",
    `--advertise-address=${advertiseAddress}`,
    `--secure-port=${port}`,
    `--cert-dir=${join(dir, "certs")}`,
    "--service-cluster-ip-range=10.0.0.0/24",
    "--authorization-mode=RBAC",
    `--token-auth-file=${join(dir, "tokens.csv")}`,
    `--service-account-issuer=${issuer}`,
    `--service-account-key-file=${join(dir, "sa.pub")}`,
    `--service-account-signing-key-file=${join(dir, "sa.key")}`,
    "--allow-privileged=true",
    "--profiling=false",
    "--enable-priority-and-fairness=false",
    "--v=0",
  ];
  // an extra flag replaces the default of the same name (list flags would otherwise accumulate)
  const extraArgs = opts.extraApiserverArgs ?? [];
  const overridden = new Set(extraArgs.map((arg) => arg.split("=")[0]));
  apiArgs.splice(
    0,
    apiArgs.length,
    ...apiArgs.filter((arg) => !overridden.has(arg.split("=")[0])),
    ...extraArgs,
  );
  let apiserver = new ManagedProcess("kube-apiserver", apiBin, apiArgs);
  const caFile = join(dir, "certs", "apiserver.crt");
  const server = `https://127.0.0.1:${port}`;
  const cleanup = async (): Promise<void> => {
    await apiserver.stop();
    await etcd.stop();
    rmSync(dir, { recursive: true, force: true });
  };

  const waitReady = async (): Promise<void> => {
    await waitFor(
      "kube-apiserver /readyz",
      async () => {
        if (!apiserver.running) throw new FatalError(`kube-apiserver exited:\n${apiserver.tail()}`);
        if (!existsSync(caFile)) return false;
        const res = await getStatus(`${server}/readyz`, adminToken, readFileSync(caFile), serverName);
        return res === 200;
      },
      { timeoutMs: 90_000, intervalMs: 200, onTimeout: () => apiserver.tail() + "\n" + etcd.tail() },
    );
  };
  try {
    await waitReady();
  } catch (err) {
    await cleanup();
    throw err;
  }

  const kubeconfigPath = join(dir, "admin.kubeconfig");
  writeFileSync(kubeconfigPath, kubeconfigYaml(server, caFile, adminToken, serverName), { mode: 0o600 });
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  let n = 0;
  return {
    server,
    port,
    adminToken,
    caFile,
    kubeconfigPath,
    kc,
    issuer,
    etcdUrl: `http://127.0.0.1:${etcdPort}`,
    get apiserver() {
      return apiserver;
    },
    etcd,
    kubeconfigFor(host: string, token = adminToken): string {
      const p = join(dir, `kubeconfig-${n++}`);
      writeFileSync(p, kubeconfigYaml(`https://${host}:${port}`, caFile, token, "localhost"), {
        mode: 0o600,
      });
      return p;
    },
    async restartApiserver(): Promise<void> {
      await apiserver.stop();
      apiserver = new ManagedProcess("kube-apiserver", apiBin, apiArgs);
      await waitReady();
    },
    stop: cleanup,
  };
}

/** GET verified against the cluster CA; returns the status code. */
async function getStatus(url: string, token: string, ca: Buffer, servername?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      url,
      { ca, servername, headers: { authorization: `Bearer ${token}` }, timeout: 2000 },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.end();
  });
}
