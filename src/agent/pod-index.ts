// The agent's view of its node's pods, indexed by UID and by IP. Lookups by IP are synchronous
// (hot path); a caller whose IP is not known yet can wait a bounded time for the watch.
//
// The pod watch lags the node: when a pod's sandbox goes, the CNI can hand its IP to a new pod
// before the old pod's terminal status reaches the agent. So where the node's own record of who
// holds an IP is available (NodeAttachments, e.g. the CNI result cache, cni-state.ts), a pod
// answers for an IP only while that record says the IP is attached to it; otherwise the IP is
// unknown, which means the bounded wait for the new pod, never the old pod's credentials.
import type { Logger } from "../common/logger.ts";
import { systemClock, type Timers } from "../common/clock.ts";
import type { PodInfo, PodWatchHandler } from "./pod-watch.ts";

export type { PodInfo };

export type Lookup =
  | { kind: "pod"; pod: PodInfo }
  | { kind: "none" }
  /** More than one live pod claims the IP (e.g. a missed delete): refuse rather than guess. */
  | { kind: "ambiguous" }
  /** Several hostNetwork pods share the node IP: they cannot be told apart. */
  | { kind: "hostNetwork" };

export interface PodIndexListener {
  /** A pod appeared or changed (new IP, phase, terminating). */
  podChanged(pod: PodInfo, previous: PodInfo | undefined): void;
  /** A pod is gone: drop everything held for it at once. */
  podGone(pod: PodInfo): void;
}

/** The pod a node-local network attachment belongs to, as the container runtime recorded it. */
export interface IpHolder {
  /** K8S_POD_UID, when the runtime passes it. */
  podUid: string | undefined;
  namespace: string | undefined;
  name: string | undefined;
  /** The sandbox's container ID (diagnostics). */
  containerId: string;
}

/** The node's own record of which attachment holds each IP, independent of the apiserver. */
export interface NodeAttachments {
  /** false: no such record (absent, unreadable, disabled): the pod watch alone decides. */
  readonly active: boolean;
  /** The attachment holding `ip` now, undefined when none does (only asked while active). */
  holderOf(ip: string): IpHolder | undefined;
}

export interface PodIndexOptions {
  attachments?: NodeAttachments;
  log?: Logger;
  /** The bounded waits' timers; tests pass a manual clock. */
  timers?: Timers;
}

/** The pod has finished, or nothing in it runs any more: it can make no request. */
export function podFinished(p: PodInfo): boolean {
  return p.phase === "Succeeded" || p.phase === "Failed" || p.containersDone;
}

/**
 * Pods that have finished (or whose containers have all stopped) keep status.podIP, but their IP
 * may already be reused: they are not reachable by IP any more.
 */
function holdsIp(p: PodInfo): boolean {
  return p.ip !== "" && !podFinished(p);
}

/** The attachment is this pod's: by UID where the runtime recorded it, else by namespace/name. */
export function attachedTo(h: IpHolder, p: PodInfo): boolean {
  if (h.podUid !== undefined) return h.podUid === p.uid;
  return h.namespace === p.namespace && h.name === p.name && h.name !== undefined;
}

const NONE: Lookup = { kind: "none" };
const AMBIGUOUS: Lookup = { kind: "ambiguous" };
const HOST_NETWORK: Lookup = { kind: "hostNetwork" };

export class PodIndex implements PodWatchHandler {
  private readonly attachments: NodeAttachments | undefined;
  private readonly log: Logger | undefined;
  private readonly timers: Timers;
  private readonly byUid = new Map<string, PodInfo>();
  private readonly byIp = new Map<string, PodInfo[]>();
  /** Resolved lookups, rebuilt per IP on change so that a hit allocates nothing. */
  private readonly resolved = new Map<string, Lookup>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly listeners: PodIndexListener[] = [];
  /** IPs the watch gives a pod that the node's attachments do not: refused. */
  private readonly unconfirmed = new Set<string>();

  constructor(opts: PodIndexOptions = {}) {
    this.attachments = opts.attachments;
    this.log = opts.log;
    this.timers = opts.timers ?? systemClock;
  }

  addListener(l: PodIndexListener): void {
    this.listeners.push(l);
  }

  get size(): number {
    return this.byUid.size;
  }

  getByUid(uid: string): PodInfo | undefined {
    return this.byUid.get(uid);
  }

  pods(): IterableIterator<PodInfo> {
    return this.byUid.values();
  }

  lookup(ip: string): Lookup {
    return this.resolved.get(ip) ?? NONE;
  }

  /** Resolves when `ip` maps to something, or after `ms` (then with the current lookup). */
  waitFor(ip: string, ms: number): Promise<Lookup> {
    const now = this.lookup(ip);
    if (now.kind !== "none" || ms <= 0) return Promise.resolve(now);
    return new Promise<Lookup>((resolve) => {
      let set = this.waiters.get(ip);
      if (!set) {
        set = new Set();
        this.waiters.set(ip, set);
      }
      const s = set;
      const wake = (): void => {
        this.timers.clearTimeout(timer);
        s.delete(wake);
        if (s.size === 0 && this.waiters.get(ip) === s) this.waiters.delete(ip);
        resolve(this.lookup(ip));
      };
      const timer = this.timers.setTimeout(wake, ms);
      s.add(wake);
    });
  }

  /** IPs the pod watch gives a pod but the node's attachments do not (refused until they agree). */
  get unconfirmedIps(): number {
    return this.unconfirmed.size;
  }

  /**
   * The node's attachments changed for these IPs (all IPs when undefined, e.g. the record became
   * available or went away): resolve them again.
   */
  attachmentsChanged(ips?: Iterable<string>): void {
    for (const ip of ips ?? [...this.byIp.keys()]) if (this.byIp.has(ip)) this.resolve(ip);
  }

  get waiting(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }

  upsert(pod: PodInfo): void {
    const prev = this.byUid.get(pod.uid);
    this.byUid.set(pod.uid, pod);
    if (prev) for (const ip of prev.ips) this.unindexIp(ip, pod.uid);
    if (holdsIp(pod)) for (const ip of pod.ips) this.indexIp(ip, pod);
    const touched = new Set<string>([...(prev?.ips ?? []), ...pod.ips]);
    for (const ip of touched) this.resolve(ip);
    for (const l of this.listeners) l.podChanged(pod, prev);
  }

  remove(uid: string): void {
    const prev = this.byUid.get(uid);
    if (!prev) return;
    this.byUid.delete(uid);
    for (const ip of prev.ips) {
      this.unindexIp(ip, uid);
      this.resolve(ip);
    }
    for (const l of this.listeners) l.podGone(prev);
  }

  resync(pods: PodInfo[]): void {
    const seen = new Set<string>();
    for (const p of pods) seen.add(p.uid);
    for (const uid of [...this.byUid.keys()]) if (!seen.has(uid)) this.remove(uid);
    for (const p of pods) {
      const prev = this.byUid.get(p.uid);
      if (!prev || !samePod(prev, p)) this.upsert(p);
    }
  }

  private indexIp(ip: string, pod: PodInfo): void {
    const list = this.byIp.get(ip);
    if (list) list.push(pod);
    else this.byIp.set(ip, [pod]);
  }

  private unindexIp(ip: string, uid: string): void {
    const list = this.byIp.get(ip);
    if (!list) return;
    const i = list.findIndex((p) => p.uid === uid);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byIp.delete(ip);
  }

  /**
   * The pods of `list` the node's attachments allow at `ip`: all of them without that record;
   * with it, only the one the attachment holding `ip` belongs to. hostNetwork pods have no
   * attachment of their own (they use the node's address) and are left to the watch.
   */
  private confirmed(ip: string, list: PodInfo[] | undefined): PodInfo[] | undefined {
    const a = this.attachments;
    if (!list || list.length === 0 || a === undefined || !a.active) {
      this.unconfirmed.delete(ip);
      return list;
    }
    const holder = a.holderOf(ip);
    const kept = list.filter((p) => p.hostNetwork || (holder !== undefined && attachedTo(holder, p)));
    if (kept.length === list.length) {
      this.unconfirmed.delete(ip);
      return list;
    }
    if (!this.unconfirmed.has(ip)) {
      this.unconfirmed.add(ip);
      this.log?.info(
        {
          ip,
          watch: list.filter((p) => !kept.includes(p)).map((p) => `${p.namespace}/${p.name}`),
          attachedTo: holder
            ? { pod: `${holder.namespace ?? "?"}/${holder.name ?? "?"}`, container: holder.containerId }
            : null,
        },
        "the node's network attachments do not give this IP to the pod the watch names: not served as that pod",
      );
    }
    return kept;
  }

  private resolve(ip: string): void {
    const list = this.confirmed(ip, this.byIp.get(ip));
    let r: Lookup;
    if (!list || list.length === 0) r = NONE;
    else if (list.length === 1) r = { kind: "pod", pod: list[0]! };
    else {
      // A terminating pod may still hold the IP while its successor starts: prefer the single
      // live one. hostNetwork pods share the node IP and can never be told apart.
      const live = list.filter((p) => !p.terminating);
      if (live.length === 1) r = { kind: "pod", pod: live[0]! };
      else if (list.some((p) => p.hostNetwork)) r = HOST_NETWORK;
      else r = AMBIGUOUS;
    }
    if (r === NONE) this.resolved.delete(ip);
    else this.resolved.set(ip, r);
    if (r !== NONE) {
      const set = this.waiters.get(ip);
      if (set) for (const w of [...set]) w();
    }
  }
}

function samePod(a: PodInfo, b: PodInfo): boolean {
  return (
    a.ip === b.ip &&
    a.phase === b.phase &&
    a.terminating === b.terminating &&
    a.containersDone === b.containersDone &&
    a.hostNetwork === b.hostNetwork &&
    a.ips.length === b.ips.length &&
    a.ips.every((x, i) => x === b.ips[i])
  );
}
