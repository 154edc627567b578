// One JSON line per credentials decision, on its own pino logger and stream (stdout by default,
// or a file). Records name who asked, for which pod, under which policy, and what was issued,
// never a secret: the record type has no field that could hold one, and the shared logger's
// redaction applies as a second line of defence.

import { pino, type Logger } from "pino";

export interface AuditRecord {
  decision: "allowed" | "denied";
  /** "issued" or the contract error code. */
  code: string;
  reason: string;
  node?: string;
  agent?: string;
  pod?: { namespace: string; name: string; uid: string };
  serviceAccount?: string;
  podToken?: boolean;
  policy?: { namespace: string; name: string; generation: number };
  allowances?: { name: string; generation: number }[];
  role?: string;
  sessionName?: string;
  policySha256?: string;
  tags?: Record<string, string>;
  durationSeconds?: number;
  expiration?: string;
  source?: "memory" | "shared" | "sts";
  latencyMs?: number;
}

export type AuditSink = (r: AuditRecord) => void;

export function createAuditLogger(dest: string): { sink: AuditSink; logger: Logger } {
  const stream =
    dest === "stdout" || dest === "-"
      ? pino.destination(1)
      : dest === "stderr"
        ? pino.destination(2)
        : pino.destination({ dest, mkdir: true, sync: false });
  const logger = pino(
    {
      base: { kind: "audit", component: "server" },
      timestamp: pino.stdTimeFunctions.isoTime,
      messageKey: "msg",
      redact: {
        paths: ["*.secretAccessKey", "*.sessionToken", "*.token", "secretAccessKey", "sessionToken", "token"],
        censor: "[redacted]",
      },
    },
    stream,
  );
  return {
    logger,
    sink: (r) => logger.info(r, r.decision === "allowed" ? "credentials issued" : "credentials denied"),
  };
}
