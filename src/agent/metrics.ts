// Agent metrics. Label children used on the hot path are resolved once and memoised, so that a
// cache hit does not allocate label objects.
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { createRegistry } from "../common/metrics.ts";
import type { ErrorCode } from "../api/contract.ts";
import type { CacheMetrics } from "./cred-cache.ts";

export type Listener = "imds" | "container";

export class AgentMetrics implements CacheMetrics {
  readonly registry: Registry;
  private readonly requests: Counter<"listener" | "route" | "status">;
  private readonly duration: Histogram<"listener" | "route">;
  private readonly cacheHits: Counter<"listener">;
  private readonly cacheMisses: Counter<"listener">;
  private readonly fetches: Counter<"kind" | "result">;
  private readonly refreshFailures: Counter<"code">;
  private readonly stale: Counter;
  private readonly rateLimited: Counter<"listener">;
  readonly watchRestarts: Counter<"reason">;
  readonly hookRepairs: Counter;
  private readonly reqChildren = new Map<string, Counter.Internal>();
  private readonly durChildren = new Map<string, Histogram.Internal<"listener" | "route">>();
  private readonly hitChildren: Record<Listener, Counter.Internal>;

  constructor(gauges: {
    podsKnown: () => number;
    podsWaiting: () => number;
    cacheEntries: () => number;
    watchStale: () => boolean;
    serverReachable: () => boolean;
  }) {
    const r = createRegistry("keycutter_agent");
    this.registry = r;
    this.requests = new Counter({
      name: "keycutter_agent_requests_total",
      help: "Pod-facing requests by listener, route and HTTP status",
      labelNames: ["listener", "route", "status"],
      registers: [r],
    });
    this.duration = new Histogram({
      name: "keycutter_agent_request_duration_seconds",
      help: "Pod-facing request latency",
      labelNames: ["listener", "route"],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [r],
    });
    this.cacheHits = new Counter({
      name: "keycutter_agent_cache_hits_total",
      help: "Credential requests answered from the cache",
      labelNames: ["listener"],
      registers: [r],
    });
    this.cacheMisses = new Counter({
      name: "keycutter_agent_cache_misses_total",
      help: "Credential requests that had to wait for the credential service",
      labelNames: ["listener"],
      registers: [r],
    });
    this.hitChildren = { imds: this.cacheHits.labels("imds"), container: this.cacheHits.labels("container") };
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
    new Gauge({
      name: "keycutter_agent_server_reachable",
      help: "1 when the last contact with the credential service got an HTTP answer",
      registers: [r],
      collect() {
        this.set(gauges.serverReachable() ? 1 : 0);
      },
    });
  }

  request(listener: Listener, route: string, status: number, seconds: number): void {
    const key = `${listener}\0${route}\0${status}`;
    let c = this.reqChildren.get(key);
    if (!c) {
      c = this.requests.labels(listener, route, String(status));
      this.reqChildren.set(key, c);
    }
    c.inc();
    const dkey = `${listener}\0${route}`;
    let h = this.durChildren.get(dkey);
    if (!h) {
      h = this.duration.labels(listener, route);
      this.durChildren.set(dkey, h);
    }
    h.observe(seconds);
  }

  hit(listener: Listener): void {
    this.hitChildren[listener].inc();
  }

  miss(listener: Listener): void {
    this.cacheMisses.labels(listener).inc();
  }

  limited(listener: Listener): void {
    this.rateLimited.labels(listener).inc();
  }

  fetch(result: "ok" | ErrorCode, kind: "prefetch" | "demand" | "refresh" | "token"): void {
    this.fetches.labels(kind, result).inc();
    if (result !== "ok") this.refreshFailures.labels(result).inc();
  }

  staleServed(): void {
    this.stale.inc();
  }
}
