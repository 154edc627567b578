// A small closed-loop (or paced) HTTP/1.1 load generator on raw keep-alive sockets, written for
// the IMDSv2 credential sequence an SDK performs: PUT token, GET role listing, GET credentials.
// It parses only what it needs (status, Content-Length or chunked body) so that the generator,
// not the server under test, stays cheap; every target in a run is driven by the same code.
import { connect, type Socket } from "node:net";
import { performance } from "node:perf_hooks";

export interface LoadOptions {
  host: string;
  port: number;
  /** Concurrent keep-alive connections, each running the sequence in a loop. */
  connections: number;
  durationMs: number;
  warmupMs: number;
  /** Source addresses, assigned round-robin to connections (e.g. 127.0.0.x = one pod each). */
  localAddresses?: string[];
  /** Sequences per second per connection; 0 = closed loop (as fast as possible). */
  ratePerConnection?: number;
  /** Expected role name (checked against the listing). */
  roleName?: string;
  /** "imds": token + list + creds. "get": one GET of `path` (baseline sanity). */
  mode?: "imds" | "imds-v1";
  tokenTtl?: number;
}

export interface LatencySummary {
  count: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
  meanUs: number;
}

export interface LoadResult {
  sequences: number;
  requests: number;
  errors: number;
  errorSamples: string[];
  statuses: Record<string, number>;
  elapsedMs: number;
  sequencesPerSec: number;
  requestsPerSec: number;
  sequence: LatencySummary;
  request: LatencySummary;
  connections: number;
  cpuUserMs: number;
  cpuSystemMs: number;
}

interface Response {
  status: number;
  body: Buffer;
}

class Samples {
  private a = new Float64Array(1 << 16);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  summary(): LatencySummary {
    const s = this.a.subarray(0, this.n).sort();
    const q = (p: number): number => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : 0);
    let sum = 0;
    for (let i = 0; i < s.length; i++) sum += s[i]!;
    const r = (x: number): number => Math.round(x * 1000) / 1000;
    return {
      count: s.length,
      p50Us: r(q(0.5) * 1000),
      p90Us: r(q(0.9) * 1000),
      p99Us: r(q(0.99) * 1000),
      p999Us: r(q(0.999) * 1000),
      maxUs: r((s.length ? s[s.length - 1]! : 0) * 1000),
      meanUs: r(s.length ? (sum / s.length) * 1000 : 0),
    };
  }
}

const CRLF2 = Buffer.from("\r\n\r\n");

/** One keep-alive connection with at most one request outstanding. */
class Conn {
  private sock: Socket;
  private buf: Buffer | undefined;
  private waiting: { resolve: (r: Response) => void; reject: (e: Error) => void } | undefined;
  private closedErr: Error | undefined;

  constructor(host: string, port: number, localAddress?: string) {
    this.sock = connect({ host, port, localAddress, noDelay: true });
    this.sock.on("data", (d: Buffer) => this.onData(d));
    const fail = (e: Error): void => {
      this.closedErr = e;
      const w = this.waiting;
      this.waiting = undefined;
      w?.reject(e);
    };
    this.sock.on("error", fail);
    this.sock.on("close", () => fail(new Error("connection closed")));
  }

  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.sock.once("connect", () => resolve());
      this.sock.once("error", reject);
    });
  }

  send(raw: string): Promise<Response> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.sock.write(raw);
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(d: Buffer): void {
    this.buf = this.buf === undefined || this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    const buf = this.buf;
    const he = buf.indexOf(CRLF2);
    if (he < 0) return;
    const head = buf.toString("latin1", 0, he);
    const status = Number(head.slice(9, 12));
    const lower = head.toLowerCase();
    const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
    let body: Buffer;
    let end: number;
    if (cl) {
      const len = Number(cl[1]);
      end = he + 4 + len;
      if (buf.length < end) return;
      body = buf.subarray(he + 4, end);
    } else if (/\r\ntransfer-encoding:\s*chunked/.test(lower)) {
      const parts: Buffer[] = [];
      let p = he + 4;
      for (;;) {
        const le = buf.indexOf("\r\n", p, "latin1");
        if (le < 0) return;
        const size = parseInt(buf.toString("latin1", p, le), 16);
        if (size === 0) {
          if (buf.length < le + 4) return;
          end = le + 4;
          break;
        }
        if (buf.length < le + 2 + size + 2) return;
        parts.push(buf.subarray(le + 2, le + 2 + size));
        p = le + 2 + size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      // no body framing (e.g. 204/304)
      end = he + 4;
      body = Buffer.alloc(0);
    }
    this.buf = end < buf.length ? buf.subarray(end) : undefined;
    const w = this.waiting;
    this.waiting = undefined;
    w?.resolve({ status, body });
  }
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const seq = new Samples();
  const req = new Samples();
  const statuses: Record<string, number> = {};
  const errorSamples: string[] = [];
  let errors = 0;
  let sequences = 0;
  let requests = 0;
  const ttl = o.tokenTtl ?? 21600;
  const hostHeader = "169.254.169.254";
  const putToken = `PUT /latest/api/token HTTP/1.1\r\nHost: ${hostHeader}\r\nUser-Agent: kc-bench\r\nX-aws-ec2-metadata-token-ttl-seconds: ${ttl}\r\nContent-Length: 0\r\n\r\n`;
  const listPath = "/latest/meta-data/iam/security-credentials/";
  const conns: Conn[] = [];
  for (let i = 0; i < o.connections; i++) {
    const la = o.localAddresses?.length ? o.localAddresses[i % o.localAddresses.length] : undefined;
    conns.push(new Conn(o.host, o.port, la));
  }
  await Promise.all(conns.map((c) => c.ready()));

  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const measureFrom = t0 + o.warmupMs;
  const stopAt = measureFrom + o.durationMs;
  const err = (m: string): void => {
    errors++;
    if (errorSamples.length < 10) errorSamples.push(m);
  };
  const note = (status: number): void => {
    statuses[status] = (statuses[status] ?? 0) + 1;
  };

  async function loop(c: Conn, idx: number): Promise<void> {
    const interval = o.ratePerConnection ? 1000 / o.ratePerConnection : 0;
    // spread paced connections over one interval
    let next = t0 + (interval ? (idx / o.connections) * interval : 0);
    while (performance.now() < stopAt) {
      let start: number;
      if (interval) {
        const wait = next - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        // Latency from the intended start (no coordinated omission), or from the actual one when
        // the timer fired early: Node's timers run on the event loop's cached millisecond clock
        // and can fire up to ~1 ms before `next`; counting from `next` would shorten the latency.
        start = Math.min(next, performance.now());
        next += interval;
      } else start = performance.now();
      const measuring = start >= measureFrom;
      try {
        let token = "";
        let a = performance.now();
        if (o.mode !== "imds-v1") {
          const r1 = await c.send(putToken);
          const b = performance.now();
          if (measuring) {
            req.push(b - a);
            note(r1.status);
          }
          if (r1.status !== 200) throw new Error(`token PUT: HTTP ${r1.status} ${r1.body.toString()}`);
          token = r1.body.toString("latin1");
          a = b;
        }
        const tokHeader = token ? `X-aws-ec2-metadata-token: ${token}\r\n` : "";
        const r2 = await c.send(
          `GET ${listPath} HTTP/1.1\r\nHost: ${hostHeader}\r\nUser-Agent: kc-bench\r\n${tokHeader}\r\n`,
        );
        const b2 = performance.now();
        if (measuring) {
          req.push(b2 - a);
          note(r2.status);
        }
        if (r2.status !== 200) throw new Error(`role list: HTTP ${r2.status} ${r2.body.toString()}`);
        const role = r2.body.toString("latin1");
        if (o.roleName && role !== o.roleName) throw new Error(`role list: got "${role}"`);
        const r3 = await c.send(
          `GET ${listPath}${role} HTTP/1.1\r\nHost: ${hostHeader}\r\nUser-Agent: kc-bench\r\n${tokHeader}\r\n`,
        );
        const end = performance.now();
        if (measuring) {
          req.push(end - b2);
          note(r3.status);
        }
        if (r3.status !== 200) throw new Error(`credentials: HTTP ${r3.status} ${r3.body.toString()}`);
        if (r3.body.indexOf("AccessKeyId") < 0) throw new Error("credentials: no AccessKeyId");
        if (measuring && end <= stopAt) {
          seq.push(end - start);
          sequences++;
          requests += o.mode === "imds-v1" ? 2 : 3;
        }
      } catch (e) {
        if (measuring) err((e as Error).message.slice(0, 200));
        if (/closed|ECONN|EPIPE/.test((e as Error).message)) return;
      }
    }
  }
  await Promise.all(conns.map((c, i) => loop(c, i)));
  const elapsed = Math.min(performance.now(), stopAt) - measureFrom;
  const cpu = process.cpuUsage(cpu0);
  for (const c of conns) c.close();
  return {
    sequences,
    requests,
    errors,
    errorSamples,
    statuses,
    elapsedMs: Math.round(elapsed),
    sequencesPerSec: Math.round((sequences / elapsed) * 1000),
    requestsPerSec: Math.round((requests / elapsed) * 1000),
    sequence: seq.summary(),
    request: req.summary(),
    connections: o.connections,
    cpuUserMs: Math.round(cpu.user / 1000),
    cpuSystemMs: Math.round(cpu.system / 1000),
  };
}
