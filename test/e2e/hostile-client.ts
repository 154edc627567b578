// Sends a battery of malformed, oversized and hostile HTTP requests to one endpoint and prints a
// JSON report: how many were sent and which got a 5xx. Run inside a network namespace:
//   node hostile-client.ts <host> <port> <plain|tls>
import { connect as tcpConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";

const [host = "127.0.0.1", portArg = "80", mode = "plain"] = process.argv.slice(2);
const port = Number(portArg);

function send(raw: string | Buffer, opts: { slowMs?: number } = {}): Promise<number | "closed"> {
  return new Promise((resolve) => {
    const sock: Socket =
      mode === "tls"
        ? tlsConnect({ host, port, rejectUnauthorized: false, servername: "localhost" })
        : tcpConnect(port, host);
    let data = "";
    const done = (v: number | "closed") => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done("closed"), 5000);
    sock.on("data", (d) => {
      data += d.toString("latin1");
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(data);
      if (m) done(Number(m[1]));
    });
    sock.on("error", () => done("closed"));
    sock.on("close", () => done("closed"));
    sock.once(mode === "tls" ? "secureConnect" : "connect", () => {
      if (opts.slowMs) {
        sock.write(raw.slice(0, 10));
        setTimeout(() => sock.write(raw.slice(10)), opts.slowMs);
      } else sock.write(raw);
    });
  });
}

const paths = [
  "/latest/meta-data/iam/security-credentials/../../../etc/passwd",
  "/latest/meta-data/iam/security-credentials/%2e%2e/%2e%2e/",
  "/latest/meta-data/iam/security-credentials/%00",
  "/latest/meta-data/iam/security-credentials/" + "A".repeat(5000),
  "//latest//meta-data//iam//security-credentials//",
  "/latest/meta-data/iam/security-credentials-extended/..%2f..%2f",
  "/%ff%fe/%c0%af",
  "/v1/credentials?x=" + "%".repeat(100),
  "/v1/credentials/../metrics",
  "/latest/api/token",
  "/metrics?" + "a=b&".repeat(2000),
  "/healthz/../../v1/credentials",
  "*",
  "http://169.254.169.254/latest/meta-data/",
];
const reqs: Array<{ raw: string | Buffer; slowMs?: number }> = [];
for (const p of paths) {
  for (const method of ["GET", "PUT", "POST", "DELETE", "TRACE", "OPTIONS", "PATCH"]) {
    reqs.push({ raw: `${method} ${p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n` });
  }
}
const h = (extra: string, method = "PUT", path = "/latest/api/token", body = "") =>
  `${method} ${path} HTTP/1.1\r\nHost: x\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
reqs.push(
  { raw: h("X-aws-ec2-metadata-token-ttl-seconds: 0\r\n") },
  { raw: h("X-aws-ec2-metadata-token-ttl-seconds: 99999999999999999999\r\n") },
  { raw: h("X-aws-ec2-metadata-token-ttl-seconds: -1\r\n") },
  { raw: h("X-aws-ec2-metadata-token-ttl-seconds: 1e3\r\n") },
  { raw: h("X-aws-ec2-metadata-token-ttl-seconds: 300\r\nX-Forwarded-For: 10.0.0.1\r\n") },
  { raw: h("X-aws-ec2-metadata-token: " + "x".repeat(10000) + "\r\n", "GET", "/latest/meta-data/") },
  {
    raw: h(
      "X-aws-ec2-metadata-token: \u0000\u0001\r\n",
      "GET",
      "/latest/meta-data/iam/security-credentials/",
    ),
  },
  { raw: h("X-Big: " + "b".repeat(100_000) + "\r\n", "GET", "/") },
  {
    raw: h(
      "Authorization: Bearer not.a.jwt\r\nContent-Type: application/json\r\n",
      "POST",
      "/v1/credentials",
      "{}",
    ),
  },
  { raw: h("Authorization: " + "A".repeat(20000) + "\r\n", "GET", "/v1/credentials") },
  { raw: h("Content-Type: application/json\r\n", "POST", "/v1/credentials", "{".repeat(5000)) },
  { raw: h("Content-Type: text/plain\r\n", "POST", "/v1/credentials", "hello") },
  {
    raw: h(
      "Content-Type: application/json\r\nAuthorization: Bearer x\r\n",
      "POST",
      "/v1/credentials",
      JSON.stringify({ pod: { namespace: "../x", name: "a\u0000", uid: "'; DROP" }, extra: 1 }),
    ),
  },
  { raw: h("Content-Type: application/json\r\n", "POST", "/v1/credentials", "x".repeat(2_000_000)) },
  {
    raw:
      `POST /v1/credentials HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n` +
      "a".repeat(1000),
  },
  { raw: `GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n` },
  { raw: `GET /\r\n\r\n` },
  { raw: `GARBAGE\r\n\r\n` },
  { raw: Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x00, 0x00, 0x00]) },
  { raw: `GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n`, slowMs: 1500 },
  { raw: `GET /latest/meta-data/ HTTP/2.0\r\nHost: x\r\n\r\n` },
  { raw: `GET /latest/meta-data/ HTTP/1.1\r\n` + "X: y\r\n".repeat(2000) + "\r\n" },
);

const server5xx: string[] = [];
let sent = 0;
for (let i = 0; i < reqs.length; i += 8) {
  const batch = reqs.slice(i, i + 8);
  const results = await Promise.all(batch.map((r) => send(r.raw, r)));
  results.forEach((status, j) => {
    sent++;
    if (typeof status === "number" && status >= 500) {
      server5xx.push(`${status} ← ${String(batch[j]!.raw).slice(0, 80).replace(/\r\n/g, "⏎")}`);
    }
  });
}
console.log(JSON.stringify({ target: `${host}:${port}`, sent, server5xx }));
