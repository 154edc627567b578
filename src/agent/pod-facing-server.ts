// The pod-facing node:http servers (IMDS and container credentials): limits on what a pod may
// send, and a plain answer to requests node:http cannot parse.
import { createServer, type Server, type IncomingMessage, type ServerResponse } from "node:http";
import type { Logger } from "../common/logger.ts";

export function podFacingServer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  log: Logger,
): Server {
  const s = createServer(
    {
      maxHeaderSize: 8192,
      requestTimeout: 10_000,
      headersTimeout: 5_000,
      keepAliveTimeout: 5_000,
      noDelay: true,
      // `Host` is not required: SDKs send it, but nothing here depends on it.
      requireHostHeader: false,
    },
    (req, res) => {
      try {
        handler(req, res);
      } catch (err) {
        log.error({ err: (err as Error).message }, "handler error");
        if (!res.headersSent) {
          res.writeHead(500, { "content-type": "text/plain" });
          res.end("Internal Server Error\n");
        } else res.destroy();
      }
    },
  );
  s.maxHeadersCount = 64;
  s.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    if (socket.writable && !socket.destroyed) {
      const status =
        err.code === "HPE_HEADER_OVERFLOW" ? "431 Request Header Fields Too Large" : "400 Bad Request";
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    } else socket.destroy();
  });
  return s;
}
