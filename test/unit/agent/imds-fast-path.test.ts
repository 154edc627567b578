// The IMDS fast path against node:http itself: it must accept only heads node:http reads the
// same way, answer byte for byte what the full handler answers, and hand every other request,
// with the bytes already read, to node:http on the same connection.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import fc from "fast-check";
import type { HandlerDeps } from "../../../src/agent/handler-deps.ts";
import { createImdsFastResponder } from "../../../src/agent/imds-fast-answers.ts";
import { createImdsHandler } from "../../../src/agent/imds-handler.ts";
import { podFacingServer } from "../../../src/agent/pod-facing-server.ts";
import { ImdsFastPath, parseHead } from "../../../src/agent/imds-fast-path.ts";
import { pod, surfaceDeps, log } from "./surface-fixture.ts";

const CREDS = "/latest/meta-data/iam/security-credentials/";

let deps: HandlerDeps;
let fast: Server;
let plain: Server;
let fastPath: ImdsFastPath;

async function listen(s: Server): Promise<number> {
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return (s.address() as AddressInfo).port;
}

before(async () => {
  deps = surfaceDeps();
  deps.index.upsert(pod("a", "127.0.0.2"));
  deps.index.upsert(pod("b", "127.0.0.3"));
  deps.index.upsert(pod("host", "127.0.0.5", { hostNetwork: true }));
  deps.index.upsert(pod("flood", "127.0.0.8"));
  // both servers share one set of dependencies: the same pods, cache and token key
  fast = podFacingServer(createImdsHandler(deps), log);
  fastPath = new ImdsFastPath(fast, createImdsFastResponder(deps));
  plain = podFacingServer(createImdsHandler(deps), log);
  await listen(fast);
  await listen(plain);
  // cached credentials for pod a and b (a first GET through node:http fetches them)
  for (const ip of ["127.0.0.2", "127.0.0.3"]) await exchange(plain, ip, [`GET ${CREDS} HTTP/1.1\r\n\r\n`]);
});

after(async () => {
  deps.cache.dropAll();
  fastPath.closeAll();
  for (const s of [fast, plain]) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

/** A raw HTTP/1.1 connection from `from` that reads whole responses (Content-Length framed). */
class RawConn {
  readonly sock: Socket;
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;

  constructor(port: number, from: string) {
    this.sock = connect({ host: "127.0.0.1", port, localAddress: from });
    this.sock.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    this.sock.on("close", () => {
      this.closed = true;
      this.wake();
    });
    this.sock.on("error", () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  ready(): Promise<void> {
    return new Promise((r) => this.sock.once("connect", () => r()));
  }

  /** The next complete response, raw, or undefined if the connection closed first. */
  async response(timeoutMs = 3000, noBody = false): Promise<string | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.buf.toString("latin1");
      const he = s.indexOf("\r\n\r\n");
      if (he >= 0) {
        const m = /\r\ncontent-length: *(\d+)/i.exec(s.slice(0, he));
        const end = he + 4 + (m && !noBody ? Number(m[1]) : 0);
        if (this.buf.length >= end) {
          this.buf = this.buf.subarray(end);
          return s.slice(0, end);
        }
      }
      if (this.closed) return undefined;
      if (Date.now() > deadline) throw new Error(`no complete response; have ${JSON.stringify(s)}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Sends each write in turn (waiting `gapMs` between), then reads `expect` responses (default: one per write). */
async function exchange(
  server: Server,
  from: string,
  writes: string[],
  expect = writes.length,
  gapMs = 0,
): Promise<string[]> {
  const c = new RawConn((server.address() as AddressInfo).port, from);
  await c.ready();
  const out: string[] = [];
  try {
    for (const w of writes) {
      c.sock.write(w, "latin1");
      if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
    }
    for (let i = 0; i < expect; i++) {
      const r = await c.response(3000, writes[i]?.startsWith("HEAD ") === true);
      if (r === undefined) break;
      out.push(r);
    }
  } finally {
    c.close();
  }
  return out;
}

const masked = (r: string): string => r.replace(/\r\nDate: [^\r]*/, "\r\nDate: -");

async function tokenOf(from: string): Promise<string> {
  const [r] = await exchange(plain, from, [
    "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
  ]);
  return r!.slice(r!.indexOf("\r\n\r\n") + 4);
}

test("the fast path answers the SDK sequence byte for byte as node:http and the full handler do", async () => {
  const tok = await tokenOf("127.0.0.2");
  const tokB = await tokenOf("127.0.0.3");
  const requests = [
    "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: aws-sdk-js/3\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nConnection: keep-alive\r\n\r\n",
    `GET ${CREDS} HTTP/1.1\r\nHost: 169.254.169.254\r\nx-aws-ec2-metadata-token: ${tok}\r\n\r\n`,
    `GET ${CREDS}role-a HTTP/1.1\r\nx-aws-ec2-metadata-token: ${tok}\r\nAccept: */*\r\nContent-Length: 0\r\n\r\n`,
    `GET ${CREDS}role-b HTTP/1.1\r\nx-aws-ec2-metadata-token: ${tok}\r\n\r\n`,
    "GET /latest/meta-data/iam/security-credentials-extended/role-a HTTP/1.1\r\n\r\n",
    "GET /latest/meta-data/iam/info HTTP/1.1\r\n\r\n",
    `GET ${CREDS}role-a HTTP/1.1\r\n\r\n`,
    // each of these is left to node:http: same answers through the handover
    `GET ${CREDS}role-a HTTP/1.1\r\nx-aws-ec2-metadata-token: ${tokB}\r\n\r\n`,
    "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 0\r\n\r\n",
    `HEAD ${CREDS}role-a HTTP/1.1\r\n\r\n`,
    "GET /latest/meta-data/placement/region HTTP/1.1\r\n\r\n",
    `GET ${CREDS}role-a HTTP/1.1\r\nConnection: close\r\n\r\n`,
  ];
  for (const req of requests) {
    const served = fastPath.stats.served;
    const [want] = await exchange(plain, "127.0.0.2", [req]);
    const [got] = await exchange(fast, "127.0.0.2", [req]);
    assert.ok(want && got, req);
    assert.equal(masked(got), masked(want), req);
    assert.match(got, /\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n/);
    // the first seven are answered by the fast path itself, the rest by node:http
    const fastOne = requests.indexOf(req) < 7;
    assert.equal(fastPath.stats.served - served, fastOne ? 1 : 0, `fast path use for ${req}`);
  }
  // a hostNetwork pod and an unknown address are refused by the full handler, not served here
  const before = fastPath.stats.served;
  const [host] = await exchange(fast, "127.0.0.5", [`GET ${CREDS} HTTP/1.1\r\n\r\n`]);
  assert.match(host!, /^HTTP\/1\.1 403 /);
  const [unknown] = await exchange(fast, "127.0.0.99", [`GET ${CREDS} HTTP/1.1\r\n\r\n`]);
  assert.match(unknown!, /^HTTP\/1\.1 404 /);
  assert.equal(fastPath.stats.served, before);
});

test("one connection: fast answers, a handover mid-stream, pipelined requests stay in order", async () => {
  const tok = await tokenOf("127.0.0.2");
  const get = (path: string): string => `GET ${path} HTTP/1.1\r\nx-aws-ec2-metadata-token: ${tok}\r\n\r\n`;
  const handedOver = fastPath.stats.handedOver;
  // pipelined in one write: fast, then one for node:http, then a fast-eligible one after it
  const [r1, r2, r3, r4] = await exchange(
    fast,
    "127.0.0.2",
    [get(`${CREDS}role-a`) + get("/latest/meta-data/placement/region") + get(CREDS), get(CREDS)],
    4,
    50,
  );
  assert.match(r1!, /^HTTP\/1\.1 200 [^]*"AccessKeyId": "AKIA-a"/);
  assert.match(r2!, /^HTTP\/1\.1 200 [^]*\r\n\r\neu-west-1$/);
  assert.match(r3!, /\r\n\r\nrole-a$/);
  assert.match(r4!, /\r\n\r\nrole-a$/);
  assert.equal(fastPath.stats.handedOver, handedOver + 1);

  // a request split across two writes is handed over whole and answered once
  const req = get(`${CREDS}role-a`);
  const split = await exchange(fast, "127.0.0.2", [req.slice(0, 20), req.slice(20)], 1, 100);
  assert.equal(split.length, 1);
  assert.match(split[0]!, /"AccessKeyId": "AKIA-a"/);

  // a head node:http refuses is refused the same way after the handover
  const bad = await exchange(fast, "127.0.0.2", [get(CREDS) + "GET / HTTP/1.1\r\nBad Header\r\n\r\n"], 2);
  assert.match(bad[0]!, /\r\n\r\nrole-a$/);
  assert.match(bad[1]!, /^HTTP\/1\.1 400 /);
});

test("rate limit: one token per request on the fast path, 429 beyond the burst", async () => {
  const burst = Array.from(
    { length: 80 },
    () => "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
  ).join("");
  const served = fastPath.stats.served;
  const rs = await exchange(fast, "127.0.0.8", [burst], 80);
  const ok = rs.filter((r) => r.startsWith("HTTP/1.1 200 ")).length;
  const limited = rs.filter((r) => r.startsWith("HTTP/1.1 429 ")).length;
  assert.equal(ok + limited, 80);
  assert.ok(ok >= 50 && ok <= 53, `${ok} served of a burst of 50`);
  assert.equal(fastPath.stats.served - served, 80);
  const metrics = await deps.metrics.registry.metrics();
  assert.match(metrics, new RegExp(`keycutter_agent_rate_limited_total\\{listener="imds"\\} ${limited}\n`));
});

test("held keep-alive sockets close after the keep-alive timeout, and on closeAll", async () => {
  const s = podFacingServer(createImdsHandler(deps), log);
  s.keepAliveTimeout = 300;
  const fp = new ImdsFastPath(s, createImdsFastResponder(deps));
  const port = await listen(s);
  try {
    const c = new RawConn(port, "127.0.0.2");
    await c.ready();
    c.sock.write(`GET ${CREDS} HTTP/1.1\r\n\r\n`);
    assert.match((await c.response())!, /Keep-Alive: timeout=0\r\n[^]*role-a$/);
    const t0 = Date.now();
    assert.equal(await c.response(2000), undefined);
    assert.ok(Date.now() - t0 >= 200, "closed by the idle timeout, not at once");

    const held = new RawConn(port, "127.0.0.2");
    await held.ready();
    held.sock.write(`GET ${CREDS} HTTP/1.1\r\n\r\n`);
    await held.response();
    const closing = new Promise((r) => s.close(r));
    fp.closeAll();
    await closing;
    assert.equal(await held.response(), undefined);
  } finally {
    s.closeAllConnections();
  }
});

test("a client pipelining without reading is not read further until it reads; a half-closed one is answered and closed", async () => {
  const port = (fast.address() as AddressInfo).port;
  const put = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
  const batch = put.repeat(500); // 38 KB: one read on loopback, no request split between reads
  const sock = connect({ host: "127.0.0.1", port, localAddress: "127.0.0.3" });
  await once(sock, "connect");
  sock.pause();
  // batches of whole requests, each once the previous one was answered, never reading an answer:
  // once the answers fill the socket buffers, the fast path must stop reading
  let sent = 0;
  let stalledAt = -1;
  for (let i = 0; i < 400 && stalledAt < 0; i++) {
    const want = fastPath.stats.served + 500;
    sock.write(batch);
    sent += 500;
    const deadline = Date.now() + 300;
    while (fastPath.stats.served < want && Date.now() < deadline) await sleep(5);
    if (fastPath.stats.served < want) stalledAt = sent;
  }
  assert.ok(stalledAt > 0, `the fast path read all ${sent} requests while the client read no answer`);
  const blocked = fastPath.stats.served;
  await sleep(300);
  assert.equal(fastPath.stats.served, blocked, "nothing read while the answers are not taken");
  const N = sent;
  // once the client reads, every request is answered, exactly once
  let answers = 0;
  let carry = "";
  const all = new Promise<void>((resolve) =>
    sock.on("data", (d: Buffer) => {
      const text = carry + d.toString("latin1");
      answers += text.split("HTTP/1.1 ").length - 1;
      carry = text.slice(-8);
      if (answers >= N) resolve();
    }),
  );
  sock.resume();
  // an unref'd timer: once every answer is in, it must not hold the test process for 30 s
  await Promise.race([all, sleep(30_000, undefined, { ref: false })]);
  sock.destroy();
  assert.equal(answers, N);

  const half = connect({ host: "127.0.0.1", port, localAddress: "127.0.0.2" });
  await once(half, "connect");
  let got = "";
  half.on("data", (d: Buffer) => (got += d.toString("latin1")));
  const t0 = Date.now();
  half.end(`GET ${CREDS} HTTP/1.1\r\n\r\n`);
  await once(half, "close");
  assert.match(got, /^HTTP\/1\.1 200 [^]*\r\n\r\nrole-a$/);
  assert.ok(Date.now() - t0 < 2000, "closed when the client was done, not at the idle timeout");
});

// node:http as the oracle: what it parsed from a head, or that it refused it
let oracle: Server;
const oracleSeen: Array<Record<string, unknown>> = [];
before(async () => {
  oracle = createServer({ maxHeaderSize: 8192, requireHostHeader: false }, (req, res) => {
    let body = 0;
    req.on("data", (d: Buffer) => (body += d.length));
    req.on("end", () => {
      oracleSeen.push({
        method: req.method,
        url: req.url,
        version: req.httpVersion,
        ttl: req.headers["x-aws-ec2-metadata-token-ttl-seconds"],
        token: req.headers["x-aws-ec2-metadata-token"],
        te: req.headers["transfer-encoding"],
        body,
      });
      res.end("ok");
    });
  });
  oracle.on("clientError", (_e, sock) => sock.destroy());
  await listen(oracle);
});
after(async () => {
  oracle.closeAllConnections();
  await new Promise((r) => oracle.close(r));
});

/** Mostly the forms the fast path takes, with every kind of deviation mixed in. */
const usually = <T>(common: fc.Arbitrary<T>, odd: fc.Arbitrary<T>): fc.Arbitrary<T> =>
  fc.oneof({ weight: 4, arbitrary: common }, { weight: 1, arbitrary: odd });

const headArb = fc
  .record({
    method: usually(fc.constantFrom("GET", "PUT"), fc.constantFrom("HEAD", "POST", "get", "GET ", "G\x00T")),
    path: usually(
      fc.constantFrom("/latest/api/token", CREDS, `${CREDS}role-a`, "/"),
      fc.oneof(fc.constant("*"), fc.stringMatching(/^\/[A-Za-z0-9._\-/%?#~ ]{0,30}$/)),
    ),
    version: usually(
      fc.constant("HTTP/1.1"),
      fc.constantFrom("HTTP/1.0", "HTTP/1.1 ", "http/1.1", "HTTP/2.0"),
    ),
    headers: fc.array(
      fc.tuple(
        usually(
          fc.constantFrom(
            "X-aws-ec2-metadata-token",
            "x-aws-ec2-metadata-token-ttl-seconds",
            "Content-Length",
            "Connection",
            "Host",
            "User-Agent",
          ),
          fc.oneof(
            fc.constantFrom("Transfer-Encoding", " Host", "Host ", "", "Expect", "X-Forwarded-For"),
            fc.stringMatching(/^[A-Za-z0-9\-_@ ]{1,12}$/),
          ),
        ),
        usually(
          fc.constantFrom("0", "keep-alive", "21600", "a.b", " x ", "a\tb", "169.254.169.254"),
          fc.oneof(
            fc.constantFrom("5", "chunked", "close", "\x01", "é", "\x7f", "a\rb", "a\nb"),
            fc.stringMatching(/^[ -~]{0,20}$/),
          ),
        ),
        usually(fc.constant(": "), fc.constantFrom(":", " : ", ":\t", "\t:")),
      ),
      { maxLength: 6 },
    ),
    fold: usually(fc.constant(false), fc.constant(true)),
  })
  .map(({ method, path, version, headers, fold }) => {
    let head = `${method} ${path} ${version}\r\n`;
    for (const [n, v, sep] of headers) head += `${n}${sep}${v}\r\n`;
    if (fold && headers.length > 0) head += " folded\r\n";
    return head + "\r\n";
  });

test("parseHead accepts only heads node:http reads the same way (property, node:http as oracle)", async () => {
  const port = (oracle.address() as AddressInfo).port;
  let accepted = 0;
  await fc.assert(
    fc.asyncProperty(headArb, async (head) => {
      const mine = parseHead(head, 0, head.length - 4, "127.0.0.2");
      if (mine === undefined) return;
      accepted++;
      oracleSeen.length = 0;
      const c = new RawConn(port, "127.0.0.2");
      await c.ready();
      c.sock.write(head, "latin1");
      const r = await c.response();
      c.close();
      assert.ok(
        r?.startsWith("HTTP/1.1 200 "),
        `node:http refused a head the fast path accepted: ${JSON.stringify(head)}`,
      );
      const seen = oracleSeen[0]!;
      assert.deepEqual(
        {
          method: mine.method,
          url: mine.path,
          version: "1.1",
          ttl: mine.ttl,
          token: mine.token,
          te: undefined,
          body: 0,
        },
        seen,
        JSON.stringify(head),
      );
    }),
    { numRuns: 600 },
  );
  assert.ok(accepted > 40, `the generator reaches accepted heads (${accepted})`);
});
