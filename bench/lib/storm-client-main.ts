// The pods' SDK-like clients for the storm, in their own process so that the "kubelet" (API
// calls) and the clients do not share an event loop. stdin: "<i> <ip>" when pod i's IP is set
// (the client starts at once), "end" after the last. stdout: one JSON line per pod.
// argv: agentHost agentPort
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { sdkFetch, sleep } from "./env.ts";

const host = process.argv[2] ?? "127.0.0.1";
const port = Number(process.argv[3]);
const pending: Promise<void>[] = [];

async function client(i: number, ip: string): Promise<void> {
  const ipAt = performance.now();
  const first = await sdkFetch(host, port, ip, 1000);
  let untilServed = first.ok ? first.ms : -1;
  let last = first;
  while (!last.ok && performance.now() - ipAt < 60_000) {
    await sleep(50);
    last = await sdkFetch(host, port, ip, 5000);
    if (last.ok) untilServed = performance.now() - ipAt;
  }
  process.stdout.write(
    JSON.stringify({ i, ipAt, first, untilServed, servedAt: untilServed >= 0 ? ipAt + untilServed : -1 }) +
      "\n",
  );
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (line === "end") break;
  if (line === "ping") {
    process.stdout.write(JSON.stringify({ ready: true, now: performance.now() }) + "\n");
    continue;
  }
  const [i, ip] = line.split(" ");
  pending.push(client(Number(i), ip!));
}
await Promise.all(pending);
process.exit(0);
