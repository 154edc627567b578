// ServerClient's overall deadline and reachability on a manual clock: a server that accepts the
// request and never answers fails the call at the deadline (the socket's own inactivity timeout
// is far away), and an answer after a failure makes the server reachable again. A local stand-in
// plays the credential service; no test here sleeps.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KeycutterError } from "../../../src/api/errors.ts";
import { ServerClient } from "../../../src/agent/server-client.ts";
import { startHttpStandIn, type HttpStandIn } from "../../harness/http-stand-in.ts";
import { ManualClock, untilTrue } from "../../harness/manual-clock.ts";

const held: ServerResponse[] = [];
let credentialService: HttpStandIn;
let url: string;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "server-client-"));
  writeFileSync(join(dir, "token"), "agent-token");
  credentialService = await startHttpStandIn((req, res) => {
    req.resume();
    if (req.url === "/healthz") res.writeHead(200).end("ok");
    else held.push(res); // never answered
  });
  url = credentialService.url;
});
after(async () => {
  await credentialService.close();
  rmSync(dir, { recursive: true, force: true });
});

test("server client: a call unanswered is failed at its deadline on the clock; an answer restores reachability", async () => {
  const clock = new ManualClock();
  const client = new ServerClient({
    serverUrl: url,
    tokenFile: join(dir, "token"),
    timeoutMs: 60_000,
    clock,
  });
  try {
    assert.equal(await client.probe(60_000), true);
    assert.equal(client.reachable, true);
    const call = client.credentials({ pod: { namespace: "a", name: "b", uid: "c" } }, 3000);
    const failed = assert.rejects(
      call,
      (err: unknown) =>
        err instanceof KeycutterError && err.code === "Unavailable" && /ETIMEDOUT/.test(err.message),
    );
    await untilTrue(() => held.length === 1, "request arrived");
    await clock.advance(2999);
    assert.equal(client.reachable, true, "not failed before its deadline");
    await clock.advance(1);
    await failed;
    assert.equal(client.reachable, false, "a timed-out call makes the server unreachable");
    await clock.advance(1);
    assert.equal(await client.probe(60_000), true);
    assert.equal(client.reachable, true, "any answer after the failure: reachable again");
  } finally {
    client.close();
  }
});
