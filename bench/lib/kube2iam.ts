// The peer: kube2iam (github.com/jtblin/kube2iam), built from source in a throw-away directory
// under .cache/bench/kube2iam (never committed; see docs/PERFORMANCE.md for how). It watches the
// same apiserver, maps the caller's source IP to a pod by its iam.amazonaws.com/role annotation,
// assumes the role in moto (STS) and proxies the IMDSv2 token PUT to the "real" metadata service,
// here the bare baseline server (as on EC2, where the token comes from the real IMDS).
import { existsSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { ManagedProcess, freePort, startMoto, CACHE } from "../../test/harness/index.ts";
import type { BenchEnv } from "./env.ts";
import { pool, sdkFetch, sleep } from "./env.ts";
import { ROLE_NAME } from "./bodies.ts";

export function kube2iamBinary(): string | undefined {
  const p = join(CACHE, "bench", "kube2iam", "kube2iam");
  return existsSync(p) ? p : undefined;
}

export async function startKube2iam(
  env: BenchEnv,
  o: { nodeName: string; metadataPort: number; pods: string[]; logLevel?: string },
): Promise<{ proc: ManagedProcess; port: number; notes: string[]; stop(): Promise<void> }> {
  const bin = kube2iamBinary();
  if (!bin) throw new Error("kube2iam binary missing");
  const moto = await startMoto();
  env.defer(() => moto.stop());
  await moto.createRole(ROLE_NAME, {
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Action: "s3:ListAllMyBuckets", Resource: "*" }],
  });
  // kube2iam asks EC2 DescribeRegions to decide whether to pin STS to its regional AWS endpoint;
  // an EC2 stand-in that lists no region makes it use the SDK's resolution (AWS_ENDPOINT_URL_STS)
  const ec2 = createServer((_req, res) => {
    _req.resume();
    res.writeHead(200, { "content-type": "text/xml" });
    res.end(
      '<?xml version="1.0" encoding="UTF-8"?>\n<DescribeRegionsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>bench</requestId><regionInfo/></DescribeRegionsResponse>',
    );
  });
  await new Promise<void>((r) => ec2.listen(0, "127.0.0.1", r));
  env.defer(() => new Promise<void>((r) => ec2.close(() => r())));
  const port = await freePort();
  const args = [
    `--kubeconfig=${env.cluster.kubeconfigPath}`,
    `--base-role-arn=arn:aws:iam::${moto.accountId}:role/`,
    "--iptables=false",
    `--app-port=${port}`,
    `--metadata-addr=127.0.0.1:${o.metadataPort}`,
    `--node=${o.nodeName}`,
    `--log-level=${o.logLevel ?? "info"}`,
  ];
  const proc = new ManagedProcess("kube2iam", bin, args, {
    env: {
      PATH: process.env.PATH,
      AWS_ACCESS_KEY_ID: "testing",
      AWS_SECRET_ACCESS_KEY: "testing",
      AWS_REGION: "us-east-1",
      AWS_ENDPOINT_URL_STS: moto.endpoint,
      AWS_ENDPOINT_URL_EC2: `http://127.0.0.1:${(ec2.address() as AddressInfo).port}`,
      AWS_EC2_METADATA_DISABLED: "true",
    },
  });
  const stop = (): Promise<void> => proc.stop();
  try {
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (!proc.running) throw new Error(`kube2iam exited:\n${proc.logs().slice(-2000)}`);
      const r = await pool(o.pods, 16, (ip) => sdkFetch("127.0.0.1", port, ip, 5000));
      const bad = r.filter((x) => !x.ok);
      if (bad.length === 0) break;
      if (Date.now() > deadline)
        throw new Error(`kube2iam never served all pods: ${bad[0]!.error}\n${proc.logs().slice(-1500)}`);
      await sleep(500);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    proc,
    port,
    stop,
    notes: [
      `kube2iam: built from github.com/jtblin/kube2iam source (the Go module proxy refuses the module: 403); args ${args.slice(1).join(" ")}; log level ${o.logLevel ?? "info"} (its default, logs every request)`,
    ],
  };
}
