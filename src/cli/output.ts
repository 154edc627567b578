// -o/--output as kubectl has it: a fixed set of formats, an unknown one is a usage error (exit 2),
// never a silent fall-back to text.
import { Option } from "commander";
import { stringify } from "yaml";

export const OUTPUT_FORMATS = ["text", "json", "yaml"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export function outputOption(): Option {
  return new Option("-o, --output <format>", "output format").choices(OUTPUT_FORMATS).default("text");
}

/** The document as JSON or YAML; `text` is each command's own rendering. */
export function renderStructured(format: Exclude<OutputFormat, "text">, value: unknown): string {
  return format === "json" ? `${JSON.stringify(value, null, 2)}\n` : stringify(value, { lineWidth: 0 });
}
