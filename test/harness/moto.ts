import { join } from "node:path";
import {
  IAMClient,
  CreateRoleCommand,
  PutRolePolicyCommand,
  CreateUserCommand,
  PutUserPolicyCommand,
  CreateAccessKeyCommand,
} from "@aws-sdk/client-iam";
import { S3Client, CreateBucketCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { VENV_BIN } from "./paths.ts";
import { FatalError, ManagedProcess, freePort, waitFor } from "./process.ts";

export interface StaticCredentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface Moto {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  /** The same server, addressed from another network namespace via host. */
  endpointFor(host: string): string;
  port: number;
  region: string;
  accountId: string;
  process: ManagedProcess;
  /** Creates a role that the account may assume (with tags and source identity). */
  createRole(name: string, policy: object, trust?: object): Promise<string>;
  createUser(name: string, policy: object): Promise<StaticCredentials>;
  createBucket(name: string, objects?: Record<string, string>): Promise<void>;
  /** From now on every request must be signed by a known identity allowed to do it. */
  enableAuth(): Promise<void>;
  stop(): Promise<void>;
}

export const MOTO_ACCOUNT_ID = "123456789012";

/** The IAM user the tests' keycutter server signs its STS calls with. */
export const BROKER_USER = "keycutter-broker";

/**
 * Trusts the account and, by name, the broker user: moto matches trust principals by exact
 * ARN (it does not expand :root to the account's users).
 */
export function defaultTrustPolicy(accountId = MOTO_ACCOUNT_ID): object {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Effect: "Allow",
        Principal: {
          AWS: [`arn:aws:iam::${accountId}:root`, `arn:aws:iam::${accountId}:user/${BROKER_USER}`],
        },
        Action: ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
      },
    ],
  };
}

/** A real moto_server (STS, IAM, S3) from the project's virtualenv, on a free port. */
export async function startMoto(): Promise<Moto> {
  const port = await freePort("0.0.0.0");
  const proc = new ManagedProcess(
    "moto",
    join(VENV_BIN, "moto_server"),
    ["-H", "0.0.0.0", "-p", String(port)],
    {
      env: { ...process.env, MOTO_ACCOUNT_ID, AWS_DEFAULT_REGION: "us-east-1" },
    },
  );
  const endpoint = `http://127.0.0.1:${port}`;
  await waitFor(
    "moto_server",
    async () => {
      if (!proc.running) throw new FatalError(`moto_server exited:\n${proc.tail()}`);
      const res = await fetch(`${endpoint}/moto-api/`).catch(() => undefined);
      return res?.ok ?? false;
    },
    { timeoutMs: 60_000, intervalMs: 200, onTimeout: () => proc.tail() },
  ).catch(async (err) => {
    await proc.kill();
    throw err;
  });

  // Bootstrap identity: valid only until enableAuth().
  const bootstrap = { accessKeyId: "testing", secretAccessKey: "testing" };
  const region = "us-east-1";
  const iam = new IAMClient({ endpoint, region, credentials: bootstrap });
  const s3 = new S3Client({ endpoint, region, credentials: bootstrap, forcePathStyle: true });

  return {
    endpoint,
    endpointFor: (host) => `http://${host}:${port}`,
    port,
    region,
    accountId: MOTO_ACCOUNT_ID,
    process: proc,
    async createRole(name, policy, trust = defaultTrustPolicy()) {
      const res = await iam.send(
        new CreateRoleCommand({
          RoleName: name,
          AssumeRolePolicyDocument: JSON.stringify(trust),
          MaxSessionDuration: 43200,
        }),
      );
      await iam.send(
        new PutRolePolicyCommand({
          RoleName: name,
          PolicyName: `${name}-policy`,
          PolicyDocument: JSON.stringify(policy),
        }),
      );
      return res.Role!.Arn!;
    },
    async createUser(name, policy) {
      await iam.send(new CreateUserCommand({ UserName: name }));
      await iam.send(
        new PutUserPolicyCommand({
          UserName: name,
          PolicyName: `${name}-policy`,
          PolicyDocument: JSON.stringify(policy),
        }),
      );
      const key = await iam.send(new CreateAccessKeyCommand({ UserName: name }));
      return { accessKeyId: key.AccessKey!.AccessKeyId!, secretAccessKey: key.AccessKey!.SecretAccessKey! };
    },
    async createBucket(name, objects = {}) {
      await s3.send(new CreateBucketCommand({ Bucket: name }));
      for (const [Key, Body] of Object.entries(objects)) {
        await s3.send(new PutObjectCommand({ Bucket: name, Key, Body }));
      }
    },
    async enableAuth() {
      const res = await fetch(`${endpoint}/moto-api/reset-auth`, { method: "POST", body: "0" });
      if (!res.ok) throw new Error(`moto reset-auth: ${res.status}`);
    },
    stop: () => proc.stop(),
  };
}
