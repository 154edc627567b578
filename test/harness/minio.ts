// MinIO as a second, stricter STS + S3: unlike moto it enforces AssumeRole session policies on
// its S3 API (effective permissions = the calling user's policy ∩ the session policy). Built
// from the Go module proxy by scripts/build-minio.sh into .cache/bin/, with `minio-admin`
// (scripts/minio-admin, madmin-go) for the admin calls: users and policies.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { CACHE, versions } from "./paths.ts";
import { FatalError, ManagedProcess, freePort, waitFor } from "./process.ts";
import type { StaticCredentials } from "./moto.ts";

export interface MinioServer {
  /** http://127.0.0.1:<port> (S3 and STS on the same port). */
  endpoint: string;
  /** The same server, addressed from another network namespace via host. */
  endpointFor(host: string): string;
  port: number;
  region: string;
  /** The root identity (the harness's own admin; never given to keycutter). */
  root: StaticCredentials;
  process: ManagedProcess;
  /** Creates a MinIO user with a canned policy of the same name attached. */
  createUser(name: string, policy: object): Promise<StaticCredentials>;
  createBucket(name: string, objects?: Record<string, string>): Promise<void>;
  stop(): Promise<void>;
}

export function minioBinaries(): { minio: string; admin: string; version: string } {
  const version = versions().MINIO_VERSION ?? "";
  return {
    minio: join(CACHE, "bin", `minio-${version}`),
    admin: join(CACHE, "bin", `minio-admin-${version}`),
    version,
  };
}

/** Whether scripts/build-minio.sh produced both binaries. */
export function hasMinio(): boolean {
  const b = minioBinaries();
  return b.version !== "" && existsSync(b.minio) && existsSync(b.admin);
}

function runAdmin(
  address: string,
  root: StaticCredentials,
  args: string[],
  input = "",
): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(minioBinaries().admin, [address, ...args], {
      env: {
        PATH: process.env.PATH,
        MINIO_ROOT_USER: root.accessKeyId,
        MINIO_ROOT_PASSWORD: root.secretAccessKey,
      },
      stdio: ["pipe", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stderr }));
    child.stdin.end(input);
  });
}

/** A single-drive MinIO server on a free port, bound to 0.0.0.0, data in a temp dir. */
export async function startMinio(): Promise<MinioServer> {
  if (!hasMinio()) throw new Error("MinIO is not built: run scripts/build-minio.sh");
  const bins = minioBinaries();
  const port = await freePort("0.0.0.0");
  const consolePort = await freePort("127.0.0.1");
  const dir = mkdtempSync(join(tmpdir(), "kc-minio-"));
  mkdirSync(join(dir, "data"));
  mkdirSync(join(dir, "certs"));
  const region = "us-east-1";
  const root = { accessKeyId: "kc-root", secretAccessKey: randomBytes(18).toString("hex") };
  const proc = new ManagedProcess(
    "minio",
    bins.minio,
    [
      "server",
      join(dir, "data"),
      "--address",
      `0.0.0.0:${port}`,
      "--console-address",
      `127.0.0.1:${consolePort}`,
      "--certs-dir",
      join(dir, "certs"),
      "--quiet",
    ],
    {
      env: {
        PATH: process.env.PATH,
        HOME: dir,
        MINIO_ROOT_USER: root.accessKeyId,
        MINIO_ROOT_PASSWORD: root.secretAccessKey,
        MINIO_BROWSER: "off",
        MINIO_UPDATE: "off",
      },
    },
  );
  const endpoint = `http://127.0.0.1:${port}`;
  const address = `127.0.0.1:${port}`;
  const fail = async (err: unknown) => {
    await proc.kill();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  };
  await waitFor(
    "minio ready",
    async () => {
      if (!proc.running) throw new FatalError(`minio exited:\n${proc.tail()}`);
      const res = await fetch(`${endpoint}/minio/health/ready`).catch(() => undefined);
      return res?.ok ?? false;
    },
    { timeoutMs: 60_000, intervalMs: 200, onTimeout: () => proc.tail() },
  ).catch(fail);

  const s3 = new S3Client({ endpoint, region, credentials: root, forcePathStyle: true });
  const admin = async (args: string[], input = ""): Promise<void> => {
    // IAM finishes loading shortly after the health endpoint turns ready: retry briefly.
    let last = "";
    await waitFor(
      `minio-admin ${args[0]}`,
      async () => {
        const r = await runAdmin(address, root, args, input);
        if (r.code === 0) return true;
        last = r.stderr.trim();
        if (/not initialized|Server not initialized|IAM/i.test(last)) return false;
        throw new FatalError(last);
      },
      { timeoutMs: 20_000, intervalMs: 250, onTimeout: () => last },
    );
  };

  return {
    endpoint,
    endpointFor: (host) => `http://${host}:${port}`,
    port,
    region,
    root,
    process: proc,
    async createUser(name, policy) {
      const secret = randomBytes(20).toString("hex");
      const file = join(dir, `policy-${name}.json`);
      writeFileSync(file, JSON.stringify(policy));
      await admin(["add-policy", name, file]);
      await admin(["add-user", name], `${secret}\n`);
      await admin(["attach-policy", name, name]);
      return { accessKeyId: name, secretAccessKey: secret };
    },
    async createBucket(name, objects = {}) {
      await s3.send(new CreateBucketCommand({ Bucket: name }));
      for (const [Key, Body] of Object.entries(objects)) {
        await s3.send(new PutObjectCommand({ Bucket: name, Key, Body }));
      }
    },
    async stop() {
      s3.destroy();
      await proc.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
