// A credentials service that follows src/api/contract.ts and nothing more: it answers every valid
// request with distinct credentials for the pod (optionally after a delay standing in for STS)
// and counts calls. Used where the benchmark measures the agent alone.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  CREDENTIALS_PATH,
  parseCredentialsRequest,
  type CredentialsResponse,
} from "../../src/api/contract.ts";
import { ROLE_NAME } from "./bodies.ts";

export interface ContractServer {
  url: string;
  port: number;
  calls: number;
  /** Calls per pod UID. */
  perPod: Map<string, number>;
  close(): Promise<void>;
}

export async function startContractServer(
  opts: { host?: string; delayMs?: number; lifetimeMs?: number } = {},
): Promise<ContractServer> {
  const lifetime = opts.lifetimeMs ?? 3600_000;
  let n = 0;
  const state = { calls: 0, perPod: new Map<string, number>() };
  const server: Server = createServer((req, res) => {
    if (req.url === "/healthz") {
      res.end("ok");
      return;
    }
    if (req.method !== "POST" || req.url !== CREDENTIALS_PATH) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "BadRequest", message: "no such path" }));
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let pod;
      try {
        pod = parseCredentialsRequest(JSON.parse(Buffer.concat(chunks).toString("utf8"))).pod;
      } catch (e) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ code: "BadRequest", message: (e as Error).message }));
        return;
      }
      state.calls++;
      state.perPod.set(pod.uid, (state.perPod.get(pod.uid) ?? 0) + 1);
      const i = n++;
      const body: CredentialsResponse = {
        credentials: {
          accessKeyId: `ASIABENCH${String(i).padStart(6, "0")}XXXXX`,
          secretAccessKey: "s".repeat(40),
          sessionToken: "t".repeat(700),
          expiration: new Date(Date.now() + lifetime).toISOString().replace(/\.\d{3}Z$/, "Z"),
          accountId: "123456789012",
        },
        roleArn: `arn:aws:iam::123456789012:role/${ROLE_NAME}`,
        roleName: ROLE_NAME,
        sessionName: `bench-${i}`,
        policy: { namespace: pod.namespace, name: "bench", generation: 1 },
      };
      const send = (): void => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (opts.delayMs) setTimeout(send, opts.delayMs);
      else send();
    });
  });
  await new Promise<void>((r) => server.listen(0, opts.host ?? "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${opts.host === "0.0.0.0" ? "127.0.0.1" : (opts.host ?? "127.0.0.1")}:${port}`,
    port,
    get calls() {
      return state.calls;
    },
    perPod: state.perPod,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
