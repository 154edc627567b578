// The CLI's exit codes and how an error becomes the one line a user reads (docs/OPERATIONS.md,
// "The keycutter command"). A stack trace is for --debug / KEYCUTTER_DEBUG=1 only.

export const EXIT = {
  ok: 0,
  /** The command could not do its job: cluster unreachable, object not found, file unreadable. */
  error: 1,
  /** The command line is wrong: unknown flag or format, missing or malformed argument. */
  usage: 2,
  /** The command ran and found a problem: explain refused, validate invalid, a doctor check failed. */
  findings: 3,
} as const;

/** An error whose message is already written for the user. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number = EXIT.error) {
    super(message);
    this.name = "CliError";
    this.exitCode = exitCode;
  }
}

export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT.usage);
    this.name = "UsageError";
  }
}

const MAX_MESSAGE = 600;

interface ApiExceptionLike {
  code: number;
  body: unknown;
}

function isApiException(err: unknown): err is ApiExceptionLike {
  return (
    typeof err === "object" &&
    err !== null &&
    typeof (err as { code?: unknown }).code === "number" &&
    "body" in err &&
    "headers" in err
  );
}

/** The apiserver's own message from a Status body (the exception's message also carries headers). */
export function apiStatusMessage(err: unknown): string | undefined {
  if (!isApiException(err)) return undefined;
  let body: unknown = err.body;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body) as unknown;
    } catch {
      return `the apiserver answered HTTP ${err.code}`;
    }
  }
  const message = (body as { message?: unknown } | undefined)?.message;
  return typeof message === "string" && message ? message : `the apiserver answered HTTP ${err.code}`;
}

/** One line: no stack, no response headers (they may echo a bearer token), bounded length. */
export function errorLine(err: unknown): string {
  let raw =
    apiStatusMessage(err) ??
    (err instanceof Error ? err.message : typeof err === "string" ? err : String(err));
  // fetch() says only "fetch failed"; the reason (ECONNREFUSED, a TLS error) is its cause
  const cause = err instanceof Error ? (err.cause as { message?: unknown } | undefined) : undefined;
  if (typeof cause?.message === "string" && cause.message && !raw.includes(cause.message))
    raw = `${raw}: ${cause.message}`;
  const line = raw.replace(/\s*\n\s*/g, "; ").trim() || "unknown error";
  return line.length > MAX_MESSAGE ? `${line.slice(0, MAX_MESSAGE)}…` : line;
}

export function exitCodeOf(err: unknown): number {
  return err instanceof CliError ? err.exitCode : EXIT.error;
}
