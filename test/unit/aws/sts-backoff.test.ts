// StsIssuer's retry schedule on a manual clock: exponential backoff with half of it jittered,
// capped, only for retryable errors, at most maxAttempts. The unmodified SDK talks to a local
// stand-in that answers with STS's own Throttling and AccessDenied documents; no test here sleeps
// (moto and the real throttling proxy are test/aws/sts.test.ts's).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { backoffMs, StsError, StsIssuer } from "../../../src/aws/sts.ts";
import { startHttpStandIn, type HttpStandIn } from "../../harness/http-stand-in.ts";
import { ManualClock, untilTrue } from "../../harness/manual-clock.ts";

const error = (code: string) =>
  `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>${code}</Code><Message>no</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>`;
const ISSUED = `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>ASIAUNITTEST</AccessKeyId><SecretAccessKey>unit-secret</SecretAccessKey><SessionToken>unit-token</SessionToken><Expiration>2026-01-01T01:00:00Z</Expiration></Credentials><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn><AssumedRoleId>AROAUNIT:s</AssumedRoleId></AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>11111111-1111-1111-1111-111111111111</RequestId></ResponseMetadata></AssumeRoleResponse>`;

/** What the stand-in answers next: a list of error codes, then `ISSUED` (or `then`, forever). */
const stand = { answers: [] as string[], then: "issued", calls: 0 };
let sts: HttpStandIn;
let endpoint: string;

before(async () => {
  sts = await startHttpStandIn((req, res) => {
    req.resume();
    req.on("end", () => {
      stand.calls++;
      const next = stand.answers.shift() ?? stand.then;
      if (next === "issued") res.writeHead(200, { "content-type": "text/xml" }).end(ISSUED);
      else res.writeHead(400, { "content-type": "text/xml" }).end(error(next));
    });
  });
  endpoint = sts.url;
});
after(() => sts.close());

function issuer(clock: ManualClock, maxAttempts = 5) {
  stand.calls = 0;
  return new StsIssuer({
    region: "us-east-1",
    endpoint,
    credentials: { accessKeyId: "AKIAUNITTEST", secretAccessKey: "unit" },
    maxAttempts,
    baseBackoffMs: 100,
    maxBackoffMs: 2000,
    clock,
  });
}

const req = { roleArn: "arn:aws:iam::123456789012:role/r", sessionName: "s", durationSeconds: 900 };

test("backoff: doubles per attempt, the upper half jittered, capped", () => {
  const range = (attempt: number) => [backoffMs(attempt, 100, 2000, 0), backoffMs(attempt, 100, 2000, 1)];
  assert.deepEqual(range(1), [50, 100]);
  assert.deepEqual(range(2), [100, 200]);
  assert.deepEqual(range(3), [200, 400]);
  assert.deepEqual(range(5), [800, 1600]);
  assert.deepEqual(range(6), [1000, 2000], "capped at maxBackoffMs");
  assert.deepEqual(range(20), [1000, 2000]);
});

/** Runs the clock to each retry: asserts nothing is sent a millisecond early, then one call. */
async function expectRetryAfter(clock: ManualClock, waitMs: number, callsBefore: number): Promise<void> {
  await untilTrue(() => clock.pending > 0, `backoff timer after call ${callsBefore}`);
  await clock.advance(waitMs - 1);
  assert.equal(clock.pending, 1, `still waiting at ${waitMs - 1} ms`);
  assert.equal(stand.calls, callsBefore, `no retry before ${waitMs} ms`);
  await clock.advance(1);
  await untilTrue(() => stand.calls === callsBefore + 1, `retry ${callsBefore} sent after ${waitMs} ms`);
}

test("throttled twice then issued: waits the schedule's low end with jitter 0, and returns the credentials", async () => {
  const clock = new ManualClock();
  clock.randomValue = 0;
  const sts = issuer(clock);
  stand.answers = ["Throttling", "Throttling"];
  const issued = sts.assumeRole(req);
  await untilTrue(() => stand.calls === 1, "first call");
  await expectRetryAfter(clock, 50, 1);
  await expectRetryAfter(clock, 100, 2);
  const creds = await issued;
  assert.equal(creds.accessKeyId, "ASIAUNITTEST");
  assert.equal(creds.accountId, "123456789012");
  assert.equal(clock.pending, 0);
  sts.destroy();
});

test("always throttled: maxAttempts calls at the schedule's high end, then Throttled", async () => {
  const clock = new ManualClock();
  clock.randomValue = 0.999;
  const sts = issuer(clock, 4);
  stand.answers = [];
  stand.then = "Throttling";
  try {
    const outcome = assert.rejects(
      sts.assumeRole(req),
      (e: unknown) => e instanceof StsError && e.code === "Throttled" && e.awsCode === "Throttling",
    );
    await untilTrue(() => stand.calls === 1, "first call");
    await expectRetryAfter(clock, Math.ceil(backoffMs(1, 100, 2000, 0.999)), 1);
    await expectRetryAfter(clock, Math.ceil(backoffMs(2, 100, 2000, 0.999)), 2);
    await expectRetryAfter(clock, Math.ceil(backoffMs(3, 100, 2000, 0.999)), 3);
    await outcome;
    assert.equal(stand.calls, 4, "maxAttempts, no more");
    assert.equal(clock.pending, 0, "no wait after the last attempt");
  } finally {
    stand.then = "issued";
    sts.destroy();
  }
});

test("AccessDenied: one call, no backoff", async () => {
  const clock = new ManualClock();
  const sts = issuer(clock);
  stand.answers = ["AccessDenied"];
  await assert.rejects(sts.assumeRole(req), (e: unknown) => e instanceof StsError && e.code === "StsDenied");
  assert.equal(stand.calls, 1);
  assert.equal(clock.pending, 0);
  sts.destroy();
});
