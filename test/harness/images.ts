import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { CACHE, ROOT } from "./paths.ts";

const execFileP = promisify(execFile);

export interface ImageArchive {
  /** The reference the image is imported and run as, e.g. localhost/keycutter:<input hash>. */
  ref: string;
  /** A docker-archive tarball for `ctr images import`. */
  archive: string;
}

export interface NodeImages {
  keycutter: ImageArchive;
  pause: ImageArchive;
  coredns: ImageArchive;
  /** The unmodified AWS CLI and boto3 (test/node/images/aws-clients.Dockerfile). */
  awsClients: ImageArchive;
  /** The unmodified AWS SDK for JavaScript v3, S3 and STS clients (test/node/images/js-sdk.Dockerfile). */
  jsSdk: ImageArchive;
}

function parseImagesEnv(text: string): NodeImages {
  const env = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^([A-Z0-9_]+)_(IMAGE|ARCHIVE)=(\S+)$/.exec(line);
    if (match) env.set(`${match[1]}_${match[2]}`, match[3]!);
  }
  const one = (name: string): ImageArchive => {
    const ref = env.get(`${name}_IMAGE`);
    const archive = env.get(`${name}_ARCHIVE`);
    if (!ref || !archive) throw new Error(`images.env has no ${name} image: rerun scripts/build-images.sh`);
    return { ref, archive };
  };
  return {
    keycutter: one("KEYCUTTER"),
    pause: one("PAUSE"),
    coredns: one("COREDNS"),
    awsClients: one("AWS_CLIENTS"),
    jsSdk: one("JS_SDK"),
  };
}

/**
 * Builds (or finds cached, by input hash) the keycutter, pause, CoreDNS and workload images through
 * scripts/build-images.sh, which needs no registry and no daemon.
 */
export async function buildNodeImages(): Promise<NodeImages> {
  try {
    await execFileP("bash", [join(ROOT, "scripts", "build-images.sh")], {
      maxBuffer: 64 * 1024 * 1024,
      timeout: 30 * 60_000,
    });
  } catch (err) {
    const failure = err as { stderr?: string; message: string };
    throw new Error(`scripts/build-images.sh failed:\n${failure.stderr?.slice(-4000) ?? failure.message}`, {
      cause: err,
    });
  }
  return parseImagesEnv(readFileSync(join(CACHE, "images", "images.env"), "utf8"));
}
