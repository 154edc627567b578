// One line per check: what was looked at, ok/warn/fail (or skip: could not be looked at from
// here), in plain words, with a hint of what to do.

export type CheckStatus = "ok" | "warn" | "fail" | "skip";

export interface CheckResult {
  check: string;
  status: CheckStatus;
  message: string;
  hint?: string;
}

export function result(check: string, status: CheckStatus, message: string, hint?: string): CheckResult {
  return { check, status, message, ...(hint ? { hint } : {}) };
}

export function formatResults(results: CheckResult[]): string {
  const width = Math.max(0, ...results.map((r) => r.check.length));
  return results
    .map((r) => {
      const line = `${r.status.padEnd(4)}  ${r.check.padEnd(width)}  ${r.message}`;
      return r.hint ? `${line}\n${" ".repeat(width + 8)}hint: ${r.hint}\n` : `${line}\n`;
    })
    .join("");
}

export function anyFailed(results: CheckResult[]): boolean {
  return results.some((r) => r.status === "fail");
}
