// Parsing of configuration values (flags and environment variables) into typed values. Each
// function is pure: text in, value out, or an InvalidValue saying what was expected. Naming the
// flag and its environment variable is the caller's job (src/cli/flag-source.ts), so that these
// stay reusable and the message says where the bad value came from.

/** A value that does not parse; the message says what was expected and what was given. */
export class InvalidValue extends Error {
  override name = "InvalidValue";
}

export interface Bounds {
  min?: number;
  /** Strictly greater than this (a rate of 0 would refuse everything; 0.5 is fine). */
  above?: number;
  max?: number;
}

/** The longest text quoted back in an error: a value can be anything, even a pasted secret file. */
const QUOTE_LIMIT = 80;

function quoted(text: string): string {
  return JSON.stringify(text.length > QUOTE_LIMIT ? `${text.slice(0, QUOTE_LIMIT)}…` : text);
}

function boundsText({ min, above, max }: Bounds): string {
  if (min !== undefined && max !== undefined) return ` from ${min} to ${max}`;
  if (min !== undefined) return ` of at least ${min}`;
  if (above !== undefined) return ` above ${above}`;
  if (max !== undefined) return ` of at most ${max}`;
  return "";
}

function checkBounds(value: number, bounds: Bounds, what: string, text: string): number {
  const { min, above, max } = bounds;
  if (
    (min !== undefined && value < min) ||
    (above !== undefined && value <= above) ||
    (max !== undefined && value > max)
  )
    throw new InvalidValue(`expected ${what}${boundsText(bounds)}, got ${quoted(text)}`);
  return value;
}

/** A whole number in decimal, within bounds. */
export function parseInteger(text: string, bounds: Bounds = {}): number {
  const trimmed = text.trim();
  // digits only: Number() would also take "1e3", "0x10" and "" (0)
  if (!/^-?\d{1,15}$/.test(trimmed))
    throw new InvalidValue(`expected an integer${boundsText(bounds)}, got ${quoted(text)}`);
  return checkBounds(Number(trimmed), bounds, "an integer", text);
}

/** A finite decimal number (rates: "0.5" per second is fine), within bounds. */
export function parseNumber(text: string, bounds: Bounds = {}): number {
  const trimmed = text.trim();
  if (!/^-?(\d+(\.\d*)?|\.\d+)$/.test(trimmed))
    throw new InvalidValue(`expected a number${boundsText(bounds)}, got ${quoted(text)}`);
  return checkBounds(Number(trimmed), bounds, "a number", text);
}

/** The longest duration any setting takes: a day. Beyond it a value is a typo (or an overflow). */
export const MAX_DURATION_MS = 24 * 60 * 60 * 1000;

/**
 * A duration as a whole number in the unit its flag names (`--…-ms`, `--…-seconds`): never
 * negative, at most a day unless the bounds say otherwise.
 */
export function parseDuration(text: string, unit: "ms" | "s", bounds: Bounds = {}): number {
  const max = bounds.max ?? (unit === "ms" ? MAX_DURATION_MS : MAX_DURATION_MS / 1000);
  return parseInteger(text, { min: bounds.min ?? 0, max });
}

const TRUE = /^(1|true|yes|on)$/i;
const FALSE = /^(0|false|no|off)$/i;

/** true/false, 1/0, yes/no, on/off (any case). */
export function parseBoolean(text: string): boolean {
  const trimmed = text.trim();
  if (TRUE.test(trimmed)) return true;
  if (FALSE.test(trimmed)) return false;
  throw new InvalidValue(`expected true or false, got ${quoted(text)}`);
}

/** Comma-separated items, trimmed, empty items dropped. */
export function parseList(text: string): string[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter(Boolean);
}

/** An absolute URL whose scheme is one of `protocols` ("https:", "redis:"…). */
export function parseUrl(text: string, protocols: readonly string[]): URL {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    throw new InvalidValue(
      `expected a URL (${protocols.map((p) => p + "//…").join(", ")}), got ${quoted(text)}`,
    );
  }
  if (!protocols.includes(url.protocol))
    throw new InvalidValue(
      `expected a URL with scheme ${protocols.join(" or ")}, got ${quoted(url.protocol)}`,
    );
  return url;
}

export interface HostPort {
  host: string;
  port: number;
}

/** host:port, [v6]:port or :port (all addresses); port 0 lets the system choose. */
export function parseHostPort(text: string): HostPort {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || !(port >= 0 && port <= 65535))
    throw new InvalidValue(`expected host:port, got ${quoted(text)}`);
  return { host: match[1] ?? (match[2] || "0.0.0.0"), port };
}
