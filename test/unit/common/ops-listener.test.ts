// The ops listener both commands serve (src/common/ops-listener.ts) and the listen/close helpers
// (src/common/listen.ts), on a real loopback socket.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, request } from "node:http";
import { Registry, Counter } from "prom-client";
import { listen } from "../../../src/common/listen.ts";
import { opsHandler, type ProbeAnswer } from "../../../src/common/ops-listener.ts";

function get(port: number, path: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    request({ host: "127.0.0.1", port, path, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (chunk: string) => (body += chunk));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, body, type: String(res.headers["content-type"]) }),
      );
    })
      .on("error", reject)
      .end();
  });
}

test("healthz and readyz answer what the caller says, 503 when not ok; metrics; 404 elsewhere", async () => {
  const registry = new Registry();
  new Counter({ name: "ops_test_total", help: "a counter", registers: [registry] }).inc(3);
  let ready: ProbeAnswer = { ok: false, text: "pod watch not synced\n" };
  const ops = await listen(
    createServer(opsHandler({ healthz: () => ({ ok: true, text: "ok\n" }), readyz: () => ready, registry })),
    "127.0.0.1",
    0,
  );
  try {
    assert.deepEqual(await get(ops.port, "/healthz"), { status: 200, body: "ok\n", type: "text/plain" });
    assert.deepEqual(await get(ops.port, "/readyz?verbose"), {
      status: 503,
      body: "pod watch not synced\n",
      type: "text/plain",
    });
    ready = { ok: true, text: "ok\n" };
    assert.equal((await get(ops.port, "/readyz")).status, 200);
    const metrics = await get(ops.port, "/metrics");
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^ops_test_total 3$/m);
    assert.equal((await get(ops.port, "/v1/credentials")).status, 404);
  } finally {
    await ops.close();
  }
});

test("listen rejects when the port is taken; close frees it even with a keep-alive connection open", async () => {
  const first = await listen(
    createServer((_req, res) => res.end("x")),
    "127.0.0.1",
    0,
  );
  await assert.rejects(listen(createServer(), "127.0.0.1", first.port), { code: "EADDRINUSE" });
  // a client that keeps its connection open does not hold the close up
  await new Promise<void>((resolve, reject) => {
    request(
      { host: "127.0.0.1", port: first.port, path: "/", headers: { connection: "keep-alive" } },
      (res) => {
        res.resume().on("end", resolve);
      },
    )
      .on("error", reject)
      .end();
  });
  const started = performance.now();
  await first.close();
  assert.ok(performance.now() - started < 1000, "closed without waiting for the idle connection");
  const again = await listen(createServer(), "127.0.0.1", first.port);
  await again.close();
});
