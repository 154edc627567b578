// Agent metrics. The pod-facing hot path (request counts, request durations, cache hits) only
// updates plain numbers kept per (listener, route); they are published at scrape time: the
// request and cache-lookup counters flush their pending increments into prom-client from their
// collect() hook, and the duration histogram is a small collector of its own that renders the
// same series prom-client's Histogram would (same name, labels, buckets, le order). prom-client
// hashes the label object on every inc()/observe(), even through a labels() child.
import { Counter, Gauge, type Histogram, type Registry } from "prom-client";
import { createRegistry } from "../common/metrics.ts";
import type { ErrorCode } from "../api/contract.ts";
import type { CacheMetrics } from "./cred-cache.ts";
import type { FastPathStats } from "./imds-fast-path.ts";
import type { WaitRefusal } from "./wait-slots.ts";

export type Listener = "imds" | "container";

export interface CniStateGauges {
  active: boolean;
  attachments: number;
  ignoredFiles: number;
  unconfirmedIps: number;
}

/** Upper bounds of keycutter_agent_request_duration_seconds (seconds). */
const DURATION_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

/** Plain accumulators of one (listener, route), updated by the hot path. */
interface RouteStats {
  /** The label set, one object for the life of the series (prom-client caches by identity). */
  readonly labels: { readonly listener: Listener; readonly route: string };
  /** Requests by HTTP status not yet flushed into keycutter_agent_requests_total. */
  readonly statuses: Map<number, number>;
  /** Observations per duration bucket, not cumulative; the last slot is above the largest bound. */
  readonly buckets: Float64Array;
  sum: number;
  count: number;
}

/** One series' sample, in the shape prom-client's Histogram returns and its Registry renders. */
interface Sample {
  labels: Record<string, string | number>;
  sharedLabels?: Record<string, string>;
  value: number;
  metricName: string;
  exemplar: null | undefined;
}

export class AgentMetrics implements CacheMetrics {
  readonly registry: Registry;
  private readonly cacheLookups: Counter<"listener" | "result">;
  private readonly fetches: Counter<"kind" | "result">;
  private readonly refreshFailures: Counter<"code">;
  private readonly stale: Counter;
  private readonly rateLimited: Counter<"listener">;
  private readonly waitsRefused: Counter<"limit">;
  private readonly connectionsRefusedTotal: Counter<"listener">;
  readonly watchRestarts: Counter<"reason">;
  readonly hookRepairs: Counter;
  private readonly routeStats: Record<Listener, Map<string, RouteStats>> = {
    imds: new Map(),
    container: new Map(),
  };
  /** Cache hits not yet flushed into keycutter_agent_cache_lookups_total{result="hit"}. */
  private readonly pendingHits: Record<Listener, number> = { imds: 0, container: 0 };

  constructor(gauges: {
    podsKnown: () => number;
    podsWaiting: () => number;
    cacheEntries: () => number;
    watchStale: () => boolean;
    serverReachable: () => boolean;
    /** Seconds since the policy-epoch long poll last answered. */
    policyEpochAgeSeconds?: () => number;
    /** The IMDS fast path's counts, when it is on. */
    fastPath?: () => FastPathStats | undefined;
    /** The node's CNI state as the pod index uses it (cni-state.ts). */
    cniState?: () => CniStateGauges;
  }) {
    const r = createRegistry("agent");
    this.registry = r;
    const routeStats = this.routeStats;
    const pendingHits = this.pendingHits;
    new Counter({
      name: "keycutter_agent_requests_total",
      help: "Pod-facing requests by listener, route and HTTP status",
      labelNames: ["listener", "route", "status"],
      registers: [r],
      collect() {
        for (const byRoute of Object.values(routeStats))
          for (const s of byRoute.values())
            for (const [status, n] of s.statuses)
              if (n > 0) {
                this.inc({ listener: s.labels.listener, route: s.labels.route, status: String(status) }, n);
                s.statuses.set(status, 0);
              }
      },
    });
    // A collector of its own rather than a prom-client Histogram (see the top of this file).
    const durationName = "keycutter_agent_request_duration_seconds";
    const durationHelp = "Pod-facing request latency";
    const durationValues = (splay: boolean): Sample[] => {
      const out: Sample[] = [];
      for (const byRoute of Object.values(routeStats))
        for (const s of byRoute.values()) {
          if (s.count === 0) continue;
          // key order as prom-client's own objects, so getMetricsAsJSON() output is identical too
          const series = (
            metricName: string,
            extra: Record<string, string | number>,
            value: number,
            exemplar: null | undefined,
          ): void => {
            out.push(
              splay
                ? { value, metricName, exemplar, labels: { ...extra, ...s.labels } }
                : { labels: extra, sharedLabels: s.labels, value, metricName, exemplar },
            );
          };
          let acc = 0;
          for (let i = 0; i < DURATION_BUCKETS.length; i++) {
            acc += s.buckets[i]!;
            series(`${durationName}_bucket`, { le: DURATION_BUCKETS[i]! }, acc, null);
          }
          series(`${durationName}_bucket`, { le: "+Inf" }, s.count, null);
          series(`${durationName}_sum`, {}, s.sum, undefined);
          series(`${durationName}_count`, {}, s.count, undefined);
        }
      return out;
    };
    const collected = (values: Sample[]) =>
      Promise.resolve({
        name: durationName,
        help: durationHelp,
        type: "histogram",
        values,
        aggregator: "sum",
      });
    const duration = {
      name: "keycutter_agent_request_duration_seconds",
      help: durationHelp,
      labelNames: ["listener", "route"],
      type: "histogram",
      aggregator: "sum",
      // the registry prefers getForPromString (shared labels, rendered after le, as prom-client does)
      getForPromString: () => collected(durationValues(false)),
      get: () => collected(durationValues(true)),
      reset: () => {
        for (const byRoute of Object.values(routeStats))
          for (const s of byRoute.values()) {
            s.buckets.fill(0);
            s.sum = 0;
            s.count = 0;
          }
      },
    };
    r.registerMetric(duration as unknown as Histogram);
    // one name for both outcomes, as the server's keycutter_server_cache_lookups_total{result}
    this.cacheLookups = new Counter({
      name: "keycutter_agent_cache_lookups_total",
      help: "Credential requests by listener and result: hit (answered from the cache), miss (waited for the credential service)",
      labelNames: ["listener", "result"],
      registers: [r],
      collect() {
        for (const l of ["imds", "container"] as const)
          if (pendingHits[l] > 0) {
            this.inc({ listener: l, result: "hit" }, pendingHits[l]);
            pendingHits[l] = 0;
          }
      },
    });
    this.fetches = new Counter({
      name: "keycutter_agent_credential_fetches_total",
      help: "Requests to the credential service by kind and result (ok or error code)",
      labelNames: ["kind", "result"],
      registers: [r],
    });
    this.refreshFailures = new Counter({
      name: "keycutter_agent_refresh_failures_total",
      help: "Failed credential fetches (prefetch, refresh, demand) by error code",
      labelNames: ["code"],
      registers: [r],
    });
    this.stale = new Counter({
      name: "keycutter_agent_stale_served_total",
      help: "Answers served from still-valid cached credentials because a refresh failed",
      registers: [r],
    });
    this.rateLimited = new Counter({
      name: "keycutter_agent_rate_limited_total",
      help: "Requests refused by the per-pod rate limit",
      labelNames: ["listener"],
      registers: [r],
    });
    this.waitsRefused = new Counter({
      name: "keycutter_agent_waits_refused_total",
      help: "Requests from an unknown IP answered at once, without waiting for the pod watch, because a wait limit was reached (per_source, total)",
      labelNames: ["limit"],
      registers: [r],
    });
    this.connectionsRefusedTotal = new Counter({
      name: "keycutter_agent_connections_refused_total",
      help: "Pod-facing connections reset at once because their source held the most it may",
      labelNames: ["listener"],
      registers: [r],
    });
    this.watchRestarts = new Counter({
      name: "keycutter_agent_watch_restarts_total",
      help: "Pod watch restarts by reason (closed, error, gone = 410 relist)",
      labelNames: ["reason"],
      registers: [r],
    });
    this.hookRepairs = new Counter({
      name: "keycutter_agent_hook_repairs_total",
      help: "Times the periodic check found the iptables hook missing or altered and repaired it",
      registers: [r],
    });
    const published: FastPathStats = { served: 0, handedOver: 0 };
    new Counter({
      name: "keycutter_agent_imds_fast_path_total",
      help: "IMDS fast path: requests answered without node:http (served), connections handed to it (handed_over)",
      labelNames: ["outcome"],
      registers: [r],
      collect() {
        const now = gauges.fastPath?.();
        if (now === undefined) return;
        this.inc({ outcome: "served" }, now.served - published.served);
        this.inc({ outcome: "handed_over" }, now.handedOver - published.handedOver);
        Object.assign(published, now);
      },
    });
    new Gauge({
      name: "keycutter_agent_pods_known",
      help: "Pods of this node in the index",
      registers: [r],
      collect() {
        this.set(gauges.podsKnown());
      },
    });
    new Gauge({
      name: "keycutter_agent_requests_waiting_for_pod",
      help: "Requests from unknown IPs waiting for the pod watch",
      registers: [r],
      collect() {
        this.set(gauges.podsWaiting());
      },
    });
    new Gauge({
      name: "keycutter_agent_cache_entries",
      help: "Pods with a credential cache entry",
      registers: [r],
      collect() {
        this.set(gauges.cacheEntries());
      },
    });
    new Gauge({
      name: "keycutter_agent_watch_stale",
      help: "1 when the pod watch is not synced or has shown no life for too long",
      registers: [r],
      collect() {
        this.set(gauges.watchStale() ? 1 : 0);
      },
    });
    const cni = gauges.cniState;
    if (cni) {
      new Gauge({
        name: "keycutter_agent_cni_state_active",
        help: "1 when the node's CNI result cache is read and a pod is served at an IP only while it attaches that IP to the pod; 0: the pod watch alone attributes IPs",
        registers: [r],
        collect() {
          this.set(cni().active ? 1 : 0);
        },
      });
      new Gauge({
        name: "keycutter_agent_cni_attachments",
        help: "Network attachments read from the node's CNI result cache",
        registers: [r],
        collect() {
          this.set(cni().attachments);
        },
      });
      new Gauge({
        name: "keycutter_agent_cni_ignored_files",
        help: "CNI result cache files ignored (malformed, too large, unreadable, over the bound): their IPs attach to no pod",
        registers: [r],
        collect() {
          this.set(cni().ignoredFiles);
        },
      });
      new Gauge({
        name: "keycutter_agent_pod_ips_unconfirmed",
        help: "IPs the pod watch gives a pod that the node's CNI state does not (not served as that pod)",
        registers: [r],
        collect() {
          this.set(cni().unconfirmedIps);
        },
      });
    }
    new Gauge({
      name: "keycutter_agent_server_reachable",
      help: "1 when the last contact with the credential service got an HTTP answer",
      registers: [r],
      collect() {
        this.set(gauges.serverReachable() ? 1 : 0);
      },
    });
    new Gauge({
      name: "keycutter_agent_policy_epoch_age_seconds",
      help: "Seconds since the policy-epoch long poll last answered (0 with no pods to cover)",
      registers: [r],
      collect() {
        this.set(gauges.policyEpochAgeSeconds?.() ?? 0);
      },
    });
  }

  /** Hot path: plain numbers only, published at scrape time. */
  request(listener: Listener, route: string, status: number, seconds: number): void {
    const byRoute = this.routeStats[listener];
    let s = byRoute.get(route);
    if (s === undefined) {
      s = {
        labels: { listener, route },
        statuses: new Map(),
        buckets: new Float64Array(DURATION_BUCKETS.length + 1),
        sum: 0,
        count: 0,
      };
      byRoute.set(route, s);
    }
    s.statuses.set(status, (s.statuses.get(status) ?? 0) + 1);
    if (!Number.isFinite(seconds)) return;
    let i = 0;
    while (i < DURATION_BUCKETS.length && seconds > DURATION_BUCKETS[i]!) i++;
    s.buckets[i] = s.buckets[i]! + 1;
    s.sum += seconds;
    s.count += 1;
  }

  hit(listener: Listener): void {
    this.pendingHits[listener] += 1;
  }

  miss(listener: Listener): void {
    this.cacheLookups.labels(listener, "miss").inc();
  }

  limited(listener: Listener): void {
    this.rateLimited.labels(listener).inc();
  }

  waitRefused(limit: WaitRefusal): void {
    this.waitsRefused.labels(limit).inc();
  }

  connectionRefused(listener: Listener): void {
    this.connectionsRefusedTotal.labels(listener).inc();
  }

  fetch(result: "ok" | ErrorCode, kind: "prefetch" | "demand" | "refresh" | "token"): void {
    this.fetches.labels(kind, result).inc();
    if (result !== "ok") this.refreshFailures.labels(result).inc();
  }

  staleServed(): void {
    this.stale.inc();
  }
}
