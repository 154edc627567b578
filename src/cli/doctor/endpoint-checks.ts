// The agent's and the server's own word on their state (/readyz), and the server's API as an
// agent reaches it: TLS verified against the CA the agents use, and the certificate's end date.
import { readFileSync } from "node:fs";
import { connect, type PeerCertificate } from "node:tls";
import { isIP } from "node:net";
import { result, type CheckResult } from "./report.ts";
import { certificatesOf, expiryCheck, type ExpiryPolicy } from "./tls-expiry.ts";

const TIMEOUT_MS = 3000;

function reason(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string; message?: string }; message?: string };
  return e.cause?.code ?? e.code ?? e.cause?.message ?? e.message ?? String(err);
}

async function readyz(url: string): Promise<{ status: number; body: string } | { error: string }> {
  try {
    const res = await fetch(new URL("/readyz", url), { signal: AbortSignal.timeout(TIMEOUT_MS) });
    return { status: res.status, body: (await res.text()).slice(0, 2000) };
  } catch (err) {
    return { error: reason(err) };
  }
}

export async function checkAgentReady(opsUrl: string): Promise<CheckResult> {
  const r = await readyz(opsUrl);
  if ("error" in r)
    return result(
      "agent",
      "fail",
      `not reachable at ${opsUrl} (${r.error})`,
      "is the agent pod running on this node? kubectl -n <namespace> get pods -o wide; its log says why it stopped",
    );
  const [first = "", ...rest] = r.body.trim().split("\n");
  const extra = rest.length ? `; ${rest.join("; ")}` : "";
  if (r.status === 200)
    return result("agent", "ok", `ready (${opsUrl}/readyz${extra ? `: ${rest.join("; ")}` : ""})`);
  const hint = /credential service/.test(first)
    ? "the agent cannot reach the server: check the server below, the NetworkPolicy's nodeCidrs and the CA"
    : /pod watch/.test(first)
      ? "the agent's watch of the apiserver is not synced: check the apiserver and the agent's RBAC"
      : "see the agent's log";
  return result("agent", "fail", `not ready: ${first || `HTTP ${r.status}`}${extra}`, hint);
}

export async function checkServerReady(opsUrl: string): Promise<CheckResult> {
  const r = await readyz(opsUrl);
  if ("error" in r)
    return result(
      "server",
      "fail",
      `unreachable at ${opsUrl} (${r.error})`,
      "are the server pods running? kubectl -n <namespace> get pods",
    );
  if (r.status === 200) return result("server", "ok", `ready (${opsUrl}/readyz)`);
  return result(
    "server",
    "fail",
    `not ready (${opsUrl}/readyz: HTTP ${r.status} ${r.body.trim().split("\n")[0] ?? ""})`,
    "a replica is ready once its policy informers have synced: check its log and its RBAC",
  );
}

export interface ServerApiOptions {
  url: string;
  /** The CA bundle the agents verify the server with (--server-ca-file); undefined: the system's. */
  caFile?: string;
  expiry: ExpiryPolicy;
}

/** Connects as an agent would: TLS trust, the certificate's end, and the CA's. */
export async function checkServerApi(o: ServerApiOptions): Promise<CheckResult[]> {
  const url = new URL(o.url);
  if (url.protocol !== "https:")
    return [
      result(
        "server API",
        "warn",
        `${o.url} is not HTTPS: nothing to verify`,
        "plain HTTP is for development only",
      ),
    ];
  let ca: string | undefined;
  const out: CheckResult[] = [];
  if (o.caFile) {
    try {
      ca = readFileSync(o.caFile, "utf8");
    } catch (err) {
      return [result("server API", "fail", `cannot read the CA file ${o.caFile} (${reason(err)})`)];
    }
    const cas = certificatesOf(ca);
    if (cas.length === 0) return [result("server API", "fail", `${o.caFile} holds no certificate`)];
    for (const c of cas) out.push(expiryCheck("server CA", `CA (${o.caFile})`, c, o.expiry));
  }
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port || 443);
  const peer = await new Promise<
    { authorized: boolean; error?: string; cert?: PeerCertificate } | { failed: string }
  >((resolve) => {
    const socket = connect({
      host,
      port,
      ...(isIP(host) ? {} : { servername: host }),
      ...(ca ? { ca } : {}),
      rejectUnauthorized: false,
      timeout: TIMEOUT_MS,
    });
    socket.once("secureConnect", () => {
      const cert = socket.getPeerCertificate(false);
      resolve({
        authorized: socket.authorized,
        ...(socket.authorizationError ? { error: String(socket.authorizationError) } : {}),
        ...(cert && cert.raw ? { cert } : {}),
      });
      socket.destroy();
    });
    socket.once("timeout", () => {
      resolve({ failed: "timed out" });
      socket.destroy();
    });
    socket.once("error", (err) => resolve({ failed: reason(err) }));
  });
  if ("failed" in peer)
    return [
      result(
        "server API",
        "fail",
        `unreachable at ${o.url} (${peer.failed})`,
        "agents cannot get credentials: check the Service, the server pods and the NetworkPolicy",
      ),
      ...out,
    ];
  out.unshift(
    peer.authorized
      ? result(
          "server API",
          "ok",
          `${o.url} answers TLS, certificate trusted${o.caFile ? ` by ${o.caFile}` : ""}`,
        )
      : result(
          "server API",
          "fail",
          `${o.url}: the certificate is not trusted (${peer.error ?? "unknown reason"}): agents refuse it`,
          "the agents' CA (server.tls.caSecretName / ca.crt) must have issued the server's certificate, for the Service's DNS name",
        ),
  );
  if (peer.cert) {
    const { X509Certificate } = await import("node:crypto");
    out.splice(
      1,
      0,
      expiryCheck("server certificate", "server certificate", new X509Certificate(peer.cert.raw), o.expiry),
    );
  }
  return out;
}
