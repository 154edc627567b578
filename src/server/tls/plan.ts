// The self-managed certificates' plan: given what is stored (CA, serving certificate, a pending
// CA, the published trust bundle) and the time, the one next step. Pure, so every rule is a unit
// test with an injected clock (test/unit/server/tls-plan.test.ts); self-managed.ts carries the
// steps out. The order of the rules is what makes a CA rotation invisible to agents: a new CA is
// published in the bundle (old + new) and only after the bundle had time to reach every node is a
// serving certificate signed by it served.

export interface CertFacts {
  fingerprint: string;
  notBeforeMs: number;
  notAfterMs: number;
  dnsNames: readonly string[];
  ipAddresses: readonly string[];
}

export interface StoredTls {
  ca: CertFacts;
  leaf: CertFacts;
  /** The serving certificate verifies against `ca` (false: replaced by hand, or a broken write). */
  leafSignedByCa: boolean;
  /** A CA made for the rotation, published in the bundle but not yet signing. */
  nextCa?: CertFacts;
  /** When the bundle was first seen to carry nextCa: propagation is counted from here. */
  nextCaPublishedAtMs?: number;
  /** The CA before the last rotation: stays in the bundle while certificates it signed may live. */
  previousCa?: CertFacts;
}

export interface SubjectNames {
  dnsNames: readonly string[];
  ipAddresses: readonly string[];
}

export interface TlsPlanSettings {
  leafLifetimeMs: number;
  caLifetimeMs: number;
  /** Renew when this fraction of a certificate's lifetime has passed (cert-manager's 2/3). */
  renewAtFraction: number;
  /** How long a changed bundle takes to reach every agent (kubelet's ConfigMap volume sync). */
  bundlePropagationMs: number;
  names: SubjectNames;
}

export type TlsStep =
  | { kind: "create" }
  | { kind: "replace-all"; reason: string }
  | { kind: "publish-bundle"; fingerprints: string[] }
  | { kind: "mark-published" }
  | { kind: "prepare-next-ca" }
  | { kind: "promote-next-ca" }
  | { kind: "renew-leaf"; reason: string }
  | { kind: "idle"; nextStepAtMs: number };

/** Certificates are valid from this long before they are made (clock skew between nodes). */
export const BACKDATE_MS = 60_000;

/** The renewal point, as a fraction of the lifetime counted from when the certificate was made. */
export function renewAtMs(cert: CertFacts, fraction: number): number {
  const madeAt = Math.min(cert.notBeforeMs + BACKDATE_MS, cert.notAfterMs);
  return madeAt + Math.floor((cert.notAfterMs - madeAt) * fraction);
}

/** The CAs agents must trust now: the previous, current and pending ones still valid, oldest first. */
export function wantedBundle(stored: StoredTls, nowMs: number): CertFacts[] {
  return mergeBundle([stored.previousCa, stored.ca, stored.nextCa], nowMs);
}

/** Deduplicated by fingerprint, expired ones dropped, ordered by notBefore. */
export function mergeBundle(certs: readonly (CertFacts | undefined)[], nowMs: number): CertFacts[] {
  const byFingerprint = new Map<string, CertFacts>();
  for (const cert of certs) if (cert && cert.notAfterMs > nowMs) byFingerprint.set(cert.fingerprint, cert);
  return [...byFingerprint.values()].sort((a, b) => a.notBeforeMs - b.notBeforeMs);
}

function sameNames(cert: CertFacts, names: SubjectNames): boolean {
  const norm = (list: readonly string[]) => [...new Set(list.map((n) => n.toLowerCase()))].sort().join(",");
  return norm(cert.dnsNames) === norm(names.dnsNames) && norm(cert.ipAddresses) === norm(names.ipAddresses);
}

/**
 * The next step. `published` is the set of CA fingerprints in the trust bundle agents read
 * (undefined: no bundle yet).
 */
export function planTls(
  stored: StoredTls | undefined,
  published: ReadonlySet<string> | undefined,
  nowMs: number,
  settings: TlsPlanSettings,
): TlsStep {
  if (!stored) return { kind: "create" };
  // nothing left to rotate smoothly from: agents fail until the new bundle reaches them
  if (stored.ca.notAfterMs <= nowMs) return { kind: "replace-all", reason: "the CA expired" };

  const bundle = wantedBundle(stored, nowMs).map((c) => c.fingerprint);
  if (!published || published.size !== bundle.length || bundle.some((f) => !published.has(f)))
    return { kind: "publish-bundle", fingerprints: bundle };

  if (stored.nextCa) {
    if (stored.nextCaPublishedAtMs === undefined) return { kind: "mark-published" };
    if (nowMs >= stored.nextCaPublishedAtMs + settings.bundlePropagationMs)
      return { kind: "promote-next-ca" };
  } else if (nowMs >= renewAtMs(stored.ca, settings.renewAtFraction)) {
    return { kind: "prepare-next-ca" };
  }

  const leafReason = !stored.leafSignedByCa
    ? "not signed by the CA"
    : stored.leaf.notAfterMs <= nowMs
      ? "expired"
      : nowMs >= renewAtMs(stored.leaf, settings.renewAtFraction)
        ? "due for renewal"
        : !sameNames(stored.leaf, settings.names)
          ? "its names differ from the configured ones"
          : undefined;
  if (leafReason) return { kind: "renew-leaf", reason: leafReason };

  const candidates = [renewAtMs(stored.leaf, settings.renewAtFraction)];
  if (stored.nextCa && stored.nextCaPublishedAtMs !== undefined)
    candidates.push(stored.nextCaPublishedAtMs + settings.bundlePropagationMs);
  else if (!stored.nextCa) candidates.push(renewAtMs(stored.ca, settings.renewAtFraction));
  // a bundle member expiring changes the wanted bundle
  for (const ca of [stored.previousCa, stored.nextCa]) if (ca) candidates.push(ca.notAfterMs);
  return { kind: "idle", nextStepAtMs: Math.min(...candidates) };
}

/** A serving certificate never outlives the CA that signs it. */
export function leafNotAfterMs(nowMs: number, ca: CertFacts, leafLifetimeMs: number): number {
  return Math.min(nowMs + leafLifetimeMs, ca.notAfterMs);
}

/** Settings that cannot rotate without a failed call are refused at start. */
export function checkTlsPlanSettings(s: TlsPlanSettings): string | undefined {
  if (!(s.renewAtFraction > 0 && s.renewAtFraction < 1))
    return `renew-at fraction must be between 0 and 1, got ${s.renewAtFraction}`;
  if (!(s.leafLifetimeMs >= 10_000)) return "the serving certificate's lifetime must be at least 10 s";
  if (!(s.caLifetimeMs >= s.leafLifetimeMs))
    return "the CA's lifetime must be at least the serving certificate's";
  if (!(s.bundlePropagationMs >= 0)) return "the bundle propagation time must not be negative";
  // between the CA's renewal point and its expiry: propagate the new CA, then serve from it
  // while certificates signed by the old one still have time to be replaced
  const caLeft = s.caLifetimeMs * (1 - s.renewAtFraction);
  if (s.bundlePropagationMs >= caLeft / 2)
    return `the bundle propagation time (${s.bundlePropagationMs} ms) must be under half the CA's remaining life at renewal (${Math.floor(caLeft)} ms)`;
  if (s.names.dnsNames.length + s.names.ipAddresses.length === 0)
    return "the serving certificate needs at least one DNS name or IP address";
  return undefined;
}
