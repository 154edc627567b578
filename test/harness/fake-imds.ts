// A fake "real" EC2 metadata service inside a node namespace: 169.254.169.254 and 169.254.170.23
// (and their IPv6 counterparts fd00:ec2::254 and fd00:ec2::23) on the namespace's loopback,
// answering with the NODE's credentials. Pods must never reach it (fail-closed hook);
// tests use it to prove that. (Added by the agent helper; separate from the lead's files.)
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { PodNetwork } from "./netns.ts";
import type { ManagedProcess } from "./process.ts";
import { NODE } from "./paths.ts";

const execFileP = promisify(execFile);

export const NODE_ACCESS_KEY = "ASIANODEROLEKEY00000";

/** The stand-in IMDS program (node -e; argv[1]: the IPv4 address to listen on besides 169.254.170.23). */
export const FAKE_IMDS_SCRIPT = `
const http = require("node:http");
const creds = JSON.stringify({ Code: "Success", LastUpdated: new Date().toISOString().replace(/\\.\\d{3}Z$/, "Z"),
  Type: "AWS-HMAC", AccessKeyId: "${NODE_ACCESS_KEY}", SecretAccessKey: "node-secret", Token: "node-session",
  Expiration: new Date(Date.now() + 6 * 3600e3).toISOString().replace(/\\.\\d{3}Z$/, "Z") });
const answer = (req, res) => {
  const p = req.url;
  let body = "NODE-IMDS " + p;
  if (p === "/latest/api/token") { res.setHeader("x-aws-ec2-metadata-token-ttl-seconds", req.headers["x-aws-ec2-metadata-token-ttl-seconds"] || "21600"); body = "node-imds-token"; }
  else if (p === "/latest/meta-data/iam/security-credentials/") body = "node-role";
  else if (p === "/latest/meta-data/iam/security-credentials/node-role") body = creds;
  else if (p === "/latest/meta-data/instance-id") body = "i-nodeinstance";
  else if (p === "/v1/credentials") body = creds;
  res.end(body);
};
http.createServer(answer).listen(80, "169.254.170.23");
// every IPv6 address of the node: fd00:ec2::254, fd00:ec2::23 and the node's own
http.createServer(answer).listen({ port: 80, host: "::", ipv6Only: true });
http.createServer(answer).listen(80, process.argv[1], () => console.log("fake imds listening"));
`;

export interface FakeImds {
  process: ManagedProcess;
  stop(): Promise<void>;
}

/** Starts the fake IMDS (and a fake 169.254.170.23) in `netns`. */
export async function startFakeImds(net: Pick<PodNetwork, "spawn">, netns: string): Promise<FakeImds> {
  const ip = (...args: string[]) => execFileP("ip", ["-n", netns, ...args]);
  // (no dummy interface module here: the loopback of the node namespace carries the addresses)
  await ip("addr", "add", "169.254.169.254/32", "dev", "lo");
  await ip("addr", "add", "169.254.170.23/32", "dev", "lo");
  await ip("-6", "addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad");
  await ip("-6", "addr", "add", "fd00:ec2::23/128", "dev", "lo", "nodad");
  const p = net.spawn(netns, NODE, ["-e", FAKE_IMDS_SCRIPT, "169.254.169.254"], { name: "fake-imds" });
  await p.waitForLine(/fake imds listening/, 10_000);
  return {
    process: p,
    async stop() {
      await p.stop();
      await ip("addr", "del", "169.254.169.254/32", "dev", "lo").catch(() => undefined);
      await ip("addr", "del", "169.254.170.23/32", "dev", "lo").catch(() => undefined);
      await ip("-6", "addr", "del", "fd00:ec2::254/128", "dev", "lo").catch(() => undefined);
      await ip("-6", "addr", "del", "fd00:ec2::23/128", "dev", "lo").catch(() => undefined);
    },
  };
}
