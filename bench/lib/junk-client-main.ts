// The hostile client of the TokenReview-flood benchmark, in its own process so that it does not
// share an event loop with the legitimate agents being measured. It sends junk bearer tokens to
// the server's API port at a fixed rate from one source address, over keep-alive connections as
// an attacker would, until stdin closes or the duration ends; then prints one JSON line.
// argv: JSON {port, caFile, localAddress, ratePerSecond, durationMs, connections}
import { ApiClientFrom, forgedToken, junkTokens } from "../../test/server/flood.ts";
import { sleep } from "./env.ts";

interface Args {
  port: number;
  caFile: string;
  localAddress: string;
  ratePerSecond: number;
  durationMs: number;
  connections: number;
}

const args = JSON.parse(process.argv[2] ?? "{}") as Args;
const client = new ApiClientFrom(args.port, args.caFile, args.localAddress, args.connections);
const statuses: Record<string, number> = {};
let stop = false;
process.stdin.on("close", () => (stop = true));
process.stdin.resume();

// half forged agent tokens that pass every local check (a fresh one each time), half junk of
// every other shape
const junk = junkTokens().map((j) => j.token);
const nextToken = (i: number): string => (i % 2 === 0 ? forgedToken() : junk[(i >> 1) % junk.length]!);

const t0 = performance.now();
const inflight = new Set<Promise<void>>();
let sent = 0;
// one request per connection at a time (HTTP/1.1): a slow server answers fewer of them
const maxInflight = args.connections;
while (!stop && performance.now() - t0 < args.durationMs) {
  const due = Math.floor(((performance.now() - t0) / 1000) * args.ratePerSecond);
  while (sent < due && inflight.size < maxInflight) {
    const p = client.post(nextToken(sent), { pod: { namespace: "x", name: "y", uid: "z" } }).then((r) => {
      const k = String(r.status);
      statuses[k] = (statuses[k] ?? 0) + 1;
      inflight.delete(p);
    });
    inflight.add(p);
    sent++;
  }
  await sleep(2);
}
const seconds = (performance.now() - t0) / 1000;
await Promise.all(inflight);
client.close();
console.log(JSON.stringify({ sent, seconds, achievedPerSecond: Math.round(sent / seconds), statuses }));
process.exit(0);
