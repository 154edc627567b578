// A supervised, node-scoped pod watch (list + watch): relists on 410 Gone, reconnects with capped
// exponential backoff, tracks bookmarks, and reports staleness. It keeps only the few fields a
// node agent needs (PodInfo), never whole pod objects. It speaks to the apiserver through the
// small ApiClient, not the official client, whose weight alone would exceed the agent's budget.
import type { V1Pod } from "@kubernetes/client-node";
import type { Logger } from "../common/logger.ts";
import { systemClock, type Clock, type TimerHandle } from "../common/clock.ts";
import { ApiError, type ApiClient } from "../k8s/api-client.ts";
import { isMirrorPod } from "../k8s/mirror-pod.ts";

export interface PodInfo {
  uid: string;
  namespace: string;
  name: string;
  /** status.podIP, "" when not assigned yet. */
  ip: string;
  /** All of status.podIPs (includes `ip`). */
  ips: string[];
  hostNetwork: boolean;
  phase: string;
  /** metadata.deletionTimestamp is set: the pod is terminating. */
  terminating: boolean;
  /**
   * Nothing in the pod can make a request any more: every container (init containers aside) has
   * terminated, or the pod is terminating and none of its containers (init, app or ephemeral) is
   * running. Its sandbox — and IP — may then be released and reused before the API object goes.
   */
  containersDone: boolean;
  serviceAccountName: string;
  nodeName: string;
  /**
   * A static pod's mirror (annotation kubernetes.io/config.mirror or a Node owner): the server
   * refuses it, so the agent does not prefetch for it.
   */
  mirror?: boolean;
}

export interface PodWatchHandler {
  /** A pod was added or changed. */
  upsert(pod: PodInfo): void;
  /** A pod was deleted. */
  remove(uid: string): void;
  /** A full list replaced the state: pods missing from `pods` are gone. */
  resync(pods: PodInfo[]): void;
}

export interface PodWatchOptions {
  api: ApiClient;
  nodeName: string;
  handler: PodWatchHandler;
  log: Logger;
  /** Server-side watch timeout; the watch is re-opened from the last resourceVersion after it. */
  watchTimeoutSeconds?: number;
  /** No event, bookmark or successful (re)connect for this long: the watch is stale. */
  staleAfterMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Drop a watch (or its connect) after this long without a byte; default 75 s. */
  inactivityTimeoutMs?: number;
  /** Called on every restart of the watch loop (metrics). */
  onRestart?: (reason: "gone" | "error" | "closed") => void;
  /** Staleness, backoff and its jitter; tests pass a manual clock. */
  clock?: Clock;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type RawPod = any;

export function toPodInfo(p: V1Pod | RawPod): PodInfo | undefined {
  const md = p?.metadata;
  if (!md?.uid || !md.name || !md.namespace) return undefined;
  const status = p.status ?? {};
  const ips: string[] = [];
  if (Array.isArray(status.podIPs)) {
    for (const e of status.podIPs) if (typeof e?.ip === "string" && e.ip) ips.push(e.ip);
  }
  const ip = typeof status.podIP === "string" ? status.podIP : "";
  if (ip && !ips.includes(ip)) ips.unshift(ip);
  return {
    uid: String(md.uid),
    namespace: String(md.namespace),
    name: String(md.name),
    ip,
    ips,
    hostNetwork: p.spec?.hostNetwork === true,
    phase: typeof status.phase === "string" ? status.phase : "",
    terminating: md.deletionTimestamp != null,
    containersDone:
      allTerminated(status.containerStatuses) ||
      (md.deletionTimestamp != null &&
        !anyRunning(status.initContainerStatuses) &&
        !anyRunning(status.containerStatuses) &&
        !anyRunning(status.ephemeralContainerStatuses)),
    serviceAccountName: String(p.spec?.serviceAccountName ?? "default"),
    nodeName: String(p.spec?.nodeName ?? ""),
    ...(isMirrorPod(md) ? { mirror: true } : {}),
  };
}

function allTerminated(cs: unknown): boolean {
  if (!Array.isArray(cs) || cs.length === 0) return false;
  return cs.every((c) => c?.state?.terminated != null);
}

/**
 * Some container is running. A terminating pod's container that is waiting (never started, or
 * between restarts) will not start again, so only running ones can still make requests; a
 * terminating pod with no status yet has nothing running either.
 */
function anyRunning(cs: unknown): boolean {
  return Array.isArray(cs) && cs.some((c) => c?.state?.running != null);
}

type WatchEnd = { kind: "gone" } | { kind: "closed" } | { kind: "error"; err: unknown } | { kind: "stopped" };

export class PodWatch {
  private readonly opts: PodWatchOptions;
  private stopped = false;
  private abort: AbortController | undefined;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private rv = "";
  /** True once a first list has been applied. */
  synced = false;
  /** Last time the watch showed life: list applied, event, bookmark, reconnect. */
  lastActivityMs = 0;
  restarts = 0;

  private readonly clock: Clock;

  constructor(opts: PodWatchOptions) {
    this.opts = opts;
    this.clock = opts.clock ?? systemClock;
  }

  get fieldSelector(): string {
    return `spec.nodeName=${this.opts.nodeName}`;
  }

  start(): void {
    if (this.loop) return;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort?.abort();
    this.wake?.();
    let timer: TimerHandle | undefined;
    await Promise.race([this.loop, new Promise<void>((r) => (timer = this.clock.setTimeout(r, 2000)))]);
    this.clock.clearTimeout(timer);
  }

  isStale(now = this.clock.now()): boolean {
    return !this.synced || now - this.lastActivityMs > (this.opts.staleAfterMs ?? 5 * 60_000);
  }

  private async sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = this.clock.setTimeout(resolve, ms);
      this.wake = () => {
        this.clock.clearTimeout(t);
        resolve();
      };
    });
    this.wake = undefined;
  }

  private async list(): Promise<void> {
    const pods: PodInfo[] = [];
    let cont = "";
    let rv: string;
    do {
      const q = new URLSearchParams({ fieldSelector: this.fieldSelector, limit: "500" });
      if (cont) q.set("continue", cont);
      const res = await this.opts.api.json<{ items?: RawPod[]; metadata?: RawPod }>(
        "GET",
        `/api/v1/pods?${q}`,
        undefined,
        { maxBytes: 64 * 1024 * 1024 },
      );
      for (const p of res.items ?? []) {
        const info = toPodInfo(p);
        if (info) pods.push(info);
      }
      cont = typeof res.metadata?.continue === "string" ? res.metadata.continue : "";
      rv = String(res.metadata?.resourceVersion ?? "");
    } while (cont);
    this.rv = rv;
    this.opts.handler.resync(pods);
    this.synced = true;
    this.lastActivityMs = this.clock.now();
    this.opts.log.info({ pods: pods.length, resourceVersion: rv }, "pod list synced");
  }

  private async watchOnce(): Promise<WatchEnd> {
    const timeout = this.opts.watchTimeoutSeconds ?? 240;
    const q = new URLSearchParams({
      watch: "true",
      fieldSelector: this.fieldSelector,
      resourceVersion: this.rv,
      allowWatchBookmarks: "true",
      // Spread re-opens so that many agents do not reconnect at the same moment.
      timeoutSeconds: String(Math.floor(timeout * (0.8 + this.clock.random() * 0.2))),
    });
    const abort = new AbortController();
    this.abort = abort;
    if (this.stopped) return { kind: "stopped" };
    let gone = false;
    let failed: Error | undefined;
    const onEvent = (ev: unknown): void => {
      if (this.stopped || gone || failed) return;
      const { type, object: obj } = (ev ?? {}) as { type?: string; object?: RawPod };
      this.lastActivityMs = this.clock.now();
      if (type === "ERROR") {
        if (obj?.code === 410) gone = true;
        else failed = new Error(`watch error: ${obj?.message ?? "unknown"}`);
        abort.abort();
        return;
      }
      const rv = obj?.metadata?.resourceVersion;
      if (typeof rv === "string" && rv) this.rv = rv;
      if (type === "BOOKMARK") return;
      const info = toPodInfo(obj);
      if (!info) return;
      if (type === "DELETED") this.opts.handler.remove(info.uid);
      else if (type === "ADDED" || type === "MODIFIED") this.opts.handler.upsert(info);
    };
    try {
      const end = await this.opts.api.watch(`/api/v1/pods?${q}`, onEvent, {
        signal: abort.signal,
        inactivityMs: this.opts.inactivityTimeoutMs ?? 75_000,
        onOpen: () => (this.lastActivityMs = this.clock.now()),
      });
      if (gone) return { kind: "gone" };
      if (failed) return { kind: "error", err: failed };
      if (this.stopped || end === "stopped") return { kind: "stopped" };
      return { kind: "closed" };
    } catch (err) {
      if (this.stopped) return { kind: "stopped" };
      if (err instanceof ApiError && err.code === 410) return { kind: "gone" };
      return { kind: "error", err };
    }
  }

  private async run(): Promise<void> {
    const initial = this.opts.backoffInitialMs ?? 200;
    const max = this.opts.backoffMaxMs ?? 30_000;
    let backoff = initial;
    let needList = true;
    while (!this.stopped) {
      if (needList) {
        try {
          await this.list();
          needList = false;
          backoff = initial;
        } catch (err) {
          if (this.stopped) break;
          this.opts.log.warn({ err: errMessage(err), backoffMs: backoff }, "pod list failed, retrying");
          this.restarts++;
          this.opts.onRestart?.("error");
          await this.sleep(backoff * (0.5 + this.clock.random() * 0.5));
          backoff = Math.min(backoff * 2, max);
          continue;
        }
      }
      const started = this.clock.now();
      const res = await this.watchOnce();
      if (this.stopped || res.kind === "stopped") break;
      this.restarts++;
      this.opts.onRestart?.(res.kind);
      if (res.kind === "gone") {
        this.opts.log.info("pod watch expired (410), relisting");
        needList = true;
        continue;
      }
      if (res.kind === "closed" && this.clock.now() - started > 1000) {
        backoff = initial;
        continue; // normal server-side timeout: re-open from the last resourceVersion
      }
      if (res.kind === "error") {
        this.opts.log.warn(
          { err: errMessage(res.err), backoffMs: backoff },
          "pod watch failed, reconnecting",
        );
      }
      await this.sleep(backoff * (0.5 + this.clock.random() * 0.5));
      backoff = Math.min(backoff * 2, max);
    }
  }
}

function errMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
