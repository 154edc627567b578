// A workload as SDKs run it: the AWS SDK for JavaScript v3 with its default credential chain
// (which ends at IMDS), reading one S3 object every interval. It holds its credentials and
// refreshes them only near expiry, like every SDK. Prints one JSON line per call.
//   node holder.ts <bucket> <key> <intervalMs>
import { S3Client, GetObjectCommand } from "@aws-sdk/client-s3";

const [bucket = "", key = "", intervalArg = "250"] = process.argv.slice(2);
const s3 = new S3Client({ forcePathStyle: true, maxAttempts: 1 });
let stop = false;
process.on("SIGTERM", () => (stop = true));

while (!stop) {
  const t0 = performance.now();
  try {
    const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    await res.Body!.transformToString();
    console.log(JSON.stringify({ t: Date.now(), ok: true, ms: performance.now() - t0 }));
  } catch (err) {
    const e = err as Error;
    console.log(
      JSON.stringify({
        t: Date.now(),
        ok: false,
        ms: performance.now() - t0,
        err: `${e.name}: ${e.message}`.slice(0, 200),
      }),
    );
  }
  await new Promise((r) => setTimeout(r, Number(intervalArg)));
}
