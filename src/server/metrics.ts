import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { createRegistry } from "../common/metrics.ts";

export interface ServerMetrics {
  registry: Registry;
  decisions: Counter<"outcome">;
  stsRequests: Counter<"outcome">;
  stsLatency: Histogram<"outcome">;
  cacheLookups: Counter<"result">;
  sharedStoreErrors: Counter<"op">;
  tokenReviews: Counter<"result">;
  tokenChecks: Counter<"kind" | "outcome">;
  leader: Gauge;
  events: Counter<"outcome">;
  requestDuration: Histogram<"route" | "outcome">;
}

export function createServerMetrics(): ServerMetrics {
  const registry = createRegistry("server");
  return {
    registry,
    decisions: new Counter({
      name: "keycutter_server_decisions_total",
      help: "Credential decisions by outcome (issued or error code)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    stsRequests: new Counter({
      name: "keycutter_server_sts_requests_total",
      help: "STS AssumeRole attempts by outcome (ok or AWS error code)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    stsLatency: new Histogram({
      name: "keycutter_server_sts_latency_seconds",
      help: "STS AssumeRole attempt latency",
      labelNames: ["outcome"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    cacheLookups: new Counter({
      name: "keycutter_server_cache_lookups_total",
      help: "Credential cache lookups: hit_memory, hit_shared, miss",
      labelNames: ["result"],
      registers: [registry],
    }),
    sharedStoreErrors: new Counter({
      name: "keycutter_server_shared_cache_errors_total",
      help: "Shared cache (Redis) errors by operation",
      labelNames: ["op"],
      registers: [registry],
    }),
    tokenReviews: new Counter({
      name: "keycutter_server_token_reviews_total",
      help: "Agent token authentication results (ok, unauthenticated, forbidden, throttled)",
      labelNames: ["result"],
      registers: [registry],
    }),
    tokenChecks: new Counter({
      name: "keycutter_server_token_checks_total",
      help: "Tokens to review by kind (agent, pod) and outcome: refused_locally, cached_accepted, cached_rejected, throttled_source, throttled_budget, reviewed (a TokenReview was sent)",
      labelNames: ["kind", "outcome"],
      registers: [registry],
    }),
    leader: new Gauge({
      name: "keycutter_server_leader",
      help: "1 when this replica holds the status-writer lease",
      registers: [registry],
    }),
    requestDuration: new Histogram({
      name: "keycutter_server_request_duration_seconds",
      help: "API request duration by route (credentials, policy_epochs, other) and outcome (ok, aborted or the error code); policy_epochs are long polls held up to 25 s",
      labelNames: ["route", "outcome"],
      // 0.4: the agents' answer budget for a cache miss
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.4, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    events: new Counter({
      name: "keycutter_server_events_total",
      help: "Kubernetes Events by outcome: created, series_updated (written), aggregated (counted into a series), dropped (over a bound), failed",
      labelNames: ["outcome"],
      registers: [registry],
    }),
  };
}
