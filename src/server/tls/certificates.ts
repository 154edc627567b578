// Making and reading the self-managed certificates: an ECDSA P-256 CA and serving certificates it
// signs, and the facts the plan needs. The certificate structures are @peculiar/asn1-x509's
// (RFC 5280 in ASN.1 schema classes); keys, signatures and parsing are Node's crypto.
// (@peculiar/x509's builder on top of these needs a Reflect metadata polyfill at load time,
// which the project does not carry.) Private keys only leave this module as PEM for the Secret.

import {
  X509Certificate,
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  type KeyObject,
} from "node:crypto";
import { isIP } from "node:net";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as asn from "@peculiar/asn1-x509";
import { BACKDATE_MS, type CertFacts, type SubjectNames } from "./plan.ts";

const ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";
const COMMON_NAME = "2.5.4.3";
const ORGANIZATION = "2.5.4.10";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const PEM_CERT = /-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----/g;
// a bundle longer than this is not one keycutter wrote
const MAX_BUNDLE_CERTS = 8;

export interface KeyPairPem {
  cert: string;
  key: string;
}

function serialNumber(): ArrayBuffer {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01; // positive and 16 bytes long, as RFC 5280 wants
  return new Uint8Array(bytes).buffer;
}

function name(commonName: string): asn.Name {
  const attribute = (type: string, value: string) =>
    new asn.RelativeDistinguishedName([
      new asn.AttributeTypeAndValue({ type, value: new asn.AttributeValue({ utf8String: value }) }),
    ]);
  return new asn.Name([attribute(ORGANIZATION, "keycutter"), attribute(COMMON_NAME, commonName)]);
}

function extension(extnID: string, critical: boolean, value: unknown): asn.Extension {
  return new asn.Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

function keyIdentifier(spki: Buffer): Buffer {
  return createHash("sha256").update(spki).digest().subarray(0, 20);
}

function spkiOf(key: KeyObject): Buffer {
  return key.export({ type: "spki", format: "der" });
}

interface CertificateRequest {
  subject: asn.Name;
  issuer: asn.Name;
  publicKey: KeyObject;
  signingKey: KeyObject;
  notBeforeMs: number;
  notAfterMs: number;
  extensions: asn.Extension[];
}

function signCertificate(r: CertificateRequest): string {
  const algorithm = new asn.AlgorithmIdentifier({ algorithm: ECDSA_WITH_SHA256 });
  const tbs = new asn.TBSCertificate({
    version: asn.Version.v3,
    serialNumber: serialNumber(),
    signature: algorithm,
    issuer: r.issuer,
    subject: r.subject,
    validity: new asn.Validity({ notBefore: new Date(r.notBeforeMs), notAfter: new Date(r.notAfterMs) }),
    subjectPublicKeyInfo: AsnConvert.parse(spkiOf(r.publicKey), asn.SubjectPublicKeyInfo),
    extensions: new asn.Extensions(r.extensions),
  });
  const signature = sign("sha256", Buffer.from(AsnConvert.serialize(tbs)), {
    key: r.signingKey,
    dsaEncoding: "der",
  });
  const cert = new asn.Certificate({
    tbsCertificate: tbs,
    signatureAlgorithm: algorithm,
    signatureValue: new Uint8Array(signature).buffer,
  });
  return new X509Certificate(Buffer.from(AsnConvert.serialize(cert))).toString();
}

function newKeys(): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync("ec", { namedCurve: "P-256" });
}

function keyPem(key: KeyObject): string {
  return key.export({ type: "pkcs8", format: "pem" }).toString();
}

/** A CA valid from BACKDATE_MS ago (clock skew between nodes) for `lifetimeMs`. */
export function makeCa(nowMs: number, lifetimeMs: number, commonName: string): KeyPairPem {
  const keys = newKeys();
  const subject = name(commonName);
  const cert = signCertificate({
    subject,
    issuer: subject,
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    notBeforeMs: nowMs - BACKDATE_MS,
    notAfterMs: nowMs + lifetimeMs,
    extensions: [
      extension(
        asn.id_ce_basicConstraints,
        true,
        new asn.BasicConstraints({ cA: true, pathLenConstraint: 0 }),
      ),
      extension(
        asn.id_ce_keyUsage,
        true,
        new asn.KeyUsage(asn.KeyUsageFlags.keyCertSign | asn.KeyUsageFlags.cRLSign),
      ),
      extension(
        asn.id_ce_subjectKeyIdentifier,
        false,
        new asn.SubjectKeyIdentifier(keyIdentifier(spkiOf(keys.publicKey))),
      ),
    ],
  });
  return { cert, key: keyPem(keys.privateKey) };
}

/** A serving certificate for `names`, signed by `ca`, valid until `notAfterMs`. */
export function issueServing(
  ca: KeyPairPem,
  names: SubjectNames,
  nowMs: number,
  notAfterMs: number,
): KeyPairPem {
  const keys = newKeys();
  const caCert = new X509Certificate(ca.cert);
  const caKeyId = keyIdentifier(spkiOf(caCert.publicKey));
  const altNames = [
    ...names.dnsNames.map((dNSName) => new asn.GeneralName({ dNSName })),
    ...names.ipAddresses.map((iPAddress) => new asn.GeneralName({ iPAddress })),
  ];
  const cert = signCertificate({
    subject: name(names.dnsNames[0] ?? names.ipAddresses[0] ?? "keycutter-server"),
    issuer: AsnConvert.parse(caCert.raw, asn.Certificate).tbsCertificate.subject,
    publicKey: keys.publicKey,
    signingKey: createPrivateKey(ca.key),
    notBeforeMs: nowMs - BACKDATE_MS,
    notAfterMs,
    extensions: [
      extension(asn.id_ce_basicConstraints, true, new asn.BasicConstraints({ cA: false })),
      extension(asn.id_ce_keyUsage, true, new asn.KeyUsage(asn.KeyUsageFlags.digitalSignature)),
      extension(asn.id_ce_extKeyUsage, false, new asn.ExtendedKeyUsage([SERVER_AUTH])),
      extension(asn.id_ce_subjectAltName, false, new asn.SubjectAlternativeName(altNames)),
      extension(
        asn.id_ce_authorityKeyIdentifier,
        false,
        new asn.AuthorityKeyIdentifier({ keyIdentifier: new asn.KeyIdentifier(caKeyId) }),
      ),
      extension(
        asn.id_ce_subjectKeyIdentifier,
        false,
        new asn.SubjectKeyIdentifier(keyIdentifier(spkiOf(keys.publicKey))),
      ),
    ],
  });
  return { cert, key: keyPem(keys.privateKey) };
}

/** The names of `--tls-san` values: IP literals apart from DNS names. */
export function subjectNames(sans: readonly string[]): SubjectNames {
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  for (const san of sans) (isIP(san) ? ipAddresses : dnsNames).push(san);
  return { dnsNames, ipAddresses };
}

export function certFacts(pem: string): CertFacts {
  const cert = new X509Certificate(pem);
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  for (const entry of (cert.subjectAltName ?? "").split(", ")) {
    if (entry.startsWith("DNS:")) dnsNames.push(entry.slice(4));
    else if (entry.startsWith("IP Address:")) ipAddresses.push(entry.slice(11));
  }
  return {
    fingerprint: cert.fingerprint256,
    notBeforeMs: cert.validFromDate.getTime(),
    notAfterMs: cert.validToDate.getTime(),
    dnsNames,
    ipAddresses,
  };
}

/** Whether `leafPem` was signed by the CA in `caPem`. */
export function signedBy(leafPem: string, caPem: string): boolean {
  try {
    const leaf = new X509Certificate(leafPem);
    const ca = new X509Certificate(caPem);
    return leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
  } catch {
    return false;
  }
}

/** The certificates of a PEM bundle (at most MAX_BUNDLE_CERTS; the rest is not ours). */
export function splitPemBundle(pem: string): string[] {
  return (pem.match(PEM_CERT) ?? []).slice(0, MAX_BUNDLE_CERTS).map((c) => c.trim() + "\n");
}

export function bundleFingerprints(pem: string): Set<string> {
  const out = new Set<string>();
  for (const cert of splitPemBundle(pem)) {
    try {
      out.add(new X509Certificate(cert).fingerprint256);
    } catch {
      // an unparseable entry is not one of ours: the plan republishes the bundle
    }
  }
  return out;
}
