// The hand-over between the agent that owns a node's hook and its successor (a DaemonSet surge
// pod): over a unix socket in a root-only host directory, the successor receives the IMDSv2 token
// key and the credentials the old agent holds, asks it to stop repairing the hook, switches the
// DNAT to itself, and says so; the old agent then drains. Nothing is written to disk: the state
// goes from one process's memory to the other's.
//
// One JSON message a line. Successor → owner: hello, pause, took-over. Owner → successor: state,
// paused, bye. A successor that goes away between pause and took-over gives the hook back to the
// owner's repair loop.
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { chmodSync, mkdirSync, statSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import type { CredentialsResponse, PodRef } from "../api/contract.ts";
import { isCredentialsResponse } from "../api/contract.ts";
import { systemClock, type Clock, type Timers } from "../common/clock.ts";
import type { Logger } from "../common/logger.ts";

export const HANDOVER_SOCKET = "agent.sock";
/** A hand-over carries a node's worth of credentials (a few KiB each); anything longer is refused. */
const MAX_LINE_BYTES = 32 * 1024 * 1024;
/** The whole conversation: a successor that stalls longer gives the hook back to the owner. */
export const HANDOVER_TIMEOUT_MS = 120_000;

export interface HandedOverCreds {
  pod: PodRef;
  response: CredentialsResponse;
  requestedAtMs: number;
  fetchedAtMs: number;
  /**
   * The pod's own tokens the server accepted (container-credentials path), as sha256 digests
   * with the time until which that acceptance is trusted: the successor validates none again.
   */
  acceptedTokens?: Array<[string, number]>;
}

export interface HandoverState {
  node: string;
  /** The owner's generation (the DNAT rules' marker); the successor takes generation + 1. */
  generation: number;
  /** The owner's port slot (0 or 1); the successor listens on the other. */
  slot: 0 | 1;
  /** The IMDSv2 token HMAC key, base64: tokens the owner issued stay valid. */
  tokenKey: string;
  creds: HandedOverCreds[];
}

type Message =
  | { op: "hello"; node: string }
  | ({ op: "state" } & HandoverState)
  | { op: "pause" }
  | { op: "paused" }
  | { op: "took-over"; generation: number }
  | { op: "bye" };

/** Reads newline-delimited JSON messages from `socket`, bounded per line. */
function readMessages(socket: Socket, onMessage: (m: Message) => void, onBad: (why: string) => void): void {
  let buffered: Buffer[] = [];
  let length = 0;
  socket.on("data", (chunk: Buffer) => {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      buffered.push(chunk.subarray(start, nl));
      const line = Buffer.concat(buffered).toString("utf8");
      buffered = [];
      length = 0;
      start = nl + 1;
      let m: unknown;
      try {
        m = JSON.parse(line);
      } catch {
        return onBad("not JSON");
      }
      if (typeof m !== "object" || m === null || typeof (m as { op?: unknown }).op !== "string")
        return onBad("no op");
      onMessage(m as Message);
    }
    length += chunk.length - start;
    if (length > MAX_LINE_BYTES) return onBad("line too long");
    if (start < chunk.length) buffered.push(chunk.subarray(start));
  });
}

function send(socket: Socket, m: Message): void {
  if (!socket.destroyed) socket.write(JSON.stringify(m) + "\n");
}

/** Validates the state a predecessor sent; throws on anything malformed. */
export function parseState(m: Record<string, unknown>, node: string): HandoverState {
  const { generation, slot, tokenKey, creds } = m;
  if (m.node !== node) throw new Error(`hand-over from another node (${String(m.node)})`);
  if (typeof generation !== "number" || !Number.isSafeInteger(generation) || generation < 0)
    throw new Error("hand-over without a valid generation");
  if (slot !== 0 && slot !== 1) throw new Error("hand-over without a valid slot");
  if (typeof tokenKey !== "string" || Buffer.from(tokenKey, "base64").length < 16)
    throw new Error("hand-over without a valid token key");
  if (!Array.isArray(creds)) throw new Error("hand-over without credentials list");
  const out: HandedOverCreds[] = [];
  for (const c of creds as unknown[]) {
    const e = c as Partial<HandedOverCreds> | null;
    const pod = e?.pod;
    if (
      typeof pod?.uid !== "string" ||
      typeof pod.namespace !== "string" ||
      typeof pod.name !== "string" ||
      !isCredentialsResponse(e?.response) ||
      typeof e?.requestedAtMs !== "number" ||
      typeof e.fetchedAtMs !== "number" ||
      !validDigests(e.acceptedTokens)
    )
      throw new Error("hand-over with a malformed credentials entry");
    out.push({
      pod: { uid: pod.uid, namespace: pod.namespace, name: pod.name },
      response: e.response,
      requestedAtMs: e.requestedAtMs,
      fetchedAtMs: e.fetchedAtMs,
      acceptedTokens: e.acceptedTokens,
    });
  }
  return { node, generation, slot, tokenKey, creds: out };
}

/** Digests of the sha256 (base64url) form, at most a pod memo's worth. */
function validDigests(v: unknown): boolean {
  if (v === undefined) return true;
  return (
    Array.isArray(v) &&
    v.length <= 256 &&
    v.every(
      (d) =>
        Array.isArray(d) &&
        d.length === 2 &&
        typeof d[0] === "string" &&
        /^[A-Za-z0-9_-]{43}$/.test(d[0]) &&
        typeof d[1] === "number",
    )
  );
}

/** The owner's side: what it hands over, and what it does when asked to pause and to step down. */
export interface OwnerRole {
  state(): HandoverState;
  /** Stop repairing the hook; resolves once no repair is in flight. */
  pauseRepair(): Promise<void>;
  /** The successor went away before taking over: repair again. */
  resumeRepair(): void;
  /** The successor owns the DNAT now (generation `g`): drain and stay out of the rules. */
  stepDown(g: number): void;
}

export class HandoverServer {
  private readonly server: Server;
  private readonly path: string;
  private inode = -1;
  private successor: Socket | undefined;
  private tookOver = false;
  private readonly waiters: Array<() => void> = [];
  private readonly connectWaiters: Array<() => void> = [];
  private readonly timers: Timers;

  private constructor(server: Server, path: string, timers: Timers) {
    this.server = server;
    this.path = path;
    this.timers = timers;
  }

  /**
   * Listens on `dir`/agent.sock (replacing a previous owner's path; its listener keeps its fd).
   * `timers`: the waits for a successor and the hand-over's deadline.
   */
  static async listen(
    dir: string,
    role: OwnerRole,
    log: Logger,
    timers: Timers = systemClock,
  ): Promise<HandoverServer> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    const path = join(dir, HANDOVER_SOCKET);
    try {
      unlinkSync(path);
    } catch {
      // none yet
    }
    const server = createServer();
    const self = new HandoverServer(server, path, timers);
    server.on("connection", (socket) => self.accept(socket, role, log));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    self.inode = statSync(path).ino;
    return self;
  }

  /** A successor is connected and has not taken over yet. */
  get successorPending(): boolean {
    return this.successor !== undefined && !this.tookOver;
  }

  /**
   * Resolves true once a successor is connected (now or within `ms`), else false. On SIGTERM the
   * new pod may already be Ready while its process is still starting: the node's probes on the
   * shared ops port were answered by this agent.
   */
  waitForSuccessor(ms: number): Promise<boolean> {
    if (this.successor || this.tookOver) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = this.timers.setTimeout(() => resolve(this.successor !== undefined || this.tookOver), ms);
      this.connectWaiters.push(() => {
        this.timers.clearTimeout(t);
        resolve(true);
      });
    });
  }

  /** Resolves when the successor took over (true) or went away, or after `ms` (false). */
  waitForTakeOver(ms: number): Promise<boolean> {
    if (this.tookOver) return Promise.resolve(true);
    if (!this.successor) return Promise.resolve(false);
    return new Promise((resolve) => {
      const t = this.timers.setTimeout(() => resolve(this.tookOver), ms);
      this.waiters.push(() => {
        this.timers.clearTimeout(t);
        resolve(this.tookOver);
      });
    });
  }

  private settle(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private accept(socket: Socket, role: OwnerRole, log: Logger): void {
    if (this.successor || this.tookOver) {
      socket.destroy();
      return;
    }
    this.successor = socket;
    for (const w of this.connectWaiters.splice(0)) w();
    let paused = false;
    const timer = this.timers.setTimeout(() => socket.destroy(), HANDOVER_TIMEOUT_MS);
    timer.unref?.();
    socket.on("error", () => socket.destroy());
    socket.on("close", () => {
      this.timers.clearTimeout(timer);
      if (this.successor === socket) this.successor = undefined;
      if (paused && !this.tookOver) {
        log.warn("hand-over successor left before taking over: repairing the hook again");
        role.resumeRepair();
      }
      this.settle();
    });
    readMessages(
      socket,
      (m) => {
        if (m.op === "hello") {
          const state = role.state();
          if (m.node !== state.node) {
            log.warn({ node: m.node }, "hand-over asked for another node: refused");
            socket.destroy();
            return;
          }
          log.info({ creds: state.creds.length }, "handing over to a successor");
          send(socket, { op: "state", ...state });
        } else if (m.op === "pause") {
          paused = true;
          role.pauseRepair().then(
            () => send(socket, { op: "paused" }),
            () => socket.destroy(),
          );
        } else if (m.op === "took-over" && paused && Number.isSafeInteger(m.generation)) {
          this.tookOver = true;
          role.stepDown(m.generation);
          send(socket, { op: "bye" });
          socket.end();
          this.settle();
        } else socket.destroy();
      },
      (why) => {
        log.warn({ why }, "bad hand-over message: connection closed");
        socket.destroy();
      },
    );
  }

  /**
   * Stops listening. Closing a unix listener unlinks its path (libuv), which after a hand-over
   * is the successor's socket: then the listener (reachable by nobody, its file is gone) is only
   * unreferenced and goes with the process.
   */
  close(): Promise<void> {
    this.successor?.destroy();
    let ours: boolean;
    try {
      ours = statSync(this.path).ino === this.inode;
    } catch {
      // the path is gone: closing unlinks nothing
      ours = true;
    }
    if (!ours) {
      this.server.unref();
      return Promise.resolve();
    }
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** The successor's side of one hand-over. */
export class Predecessor {
  readonly state: HandoverState;
  private readonly socket: Socket;
  private readonly next: (op: Message["op"]) => Promise<Message>;

  /**
   * Connects to the owner on `dir`/agent.sock and receives its state; undefined when nobody
   * listens there (first agent on the node, or the owner crashed). `clock`: each step's deadline.
   */
  static async connect(
    dir: string,
    node: string,
    timeoutMs: number,
    clock: Clock = systemClock,
  ): Promise<Predecessor | undefined> {
    const socket = createConnection(join(dir, HANDOVER_SOCKET));
    const inbox: Message[] = [];
    let wake: (() => void) | undefined;
    let failure: Error | undefined;
    const fail = (why: string): void => {
      failure ??= new Error(why);
      socket.destroy();
      wake?.();
    };
    socket.on("error", (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
    socket.on("close", () => fail("closed"));
    readMessages(
      socket,
      (m) => {
        inbox.push(m);
        wake?.();
      },
      fail,
    );
    const next = async (op: Message["op"]): Promise<Message> => {
      const deadline = clock.now() + timeoutMs;
      for (;;) {
        const m = inbox.shift();
        if (m) {
          if (m.op !== op) throw new Error(`hand-over: expected ${op}, got ${m.op}`);
          return m;
        }
        if (failure) throw failure;
        const left = deadline - clock.now();
        if (left <= 0) throw new Error(`hand-over: no ${op} within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const t = clock.setTimeout(resolve, left);
          wake = () => {
            clock.clearTimeout(t);
            resolve();
          };
        });
        wake = undefined;
      }
    };
    const connected = await new Promise<boolean>((resolve) => {
      socket.once("connect", () => resolve(true));
      socket.once("error", () => resolve(false));
    });
    if (!connected) return undefined;
    send(socket, { op: "hello", node });
    try {
      const m = (await next("state")) as Record<string, unknown>;
      return new Predecessor(parseState(m, node), socket, next);
    } catch (err) {
      // a silent or malformed owner: the successor starts cold, and the owner sees it gone (its
      // successorPending ends) instead of waiting out its own hand-over timeout
      socket.destroy();
      throw err;
    }
  }

  private constructor(state: HandoverState, socket: Socket, next: (op: Message["op"]) => Promise<Message>) {
    this.state = state;
    this.socket = socket;
    this.next = next;
  }

  /** Asks the owner to stop repairing the hook; resolves once it has. */
  async pause(): Promise<void> {
    send(this.socket, { op: "pause" });
    await this.next("paused");
  }

  /** Tells the owner the DNAT is ours now, at `generation`. */
  async tookOver(generation: number): Promise<void> {
    send(this.socket, { op: "took-over", generation });
    await this.next("bye");
    this.socket.destroy();
  }

  close(): void {
    this.socket.destroy();
  }
}
