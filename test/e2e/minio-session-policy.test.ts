// End to end, against a real enforcement point for session policies: MinIO as STS and S3.
// moto enforces a role's own policy but ignores session policies; MinIO evaluates
// (the calling user's policy ∩ the AssumeRole session policy) on every S3 request. So here the
// only thing that separates two pods of the same namespace, service account and AccessPolicy is
// the per-pod session policy keycutter renders (`${namespace}/${podName}/*`) — and MinIO itself
// denies each pod the other's prefix, through the unmodified AWS CLI in the pod's netns.
// The keycutter servers run unchanged with --sts-endpoint pointing at MinIO and MinIO user
// credentials in their environment; agents and pods are exactly as in the moto suites.
// What MinIO does with what keycutter sends (checked against MinIO's cmd/sts-handlers.go):
// RoleArn, Tags and SourceIdentity are accepted and ignored (the session inherits the signing
// user's policy, here the broker's), DurationSeconds up to 365 days is honoured, and the
// session policy is parsed strictly: actions MinIO does not implement (iam:*, sts:*) make the
// whole AssumeRole fail with InvalidParameterValue (last test).
// Needs root (network namespaces, iptables) and MinIO built by scripts/build-minio.sh.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { AssumeRoleCommand, STSClient } from "@aws-sdk/client-sts";
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { MOTO_ACCOUNT_ID, type StaticCredentials } from "../harness/index.ts";
import { hasMinio, minioBinaries, type MinioServer } from "../harness/minio.ts";
import type { TestPod } from "./system.ts";
import { startMinioWorld, type MinioSystem } from "./minio-system.ts";

const BUCKET = "shared-bucket";
const OTHER_BUCKET = "other-bucket";
// MinIO ignores RoleArn on AssumeRole (the session inherits the calling user's policy); keycutter
// still needs a well-formed role ARN for its RoleAllowance check and the IMDS role name.
const ROLE = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/shared-reader`;

/** The broker user's own MinIO policy: the most any pod could ever get (reads and writes). */
const BROKER_POLICY = {
  Version: "2012-10-17",
  Statement: [
    {
      Effect: "Allow",
      Action: ["s3:GetObject", "s3:PutObject"],
      Resource: [`arn:aws:s3:::${BUCKET}/*`, `arn:aws:s3:::${OTHER_BUCKET}/*`],
    },
    {
      Effect: "Allow",
      Action: ["s3:ListBucket"],
      Resource: [`arn:aws:s3:::${BUCKET}`, `arn:aws:s3:::${OTHER_BUCKET}`],
    },
  ],
};

const OBJECTS: Record<string, string> = {
  "tenant-a/app-1/data.txt": "a1-data\n",
  "tenant-a/app-1/secret.txt": "a1-secret\n",
  "tenant-a/app-2/data.txt": "a2-data\n",
  "tenant-b/app-1/data.txt": "b1-data\n",
};

function accessPolicy(namespace: string): object {
  return {
    apiVersion: "keycutter.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { namespace, name: "own-prefix" },
    spec: {
      podSelector: { serviceAccountName: "reader" },
      roleArn: ROLE,
      sessionPolicy: {
        Version: "2012-10-17",
        Statement: [
          {
            Effect: "Allow",
            Action: ["s3:GetObject"],
            Resource: [`arn:aws:s3:::${BUCKET}/\${namespace}/\${podName}/*`],
          },
        ],
      },
      sessionTags: { team: "${namespace}" },
      durationSeconds: 3600,
    },
  };
}

const ROLE_ALLOWANCE = {
  apiVersion: "keycutter.dev/v1alpha1",
  kind: "RoleAllowance",
  metadata: { name: "shared-readers" },
  spec: {
    namespaces: ["tenant-*"],
    roleArns: [ROLE],
    maxDurationSeconds: 3600,
    sessionTagKeys: ["team"],
    // the platform's ceiling, appended to every session policy: no pod reads a secret.txt
    denyStatements: [
      { Effect: "Deny", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${BUCKET}/*/secret.txt`] },
    ],
  },
};

// A ceiling MinIO cannot parse: it refuses session policies naming actions it does not implement
// (iam:*, sts:*) with InvalidParameterValue, where AWS accepts them.
const STRICT_ALLOWANCE = {
  apiVersion: "keycutter.dev/v1alpha1",
  kind: "RoleAllowance",
  metadata: { name: "strict" },
  spec: {
    namespaces: ["strict-*"],
    roleArns: [ROLE],
    maxDurationSeconds: 3600,
    sessionTagKeys: ["team"],
    denyStatements: [{ Effect: "Deny", Action: ["iam:*", "sts:*"], Resource: "*" }],
  },
};

const skip = hasMinio()
  ? false
  : `MinIO is not built (${minioBinaries().minio} missing): run scripts/build-minio.sh`;

describe("e2e: per-pod session policies enforced by MinIO", { skip }, () => {
  let minio: MinioServer;
  let sys: MinioSystem;
  let broker: StaticCredentials;
  let a1: TestPod, a2: TestPod, b1: TestPod, strict: TestPod;
  let n = 0;

  before(async () => {
    ({ minio, sys, broker } = await startMinioWorld({
      buckets: { [BUCKET]: OBJECTS, [OTHER_BUCKET]: { "x.txt": "other\n" } },
      brokerPolicy: BROKER_POLICY,
      system: { nodes: ["node-a", "node-b"], serverReplicas: 2 },
    }));
    await sys.apply(ROLE_ALLOWANCE);
    await sys.apply(STRICT_ALLOWANCE);
    for (const ns of ["tenant-a", "tenant-b", "strict-c"]) {
      await sys.kubelet.ensureNamespace(ns);
      await sys.apply(accessPolicy(ns));
    }
    a1 = await sys.addPod("node-a", "tenant-a", "app-1", { serviceAccount: "reader" });
    a2 = await sys.addPod("node-a", "tenant-a", "app-2", { serviceAccount: "reader" });
    b1 = await sys.addPod("node-b", "tenant-b", "app-1", { serviceAccount: "reader" });
    strict = await sys.addPod("node-b", "strict-c", "app-1", { serviceAccount: "reader" });
  });
  after(async () => {
    await sys?.stop();
    await minio?.stop();
  });

  /** `aws s3api get-object` in the pod, against MinIO: the object's body, or the CLI's error. */
  async function get(p: TestPod, key: string, bucket = BUCKET): Promise<{ body?: string; error?: string }> {
    const out = join(sys.dir, `get-${n++}.out`);
    const r = await sys.aws(p, ["s3api", "get-object", "--bucket", bucket, "--key", key, out], {
      AWS_ENDPOINT_URL: minio.endpointFor(sys.net.gatewayIP),
    });
    if (r.code === 0) return { body: readFileSync(out, "utf8") };
    return { error: r.stderr.trim() };
  }

  const denied = (r: { body?: string; error?: string }, what: string) => {
    assert.equal(r.body, undefined, `${what}: expected a denial, got the object`);
    // AccessDenied comes from MinIO's policy evaluation (not InvalidAccessKeyId, not a network error)
    assert.match(r.error ?? "", /AccessDenied/, what);
  };

  it("control: the broker's own identity, without a session policy, reads every pod's prefix", async () => {
    // This is what each pod would get without keycutter's per-pod session policy, so every
    // denial below is the session policy's doing, enforced by MinIO.
    const sts = new STSClient({ endpoint: minio.endpoint, region: minio.region, credentials: broker });
    const out = await sts.send(
      new AssumeRoleCommand({ RoleArn: ROLE, RoleSessionName: "control", DurationSeconds: 900 }),
    );
    sts.destroy();
    const c = out.Credentials!;
    const s3 = new S3Client({
      endpoint: minio.endpoint,
      region: minio.region,
      forcePathStyle: true,
      credentials: {
        accessKeyId: c.AccessKeyId!,
        secretAccessKey: c.SecretAccessKey!,
        sessionToken: c.SessionToken!,
      },
    });
    for (const key of Object.keys(OBJECTS)) {
      const r = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
      assert.equal(await r.Body!.transformToString(), OBJECTS[key]);
    }
    await s3.send(new PutObjectCommand({ Bucket: OTHER_BUCKET, Key: "control.txt", Body: "c" }));
    s3.destroy();
  });

  it("each pod reads its own prefix with the unmodified AWS CLI through 169.254.169.254", async () => {
    assert.deepEqual(await get(a1, "tenant-a/app-1/data.txt"), { body: "a1-data\n" });
    assert.deepEqual(await get(a2, "tenant-a/app-2/data.txt"), { body: "a2-data\n" });
    assert.deepEqual(await get(b1, "tenant-b/app-1/data.txt"), { body: "b1-data\n" });
  });

  it("same namespace, same service account, same AccessPolicy: MinIO denies each pod the other's prefix", async () => {
    denied(await get(a1, "tenant-a/app-2/data.txt"), "app-1 reading app-2's prefix");
    denied(await get(a2, "tenant-a/app-1/data.txt"), "app-2 reading app-1's prefix");
  });

  it("same pod name in another namespace: denied on the namespace it is not in", async () => {
    denied(await get(b1, "tenant-a/app-1/data.txt"), "tenant-b/app-1 reading tenant-a/app-1's prefix");
    denied(await get(a1, "tenant-b/app-1/data.txt"), "tenant-a/app-1 reading tenant-b/app-1's prefix");
  });

  it("the session policy narrows actions and buckets the broker user itself may use", async () => {
    denied(await get(a1, "x.txt", OTHER_BUCKET), "a pod reading another bucket");
    const put = await sys.aws(
      a1,
      [
        "s3api",
        "put-object",
        "--bucket",
        BUCKET,
        "--key",
        "tenant-a/app-1/new.txt",
        "--body",
        "/etc/hostname",
      ],
      {
        AWS_ENDPOINT_URL: minio.endpointFor(sys.net.gatewayIP),
      },
    );
    assert.notEqual(put.code, 0, "PutObject into the pod's own prefix must be denied (GetObject only)");
    assert.match(put.stderr, /AccessDenied/);
    const list = await sys.aws(a1, ["s3", "ls", `s3://${BUCKET}/tenant-a/app-1/`], {
      AWS_ENDPOINT_URL: minio.endpointFor(sys.net.gatewayIP),
    });
    assert.notEqual(list.code, 0, "ListBucket is not in the session policy");
    assert.match(list.stderr, /AccessDenied/);
  });

  it("the RoleAllowance's deny statements are enforced too, even inside the pod's own prefix", async () => {
    denied(await get(a1, "tenant-a/app-1/secret.txt"), "app-1 reading its own secret.txt");
  });

  it("the two pods of tenant-a hold distinct MinIO sessions", async () => {
    const c1 = await sys.imdsCredentials(a1);
    const c2 = await sys.imdsCredentials(a2);
    assert.equal(c1.status, 200, c1.body);
    assert.equal(c2.status, 200, c2.body);
    assert.notEqual(c1.creds!.AccessKeyId, c2.creds!.AccessKeyId);
    assert.equal(c1.creds!.Code, "Success");
    const logs = sys.allLogs();
    for (const c of [c1.creds!, c2.creds!]) {
      assert.ok(!logs.includes(c.SecretAccessKey!), "a secret key in the logs");
      assert.ok(!logs.includes(c.Token!), "a session token in the logs");
    }
  });

  it("a session policy MinIO refuses (iam:*/sts:* in the ceiling): no credentials, a clear error", async () => {
    const r = await sys.imdsCredentials(strict);
    assert.ok(r.status >= 400, `expected an error, got ${r.status} ${r.body}`);
    // the pod gets the code and a request id; STS's own text is in the server's log only
    assert.match(r.body, /\(PolicyInvalid\); see the server log, request id \S+/);
    assert.ok(!/InvalidParameterValue|unsupported action/.test(r.body), r.body);
    const requestId = /request id (\S+)/.exec(r.body)?.[1] as string;
    const serverLine = sys
      .allLogs()
      .split("\n")
      .find((l) => l.includes("STS AssumeRole failed") && l.includes(requestId));
    assert.match(serverLine ?? "", /InvalidParameterValue: unsupported action '(iam|sts):\*'/);
    const cli = await get(strict, "tenant-a/app-1/data.txt");
    assert.equal(cli.body, undefined);
    assert.match(cli.error ?? "", /Unable to locate credentials/);
    const audit = sys
      .allLogs()
      .split("\n")
      .filter((l) => l.includes('"kind":"audit"') && l.includes('"namespace":"strict-c"'))
      .map((l) => JSON.parse(l) as { decision: string; reason?: string });
    assert.ok(audit.length > 0, "the refusals are audited");
    for (const a of audit) {
      assert.equal(a.decision, "denied");
      assert.match(a.reason ?? "", /\(PolicyInvalid\); see the server log/);
    }
  });
});
