import { Gauge, Registry, collectDefaultMetrics } from "prom-client";
import { VERSION } from "./version.ts";

export type Component = "server" | "agent";

/**
 * A registry per process role: the standard Node.js process metrics unprefixed (`process_*`,
 * `nodejs_*`, the names stock dashboards and alerts query; the scrape's job and pod labels tell
 * the components apart) and `keycutter_build_info`.
 */
export function createRegistry(component: Component): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: "keycutter_build_info",
    help: "1, labelled with the component, its version and the Node.js version it runs on",
    labelNames: ["component", "version", "nodejs_version"],
    registers: [registry],
  }).set({ component, version: VERSION, nodejs_version: process.versions.node }, 1);
  return registry;
}
