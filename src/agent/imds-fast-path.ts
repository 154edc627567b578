// The IMDS listener's hand-written fast path. On a cached answer, Node's HTTP layer (parser
// callbacks, request and response objects, header formatting) costs several times the agent's
// own work (docs/PERFORMANCE.md), and every pod's SDK pays it on every credential refresh.
//
// Sockets start here. A read that holds only complete requests of a narrow, strictly checked
// form (GET or PUT, a plain path, HTTP/1.1, token-character header names, printable values, no
// body, none of the headers that change framing or the answer) is answered straight onto the
// socket, provided the responder can answer from memory. Anything else — a request split across
// reads, a malformed or unusual head, a cache miss, an unknown pod, an error — hands the socket
// to the node:http server with the unread bytes put back, and node:http owns it from then on.
// So every unusual or hostile request meets node:http and the full handler, exactly as without
// this module; this one only ever answers what the full handler would have answered the same way.
import { STATUS_CODES, type Server } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";

export interface FastRequest {
  method: "GET" | "PUT";
  path: string;
  /** The peer's address (IPv4-mapped IPv6 unwrapped). */
  ip: string;
  /** X-aws-ec2-metadata-token-ttl-seconds, if sent. */
  ttl: string | undefined;
  /** X-aws-ec2-metadata-token, if sent. */
  token: string | undefined;
  /** performance.now() when the request was read. */
  start: number;
}

export interface FastReply {
  status: number;
  body: Buffer | string;
  /** Echoed as X-aws-ec2-metadata-token-ttl-seconds (token answers). */
  ttl?: string;
}

/** Answers from memory, or undefined to leave the request to node:http and the full handler. */
export type FastResponder = (r: FastRequest) => FastReply | undefined;

/** Heads longer than this go to node:http, whose limit (maxHeaderSize) is larger. */
const MAX_HEAD = 4096;
/** More header lines than this go to node:http. */
const MAX_HEADER_LINES = 32;
const REQUEST_LINE = /^(GET|PUT) (\/[A-Za-z0-9._\-/]{0,1023}) HTTP\/1\.1$/;
/** A header line: token-character name (a subset), colon, printable ASCII or tab. */
const HEADER_LINE = /^[A-Za-z0-9-]+:[\t\x20-\x7e]*$/;
const TTL = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN = "x-aws-ec2-metadata-token";
/** Headers that change framing, connection handling or the answer: node:http's business. */
const HAND_OVER = new Set(["transfer-encoding", "expect", "upgrade", "x-forwarded-for", "te", "trailer"]);

export interface FastPathStats {
  /** Requests answered here. */
  served: number;
  /** Connections handed to node:http. */
  handedOver: number;
}

export class ImdsFastPath {
  readonly stats: FastPathStats = { served: 0, handedOver: 0 };
  private readonly server: Server;
  private readonly respond: FastResponder;
  private readonly httpConnection: (socket: Socket) => void;
  private readonly held = new Set<Socket>();
  private keepAliveHeader: string;
  private draining = false;
  private dateSecond = -1;
  private date = "";

  /**
   * Puts the fast path in front of `server`'s own connection handling. `server` keeps listening,
   * tracking and timing out the connections it is handed; keep-alive idle time of the sockets
   * held here is server.keepAliveTimeout.
   */
  constructor(server: Server, respond: FastResponder) {
    const own = server.listeners("connection");
    if (own.length !== 1) throw new Error("the IMDS fast path needs node:http's own connection listener");
    this.server = server;
    this.respond = respond;
    this.httpConnection = own[0] as (socket: Socket) => void;
    this.keepAliveHeader = `Connection: keep-alive\r\nKeep-Alive: timeout=${Math.floor(server.keepAliveTimeout / 1000)}\r\n\r\n`;
    server.removeAllListeners("connection");
    server.on("connection", (socket: Socket) => this.adopt(socket));
  }

  /**
   * From now on every answer says `Connection: close` and its socket is ended after it: the
   * clients of an agent that handed over leave for the new one between two requests.
   */
  drain(): void {
    this.draining = true;
    this.keepAliveHeader = "Connection: close\r\n\r\n";
  }

  /** Closes the idle keep-alive sockets held here (node:http closes the ones it was handed). */
  closeAll(): void {
    for (const s of this.held) s.destroy();
    this.held.clear();
  }

  private adopt(socket: Socket): void {
    const a = socket.remoteAddress ?? "";
    const ip = a.startsWith("::ffff:") ? a.slice(7) : a;
    this.held.add(socket);
    const onTimeout = (): void => {
      socket.destroy();
    };
    const onError = (): void => {
      socket.destroy();
    };
    const onClose = (): void => {
      this.held.delete(socket);
    };
    // node:http's server sockets allow half-open connections: a client that is done sending has
    // had its answers (they are written as each request is read) and is closed, not left to the
    // idle timeout
    const onEnd = (): void => {
      socket.end();
    };
    const onDrain = (): void => {
      socket.resume();
    };
    const handOver = (rest: Buffer): void => {
      socket.removeListener("data", onData);
      socket.removeListener("error", onError);
      socket.removeListener("close", onClose);
      socket.removeListener("end", onEnd);
      socket.removeListener("drain", onDrain);
      socket.removeListener("timeout", onTimeout);
      socket.setTimeout(0);
      this.held.delete(socket);
      this.stats.handedOver++;
      // Paused so that the put-back bytes wait for node:http's data listener; resume() then
      // delivers them on the next tick, before anything newer can be read from the socket.
      socket.pause();
      if (rest.length > 0) socket.unshift(rest);
      this.httpConnection.call(this.server, socket);
      socket.resume();
    };
    const onData = (chunk: Buffer): void => {
      const s = chunk.toString("latin1");
      let pos = 0;
      while (pos < s.length) {
        const end = s.indexOf("\r\n\r\n", pos);
        if (end < 0 || end - pos > MAX_HEAD) return handOver(chunk.subarray(pos));
        const req = parseHead(s, pos, end, ip);
        let reply: FastReply | undefined;
        try {
          reply = req === undefined ? undefined : this.respond(req);
        } catch {
          // the full handler meets the same fault, answers 500 and logs it
          reply = undefined;
        }
        if (reply === undefined) return handOver(chunk.subarray(pos));
        this.stats.served++;
        socket.write(this.format(reply));
        if (this.draining) {
          socket.end();
          return;
        }
        pos = end + 4;
      }
      // a client that pipelines without reading its answers is not read further until it does
      if (socket.writableNeedDrain) {
        socket.pause();
        socket.once("drain", onDrain);
      }
    };
    socket.setTimeout(this.server.keepAliveTimeout, onTimeout);
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.on("end", onEnd);
  }

  /** The bytes node:http writes for the full handler's answer of the same reply. */
  private format(r: FastReply): Buffer {
    const now = Date.now();
    const second = Math.floor(now / 1000);
    if (second !== this.dateSecond) {
      this.dateSecond = second;
      this.date = new Date(now).toUTCString();
    }
    const { body } = r;
    const length = typeof body === "string" ? Buffer.byteLength(body) : body.length;
    const head =
      `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? "unknown"}\r\n` +
      `content-type: text/plain\r\ncontent-length: ${length}\r\n` +
      (r.ttl === undefined ? "" : `${TTL}: ${r.ttl}\r\n`) +
      `server: keycutter\r\nDate: ${this.date}\r\n${this.keepAliveHeader}`;
    // one buffer, one copy of the body (a string body, the token, is written into it directly)
    const out = Buffer.allocUnsafe(head.length + length);
    out.write(head, 0, "latin1");
    if (typeof body === "string") out.write(body, head.length);
    else body.copy(out, head.length);
    return out;
  }
}

/**
 * The request whose head is s[from, end) if it has the narrow form answered here, else
 * undefined. Exported for the tests, which check it against node:http's own parser.
 */
export function parseHead(s: string, from: number, end: number, ip: string): FastRequest | undefined {
  let eol = s.indexOf("\r\n", from);
  if (eol < 0 || eol > end) eol = end;
  const m = REQUEST_LINE.exec(s.slice(from, eol));
  if (m === null) return undefined;
  let ttl: string | undefined;
  let token: string | undefined;
  let lines = 0;
  let sawLength = false;
  let sawConnection = false;
  let pos = eol + 2;
  while (pos < end + 2) {
    let next = s.indexOf("\r\n", pos);
    if (next < 0 || next > end) next = end;
    const line = s.slice(pos, next);
    pos = next + 2;
    if (++lines > MAX_HEADER_LINES || !HEADER_LINE.test(line)) return undefined;
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === TOKEN) {
      if (token !== undefined) return undefined;
      token = value;
    } else if (name === TTL) {
      if (ttl !== undefined) return undefined;
      ttl = value;
    } else if (name === "content-length") {
      if (sawLength || value !== "0") return undefined;
      sawLength = true;
    } else if (name === "connection") {
      if (sawConnection || value.toLowerCase() !== "keep-alive") return undefined;
      sawConnection = true;
    } else if (HAND_OVER.has(name)) return undefined;
  }
  return { method: m[1] as "GET" | "PUT", path: m[2]!, ip, ttl, token, start: performance.now() };
}
