// The pod-facing node:http servers (IMDS and container credentials): limits on what a pod may
// send and hold, and a plain answer to requests node:http cannot parse.
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from "node:http";
import type { Logger } from "../common/logger.ts";
import { httpStatus } from "../api/errors.ts";

export interface ConnectionLimits {
  /** Connections open at once on one server, all sources together (server.maxConnections). */
  maxConnections: number;
  /** Time to receive a request's head; also how long a new connection may stay silent. */
  headersTimeoutMs: number;
  /** Time to receive a whole request. */
  requestTimeoutMs: number;
  /** Idle time of a kept-alive connection (also the IMDS fast path's socket idle timeout). */
  keepAliveTimeoutMs: number;
}

export const POD_FACING_LIMITS: ConnectionLimits = {
  maxConnections: 4096,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
};

/** node:http server options for the limits' timeouts; maxConnections is set on the server. */
export function timeoutOptions(limits: ConnectionLimits): ServerOptions {
  return {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
  };
}

/** Set once the agent handed its traffic over: answers then close their connection. */
export interface DrainFlag {
  draining: boolean;
}

export function podFacingServer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  log: Logger,
  limits: ConnectionLimits = POD_FACING_LIMITS,
  drain: DrainFlag = { draining: false },
): Server {
  const s = createServer(
    {
      ...timeoutOptions(limits),
      maxHeaderSize: 8192,
      noDelay: true,
      // `Host` is not required: SDKs send it, but nothing here depends on it.
      requireHostHeader: false,
    },
    (req, res) => {
      // node:http then writes `Connection: close` and ends the socket after this answer
      if (drain.draining) res.shouldKeepAlive = false;
      try {
        handler(req, res);
      } catch (err) {
        log.error({ err }, "handler error");
        if (!res.headersSent) {
          res.writeHead(httpStatus("InternalError"), { "content-type": "text/plain" });
          res.end("Internal Server Error\n");
        } else res.destroy();
      }
    },
  );
  s.maxConnections = limits.maxConnections;
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
