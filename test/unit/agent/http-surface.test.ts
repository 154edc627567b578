// The pod-facing HTTP surface in-process: handlers + index + cache on 127.0.0.x, with a fake
// credential source (one-module scope; the real-parts tests are in agent-netns.test.ts).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, request, type Server } from "node:http";
import { connect, type AddressInfo } from "node:net";
import fc from "fast-check";
import type { PodIndex } from "../../../src/agent/pod-index.ts";
import type { CredCache } from "../../../src/agent/cred-cache.ts";
import { Passthrough } from "../../../src/agent/passthrough.ts";
import type { HandlerConfig } from "../../../src/agent/handler-deps.ts";
import { createContainerHandler } from "../../../src/agent/container-handler.ts";
import { createImdsFastResponder } from "../../../src/agent/imds-fast-answers.ts";
import { createImdsHandler } from "../../../src/agent/imds-handler.ts";
import { pod, surfaceDeps, log, type Source } from "./surface-fixture.ts";
import { untilTrue } from "../../harness/manual-clock.ts";
import { podFacingServer } from "../../../src/agent/pod-facing-server.ts";
import { ImdsFastPath } from "../../../src/agent/imds-fast-path.ts";

interface Env {
  imds: Server;
  container: Server;
  upstream: Server;
  imdsPort: number;
  containerPort: number;
  source: Source;
  index: PodIndex;
  cache: CredCache;
  cfg: HandlerConfig;
  fastPath: ImdsFastPath;
}
let env: Env;

before(async () => {
  const upstream = createServer((req, res) => {
    if (req.url === "/latest/meta-data/placement/availability-zone") res.end("eu-west-1c");
    else res.end(req.url === "/latest/meta-data/instance-id" ? "i-real" : "NODE-SECRET");
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
  const deps = {
    ...surfaceDeps(),
    passthrough: new Passthrough(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, [
      "/latest/meta-data/instance-id",
    ]),
  };
  const { source, index, cache, cfg } = deps;
  // the servers as the agent builds them, the IMDS one with its fast path
  const imds = podFacingServer(createImdsHandler(deps), log);
  const fastPath = new ImdsFastPath(imds, createImdsFastResponder(deps));
  const container = podFacingServer(createContainerHandler(deps), log);
  await new Promise<void>((r) => imds.listen(0, "127.0.0.1", r));
  await new Promise<void>((r) => container.listen(0, "127.0.0.1", r));
  index.upsert(pod("a", "127.0.0.2"));
  index.upsert(pod("b", "127.0.0.3"));
  index.upsert(pod("nopolicy", "127.0.0.4"));
  index.upsert(pod("host", "127.0.0.5", { hostNetwork: true }));
  index.upsert(pod("fuzz", "127.0.0.6"));
  index.upsert(pod("flood", "127.0.0.8"));
  env = {
    imds,
    container,
    upstream,
    imdsPort: (imds.address() as AddressInfo).port,
    containerPort: (container.address() as AddressInfo).port,
    source,
    index,
    cache,
    cfg,
    fastPath,
  };
});

after(async () => {
  env.cache.dropAll();
  env.fastPath.closeAll();
  for (const s of [env.imds, env.container, env.upstream]) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(
  from: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  port = env.imdsPort,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port, localAddress: from, method, path, headers, agent: false },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

async function v2Token(from: string, ttl = "21600"): Promise<Res> {
  return call(from, "PUT", "/latest/api/token", { "x-aws-ec2-metadata-token-ttl-seconds": ttl });
}

test("IMDSv2 flow: token with TTL echoed, role listing without newline, documents", async () => {
  const t = await v2Token("127.0.0.2");
  assert.equal(t.status, 200);
  assert.equal(t.headers["x-aws-ec2-metadata-token-ttl-seconds"], "21600");
  const h = { "x-aws-ec2-metadata-token": t.body };
  const list = await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/", h);
  assert.equal(list.status, 200);
  assert.equal(list.body, "role-a");
  const doc = JSON.parse(
    (await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/role-a", h)).body,
  );
  assert.equal(doc.AccessKeyId, "AKIA-a");
  assert.equal(doc.Code, "Success");
  const ext = JSON.parse(
    (await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials-extended/role-a", h)).body,
  );
  assert.equal(ext.AccountId, "123456789012");
  const wrong = await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/role-b", h);
  assert.equal(wrong.status, 404);
  const info = JSON.parse((await call("127.0.0.2", "GET", "/latest/meta-data/iam/info", h)).body);
  assert.equal(info.Code, "Success");
  assert.match(info.InstanceProfileArn, /^arn:aws:iam::123456789012:instance-profile\/role-a$/);
  assert.equal((await call("127.0.0.2", "GET", "/latest/meta-data/placement/region", h)).body, "eu-west-1");
  assert.equal(
    (await call("127.0.0.2", "GET", "/latest/meta-data/placement/availability-zone", h)).body,
    "eu-west-1b",
  );
  const id = JSON.parse(
    (await call("127.0.0.2", "GET", "/latest/dynamic/instance-identity/document", h)).body,
  );
  assert.equal(id.region, "eu-west-1");
  assert.equal(id.accountId, "123456789012");
  assert.equal(id.availabilityZone, "eu-west-1b");
});

test("two pods get different credentials; a token of pod A presented by pod B is 401", async () => {
  const ta = (await v2Token("127.0.0.2")).body;
  const tb = (await v2Token("127.0.0.3")).body;
  const da = JSON.parse(
    (
      await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/role-a", {
        "x-aws-ec2-metadata-token": ta,
      })
    ).body,
  );
  const db = JSON.parse(
    (
      await call("127.0.0.3", "GET", "/latest/meta-data/iam/security-credentials/role-b", {
        "x-aws-ec2-metadata-token": tb,
      })
    ).body,
  );
  assert.notEqual(da.AccessKeyId, db.AccessKeyId);
  const stolen = await call("127.0.0.3", "GET", "/latest/meta-data/iam/security-credentials/", {
    "x-aws-ec2-metadata-token": ta,
  });
  assert.equal(stolen.status, 401);
});

test("token PUT: bad TTLs are 400, X-Forwarded-For is 403, GET is 405", async () => {
  for (const ttl of ["0", "21601", "abc", ""])
    assert.equal((await v2Token("127.0.0.2", ttl)).status, 400, ttl);
  assert.equal((await call("127.0.0.2", "PUT", "/latest/api/token")).status, 400);
  const xff = await call("127.0.0.2", "PUT", "/latest/api/token", {
    "x-aws-ec2-metadata-token-ttl-seconds": "60",
    "x-forwarded-for": "1.2.3.4",
  });
  assert.equal(xff.status, 403);
  assert.equal((await call("127.0.0.2", "GET", "/latest/api/token")).status, 405);
});

test("IMDSv1 allowed by default; require-v2 refuses v1 with 401; an invalid token is 401", async () => {
  assert.equal((await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/")).status, 200);
  env.cfg.requireImdsV2 = true;
  try {
    assert.equal((await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/")).status, 401);
    const t = (await v2Token("127.0.0.2")).body;
    const ok = await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/", {
      "x-aws-ec2-metadata-token": t,
    });
    assert.equal(ok.status, 200);
  } finally {
    env.cfg.requireImdsV2 = false;
  }
  const bad = await call("127.0.0.2", "GET", "/latest/meta-data/iam/security-credentials/", {
    "x-aws-ec2-metadata-token": "x.y",
  });
  assert.equal(bad.status, 401);
});

test("unknown IP waits then 404; hostNetwork 403; no policy 404; other paths 404; passthrough only when allowlisted", async () => {
  const t0 = Date.now();
  const unk = await call("127.0.0.9", "GET", "/latest/meta-data/iam/security-credentials/");
  assert.equal(unk.status, 404);
  assert.ok(Date.now() - t0 >= 250, "waited for the watch");
  assert.equal((await call("127.0.0.5", "GET", "/latest/meta-data/iam/security-credentials/")).status, 403);
  const np = await call("127.0.0.4", "GET", "/latest/meta-data/iam/security-credentials/");
  assert.equal(np.status, 404);
  assert.match(np.body, /NoPolicy/);
  assert.equal((await call("127.0.0.2", "GET", "/latest/meta-data/instance-type")).status, 404);
  const pt = await call("127.0.0.2", "GET", "/latest/meta-data/instance-id");
  assert.equal(pt.status, 200);
  assert.equal(pt.body, "i-real");
  assert.throws(
    () => new Passthrough("http://127.0.0.1:1", ["/latest/meta-data/iam/security-credentials/x"]),
  );
  // an allowlisted path the agent also answers itself comes from the real IMDS: the node's zone
  const zone = new Passthrough(`http://127.0.0.1:${(env.upstream.address() as AddressInfo).port}`, [
    "/latest/meta-data/placement/availability-zone",
  ]);
  const zoneDeps = { ...surfaceDeps(), passthrough: zone };
  zoneDeps.index.upsert(pod("a", "127.0.0.2"));
  const s = podFacingServer(createImdsHandler(zoneDeps), log);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  try {
    const port = (s.address() as AddressInfo).port;
    const az = await call("127.0.0.2", "GET", "/latest/meta-data/placement/availability-zone", {}, port);
    assert.equal(az.body, "eu-west-1c", "the real IMDS's zone, not the configured eu-west-1b");
    const region = await call("127.0.0.2", "GET", "/latest/meta-data/placement/region", {}, port);
    assert.equal(region.body, "eu-west-1", "paths not allowlisted: the agent's own answer");
  } finally {
    zone.close();
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

test("a pod appearing while its request waits is served", async () => {
  const p = call("127.0.0.7", "GET", "/latest/meta-data/iam/security-credentials/");
  await untilTrue(() => env.index.waiting === 1, "the request waits for its pod");
  env.index.upsert(pod("late", "127.0.0.7"));
  const r = await p;
  assert.equal(r.status, 200);
  assert.equal(r.body, "role-late");
});

test("token PUT from an IP still unknown after the wait: 503, never the 403/404/405 that switch Go and JS to IMDSv1", async () => {
  const t0 = Date.now();
  const r = await v2Token("127.0.0.9");
  assert.equal(r.status, 503);
  assert.ok(Date.now() - t0 >= 250, "waited for the watch first");
});

test("container credentials: token required, mismatch 403 JSON, own token 200", async () => {
  const port = env.containerPort;
  const none = await call("127.0.0.2", "GET", "/v1/credentials", {}, port);
  assert.equal(none.status, 401);
  assert.equal(JSON.parse(none.body).code, "Unauthenticated");
  const mismatch = await call("127.0.0.2", "GET", "/v1/credentials", { authorization: "token.of.b" }, port);
  assert.equal(mismatch.status, 403);
  assert.deepEqual(Object.keys(JSON.parse(mismatch.body)).sort(), ["code", "message"]);
  assert.equal(JSON.parse(mismatch.body).code, "PodTokenMismatch");
  const ok = await call("127.0.0.2", "GET", "/v1/credentials", { authorization: "token.of.a" }, port);
  assert.equal(ok.status, 200);
  const doc = JSON.parse(ok.body);
  assert.equal(doc.AccessKeyId, "AKIA-a");
  assert.match(doc.Expiration, /Z$/);
  const calls = env.source.calls.length;
  assert.equal(
    (await call("127.0.0.2", "GET", "/v1/credentials", { authorization: "token.of.a" }, port)).status,
    200,
  );
  assert.equal(env.source.calls.length, calls, "validated token served from cache");
  assert.equal(
    (await call("127.0.0.9", "GET", "/v1/credentials", { authorization: "token.of.a" }, port)).status,
    404,
  );
  assert.equal(
    (await call("127.0.0.2", "POST", "/v1/credentials", { authorization: "token.of.a" }, port)).status,
    405,
  );
});

function raw(from: string, port: number, data: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port, localAddress: from });
    let out = "";
    s.setEncoding("latin1");
    s.on("data", (d: string) => (out += d));
    s.on("error", () => resolve(out));
    s.on("close", () => resolve(out));
    s.setTimeout(3000, () => s.destroy());
    s.on("connect", () => s.end(data));
  });
}

test("fuzz: hostile requests get 4xx (or a well-formed answer), never a crash or 5xx; other pods unaffected", async () => {
  const segment = fc.oneof(
    fc.constantFrom(
      "latest",
      "meta-data",
      "iam",
      "security-credentials",
      "..",
      ".",
      "%2e%2e",
      "api",
      "token",
      "",
      "role-fuzz",
    ),
    fc.string({ maxLength: 12 }),
  );
  const pathArb = fc.oneof(
    fc.array(segment, { maxLength: 7 }).map((a) => "/" + a.join("/")),
    fc.string({ maxLength: 60 }).map((s) => "/" + s.replace(/[\s]/g, "")),
  );
  const methodArb = fc.constantFrom(
    "GET",
    "PUT",
    "POST",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "CONNECT",
    "FOO",
  );
  const headerArb = fc.dictionary(
    fc.constantFrom(
      "x-aws-ec2-metadata-token",
      "x-aws-ec2-metadata-token-ttl-seconds",
      "x-forwarded-for",
      "authorization",
      "content-length",
      "x-junk",
    ),
    fc.oneof(fc.string({ maxLength: 40 }), fc.integer().map(String), fc.constant("a".repeat(9000))),
    { maxKeys: 4 },
  );
  const bodyArb = fc.oneof(fc.constant(""), fc.string({ maxLength: 200 }));
  await fc.assert(
    fc.asyncProperty(
      methodArb,
      pathArb,
      headerArb,
      bodyArb,
      fc.boolean(),
      async (method, path, headers, body, toContainer) => {
        const lines = [`${method} ${path} HTTP/1.1`, "Host: 169.254.169.254"];
        for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v.replace(/[\r\n]/g, "")}`);
        if (body && !("content-length" in headers)) lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
        const port = toContainer ? env.containerPort : env.imdsPort;
        const out = await raw("127.0.0.6", port, lines.join("\r\n") + "\r\n\r\n" + body);
        const m = /^HTTP\/1\.1 (\d{3})/.exec(out);
        if (!m) return; // connection closed without an answer (e.g. garbage the parser rejected): fine
        const status = Number(m[1]);
        assert.ok(status < 500 || status === 503, `${method} ${path} → ${status}`);
        if (status === 200) {
          assert.ok(!/NODE-SECRET/.test(out), "never the node's data");
        }
      },
    ),
    { numRuns: 400 },
  );
  const huge = await raw(
    "127.0.0.6",
    env.imdsPort,
    `GET /latest/meta-data/ HTTP/1.1\r\nX-Big: ${"a".repeat(20000)}\r\n\r\n`,
  );
  assert.match(huge, /^HTTP\/1\.1 4\d\d/);
  const t = (await v2Token("127.0.0.3")).body;
  const b = await call("127.0.0.3", "GET", "/latest/meta-data/iam/security-credentials/role-b", {
    "x-aws-ec2-metadata-token": t,
  });
  assert.equal(b.status, 200);
  assert.equal(JSON.parse(b.body).AccessKeyId, "AKIA-b");
});

test("flood: one pod is rate limited (429), another is not", async () => {
  const res = await Promise.all(
    Array.from({ length: 200 }, () => call("127.0.0.8", "GET", "/latest/meta-data/placement/region")),
  );
  assert.ok(res.filter((r) => r.status === 429).length >= 50, "most of the flood is refused");
  assert.ok(
    res.some((r) => r.status === 200),
    "the burst is served",
  );
  assert.equal((await call("127.0.0.3", "GET", "/latest/meta-data/placement/region")).status, 200);
});
