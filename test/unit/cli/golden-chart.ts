// The chart's default render as committed (test/golden/chart/default.yaml): what production runs,
// read without helm so that the configuration tests stay unit tests.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";

const GOLDEN = join(import.meta.dirname, "..", "..", "golden", "chart", "default.yaml");

interface Workload {
  kind?: string;
  metadata?: { name?: string };
  spec?: { template: { spec: { containers: Array<{ name: string; args: string[] }> } } };
}

/** The args of `container` in the workload `kind`/`name`, the subcommand first. */
export function goldenContainerArgs(kind: string, name: string, container: string): string[] {
  const workload = parseAllDocuments(readFileSync(GOLDEN, "utf8"))
    .map((doc) => doc.toJS() as Workload | null)
    .find((o) => o?.kind === kind && o.metadata?.name === name);
  const found = workload?.spec?.template.spec.containers.find((c) => c.name === container);
  if (!found) throw new Error(`${kind} ${name} has no container ${container} in ${GOLDEN}`);
  return found.args;
}
