// The whole system with MinIO as STS: the keycutter servers sign their AssumeRole calls with the
// MinIO broker user's keys instead of moto's (test/e2e/minio-session-*.test.ts).
import { BROKER_USER, type StaticCredentials } from "../harness/index.ts";
import { startMinio, type MinioServer } from "../harness/minio.ts";
import { System, type SystemOptions } from "./system.ts";

/** The keycutter servers sign their STS calls with the MinIO broker user instead of moto's. */
export class MinioSystem extends System {
  stsCreds: StaticCredentials;
  constructor(stsCreds: StaticCredentials, opts: SystemOptions) {
    super(opts);
    this.stsCreds = stsCreds;
  }
  override serverEnv(): NodeJS.ProcessEnv {
    return {
      ...super.serverEnv(),
      AWS_ACCESS_KEY_ID: this.stsCreds.accessKeyId,
      AWS_SECRET_ACCESS_KEY: this.stsCreds.secretAccessKey,
    };
  }
}

export interface MinioWorld {
  minio: MinioServer;
  sys: MinioSystem;
  /** The broker user's keys: what the servers sign their AssumeRole calls with. */
  broker: StaticCredentials;
}

/**
 * MinIO with `buckets` and the broker user (`brokerPolicy`), then the whole system on it; the
 * servers' --sts-endpoint is MinIO's (appended after the System's own, moto's: commander keeps
 * the last value). Started, logging to the test's output.
 */
export async function startMinioWorld(o: {
  buckets: Record<string, Record<string, string>>;
  brokerPolicy: object;
  system: Omit<SystemOptions, "serverArgs">;
}): Promise<MinioWorld> {
  const minio = await startMinio();
  for (const [bucket, objects] of Object.entries(o.buckets)) await minio.createBucket(bucket, objects);
  const broker = await minio.createUser(BROKER_USER, o.brokerPolicy);
  const sys = new MinioSystem(broker, { ...o.system, serverArgs: ["--sts-endpoint", minio.endpoint] });
  await sys.start((m) => console.log(`# ${m}`));
  return { minio, sys, broker };
}
