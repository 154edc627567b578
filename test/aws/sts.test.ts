// StsIssuer against real moto (auth enforced), through a proxy that returns STS's Throttling
// error: backoff and retry, then a clear Throttled error; AccessDenied and malformed policies
// mapped without retry.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { startMoto, type Moto } from "../harness/index.ts";
import { StsError, StsIssuer } from "../../src/aws/sts.ts";
import { systemClock } from "../../src/common/clock.ts";
import { startThrottleProxy, type ThrottleProxy } from "./throttle-proxy.ts";

describe("StsIssuer (moto)", { timeout: 120_000 }, () => {
  let moto: Moto;
  let proxy: ThrottleProxy;
  let creds: { accessKeyId: string; secretAccessKey: string };
  let roleArn: string;
  let otherRole: string;

  before(async () => {
    moto = await startMoto();
    const trust = (user: string) => ({
      Version: "2012-10-17",
      Statement: [
        {
          Effect: "Allow",
          Principal: { AWS: `arn:aws:iam::123456789012:user/${user}` },
          Action: ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        },
      ],
    });
    roleArn = await moto.createRole(
      "r1",
      { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "s3:*", Resource: "*" }] },
      trust("broker"),
    );
    otherRole = await moto.createRole(
      "r2",
      { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "s3:*", Resource: "*" }] },
      trust("somebody-else"),
    );
    creds = await moto.createUser("broker", {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: "sts:*", Resource: "*" }],
    });
    await moto.enableAuth();
    proxy = await startThrottleProxy(moto.endpoint);
  });
  after(async () => {
    await proxy?.close();
    await moto?.stop();
  });

  const req = (arn: string) => ({
    roleArn: arn,
    sessionName: "ns.pod-0123456789ab",
    sourceIdentity: "ns.pod-0123456789ab",
    durationSeconds: 900,
    tags: [{ Key: "kubernetes-namespace", Value: "ns" }],
    sessionPolicy: JSON.stringify({
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: "s3:GetObject", Resource: "*" }],
    }),
  });

  it("retries throttled calls with backoff and succeeds", async () => {
    const attempts: string[] = [];
    const sleeps: number[] = [];
    const sts = new StsIssuer({
      region: "us-east-1",
      endpoint: proxy.endpoint,
      credentials: creds,
      baseBackoffMs: 20,
      onAttempt: (o) => attempts.push(o),
      clock: {
        ...systemClock,
        setTimeout: (fn, ms) => {
          sleeps.push(ms);
          return systemClock.setTimeout(fn, ms);
        },
      },
    });
    proxy.throttleNext(2);
    const before = proxy.throttled;
    const c = await sts.assumeRole(req(roleArn));
    assert.equal(proxy.throttled - before, 2);
    assert.deepEqual(attempts, ["Throttling", "Throttling", "ok"]);
    assert.equal(sleeps.length, 2);
    assert.ok(
      (sleeps[1] as number) >= 20 && (sleeps[0] as number) <= 20,
      `backoff grows: ${sleeps.join(",")}`,
    );
    assert.match(c.accessKeyId, /^ASIA/);
    assert.equal(c.accountId, "123456789012");
    assert.ok(c.expiration.getTime() > Date.now());
    sts.destroy();
  });

  it("gives up after maxAttempts with a Throttled error", async () => {
    const sts = new StsIssuer({
      region: "us-east-1",
      endpoint: proxy.endpoint,
      credentials: creds,
      maxAttempts: 3,
      baseBackoffMs: 5,
    });
    proxy.always = true;
    try {
      const before = proxy.assumeRoleCalls;
      await assert.rejects(
        sts.assumeRole(req(roleArn)),
        (e: unknown) => e instanceof StsError && e.code === "Throttled" && e.awsCode === "Throttling",
      );
      assert.equal(proxy.assumeRoleCalls - before, 3);
    } finally {
      proxy.always = false;
      sts.destroy();
    }
  });

  it("maps AccessDenied to StsDenied without retrying; unreachable STS to Unavailable", async () => {
    const sts = new StsIssuer({
      region: "us-east-1",
      endpoint: proxy.endpoint,
      credentials: creds,
      baseBackoffMs: 5,
    });
    const before = proxy.assumeRoleCalls;
    await assert.rejects(
      sts.assumeRole(req(otherRole)),
      (e: unknown) => e instanceof StsError && e.code === "StsDenied",
    );
    assert.equal(proxy.assumeRoleCalls - before, 1, "no retry on AccessDenied");
    sts.destroy();
    const down = new StsIssuer({
      region: "us-east-1",
      endpoint: "http://127.0.0.1:9",
      credentials: creds,
      maxAttempts: 2,
      baseBackoffMs: 5,
    });
    await assert.rejects(
      down.assumeRole(req(roleArn)),
      (e: unknown) =>
        e instanceof StsError &&
        e.code === "Unavailable" &&
        !String(e.message).includes(creds.secretAccessKey),
    );
    down.destroy();
  });
});

describe("classify", () => {
  it("maps STS error codes to outcomes the agent can act on", async () => {
    const { classify } = await import("../../src/aws/sts.ts");
    const err = (name: string, status: number) => ({
      name,
      message: "m",
      $metadata: { httpStatusCode: status },
    });
    assert.equal(classify(err("Throttling", 400)).code, "Throttled");
    assert.equal(classify(err("AccessDenied", 403)).code, "StsDenied");
    assert.equal(classify(err("MalformedPolicyDocument", 400)).code, "PolicyInvalid");
    assert.equal(
      classify(err("InvalidParameterValue", 400)).code,
      "PolicyInvalid",
      "MinIO: unsupported action",
    );
    assert.equal(classify(err("InternalFailure", 500)).retry, true);
  });
});
