import { pino, type Logger, type LoggerOptions } from "pino";

export type { Logger };

// Field names that may carry a secret anywhere in a log object. pino redacts them before
// serialisation, so a careless `log.info({ creds })` still cannot leak.
const SECRET_PATHS = [
  "secretAccessKey",
  "SecretAccessKey",
  "sessionToken",
  "SessionToken",
  "Token",
  "token",
  "podToken",
  "authorization",
  "Authorization",
  "password",
  "*.secretAccessKey",
  "*.SecretAccessKey",
  "*.sessionToken",
  "*.SessionToken",
  "*.Token",
  "*.token",
  "*.podToken",
  "*.authorization",
  "*.Authorization",
  "*.*.secretAccessKey",
  "*.*.sessionToken",
  "*.headers.authorization",
  'req.headers["x-aws-ec2-metadata-token"]',
];

export function createLogger(name: string, opts: LoggerOptions = {}): Logger {
  return pino(
    {
      name,
      level: process.env.KEYCUTTER_LOG_LEVEL ?? "info",
      redact: { paths: SECRET_PATHS, censor: "[redacted]" },
      base: { component: name },
      timestamp: pino.stdTimeFunctions.isoTime,
      // words, not pino's numbers: log pipelines and people filter on "warn", not 40
      formatters: { level: (label) => ({ level: label }) },
      ...opts,
    },
    // stderr: stdout is the server's audit stream by default (server/audit.ts), never mixed with this
    pino.destination(2),
  );
}
