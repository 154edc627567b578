import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";

/** A child process whose output is kept (bounded) to show when a test fails. */
export class ManagedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  private buf: string[] = [];
  private bufBytes = 0;
  /** Each stream on its own (bounded like the merged buffer): tests of what goes where. */
  private readonly streams = { stdout: "", stderr: "" };
  private exited: Promise<number | null>;
  private waiters: Array<{ re: RegExp; resolve: (line: string) => void }> = [];

  constructor(
    name: string,
    cmd: string,
    args: string[],
    opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
  ) {
    this.name = name;
    this.child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // own process group, so stop() reaches its children too
    });
    const onData = (chunk: Buffer): void => {
      const text = chunk.toString("utf8");
      this.buf.push(text);
      this.bufBytes += text.length;
      while (this.bufBytes > 2_000_000 && this.buf.length > 1) this.bufBytes -= this.buf.shift()!.length;
      if (this.waiters.length) {
        for (const line of text.split("\n")) {
          for (const w of [...this.waiters]) {
            if (w.re.test(line)) {
              this.waiters.splice(this.waiters.indexOf(w), 1);
              w.resolve(line);
            }
          }
        }
      }
    };
    const keep = (stream: "stdout" | "stderr") => (chunk: Buffer) => {
      this.streams[stream] = (this.streams[stream] + chunk.toString("utf8")).slice(-2_000_000);
    };
    this.child.stdout!.on("data", keep("stdout"));
    this.child.stderr!.on("data", keep("stderr"));
    this.child.stdout!.on("data", onData);
    this.child.stderr!.on("data", onData);
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => resolve(code ?? (signal ? -1 : null)));
      this.child.once("error", (err) => {
        this.buf.push(`spawn error: ${err.message}\n`);
        resolve(-1);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  logs(): string {
    return this.buf.join("");
  }

  /** What the process wrote to one of its streams. */
  output(stream: "stdout" | "stderr"): string {
    return this.streams[stream];
  }

  /** Resolves with the first output line matching re (already-printed lines included). */
  waitForLine(re: RegExp, timeoutMs = 10_000): Promise<string> {
    const seen = this.logs()
      .split("\n")
      .find((l) => re.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = {
        re,
        resolve: (line: string): void => {
          clearTimeout(t);
          resolve(line);
        },
      };
      const drop = (): boolean => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        return i >= 0;
      };
      const t = setTimeout(() => {
        drop();
        reject(new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms\n${this.tail()}`));
      }, timeoutMs);
      this.waiters.push(w);
      void this.exited.then((code) => {
        if (drop()) {
          clearTimeout(t);
          reject(new Error(`${this.name} exited (${code}) before printing ${re}\n${this.tail()}`));
        }
      });
    });
  }

  tail(lines = 40): string {
    return this.logs().split("\n").slice(-lines).join("\n");
  }

  waitForExit(): Promise<number | null> {
    return this.exited;
  }

  private signal(sig: NodeJS.Signals): void {
    if (!this.running || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, sig);
    } catch {
      try {
        this.child.kill(sig);
      } catch {
        /* already gone */
      }
    }
  }

  /** SIGTERM, then SIGKILL after graceMs. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.signal("SIGTERM");
    const t = setTimeout(() => this.signal("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  async kill(): Promise<void> {
    this.signal("SIGKILL");
    await this.exited;
  }
}

/** A TCP port that was free a moment ago (the kernel picks it). */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** Thrown from a waitFor probe to stop waiting at once (e.g. the process died). */
export class FatalError extends Error {}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  opts: { timeoutMs?: number; intervalMs?: number; onTimeout?: () => string } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      if (err instanceof FatalError) throw err;
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const detail = opts.onTimeout?.() ?? "";
      throw new Error(
        `timed out waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ""}${detail ? `\n${detail}` : ""}`,
      );
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}
