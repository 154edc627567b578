// The ops listener of both commands: /healthz, /readyz and /metrics in plain text, on a port that
// only probes and a scraper should reach. What healthy and ready mean is the caller's.
import type { RequestListener } from "node:http";
import type { Registry } from "prom-client";
import { httpStatus } from "../api/errors.ts";

export interface ProbeAnswer {
  ok: boolean;
  /** The body, for a human reading the probe. */
  text: string;
}

export interface OpsEndpoints {
  healthz(): ProbeAnswer;
  readyz(): ProbeAnswer;
  registry: Registry;
}

export function opsHandler(endpoints: OpsEndpoints): RequestListener {
  const probe = (answer: ProbeAnswer): [number, string] => [
    answer.ok ? 200 : httpStatus("Unavailable"),
    answer.text,
  ];
  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/healthz" || path === "/readyz") {
      const [status, text] = probe(path === "/healthz" ? endpoints.healthz() : endpoints.readyz());
      res.writeHead(status, { "content-type": "text/plain" }).end(text);
    } else if (path === "/metrics") {
      endpoints.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": endpoints.registry.contentType }).end(text),
        () => res.writeHead(httpStatus("InternalError")).end(),
      );
    } else {
      res.writeHead(httpStatus("NotFound"), { "content-type": "text/plain" }).end("not found\n");
    }
  };
}
