// How close a certificate is to its end, from its PEM or a TLS connection's peer certificate.
import { X509Certificate } from "node:crypto";
import { result, type CheckResult } from "./report.ts";

const DAY_MS = 86_400_000;

export interface ExpiryPolicy {
  /** Warn when fewer days than this are left. */
  warnDays: number;
  now: () => number;
}

/** The certificates of a PEM bundle (a chain or a CA bundle); none when it holds none. */
export function certificatesOf(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => new X509Certificate(b));
}

function subjectOf(cert: X509Certificate): string {
  const cn = /CN=([^\n,]+)/.exec(cert.subject)?.[1];
  return cn ? `"${cn}"` : cert.subject.replace(/\n/g, ", ");
}

/** ok, warn (expires within warnDays) or fail (expired, not yet valid) for one certificate. */
export function expiryCheck(
  check: string,
  what: string,
  cert: X509Certificate,
  policy: ExpiryPolicy,
): CheckResult {
  const now = policy.now();
  const notAfter = new Date(cert.validTo).getTime();
  const notBefore = new Date(cert.validFrom).getTime();
  const who = `${what} ${subjectOf(cert)}`;
  const until = new Date(notAfter).toISOString();
  if (Number.isNaN(notAfter)) return result(check, "fail", `${who}: unreadable validity`);
  if (notAfter <= now)
    return result(
      check,
      "fail",
      `${who} expired on ${until}`,
      "renew it; agents refuse an expired certificate",
    );
  if (notBefore > now)
    return result(
      check,
      "fail",
      `${who} is not valid before ${new Date(notBefore).toISOString()}`,
      "check the clocks",
    );
  const days = (notAfter - now) / DAY_MS;
  const left = days < 1 ? `${Math.max(1, Math.round(days * 24))} hour(s)` : `${Math.floor(days)} day(s)`;
  if (days < policy.warnDays)
    return result(
      check,
      "warn",
      `${who} expires in ${left} (${until})`,
      "renew it before then (cert-manager renews by itself; a Secret made by hand must be replaced)",
    );
  return result(check, "ok", `${who} valid for ${left} (until ${until})`);
}
