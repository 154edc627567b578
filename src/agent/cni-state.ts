// Which pod holds each IP, as the node itself records it: the CNI result cache that libcni (used
// by containerd's and CRI-O's CRI) writes for every attachment after a successful CNI ADD, as
// <dir>/<network>-<containerID>-<ifname> (JSON, kind "cniCacheV1", with the runtime's CNI_ARGS —
// K8S_POD_NAMESPACE, K8S_POD_NAME and, since containerd 1.6 and ocicni 0.3, K8S_POD_UID — and the
// plugin's result with the attachment's IPs), and removes after a successful CNI DEL. An IP is
// released only by that DEL, so this record changes before any other pod can get the IP, and
// without waiting for the apiserver.
//
// Kept as an in-memory map (IP → attachment) so that the pod index consults it only when
// something changes, never per request. fs.watch reports changes as they happen; a periodic
// rescan catches whatever it missed (and the directory appearing, e.g. on a fresh node). Work is
// bounded: at most MAX_ENTRIES names listed, MAX_FILES attachments kept, MAX_FILE_BYTES read per
// file, and only files whose inode, size or mtime changed are read again.
import { watch, type FSWatcher } from "node:fs";
import { lstat, open, opendir } from "node:fs/promises";
import { constants } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { repeat, systemClock, type Timers } from "../common/clock.ts";
import type { Logger } from "../common/logger.ts";
import type { IpHolder, NodeAttachments } from "./pod-index.ts";

export const CNI_CACHE_KIND = "cniCacheV1";
/** A result cache file is a few KiB (the network config list, base64, and the result). */
export const MAX_FILE_BYTES = 64 * 1024;
/** Attachments kept (a node runs a few hundred pods, each with one or a few interfaces). */
export const MAX_FILES = 4096;
/** Directory entries looked at per scan; beyond it the rest is not listed. */
export const MAX_ENTRIES = 4 * MAX_FILES;
const MAX_IPS = 32;
const MAX_ARGS = 64;
/** Longer than any Kubernetes name, UID or container ID. */
const MAX_FIELD = 256;

export interface Attachment extends IpHolder {
  networkName: string;
  ifName: string;
  ips: string[];
}

export type ParseResult = { ok: true; attachment: Attachment } | { ok: false; problem: string };

function field(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" && v.length <= MAX_FIELD ? v : undefined;
}

/** "10.1.2.3/24" or "10.1.2.3" → "10.1.2.3"; undefined when not an IP address. */
function addressOf(v: unknown): string | undefined {
  if (typeof v !== "string" || v.length > 64) return undefined;
  const slash = v.indexOf("/");
  const ip = slash >= 0 ? v.slice(0, slash) : v;
  return isIP(ip) !== 0 ? ip : undefined;
}

function resultIps(result: unknown): string[] | undefined {
  if (result === null || typeof result !== "object") return undefined;
  const r = result as { ips?: unknown; ip4?: { ip?: unknown }; ip6?: { ip?: unknown } };
  const ips: string[] = [];
  if (Array.isArray(r.ips)) {
    if (r.ips.length > MAX_IPS) return undefined;
    for (const e of r.ips) {
      const ip = addressOf((e as { address?: unknown } | null)?.address);
      if (ip === undefined) return undefined;
      ips.push(ip);
    }
  }
  // results of CNI spec 0.1/0.2
  for (const legacy of [r.ip4, r.ip6]) {
    if (legacy === undefined) continue;
    const ip = addressOf(legacy?.ip);
    if (ip === undefined) return undefined;
    ips.push(ip);
  }
  return ips;
}

/**
 * One result cache file. Anything that is not a complete cniCacheV1 record naming its container,
 * network and interface, with well-formed IPs, is refused as a whole: a half-understood record
 * must not attach an IP to anyone.
 */
export function parseCniCache(bytes: Buffer | string): ParseResult {
  const size = typeof bytes === "string" ? Buffer.byteLength(bytes) : bytes.length;
  if (size > MAX_FILE_BYTES) return { ok: false, problem: `larger than ${MAX_FILE_BYTES} bytes` };
  let doc: unknown;
  try {
    doc = JSON.parse(typeof bytes === "string" ? bytes : bytes.toString("utf8"));
  } catch {
    return { ok: false, problem: "not JSON" };
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc))
    return { ok: false, problem: "not an object" };
  const d = doc as Record<string, unknown>;
  if (d.kind !== CNI_CACHE_KIND) return { ok: false, problem: "unknown kind" };
  const containerId = field(d.containerId);
  const networkName = field(d.networkName);
  const ifName = field(d.ifName);
  if (!containerId || !networkName || !ifName)
    return { ok: false, problem: "no containerId, networkName or ifName" };
  const args = new Map<string, string>();
  if (d.cniArgs !== undefined) {
    if (!Array.isArray(d.cniArgs) || d.cniArgs.length > MAX_ARGS)
      return { ok: false, problem: "bad cniArgs" };
    for (const pair of d.cniArgs) {
      if (
        !Array.isArray(pair) ||
        pair.length !== 2 ||
        typeof pair[0] !== "string" ||
        typeof pair[1] !== "string"
      )
        return { ok: false, problem: "bad cniArgs" };
      if (pair[1].length > MAX_FIELD) return { ok: false, problem: "bad cniArgs" };
      args.set(pair[0], pair[1]);
    }
  }
  const ips = resultIps(d.result);
  if (ips === undefined) return { ok: false, problem: "bad result IPs" };
  return {
    ok: true,
    attachment: {
      containerId,
      networkName,
      ifName,
      podUid: field(args.get("K8S_POD_UID")),
      namespace: field(args.get("K8S_POD_NAMESPACE")),
      name: field(args.get("K8S_POD_NAME")),
      ips,
    },
  };
}

interface FileRecord {
  /** inode, size and mtime: the file is read again only when one changes. */
  stamp: string;
  mtimeMs: number;
  /** undefined: the file could not be used (attaches nothing). */
  attachment: Attachment | undefined;
}

type Read =
  { kind: "gone" } | { kind: "record"; record: FileRecord; problem: string | undefined } | { kind: "skip" };

function stampOf(st: { ino: number | bigint; size: number | bigint; mtimeMs: number }): string {
  return `${st.ino}:${st.size}:${st.mtimeMs}`;
}

function errCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

async function readRecord(path: string): Promise<Read> {
  let fh;
  try {
    // no symlinks (they could point anywhere), and a FIFO must not block the read
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = errCode(err);
    if (code === "ENOENT") return { kind: "gone" };
    if (code === "ELOOP" || code === "EISDIR" || code === "ENXIO") return { kind: "skip" };
    // e.g. EACCES: remembered with its stamp, so that it is tried again only once it changes
    const st = await lstat(path).catch(() => undefined);
    if (st === undefined) return { kind: "gone" };
    return {
      kind: "record",
      record: { stamp: stampOf(st), mtimeMs: st.mtimeMs, attachment: undefined },
      problem: `unreadable (${code})`,
    };
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return { kind: "skip" };
    const base = { stamp: stampOf(st), mtimeMs: st.mtimeMs };
    if (st.size > MAX_FILE_BYTES)
      return { kind: "record", record: { ...base, attachment: undefined }, problem: "too large" };
    const buf = Buffer.allocUnsafe(Math.min(st.size, MAX_FILE_BYTES) + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    const parsed = parseCniCache(buf.subarray(0, bytesRead));
    return parsed.ok
      ? { kind: "record", record: { ...base, attachment: parsed.attachment }, problem: undefined }
      : { kind: "record", record: { ...base, attachment: undefined }, problem: parsed.problem };
  } finally {
    await fh.close();
  }
}

export type CniStateStatus =
  | { state: "active"; attachments: number; ignored: number }
  | { state: "absent" | "unreadable"; detail: string };

export interface CniStateOptions {
  /** The result cache directory, e.g. /var/lib/cni/results. */
  dir: string;
  log: Logger;
  /** IPs whose holder changed; undefined: possibly all (the record appeared or went away). */
  onChange: (ips: string[] | undefined) => void;
  /** Full rescan period; 0: only at start and when asked (rescan()). */
  rescanMs: number;
  /** The rescan's timer. */
  timers?: Timers;
}

export class CniState implements NodeAttachments {
  private readonly opts: CniStateOptions;
  private readonly files = new Map<string, FileRecord>();
  /** IP → the files whose attachment lists it (more than one only with a stale file). */
  private readonly byIp = new Map<string, Set<string>>();
  private current: CniStateStatus = { state: "absent", detail: "not scanned yet" };
  private watcher: FSWatcher | undefined;
  private stopRescans: (() => void) | undefined;
  /** Every read of the directory runs on this chain, one at a time. */
  private chain: Promise<void> = Promise.resolve();
  private readonly pending = new Set<string>();
  private drainQueued = false;
  private rescanQueued: Promise<void> | undefined;
  private stopped = false;
  private started = false;
  private watchWarned = false;
  /** Directory entries left out by the bounds at the last scan. */
  private overflow = 0;
  /** Files already reported as unusable, so that a rescan does not log them again. */
  private readonly reported = new Set<string>();

  constructor(opts: CniStateOptions) {
    this.opts = opts;
  }

  get active(): boolean {
    return this.current.state === "active";
  }

  status(): CniStateStatus {
    return this.current;
  }

  holderOf(ip: string): IpHolder | undefined {
    const names = this.byIp.get(ip);
    if (names === undefined) return undefined;
    // A stale file (a DEL that never ran) may still list an IP the IPAM has since given to
    // another attachment: the most recently written one holds it.
    let best: { name: string; record: FileRecord } | undefined;
    for (const name of names) {
      const record = this.files.get(name)!;
      if (
        best === undefined ||
        record.mtimeMs > best.record.mtimeMs ||
        (record.mtimeMs === best.record.mtimeMs && name > best.name)
      )
        best = { name, record };
    }
    return best?.record.attachment;
  }

  /** The first scan (so that the agent never serves before it knows the node's state), then the timer. */
  async start(): Promise<void> {
    await this.rescan();
    this.started = true;
    const s = this.current;
    if (s.state === "active")
      this.opts.log.info(
        {
          dir: this.opts.dir,
          attachments: s.attachments,
          ignored: s.ignored,
          watching: this.watcher !== undefined,
        },
        "CNI state read: a pod is served at an IP only while the node's CNI state attaches that IP to it",
      );
    else
      this.opts.log.warn(
        { dir: this.opts.dir, state: s.state, detail: s.detail },
        "CNI state unavailable: IPs are attributed from the pod watch alone (a reused IP can be served as its previous pod until the watch shows that pod gone); rechecked periodically",
      );
    if (this.opts.rescanMs > 0) {
      this.stopRescans = repeat(
        this.opts.timers ?? systemClock,
        this.opts.rescanMs,
        () => void this.rescan(),
      );
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopRescans?.();
    this.closeWatcher();
    await this.chain;
  }

  /** A full scan of the directory, after whatever is running now; coalesces with a queued one. */
  rescan(): Promise<void> {
    if (this.rescanQueued) return this.rescanQueued;
    const run = this.enqueue(async () => {
      this.rescanQueued = undefined;
      await this.scan();
    });
    this.rescanQueued = run;
    return run;
  }

  /** Resolves once every change reported so far has been applied (tests). */
  settled(): Promise<void> {
    return this.enqueue(async () => {});
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const next = this.chain.then(async () => {
      if (this.stopped) return;
      try {
        await task();
      } catch (err) {
        this.opts.log.error({ dir: this.opts.dir, err }, "CNI state update failed");
      }
    });
    this.chain = next;
    return next;
  }

  private closeWatcher(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  private ensureWatcher(): void {
    if (this.watcher || this.stopped) return;
    try {
      const w = watch(this.opts.dir, { persistent: false }, (_event, name) => this.changed(name));
      w.on("error", (err) => {
        this.opts.log.warn(
          { dir: this.opts.dir, err: err.message },
          "CNI state watch failed: relying on the periodic rescan",
        );
        if (this.watcher === w) this.closeWatcher();
        void this.rescan();
      });
      this.watcher = w;
    } catch (err) {
      // e.g. ENOSPC (inotify watches exhausted): the rescan still finds every change, later
      if (this.watchWarned) return;
      this.watchWarned = true;
      this.opts.log.warn(
        { dir: this.opts.dir, err: errCode(err), rescanMs: this.opts.rescanMs },
        "cannot watch the CNI state directory: changes are seen at the next rescan only",
      );
    }
  }

  private changed(name: string | Buffer | null): void {
    if (this.stopped) return;
    if (typeof name !== "string" || name === "" || name.includes("/")) {
      void this.rescan();
      return;
    }
    if (this.pending.size >= MAX_FILES) {
      void this.rescan();
      return;
    }
    this.pending.add(name);
    if (this.drainQueued) return;
    this.drainQueued = true;
    void this.enqueue(async () => {
      this.drainQueued = false;
      await this.drain();
    });
  }

  private async drain(): Promise<void> {
    if (!this.active) {
      this.pending.clear(); // the next scan reads everything
      return;
    }
    const changed = new Set<string>();
    while (this.pending.size > 0) {
      const name = this.pending.values().next().value!;
      this.pending.delete(name);
      if (!this.files.has(name) && this.files.size >= MAX_FILES) {
        // full: a scan decides which (the newest) are kept
        this.pending.clear();
        void this.rescan();
        break;
      }
      const read = await readRecord(join(this.opts.dir, name));
      // a file can be caught while the runtime is still writing it: only a scan reports problems
      this.apply(name, read, changed, false);
    }
    this.updateCounts();
    if (changed.size > 0) this.opts.onChange([...changed]);
  }

  private apply(name: string, read: Read, changed: Set<string>, report: boolean): void {
    const before = this.files.get(name);
    const wasReported = this.reported.has(name);
    if (before) this.forget(name, before, changed);
    if (read.kind !== "record") return;
    if (read.problem !== undefined && (wasReported || report)) {
      if (!wasReported)
        // the file name holds the network, container ID and interface: no secret
        this.opts.log.warn(
          { dir: this.opts.dir, file: name, problem: read.problem },
          "CNI state file ignored: its IPs are attached to no pod",
        );
      this.reported.add(name);
    }
    this.files.set(name, read.record);
    for (const ip of read.record.attachment?.ips ?? []) {
      let set = this.byIp.get(ip);
      if (!set) this.byIp.set(ip, (set = new Set()));
      set.add(name);
      changed.add(ip);
    }
  }

  private forget(name: string, record: FileRecord, changed: Set<string>): void {
    this.files.delete(name);
    this.reported.delete(name);
    for (const ip of record.attachment?.ips ?? []) {
      const set = this.byIp.get(ip);
      set?.delete(name);
      if (set?.size === 0) this.byIp.delete(ip);
      changed.add(ip);
    }
  }

  private updateCounts(): void {
    let ignored = this.overflow;
    for (const r of this.files.values()) if (r.attachment === undefined) ignored++;
    if (this.current.state === "active")
      this.current = { state: "active", attachments: this.files.size, ignored };
  }

  private unavailable(state: "absent" | "unreadable", detail: string): void {
    const was = this.current;
    this.closeWatcher();
    this.files.clear();
    this.byIp.clear();
    this.reported.clear();
    this.current = { state, detail };
    if (was.state === "active") {
      this.opts.log.warn(
        { dir: this.opts.dir, state, detail },
        "CNI state no longer available: IPs are attributed from the pod watch alone",
      );
      this.opts.onChange(undefined);
    }
  }

  private async scan(): Promise<void> {
    const dir = this.opts.dir;
    const entries: { name: string; mtimeMs: number; stamp: string }[] = [];
    let listed = 0;
    try {
      const handle = await opendir(dir, { bufferSize: 256 });
      // watch before listing: a file written meanwhile is reported by the watch
      this.ensureWatcher();
      for await (const e of handle) {
        if (++listed > MAX_ENTRIES) break;
        // symlinks and directories attach nothing (d_type may be unknown: lstat decides)
        if (e.isDirectory() || e.isSymbolicLink()) continue;
        try {
          const st = await lstat(join(dir, e.name));
          if (st.isFile()) entries.push({ name: e.name, mtimeMs: st.mtimeMs, stamp: stampOf(st) });
        } catch {
          // removed meanwhile
        }
      }
    } catch (err) {
      const code = errCode(err);
      this.unavailable(code === "ENOENT" ? "absent" : "unreadable", `${code} ${dir}`);
      return;
    }
    // over the bound, the most recently written attachments are the ones that matter
    entries.sort((x, y) => y.mtimeMs - x.mtimeMs);
    this.overflow = Math.max(0, entries.length - MAX_FILES) + Math.max(0, listed - MAX_ENTRIES);
    const kept = entries.slice(0, MAX_FILES);
    const keep = new Set(kept.map((e) => e.name));
    const changed = new Set<string>();
    for (const [name, record] of [...this.files]) if (!keep.has(name)) this.forget(name, record, changed);
    for (const e of kept) {
      const before = this.files.get(e.name);
      if (before?.stamp === e.stamp) continue;
      this.apply(e.name, await readRecord(join(dir, e.name)), changed, true);
    }
    const wasActive = this.active;
    this.current = { state: "active", attachments: 0, ignored: 0 };
    this.updateCounts();
    if (!wasActive) {
      if (this.started) this.opts.log.info({ dir, attachments: this.files.size }, "CNI state available");
      this.opts.onChange(undefined);
    } else if (changed.size > 0) this.opts.onChange([...changed]);
  }
}
