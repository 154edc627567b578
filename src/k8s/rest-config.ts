// Where the apiserver is and how to authenticate to it, read without the official client.
// The node agent runs on every node and has a memory budget of 100 MiB: loading
// @kubernetes/client-node's KubeConfig pulls in every generated API and model (~85 MiB of RSS on
// its own). This covers what a DaemonSet needs: the in-cluster service account, and kubeconfig
// files with a token, a token file or a client certificate (tests, development). Exec plugins,
// auth providers and basic auth are refused with a clear error rather than half supported.
import { readFileSync } from "node:fs";
import { isIPv6 } from "node:net";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import type { ApiConnection, ApiConnectionSource } from "./api-client.ts";

const SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
// Bound service account tokens rotate (the kubelet rewrites the file at 80 % of their life);
// client-go re-reads the file every minute, and so do we.
const TOKEN_REREAD_MS = 60_000;

export class KubeconfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KubeconfigError";
  }
}

interface TokenSource {
  token?: string;
  tokenFile?: string;
}

export class RestConfig implements ApiConnectionSource {
  readonly server: string;
  private readonly tls: ApiConnection["tls"];
  private readonly auth: TokenSource;
  private fileToken: { value: string; readAt: number } | undefined;

  constructor(server: string, tls: ApiConnection["tls"], auth: TokenSource) {
    const url = new URL(server);
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new KubeconfigError(`apiserver URL must be http(s): ${server}`);
    }
    this.server = server;
    this.tls = tls;
    this.auth = auth;
  }

  connection(now = Date.now()): ApiConnection {
    const headers: Record<string, string> = {};
    const token = this.token(now);
    if (token) headers.authorization = `Bearer ${token}`;
    return { headers, tls: this.tls };
  }

  private token(now: number): string | undefined {
    if (this.auth.token) return this.auth.token;
    const file = this.auth.tokenFile;
    if (!file) return undefined;
    if (!this.fileToken || now - this.fileToken.readAt > TOKEN_REREAD_MS) {
      try {
        this.fileToken = { value: readFileSync(file, "utf8").trim(), readAt: now };
      } catch (err) {
        // keep the last good token: a rotation in progress is not a reason to stop
        if (!this.fileToken) throw new KubeconfigError(`cannot read token file ${file}: ${message(err)}`);
      }
    }
    return this.fileToken?.value;
  }
}

/** The pod's own service account, as a DaemonSet sees it. */
export function inClusterConfig(env: NodeJS.ProcessEnv = process.env, saDir: string = SA_DIR): RestConfig {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new KubeconfigError(
      "not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig",
    );
  }
  const h = isIPv6(host) ? `[${host}]` : host;
  return new RestConfig(
    `https://${h}:${port}`,
    { ca: readRequired(`${saDir}/ca.crt`, "service account CA") },
    { tokenFile: `${saDir}/token` },
  );
}

/** The current context of a kubeconfig file. */
export function kubeconfigFromFile(file: string): RestConfig {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, "utf8"));
  } catch (err) {
    throw new KubeconfigError(`cannot read kubeconfig ${file}: ${message(err)}`);
  }
  return kubeconfigFromObject(doc, dirname(file), file);
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

export function kubeconfigFromObject(doc: unknown, baseDir: string, label = "kubeconfig"): RestConfig {
  const d = doc as Any;
  if (!d || typeof d !== "object") throw new KubeconfigError(`${label}: not a kubeconfig document`);
  const ctxName = d["current-context"];
  if (typeof ctxName !== "string" || !ctxName) throw new KubeconfigError(`${label}: no current-context`);
  const ctx = named(d.contexts, ctxName, "context", label);
  const cluster = named(d.clusters, String(ctx?.cluster ?? ""), "cluster", label);
  const user = ctx?.user ? (named(d.users, String(ctx.user), "user", label) ?? {}) : {};
  if (typeof cluster?.server !== "string" || !cluster.server) {
    throw new KubeconfigError(`${label}: cluster ${ctx.cluster} has no server`);
  }
  for (const unsupported of ["exec", "auth-provider", "username", "password"]) {
    if (user[unsupported] !== undefined) {
      throw new KubeconfigError(
        `${label}: user "${ctx.user}" uses ${unsupported}, which the agent does not support; use a token, token file or client certificate`,
      );
    }
  }
  const path = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));
  const pem = (data: unknown, file: unknown, what: string): string | undefined => {
    if (typeof data === "string" && data) return Buffer.from(data, "base64").toString("utf8");
    if (typeof file === "string" && file) return readRequired(path(file), what);
    return undefined;
  };
  const tls: ApiConnection["tls"] = {};
  const ca = pem(cluster["certificate-authority-data"], cluster["certificate-authority"], "CA");
  if (ca) tls.ca = ca;
  const cert = pem(user["client-certificate-data"], user["client-certificate"], "client certificate");
  const key = pem(user["client-key-data"], user["client-key"], "client key");
  if (cert || key) {
    if (!cert || !key) throw new KubeconfigError(`${label}: client certificate and key go together`);
    tls.cert = cert;
    tls.key = key;
  }
  if (typeof cluster["tls-server-name"] === "string" && cluster["tls-server-name"]) {
    tls.servername = cluster["tls-server-name"];
  }
  if (cluster["insecure-skip-tls-verify"] === true) tls.rejectUnauthorized = false;
  const auth: TokenSource = {};
  if (typeof user.token === "string" && user.token) auth.token = user.token;
  else if (typeof user.tokenFile === "string" && user.tokenFile) auth.tokenFile = path(user.tokenFile);
  return new RestConfig(cluster.server, tls, auth);
}

function named(list: unknown, name: string, what: string, label: string): Any {
  const entry = Array.isArray(list) ? list.find((e: Any) => e?.name === name) : undefined;
  if (!entry) throw new KubeconfigError(`${label}: ${what} "${name}" not found`);
  return entry[what] ?? {};
}

function readRequired(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new KubeconfigError(`cannot read ${what} ${file}: ${message(err)}`);
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
