// The baseline: a bare node:http server answering the IMDSv2 credential sequence with fixed
// bodies (no pod lookup, no token check, no metrics). It is the practical limit of Node's HTTP
// stack on this machine. Also used as the "real IMDS" behind kube2iam's token proxy.
// argv: host port [variant]. Variants (bench/variants.ts uses them to rule causes of the agent's
// CPU gap in or out): "agent-options" — the agent's pod-facing server options; "agent-modules" —
// every module the agent loads imported first; "agent-headers" — reads request headers through
// req.headers on every request, as the agent does (Node builds that object lazily).
import { createServer, type ServerOptions } from "node:http";
import { BASELINE_TOKEN, ROLE_NAME, credentialsDoc } from "./bodies.ts";

const host = process.argv[2] ?? "127.0.0.1";
const port = Number(process.argv[3] ?? 0);
const variant = process.argv[4] ?? "plain";
if (!["plain", "agent-options", "agent-modules", "agent-headers"].includes(variant))
  throw new Error(`unknown variant ${variant}`);
if (variant === "agent-modules") await import("../../src/agent/agent.ts");
const options: ServerOptions = { keepAliveTimeout: 5000, noDelay: true };
if (variant === "agent-options") {
  Object.assign(options, {
    maxHeaderSize: 8192,
    requestTimeout: 10_000,
    headersTimeout: 5_000,
    requireHostHeader: false,
  });
}
const token = Buffer.from(BASELINE_TOKEN);
const role = Buffer.from(ROLE_NAME);
const creds = Buffer.from(
  credentialsDoc(0, new Date(Date.now() + 6 * 3600_000).toISOString().replace(/\.\d{3}Z$/, "Z")),
);
const notFound = Buffer.from("Not Found\n");
const LIST = "/latest/meta-data/iam/security-credentials/";

let headerHits = 0;
const server = createServer(options, (req, res) => {
  if (variant === "agent-headers") {
    const h = req.headers;
    if (h["transfer-encoding"] !== undefined || h["x-aws-ec2-metadata-token"] === "") headerHits++;
  }
  const url = req.url ?? "";
  if (url === "/latest/api/token" && req.method === "PUT") {
    res.writeHead(200, {
      "content-type": "text/plain",
      "content-length": token.length,
      "x-aws-ec2-metadata-token-ttl-seconds": String(
        req.headers["x-aws-ec2-metadata-token-ttl-seconds"] ?? "21600",
      ),
    });
    res.end(token);
  } else if (url === LIST) {
    res.writeHead(200, { "content-type": "text/plain", "content-length": role.length });
    res.end(role);
  } else if (url === LIST + ROLE_NAME) {
    res.writeHead(200, { "content-type": "text/plain", "content-length": creds.length });
    res.end(creds);
  } else {
    res.writeHead(404, { "content-type": "text/plain", "content-length": notFound.length });
    res.end(notFound);
  }
});
server.listen(port, host, () => {
  const a = server.address();
  console.log(`baseline listening ${typeof a === "object" && a ? a.port : port}`);
});
process.on("SIGTERM", () => process.exit(headerHits < 0 ? 1 : 0));
