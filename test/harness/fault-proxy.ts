import { createServer, request, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export type FaultMode = "pass" | "throttle" | "fail" | "slow";

/**
 * An HTTP reverse proxy in front of a real service (moto's STS) that can be told to answer
 * like a throttled or failing AWS endpoint for a while. Counts what it saw.
 */
export class FaultProxy {
  mode: FaultMode = "pass";
  slowMs = 3000;
  readonly counts: Record<FaultMode, number> = { pass: 0, throttle: 0, fail: 0, slow: 0 };
  private server: Server;
  private target: URL;

  private constructor(target: string) {
    this.target = new URL(target);
    this.server = createServer((req, res) => {
      const mode = this.mode;
      this.counts[mode]++;
      if (mode === "throttle") {
        req.resume();
        res.writeHead(400, { "content-type": "text/xml" });
        res.end(
          `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>` +
            `<Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>`,
        );
        return;
      }
      if (mode === "fail") {
        req.resume();
        res.writeHead(503, { "content-type": "text/xml" });
        res.end(
          `<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code><Message>injected</Message></Error></ErrorResponse>`,
        );
        return;
      }
      const forward = () => {
        const up = request(
          {
            host: this.target.hostname,
            port: this.target.port,
            method: req.method,
            path: req.url,
            headers: req.headers,
          },
          (upRes) => {
            res.writeHead(upRes.statusCode ?? 502, upRes.headers);
            this.noteRequestId(upRes);
            upRes.pipe(res);
          },
        );
        up.on("error", () => {
          if (!res.headersSent) res.writeHead(502);
          res.end();
        });
        req.pipe(up);
      };
      if (mode === "slow") setTimeout(forward, this.slowMs);
      else forward();
    });
  }

  /** The request ids STS (moto) answered with, header or body, the latest last (bounded). */
  readonly requestIds: string[] = [];

  private noteRequestId(upRes: IncomingMessage): void {
    const header = upRes.headers["x-amzn-requestid"];
    let body = "";
    upRes.on("data", (chunk: Buffer) => {
      if (body.length < 65_536) body += chunk.toString("utf8");
    });
    upRes.on("end", () => {
      const id = (typeof header === "string" && header) || /<RequestId>([^<]+)<\/RequestId>/.exec(body)?.[1];
      if (!id) return;
      this.requestIds.push(id);
      if (this.requestIds.length > 1000) this.requestIds.shift();
    });
  }

  static async start(target: string): Promise<FaultProxy> {
    const p = new FaultProxy(target);
    await new Promise<void>((resolve) => p.server.listen(0, "0.0.0.0", resolve));
    return p;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}
