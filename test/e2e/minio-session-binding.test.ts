// End to end, at a store that enforces it: sessions bound to their pod's IP
// (RoleAllowance.spec.bindSessions: {to: PodIP, via: SourceIp}), with MinIO as STS and S3.
// MinIO evaluates aws:SourceIp in AssumeRole session policies on every S3 request (policy
// condition package of minio/pkg: NotIpAddress on aws:SourceIp, value from the request's peer
// address). The pods use the unmodified AWS CLI through 169.254.169.254 and the agents' hooks; the
// "thief" replays a pod's credentials, copied from its IMDS answer, with the unmodified CLI from
// another pod's network namespace and from the node, and with the unmodified JS SDK from the root
// namespace. What MinIO does not take (checked against its code, and the last tests show it):
//  - it parses session policies strictly and knows neither the BoolIfExists operator nor the
//    aws:ViaAWSService key, so the default binding (which exempts service calls) makes the
//    AssumeRole fail; MinIO-backed allowances set exemptAwsServiceCalls: false. It also refuses
//    an aws:SourceIp condition on Action "*" (which covers its admin and STS actions, whose
//    condition keys do not include it): the binding names actions: [s3:*].
//  - it takes aws:SourceIp from X-Forwarded-For, X-Real-IP or Forwarded when the client sends
//    them (internal/handlers/proxy.go), so a thief who knows the pod's IP can claim it: in front
//    of MinIO, binding by source address holds only behind a proxy that overwrites those headers.
// Needs root (network namespaces, iptables) and MinIO built by scripts/build-minio.sh.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { MOTO_ACCOUNT_ID, VENV_BIN, type PodNet } from "../harness/index.ts";
import { hasMinio, minioBinaries, type MinioServer } from "../harness/minio.ts";
import type { TestPod } from "./system.ts";
import { startMinioWorld, type MinioSystem } from "./minio-system.ts";

const BUCKET = "bound-bucket";
const ROLE = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/bound-reader`;
const OBJECTS: Record<string, string> = {
  "tenant-a/app-1.txt": "a1\n",
  "tenant-a/app-2.txt": "a2\n",
  "service-shape/x.txt": "x\n",
};

const BROKER_POLICY = {
  Version: "2012-10-17",
  Statement: [{ Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${BUCKET}/*`] }],
};

/** Both pods of tenant-a get the same policy: their own namespace's prefix. */
function accessPolicy(namespace: string): object {
  return {
    apiVersion: "keycutter.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { namespace, name: "read" },
    spec: {
      podSelector: { serviceAccountName: "reader" },
      roleArn: ROLE,
      sessionPolicy: {
        Version: "2012-10-17",
        Statement: [
          { Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${BUCKET}/\${namespace}/*`] },
        ],
      },
      durationSeconds: 3600,
    },
  };
}

const BOUND_ALLOWANCE = {
  apiVersion: "keycutter.dev/v1alpha1",
  kind: "RoleAllowance",
  metadata: { name: "bound-to-pod-ip" },
  spec: {
    namespaces: ["tenant-a"],
    roleArns: [ROLE],
    // MinIO parses neither BoolIfExists nor aws:ViaAWSService (see the last test), and refuses
    // aws:SourceIp conditions on Action "*" (which also covers its admin and STS actions)
    bindSessions: { to: "PodIP", via: "SourceIp", actions: ["s3:*"], exemptAwsServiceCalls: false },
  },
};

/** The binding as AWS needs it (service calls exempt): MinIO cannot parse it. */
const AWS_SHAPED_ALLOWANCE = {
  apiVersion: "keycutter.dev/v1alpha1",
  kind: "RoleAllowance",
  metadata: { name: "aws-shaped" },
  spec: {
    namespaces: ["service-shape"],
    roleArns: [ROLE],
    bindSessions: { to: "PodIP", via: "SourceIp", actions: ["s3:*"] },
  },
};

const skip = hasMinio()
  ? false
  : `MinIO is not built (${minioBinaries().minio} missing): run scripts/build-minio.sh`;

type Outcome = { body?: string; error?: string };

describe("e2e: sessions bound to the pod's IP, enforced by MinIO", { skip }, () => {
  let minio: MinioServer;
  let sys: MinioSystem;
  let a1: TestPod, a2: TestPod, shaped: TestPod;
  let elsewhere: PodNet;
  let stolen: Record<string, string>;
  let n = 0;
  /** Every request made, for the report: who, with whose credentials, what came back. */
  const outcomes: string[] = [];

  before(async () => {
    ({ minio, sys } = await startMinioWorld({
      buckets: { [BUCKET]: OBJECTS },
      brokerPolicy: BROKER_POLICY,
      system: { nodes: ["node-a", "node-b"], serverReplicas: 1, redis: false },
    }));
    await sys.apply(BOUND_ALLOWANCE);
    await sys.apply(AWS_SHAPED_ALLOWANCE);
    for (const ns of ["tenant-a", "service-shape"]) {
      await sys.kubelet.ensureNamespace(ns);
      await sys.apply(accessPolicy(ns));
    }
    a1 = await sys.addPod("node-a", "tenant-a", "app-1", { serviceAccount: "reader" });
    a2 = await sys.addPod("node-a", "tenant-a", "app-2", { serviceAccount: "reader" });
    shaped = await sys.addPod("node-b", "service-shape", "app-1", { serviceAccount: "reader" });
    // another pod network namespace, on the other node, with no pod object: the thief's
    elsewhere = await sys.net.addPod("node-b", "elsewhere");
  });
  after(async () => {
    if (outcomes.length > 0) console.log(`# outcomes:\n${outcomes.map((o) => `#   ${o}`).join("\n")}`);
    await sys?.stop();
    await minio?.stop();
  });

  const endpoint = () => minio.endpointFor(sys.net.gatewayIP);

  /** The unmodified AWS CLI in a network namespace; credentials from IMDS unless given. */
  async function cliGet(netns: string, key: string, creds?: Record<string, string>): Promise<Outcome> {
    const out = join(sys.dir, `get-${n++}.out`);
    const env = sys.awsEnv({
      AWS_ENDPOINT_URL: endpoint(),
      ...(creds
        ? {
            AWS_ACCESS_KEY_ID: creds.AccessKeyId,
            AWS_SECRET_ACCESS_KEY: creds.SecretAccessKey,
            AWS_SESSION_TOKEN: creds.Token,
            AWS_EC2_METADATA_DISABLED: "true",
          }
        : {}),
    });
    const r = await sys.net.exec(
      netns,
      join(VENV_BIN, "aws"),
      ["s3api", "get-object", "--bucket", BUCKET, "--key", key, out],
      {
        env,
        timeoutMs: 60_000,
      },
    );
    if (r.code === 0) return { body: readFileSync(out, "utf8") };
    return { error: r.stderr.trim() };
  }

  /** The unmodified JS SDK in the test process (the root network namespace). */
  async function sdkGet(
    creds: Record<string, string>,
    key: string,
    headers: Record<string, string> = {},
  ): Promise<Outcome> {
    const s3 = new S3Client({
      endpoint: minio.endpoint,
      region: minio.region,
      forcePathStyle: true,
      maxAttempts: 1,
      credentials: {
        accessKeyId: creds.AccessKeyId!,
        secretAccessKey: creds.SecretAccessKey!,
        sessionToken: creds.Token!,
      },
    });
    s3.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { headers: Record<string, string> };
        Object.assign(request.headers, headers);
        return next(args);
      },
      { step: "build", name: "extraHeaders" },
    );
    try {
      const r = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
      return { body: await r.Body!.transformToString() };
    } catch (e) {
      return { error: `${(e as Error).name}: ${(e as Error).message}` };
    } finally {
      s3.destroy();
    }
  }

  function record(who: string, what: string, r: Outcome): Outcome {
    outcomes.push(
      `${who}, ${what}: ${r.body !== undefined ? "allowed" : `denied (${(r.error ?? "").split("\n").at(-1)})`}`,
    );
    return r;
  }
  const allowed = (r: Outcome, body: string, what: string) =>
    assert.equal(r.body, body, `${what}: ${r.error}`);
  const denied = (r: Outcome, what: string) => {
    assert.equal(r.body, undefined, `${what}: expected a denial, got the object`);
    // AccessDenied is MinIO's policy evaluation (not a signature, network or credentials error)
    assert.match(r.error ?? "", /AccessDenied/, what);
  };

  it("the pod reads its data with its own credentials, from its own IP", async () => {
    allowed(
      record("app-1 in its netns", "own IMDS credentials", await cliGet(a1.net.netns, "tenant-a/app-1.txt")),
      "a1\n",
      "app-1",
    );
    const doc = await sys.imdsCredentials(a1);
    assert.equal(doc.status, 200, doc.body);
    stolen = doc.creds!;
  });

  it("the same credentials from another pod's network namespace: denied by MinIO", async () => {
    denied(
      record(
        "another pod netns (node-b)",
        "app-1's credentials",
        await cliGet(elsewhere.netns, "tenant-a/app-1.txt", stolen),
      ),
      "from another pod netns",
    );
    denied(
      record(
        "app-2's netns",
        "app-1's credentials",
        await cliGet(a2.net.netns, "tenant-a/app-1.txt", stolen),
      ),
      "from the other pod of the same policy",
    );
  });

  it("the same credentials from the node, and from the root network namespace: denied by MinIO", async () => {
    const node = sys.agents.get("node-a")!.node;
    denied(
      record(
        "node-a's netns (the node IP)",
        "app-1's credentials",
        await cliGet(node.netns, "tenant-a/app-1.txt", stolen),
      ),
      "from the node",
    );
    denied(
      record("root netns, JS SDK", "app-1's credentials", await sdkGet(stolen, "tenant-a/app-1.txt")),
      "from the root namespace",
    );
  });

  it("a second pod with the same policy is unaffected: its own credentials work from its own IP", async () => {
    allowed(
      record("app-2 in its netns", "own IMDS credentials", await cliGet(a2.net.netns, "tenant-a/app-2.txt")),
      "a2\n",
      "app-2",
    );
    allowed(
      record(
        "app-2 in its netns",
        "own IMDS credentials, app-1's object",
        await cliGet(a2.net.netns, "tenant-a/app-1.txt"),
      ),
      "a1\n",
      "same policy, same prefix",
    );
    // and app-1, after all the replays, still reads
    allowed(
      record(
        "app-1 in its netns",
        "own IMDS credentials, again",
        await cliGet(a1.net.netns, "tenant-a/app-1.txt"),
      ),
      "a1\n",
      "app-1 again",
    );
  });

  it("the session policy MinIO received carries the pod's IP, and each pod's differs", async () => {
    const c2 = await sys.imdsCredentials(a2);
    assert.equal(c2.status, 200, c2.body);
    assert.notEqual(c2.creds!.AccessKeyId, stolen.AccessKeyId);
    const audit = sys
      .allLogs()
      .split("\n")
      .filter(
        (l) =>
          l.includes('"kind":"audit"') &&
          l.includes('"decision":"allowed"') &&
          l.includes('"namespace":"tenant-a"'),
      )
      .map((l) => JSON.parse(l) as { pod: { name: string }; policySha256: string });
    const hashes = new Map(audit.map((a) => [a.pod.name, a.policySha256]));
    assert.ok(hashes.get("app-1") && hashes.get("app-2"));
    assert.notEqual(
      hashes.get("app-1"),
      hashes.get("app-2"),
      "the binding makes each pod's session policy its own",
    );
  });

  it("MinIO takes the source address from X-Real-IP / X-Forwarded-For: a thief who claims the pod's IP gets through", async () => {
    // A property of MinIO, not of keycutter: the binding is only as good as the store's idea of
    // the source address. AWS takes aws:SourceIp from the connection; MinIO needs a proxy in
    // front that overwrites these headers.
    const spoofed = record(
      "root netns, JS SDK, X-Real-IP: app-1's IP",
      "app-1's credentials",
      await sdkGet(stolen, "tenant-a/app-1.txt", { "x-real-ip": a1.net.ip }),
    );
    allowed(spoofed, "a1\n", "MinIO honours X-Real-IP");
    const forwarded = record(
      "root netns, JS SDK, X-Forwarded-For: app-1's IP",
      "app-1's credentials",
      await sdkGet(stolen, "tenant-a/app-1.txt", { "x-forwarded-for": a1.net.ip }),
    );
    allowed(forwarded, "a1\n", "MinIO honours X-Forwarded-For");
  });

  it("the binding as AWS needs it (aws:ViaAWSService exemption): MinIO refuses the session policy, so no credentials", async () => {
    const r = await sys.imdsCredentials(shaped);
    assert.ok(r.status >= 400, `expected an error, got ${r.status} ${r.body}`);
    assert.equal(r.creds, undefined);
    const audit = sys
      .allLogs()
      .split("\n")
      .filter((l) => l.includes('"kind":"audit"') && l.includes('"namespace":"service-shape"'))
      .map((l) => JSON.parse(l) as { decision: string; reason?: string });
    assert.ok(audit.length > 0);
    for (const a of audit) assert.equal(a.decision, "denied");
    // (the agent's prefetch before the pod had an IP is refused first: PodAddressUnknown)
    // STS's own text stays in the server log; the audit and the pod get the code and request id
    const refused = audit.find((a) => /\(PolicyInvalid\).*request id \S+/.test(a.reason ?? ""));
    assert.ok(refused, audit.map((a) => a.reason).join("\n"));
    const requestId = /request id (\S+)/.exec(refused.reason ?? "")?.[1] as string;
    const detail = sys
      .allLogs()
      .split("\n")
      .find((l) => l.includes(requestId) && !l.includes('"kind":"audit"'));
    assert.ok(detail, `a server log line with request id ${requestId}`);
    assert.match(detail, /BoolIfExists|ViaAWSService/);
    outcomes.push(
      `service-shape pod, AWS-shaped binding: AssumeRole refused by MinIO (server log: ${/invalid condition[^"\\]*/i.exec(detail)?.[0] ?? "InvalidParameterValue"})`,
    );
  });
});
