// A local HTTP server that plays one remote party (the apiserver, STS, the credential service)
// for a unit test of the module that talks to it: the module's real client and wire format,
// the answers the test decides. Loopback only; close() ends kept-alive connections too.
import { createServer, type RequestListener } from "node:http";
import type { AddressInfo } from "node:net";
import { KubeConfig } from "@kubernetes/client-node";

export interface HttpStandIn {
  /** http://127.0.0.1:<port> */
  url: string;
  /** A kubeconfig whose current cluster is this stand-in (plain HTTP, no credentials). */
  kubeConfig(): KubeConfig;
  close(): Promise<void>;
}

export async function startHttpStandIn(handler: RequestListener): Promise<HttpStandIn> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    kubeConfig() {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: "stand-in", server: url, skipTLSVerify: true }],
        users: [{ name: "nobody" }],
        contexts: [{ name: "stand-in", cluster: "stand-in", user: "nobody" }],
        currentContext: "stand-in",
      });
      return kc;
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
