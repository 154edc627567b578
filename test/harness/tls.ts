import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

export interface TestPki {
  dir: string;
  caFile: string;
  certFile: string;
  keyFile: string;
}

/**
 * The tests' one TLS helper: a throw-away CA and a serving certificate signed by it for the given
 * IPs and DNS names (openssl CLI). Clients trust `caFile`, the server serves `certFile`/`keyFile`;
 * remove `dir` when done.
 */
export async function makeServingCert(ips: string[], dnsNames: string[] = ["localhost"]): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), "kc-pki-"));
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileP("openssl", args);
  await ssl(
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=keycutter test CA",
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.crt"),
  );
  await ssl(
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-subj",
    "/CN=keycutter-server",
    "-keyout",
    f("tls.key"),
    "-out",
    f("tls.csr"),
  );
  const san = [...ips.map((ip) => `IP:${ip}`), ...dnsNames.map((d) => `DNS:${d}`)].join(",");
  writeFileSync(f("ext.cnf"), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
  await ssl(
    "x509",
    "-req",
    "-in",
    f("tls.csr"),
    "-CA",
    f("ca.crt"),
    "-CAkey",
    f("ca.key"),
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    f("ext.cnf"),
    "-out",
    f("tls.crt"),
  );
  return { dir, caFile: f("ca.crt"), certFile: f("tls.crt"), keyFile: f("tls.key") };
}
