// The whole system with MinIO as STS: the keycutter servers sign their AssumeRole calls with the
// MinIO broker user's keys instead of moto's (test/e2e/minio-session-*.test.ts).
import type { StaticCredentials } from "../harness/index.ts";
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
