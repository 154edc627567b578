// One setting's value from the command line or, failing that, the environment: the merge step
// between a component's defaults and its validated configuration. Flags win over environment
// variables; an empty environment variable counts as unset (a chart's `value: ""`). Every parse
// error names the flag and its environment variable, whichever of them supplied the value.

import * as values from "../common/config-values.ts";
import type { Bounds, HostPort } from "../common/config-values.ts";

/** What commander hands an action: camel-cased flag names to their values. */
export type ParsedFlags = Record<string, unknown>;
export type Environment = Record<string, string | undefined>;

/** Configuration that cannot be used; the message names the setting. The process exits on it. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Flag → environment variable: --server-url → KEYCUTTER_SERVER_URL. */
export function envName(flag: string): string {
  return "KEYCUTTER_" + flag.replace(/^--/, "").replace(/-/g, "_").toUpperCase();
}

/** Flag → commander's option key: --server-url → serverUrl. */
export function optionKey(flag: string): string {
  return flag.replace(/^--/, "").replace(/-([a-z0-9])/g, (_, letter: string) => letter.toUpperCase());
}

interface Found {
  text: string;
  /** Where it came from, for the error message. */
  origin: string;
}

export class FlagSource {
  private readonly flags: ParsedFlags;
  private readonly env: Environment;

  constructor(flags: ParsedFlags, env: Environment) {
    this.flags = flags;
    this.env = env;
  }

  /** The flag's text, else the first set one of KEYCUTTER_<FLAG> and `moreEnv`. */
  private find(flag: string, moreEnv: readonly string[]): Found | undefined {
    const given = this.flags[optionKey(flag)];
    const names = [envName(flag), ...moreEnv];
    const origin = `${flag} (env ${names.join(", ")})`;
    if (typeof given === "string") return { text: given, origin };
    // a repeatable flag: commander collects its values
    if (Array.isArray(given)) return { text: given.join(","), origin };
    for (const name of names) {
      const text = this.env[name];
      if (text !== undefined && text !== "") return { text, origin: `${name} (flag ${flag})` };
    }
    return undefined;
  }

  private parse<T>(flag: string, moreEnv: readonly string[], parser: (text: string) => T): T | undefined {
    const found = this.find(flag, moreEnv);
    if (found === undefined) return undefined;
    try {
      return parser(found.text);
    } catch (e) {
      if (e instanceof values.InvalidValue)
        throw new ConfigError(`${found.origin}: ${e.message}`, { cause: e });
      throw e;
    }
  }

  string(flag: string, ...moreEnv: string[]): string | undefined {
    return this.find(flag, moreEnv)?.text;
  }

  required(flag: string, ...moreEnv: string[]): string {
    const text = this.string(flag, ...moreEnv);
    if (text === undefined)
      throw new ConfigError(`${flag} (or ${[envName(flag), ...moreEnv].join(", ")}) is required`);
    return text;
  }

  integer(flag: string, fallback: number, bounds: Bounds = {}): number {
    return this.parse(flag, [], (text) => values.parseInteger(text, bounds)) ?? fallback;
  }

  number(flag: string, fallback: number, bounds: Bounds = {}): number {
    return this.parse(flag, [], (text) => values.parseNumber(text, bounds)) ?? fallback;
  }

  duration(flag: string, unit: "ms" | "s", fallback: number, bounds: Bounds = {}): number {
    return this.parse(flag, [], (text) => values.parseDuration(text, unit, bounds)) ?? fallback;
  }

  /** commander's own true/false (--x, --no-x) first, then the environment variable's text. */
  boolean(flag: string, fallback: boolean): boolean {
    const given = this.flags[optionKey(flag)];
    if (typeof given === "boolean") return given;
    return this.parse(flag, [], values.parseBoolean) ?? fallback;
  }

  /** Comma-separated, from a flag given once or repeated, or the environment; `check` each item. */
  list(
    flag: string,
    fallback: string[],
    check: (item: string) => string = (item) => item,
    ...moreEnv: string[]
  ): string[] {
    return this.parse(flag, moreEnv, (text) => values.parseList(text).map(check)) ?? fallback;
  }

  url(flag: string, protocols: readonly string[], ...moreEnv: string[]): string | undefined {
    return this.parse(flag, moreEnv, (text) => {
      values.parseUrl(text, protocols);
      return text.trim();
    });
  }

  hostPort(flag: string, fallback: HostPort): HostPort {
    return this.parse(flag, [], values.parseHostPort) ?? fallback;
  }

  /** A value checked by `parser`, which throws InvalidValue for bad text. */
  custom<T>(flag: string, parser: (text: string) => T, ...moreEnv: string[]): T | undefined {
    return this.parse(flag, moreEnv, parser);
  }
}

/**
 * Runs a command's configuration step: a ConfigError ends the process with its one line on
 * stderr and status 2 (usage), not a stack trace; anything else is a bug and propagates.
 */
export function configOrExit<T>(command: string, build: () => T): T {
  try {
    return build();
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    process.stderr.write(`keycutter ${command}: ${e.message}\n`);
    process.exit(2);
  }
}
