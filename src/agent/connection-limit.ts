// Caps the connections one source address may hold open on a pod-facing server, on top of the
// server's own total (server.maxConnections): a pod that opens connections without end runs out
// of its own share and leaves the rest for the other pods of the node.
import type { Server } from "node:http";
import type { Socket } from "node:net";

/**
 * Puts the cap in front of `server`'s connection handling (after the IMDS fast path, if any,
 * whose own listener it wraps). A connection over the cap is reset at once, before any byte of
 * it is read. `onRefused` counts those.
 */
export function limitConnectionsPerSource(server: Server, maxPerSource: number, onRefused: () => void): void {
  const own = server.listeners("connection");
  if (own.length !== 1) throw new Error("the per-source connection cap needs one connection listener");
  const handle = own[0] as (socket: Socket) => void;
  // one entry per source with an open connection: bounded by server.maxConnections
  const open = new Map<string, number>();
  server.removeAllListeners("connection");
  server.on("connection", (socket: Socket) => {
    const address = socket.remoteAddress ?? "";
    const source = address.startsWith("::ffff:") ? address.slice(7) : address;
    const held = open.get(source) ?? 0;
    if (held >= maxPerSource) {
      onRefused();
      socket.resetAndDestroy();
      return;
    }
    open.set(source, held + 1);
    socket.once("close", () => {
      const left = (open.get(source) ?? 1) - 1;
      if (left > 0) open.set(source, left);
      else open.delete(source);
    });
    handle.call(server, socket);
  });
}
