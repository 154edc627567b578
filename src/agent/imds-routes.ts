// The IMDS paths the agent answers, by route (a metrics label), and the documents that do not
// depend on the caller: the configured placement, the unsigned identity document and the
// directory listings. Credential routes are answered from the caller's cached documents.
import { httpStatus } from "../api/errors.ts";
import type { HandlerConfig } from "./handler-deps.ts";
import type { FastReply } from "./imds-fast-path.ts";
import type { CachedCreds } from "./imds-documents.ts";
import { formatTime } from "./imds-documents.ts";
import type { Passthrough } from "./passthrough.ts";
import { IMDS_TEXT } from "./replies.ts";

export const ROUTES = {
  token: "token",
  credList: "credentials-list",
  cred: "credentials",
  credExtList: "credentials-extended-list",
  credExt: "credentials-extended",
  info: "iam-info",
  region: "region",
  az: "availability-zone",
  identity: "identity-document",
  listing: "listing",
  passthrough: "passthrough",
  other: "other",
  bad: "bad-request",
  container: "container-credentials",
} as const;

export const TOKEN_PATH = "/latest/api/token";
export const TOKEN_TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds";
export const TOKEN_HEADER = "x-aws-ec2-metadata-token";
const CRED_PREFIX = "/latest/meta-data/iam/security-credentials/";
const CRED_EXT_PREFIX = "/latest/meta-data/iam/security-credentials-extended/";

/** The routes answered from cached credentials (and the token route); undefined for others. */
export function hotRouteOf(path: string): string | undefined {
  if (path === TOKEN_PATH) return ROUTES.token;
  if (path === "/latest/meta-data/iam/security-credentials" || path === CRED_PREFIX) return ROUTES.credList;
  if (path.startsWith(CRED_PREFIX)) return ROUTES.cred;
  if (path === "/latest/meta-data/iam/security-credentials-extended" || path === CRED_EXT_PREFIX)
    return ROUTES.credExtList;
  if (path.startsWith(CRED_EXT_PREFIX)) return ROUTES.credExt;
  if (path === "/latest/meta-data/iam/info") return ROUTES.info;
  return undefined;
}

/** The answer to a credentials route from cached credentials. */
export function credsReply(route: string, path: string, c: CachedCreds): FastReply {
  switch (route) {
    case ROUTES.credList:
    case ROUTES.credExtList:
      return { status: 200, body: c.roleNameBody };
    case ROUTES.cred:
    case ROUTES.credExt: {
      const prefix = route === ROUTES.cred ? CRED_PREFIX : CRED_EXT_PREFIX;
      if (path.length - prefix.length !== c.roleName.length || !path.endsWith(c.roleName))
        return { status: httpStatus("NotFound"), body: IMDS_TEXT.notFound };
      return { status: 200, body: route === ROUTES.cred ? c.imdsBody : c.imdsExtBody };
    }
    default:
      return { status: 200, body: c.infoBody };
  }
}

const LISTINGS: Record<string, string> = {
  "/latest": "dynamic\nmeta-data",
  "/latest/meta-data": "iam/\nplacement/",
  "/latest/meta-data/iam": "info\nsecurity-credentials/",
  "/latest/meta-data/placement": "availability-zone\nregion",
  "/latest/dynamic": "instance-identity/",
  "/latest/dynamic/instance-identity": "document",
};

/** The caller-independent documents, serialised once per listener. */
export class StaticDocuments {
  readonly region: Buffer;
  readonly availabilityZone: Buffer;
  readonly identity: Buffer;
  private readonly listings = new Map<string, Buffer>();

  constructor(cfg: HandlerConfig) {
    this.region = Buffer.from(cfg.region);
    this.availabilityZone = Buffer.from(cfg.availabilityZone);
    this.identity = Buffer.from(
      JSON.stringify(
        {
          accountId: cfg.accountId,
          architecture: "x86_64",
          availabilityZone: cfg.availabilityZone,
          billingProducts: null,
          devpayProductCodes: null,
          marketplaceProductCodes: null,
          imageId: "ami-00000000000000000",
          instanceId: cfg.instanceId,
          instanceType: cfg.instanceType,
          kernelId: null,
          pendingTime: formatTime(Date.now()),
          privateIp: "",
          ramdiskId: null,
          region: cfg.region,
          version: "2017-09-30",
        },
        null,
        2,
      ),
    );
    for (const [path, body] of Object.entries(LISTINGS)) {
      const buffer = Buffer.from(body);
      this.listings.set(path, buffer);
      this.listings.set(`${path}/`, buffer);
    }
  }

  listing(path: string): Buffer | undefined {
    return this.listings.get(path);
  }
}

/** The route of a plain IMDS path. */
export function routeOf(path: string, passthrough: Passthrough | undefined, docs: StaticDocuments): string {
  const hot = hotRouteOf(path);
  if (hot !== undefined) return hot;
  // an allowlisted node path comes from the real IMDS (e.g. placement/* for the node's own zone)
  // rather than from the agent's configured stand-ins; credential paths never get this far
  if (passthrough?.allows(path)) return ROUTES.passthrough;
  if (path === "/latest/meta-data/placement/region") return ROUTES.region;
  if (path === "/latest/meta-data/placement/availability-zone") return ROUTES.az;
  if (path === "/latest/dynamic/instance-identity/document") return ROUTES.identity;
  if (docs.listing(path) !== undefined) return ROUTES.listing;
  return ROUTES.other;
}
