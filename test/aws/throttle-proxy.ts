// An HTTP proxy in front of moto that answers the first N AssumeRole calls (or all, while
// `always` is set) with STS's real Throttling error, and forwards everything else unchanged
// (Host header kept, so SigV4 signatures still verify at moto).

import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface ThrottleProxy {
  endpoint: string;
  /** Throttle this many more AssumeRole calls. */
  throttleNext(n: number): void;
  always: boolean;
  assumeRoleCalls: number;
  throttled: number;
  close(): Promise<void>;
}

const THROTTLING = `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>`;

export async function startThrottleProxy(target: string): Promise<ThrottleProxy> {
  const t = new URL(target);
  let pending = 0;
  const state: ThrottleProxy = {
    endpoint: "",
    throttleNext: (n) => {
      pending += n;
    },
    always: false,
    assumeRoleCalls: 0,
    throttled: 0,
    close: () => new Promise((r) => server.close(() => r())),
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (/(^|&)Action=AssumeRole(&|$)/.test(body.toString())) {
        state.assumeRoleCalls++;
        if (state.always || pending > 0) {
          if (pending > 0) pending--;
          state.throttled++;
          res.writeHead(400, { "content-type": "text/xml" }).end(THROTTLING);
          return;
        }
      }
      const up = request(
        { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on("error", () => res.writeHead(502).end());
      up.end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  state.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return state;
}
