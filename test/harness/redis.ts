import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:net";
import { ManagedProcess, freePort, waitFor } from "./process.ts";

export interface Redis {
  url: string;
  /** The same server, addressed from another network namespace via host. */
  urlFor(host: string): string;
  port: number;
  process: ManagedProcess;
  /** Sends one inline command and returns the raw reply. */
  command(line: string): Promise<string>;
  stop(): Promise<void>;
  /** SIGKILL, for fault tests. */
  kill(): Promise<void>;
  /** Starts it again on the same port (after kill/stop). */
  restart(): Promise<void>;
}

function rawCommand(port: number, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, "127.0.0.1");
    let out = "";
    sock.setTimeout(2000, () => sock.destroy(new Error("redis: timeout")));
    sock.on("data", (d) => {
      out += d.toString();
      if (out.endsWith("\r\n")) {
        sock.end();
        resolve(out);
      }
    });
    sock.on("error", reject);
    sock.write(`${line}\r\n`);
  });
}

/** Debian's redis-server on a free port, without persistence. */
export async function startRedis(): Promise<Redis> {
  const port = await freePort("0.0.0.0");
  const dir = mkdtempSync(join(tmpdir(), "kc-redis-"));
  const start = async (): Promise<ManagedProcess> => {
    const p = new ManagedProcess("redis", "redis-server", [
      "--port",
      String(port),
      "--bind",
      "0.0.0.0",
      "--protected-mode",
      "no",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
    ]);
    await waitFor("redis PONG", async () => (await rawCommand(port, "PING")).startsWith("+PONG"), {
      timeoutMs: 10_000,
      onTimeout: () => p.tail(),
    });
    return p;
  };
  let proc = await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    urlFor: (host) => `redis://${host}:${port}`,
    port,
    get process() {
      return proc;
    },
    command: (line) => rawCommand(port, line),
    async stop() {
      await proc.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    kill: () => proc.kill(),
    async restart() {
      proc = await start();
    },
  };
}
