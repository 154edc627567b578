// Proves moto is a real STS/S3 with auth enforced, and Redis answers.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { STSClient, AssumeRoleCommand } from "@aws-sdk/client-sts";
import { S3Client, GetObjectCommand } from "@aws-sdk/client-s3";
import { BROKER_USER, startMoto, startRedis, type Moto, type Redis } from "./index.ts";

describe("moto (STS + S3, auth enforced)", () => {
  let moto: Moto;
  let roleArn = "";
  let admin = { accessKeyId: "", secretAccessKey: "" };

  before(async () => {
    moto = await startMoto();
    await moto.createBucket("bucket-a", { "hello.txt": "from A" });
    await moto.createBucket("bucket-b", { "hello.txt": "from B" });
    roleArn = await moto.createRole("reader-a", {
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Action: ["s3:GetObject"], Resource: ["arn:aws:s3:::bucket-a/*"] },
        { Effect: "Allow", Action: ["s3:ListBucket"], Resource: ["arn:aws:s3:::bucket-a"] },
      ],
    });
    admin = await moto.createUser(BROKER_USER, {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: ["sts:AssumeRole", "sts:TagSession"], Resource: "*" }],
    });
    await moto.enableAuth();
  });
  after(async () => moto?.stop());

  it("AssumeRole returns credentials that read the allowed bucket and are denied on another", async () => {
    const sts = new STSClient({ endpoint: moto.endpoint, region: moto.region, credentials: admin });
    const res = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: "test-session" }));
    const c = res.Credentials!;
    assert.match(c.AccessKeyId!, /^ASIA/);
    assert.ok(c.SessionToken && c.SessionToken.length > 20);
    const s3 = new S3Client({
      endpoint: moto.endpoint,
      region: moto.region,
      forcePathStyle: true,
      credentials: {
        accessKeyId: c.AccessKeyId!,
        secretAccessKey: c.SecretAccessKey!,
        sessionToken: c.SessionToken!,
      },
    });
    const ok = await s3.send(new GetObjectCommand({ Bucket: "bucket-a", Key: "hello.txt" }));
    assert.equal(await ok.Body!.transformToString(), "from A");
    await assert.rejects(
      s3.send(new GetObjectCommand({ Bucket: "bucket-b", Key: "hello.txt" })),
      /AccessDenied/,
    );
  });

  it("refuses unsigned or unknown identities once auth is on", async () => {
    const sts = new STSClient({
      endpoint: moto.endpoint,
      region: moto.region,
      credentials: { accessKeyId: "AKIANOTKNOWN", secretAccessKey: "nope" },
    });
    await assert.rejects(sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: "x-session" })));
  });
});

describe("redis-server", () => {
  let redis: Redis;
  before(async () => {
    redis = await startRedis();
  });
  after(async () => redis?.stop());

  it("answers PING and stores a value", async () => {
    assert.equal(await redis.command("PING"), "+PONG\r\n");
    assert.equal(await redis.command("SET k v"), "+OK\r\n");
    assert.equal(await redis.command("GET k"), "$1\r\nv\r\n");
  });

  it("can be killed and restarted on the same port for fault tests", async () => {
    await redis.kill();
    await assert.rejects(redis.command("PING"));
    await redis.restart();
    assert.equal(await redis.command("PING"), "+PONG\r\n");
  });
});
