// Listening and closing, once: resolve when the port is bound (reject if it cannot be), and a
// close that also drops idle keep-alive connections, which server.close() alone would wait for.
import type { Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";

export interface Listening<S extends HttpServer = HttpServer> {
  server: S;
  address: AddressInfo;
  port: number;
  close(): Promise<void>;
}

/** `reusePort`: another process may bind the same port (two agents answer a node's probes during
 *  a hand-over). */
export function listen<S extends HttpServer>(
  server: S,
  host: string,
  port: number,
  options: { reusePort?: boolean } = {},
): Promise<Listening<S>> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ port, host, reusePort: options.reusePort === true }, () => {
      server.off("error", reject);
      const address = server.address() as AddressInfo;
      resolve({ server, address, port: address.port, close: () => closeServer(server) });
    });
  });
}

/** Stops accepting, closes every connection, resolves once the server has closed. */
export function closeServer(server: HttpServer): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
