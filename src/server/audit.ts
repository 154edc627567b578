// One JSON line per credentials decision, on its own pino logger and stream (stdout by default,
// where the application log is not: it goes to stderr; or a file). Records name who asked, for
// which pod, under which policy, and what was issued, never a secret: the entry is built field by
// field from an allowlist (auditEntry), so a field that could hold a secret cannot reach the
// stream even if a caller adds one, and the logger's redaction applies as a second line of defence.
// docs/OPERATIONS.md ("Audit records") documents the schema; a change of a field's meaning or a
// removal raises AUDIT_SCHEMA_VERSION, an added field does not.

import { randomUUID } from "node:crypto";
import { pino, type Logger } from "pino";

/** The audit records' schema version (`schemaVersion` of every entry). */
export const AUDIT_SCHEMA_VERSION = 1;

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
  /** The issued credentials' access key ID (public: CloudTrail records every call made with it). */
  accessKeyId?: string;
  /** STS's request id of the AssumeRole that issued the credentials or refused them. */
  stsRequestId?: string;
  latencyMs?: number;
}

/** What is written: the record's allowlisted fields, the schema version and a unique event ID. */
export interface AuditEntry extends AuditRecord {
  schemaVersion: typeof AUDIT_SCHEMA_VERSION;
  /** A UUID, unique per entry: a shipper's duplicates can be told from repeated decisions. */
  eventId: string;
}

export type AuditSink = (r: AuditRecord) => void;

const FIELDS = [
  "decision",
  "code",
  "reason",
  "node",
  "agent",
  "pod",
  "serviceAccount",
  "podToken",
  "policy",
  "allowances",
  "role",
  "sessionName",
  "policySha256",
  "tags",
  "durationSeconds",
  "expiration",
  "source",
  "accessKeyId",
  "stsRequestId",
  "latencyMs",
] as const satisfies readonly (keyof AuditRecord)[];

export function auditEntry(record: AuditRecord, eventId: string): AuditEntry {
  const entry: Record<string, unknown> = { schemaVersion: AUDIT_SCHEMA_VERSION, eventId };
  for (const field of FIELDS) if (record[field] !== undefined) entry[field] = record[field];
  return entry as unknown as AuditEntry;
}

/** `dest`: "stdout" (or "-"), "stderr", or a file path (its directory is created). */
export function createAuditLogger(
  dest: string,
  newEventId: () => string = randomUUID,
): { sink: AuditSink; logger: Logger } {
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
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: ["*.secretAccessKey", "*.sessionToken", "*.token", "secretAccessKey", "sessionToken", "token"],
        censor: "[redacted]",
      },
    },
    stream,
  );
  return {
    logger,
    sink: (r) =>
      logger.info(
        auditEntry(r, newEventId()),
        r.decision === "allowed" ? "credentials issued" : "credentials denied",
      ),
  };
}
