import { Registry, collectDefaultMetrics } from "prom-client";

/** A registry per process role, with the default Node.js process metrics, prefixed. */
export function createRegistry(prefix: string): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: `${prefix}_` });
  return registry;
}
