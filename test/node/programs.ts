// The programs test/node/tenants.test.ts runs in its workload pods: plain use of the unmodified
// AWS CLI, boto3 and JS SDK v3 with their default credential chains. None retries: the SDK
// calls run with AWS_MAX_ATTEMPTS=1, so the first credential fetch and the first call have to
// succeed. Each prints "KEY value" lines the test reads; no line carries a secret (the rotation
// program prints a digest of its token and the token's iat/exp claims, never the token).

export type Client = "cli" | "boto3" | "js";

/** Reads its own object, then tries the other tenant's: prints ARN, OWN, CROSS, DONE. */
const TENANT_PROGRAMS: Record<Client, string> = {
  cli: `set -u
arn=$(aws sts get-caller-identity --query Arn --output text) || exit 1
echo "ARN $arn"
aws s3api get-object --bucket "$OWN_BUCKET" --key "$OWN_KEY" /tmp/own >/dev/null || exit 1
echo "OWN $(tr -d '\\n' </tmp/own)"
if aws s3api get-object --bucket "$OTHER_BUCKET" --key "$OTHER_KEY" /tmp/other >/dev/null 2>/tmp/cross; then
  echo "CROSS allowed"
else
  echo "CROSS $(grep -o '(AccessDenied)\\|(Forbidden)\\|(403)' /tmp/cross | head -1 | tr -d '()') $(head -c 300 /tmp/cross)"
fi
echo DONE`,
  boto3: `import os, boto3, botocore.exceptions
session = boto3.Session()
print("ARN", session.client("sts").get_caller_identity()["Arn"], flush=True)
s3 = session.client("s3")
own = s3.get_object(Bucket=os.environ["OWN_BUCKET"], Key=os.environ["OWN_KEY"])["Body"].read().decode()
print("OWN", own.replace("\\n", ""), flush=True)
try:
    s3.get_object(Bucket=os.environ["OTHER_BUCKET"], Key=os.environ["OTHER_KEY"])
    print("CROSS allowed")
except botocore.exceptions.ClientError as err:
    print("CROSS", err.response["Error"]["Code"])
print("DONE", flush=True)`,
  js: `import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { S3Client, GetObjectCommand } from "@aws-sdk/client-s3";
const env = process.env;
const { Arn } = await new STSClient({}).send(new GetCallerIdentityCommand({}));
console.log("ARN", Arn);
const s3 = new S3Client({ forcePathStyle: true });
const own = await s3.send(new GetObjectCommand({ Bucket: env.OWN_BUCKET, Key: env.OWN_KEY }));
console.log("OWN", (await own.Body.transformToString()).replaceAll("\\n", ""));
try {
  await s3.send(new GetObjectCommand({ Bucket: env.OTHER_BUCKET, Key: env.OTHER_KEY }));
  console.log("CROSS allowed");
} catch (err) {
  console.log("CROSS", err.name);
}
console.log("DONE");`,
};

/** Tries the default chain where no AccessPolicy applies: prints NOCREDS <error> or ARN. */
const NO_POLICY_PROGRAMS: Record<Client, string> = {
  cli: `if out=$(aws sts get-caller-identity --query Arn --output text 2>&1); then echo "ARN $out"; else echo "NOCREDS $out"; fi
echo DONE`,
  boto3: `import boto3, botocore.exceptions
try:
    print("ARN", boto3.Session().client("sts").get_caller_identity()["Arn"])
except botocore.exceptions.NoCredentialsError as err:
    print("NOCREDS", type(err).__name__, err)
print("DONE")`,
  // the default chain, then the two endpoints by hand: what each answers, and that neither is
  // the node's metadata service
  js: `import { readFileSync } from "node:fs";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
try {
  const { Arn } = await new STSClient({}).send(new GetCallerIdentityCommand({}));
  console.log("ARN", Arn);
} catch (err) {
  console.log("NOCREDS", err.name, err.message.replaceAll("\\n", " ").slice(0, 200));
}
const imds = "http://169.254.169.254";
const put = await fetch(imds + "/latest/api/token", { method: "PUT", headers: { "x-aws-ec2-metadata-token-ttl-seconds": "60" } });
const session = await put.text();
const roles = await fetch(imds + "/latest/meta-data/iam/security-credentials/", { headers: { "x-aws-ec2-metadata-token": session } });
console.log("IMDS", put.status, roles.status, JSON.stringify((await roles.text()).slice(0, 200)));
const token = readFileSync(process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, "utf8").trim();
const container = await fetch(process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI, { headers: { authorization: token } });
console.log("CONTAINER", container.status, JSON.stringify((await container.text()).slice(0, 200)));
console.log("DONE");`,
};

/**
 * Every 10 s: a new client with the default chain (so a new credential fetch from the
 * container endpoint, with the token file read again), GetCallerIdentity, and one CALL line
 * with the token's digest and its iat/exp claims.
 */
const ROTATION_PROGRAMS: Record<"boto3" | "js", string> = {
  js: `import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
for (;;) {
  const token = readFileSync(process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, "utf8").trim();
  const claims = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
  const digest = createHash("sha256").update(token).digest("hex").slice(0, 12);
  let outcome;
  try {
    const { Arn } = await new STSClient({}).send(new GetCallerIdentityCommand({}));
    outcome = { arn: Arn };
  } catch (err) {
    outcome = { error: err.name + ": " + String(err.message).slice(0, 200) };
  }
  console.log("CALL " + JSON.stringify({ at: Math.floor(Date.now() / 1000), digest, iat: claims.iat, exp: claims.exp, ...outcome }));
  await new Promise((resolve) => setTimeout(resolve, 10_000));
}`,
  boto3: `import base64, hashlib, json, os, time, boto3
while True:
    token = open(os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read().strip()
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    line = {"at": int(time.time()), "digest": hashlib.sha256(token.encode()).hexdigest()[:12], "iat": claims["iat"], "exp": claims["exp"]}
    try:
        line["arn"] = boto3.Session().client("sts").get_caller_identity()["Arn"]
    except Exception as err:
        line["error"] = type(err).__name__ + ": " + str(err)[:200]
    print("CALL " + json.dumps(line), flush=True)
    time.sleep(10)`,
};

/** How each client's program is started: the program text is in $PROGRAM. */
const LAUNCH: Record<Client, string> = {
  cli: 'bash -c "$PROGRAM"',
  boto3: 'python3 -c "$PROGRAM"',
  js: 'node --input-type=module -e "$PROGRAM"',
};

/**
 * The container command and $PROGRAM for `program` in `client`; with `keepRunning` (a
 * Deployment) the container sleeps once the program succeeded, so any failure is a restart.
 */
export function launch(
  client: Client,
  program: string,
  keepRunning = false,
): { command: string[]; env: Record<string, string> } {
  const start = keepRunning ? `${LAUNCH[client]} && exec sleep infinity` : LAUNCH[client];
  return { command: ["sh", "-c", start], env: { PROGRAM: program } };
}

export const tenantProgram = (client: Client): string => TENANT_PROGRAMS[client];
export const noPolicyProgram = (client: Client): string => NO_POLICY_PROGRAMS[client];
export const rotationProgram = (client: "boto3" | "js"): string => ROTATION_PROGRAMS[client];

/** The "KEY value" lines a program printed, first occurrence of each key. */
export function parseReport(output: string): Map<string, string> {
  const report = new Map<string, string>();
  for (const line of output.split("\n")) {
    const match = /^([A-Z]+)(?: (.*))?$/.exec(line.trim());
    if (match && !report.has(match[1]!)) report.set(match[1]!, match[2] ?? "");
  }
  return report;
}

export interface RotationCall {
  at: number;
  digest: string;
  iat: number;
  exp: number;
  arn?: string;
  error?: string;
}

export function parseCalls(output: string): RotationCall[] {
  return output
    .split("\n")
    .filter((line) => line.startsWith("CALL "))
    .map((line) => JSON.parse(line.slice(5)) as RotationCall);
}
