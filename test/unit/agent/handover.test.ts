// The hand-over between two agents of a node: the protocol over a real unix socket, the cache's
// export and adoption, the ownership marker and the repair loop that must not fight a successor.
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import {
  HANDOVER_TIMEOUT_MS,
  HandoverServer,
  Predecessor,
  parseState,
  type HandoverState,
  type OwnerRole,
} from "../../../src/agent/handover.ts";
import { CredCache } from "../../../src/agent/cred-cache.ts";
import { ImdsTokens } from "../../../src/agent/imds-token.ts";
import { natRules, ownerOf } from "../../../src/agent/hook/iptables.ts";
import { RepairLoop } from "../../../src/agent/hook-repair.ts";
import { slotOfPort, slotPorts, waitUntil } from "../../../src/agent/handover-slots.ts";
import { createLogger } from "../../../src/common/logger.ts";
import type { CredentialsResponse } from "../../../src/api/contract.ts";
import { ManualClock, settle, untilTrue } from "../../harness/manual-clock.ts";
import { withTempDir } from "../../harness/temp-dir.ts";

const log = createLogger("test");
const pod = { namespace: "tenant-a", name: "web-1", uid: "uid-1" };

function answer(key: string, expiresInMs = 3600_000): CredentialsResponse {
  return {
    credentials: {
      accessKeyId: key,
      secretAccessKey: "secret",
      sessionToken: "token",
      expiration: new Date(Date.now() + expiresInMs).toISOString(),
    },
    roleArn: "arn:aws:iam::123456789012:role/reader",
    roleName: "reader",
    sessionName: "s",
    policy: { namespace: "tenant-a", name: "p", generation: 1 },
  };
}

function countingSource(): { calls: number; credentials(): Promise<CredentialsResponse> } {
  const s = {
    calls: 0,
    credentials: async () => {
      s.calls++;
      return answer(`AKIA${s.calls}`);
    },
  };
  return s;
}

/** What the socket's I/O decides: the event loop turns (no timer) until it holds. */
const until = (cond: () => boolean): Promise<void> => untilTrue(cond, cond.toString());

test("a successor serves the predecessor's credentials without asking the server", async () => {
  const oldSource = countingSource();
  const old = new CredCache({ source: oldSource, log });
  const first = await old.obtain(pod, 1000);
  assert.ok(first.ok);
  const newSource = countingSource();
  const successor = new CredCache({ source: newSource, log });
  assert.equal(successor.adopt(old.handOver()), 1);
  successor.prefetch(pod);
  const served = await successor.obtain(pod, 1000);
  assert.ok(served.ok && first.ok);
  assert.equal(served.creds.imdsBody.toString(), first.creds.imdsBody.toString());
  assert.equal(newSource.calls, 0, "no re-issuance for what the old agent held");
  // the container-credentials path: a pod token the server accepted for the old agent
  const podToken = "eyJ.pod.token";
  const viaToken = await old.obtainWithToken(pod, podToken, 1000);
  assert.ok(viaToken.ok);
  const later = new CredCache({ source: newSource, log });
  later.adopt(old.handOver());
  assert.ok(later.tokenValid(pod.uid, podToken), "the accepted token digest is handed over");
  assert.ok(!later.tokenValid(pod.uid, "another.token"));
  const served2 = await later.obtainWithToken(pod, podToken, 1000);
  assert.ok(served2.ok);
  assert.equal(newSource.calls, 0, "no TokenReview or credentials request for it either");
  assert.ok(!JSON.stringify(old.handOver()).includes(podToken), "tokens only as digests");
  later.dropAll();
  // expired entries are not adopted
  const stale = [{ pod, response: answer("AKIAOLD", -1000), requestedAtMs: 0, fetchedAtMs: 0 }];
  assert.equal(new CredCache({ source: newSource, log }).adopt(stale), 0);
  old.dropAll();
  successor.dropAll();
});

test("IMDSv2 tokens issued with the handed-over key verify in the successor", () => {
  const old = new ImdsTokens();
  const token = old.issue("uid-1", 21600);
  const successor = new ImdsTokens(Buffer.from(old.exportKey().toString("base64"), "base64"));
  assert.ok(successor.verify(token, "uid-1"));
  assert.ok(!successor.verify(token, "uid-2"));
  assert.ok(!new ImdsTokens().verify(token, "uid-1"), "a cold agent does not accept it");
});

test("the DNAT rules carry the owner's generation; slots map ports both ways", () => {
  const o = {
    chain: "KEYCUTTER",
    podInterfaces: ["cbr0"],
    podCidrs: [],
    agentIp: "10.1.255.10",
    imdsPort: 8190,
    containerPort: 8191,
    flushConntrack: false,
    generation: 7,
  };
  assert.deepEqual(ownerOf(natRules(o)), { generation: 7, imdsPort: 8190 });
  assert.equal(ownerOf(natRules({ ...o, generation: undefined })), undefined);
  const imds = { host: "0.0.0.0", port: 8180 };
  assert.equal(slotPorts(1, imds, { host: "0.0.0.0", port: 8181 }, 10).container?.port, 8191);
  assert.equal(slotOfPort(8190, imds, 10), 1);
  assert.equal(slotOfPort(8180, imds, 10), 0);
  assert.equal(slotOfPort(9999, imds, 10), undefined);
});

test("the repair loop steps down for a higher generation and never repairs while paused", async () => {
  let owner = { generation: 3, imdsPort: 8180 };
  let installs = 0;
  let release: (() => void) | undefined;
  const hook = {
    owner: async () => owner,
    install: () =>
      new Promise<boolean>((resolve) => {
        installs++;
        release = () => resolve(false);
      }),
  };
  const superseded: number[] = [];
  const loop = new RepairLoop(hook, 3, {
    onRepaired: () => undefined,
    onError: (err) => assert.fail(String(err)),
    onSuperseded: (g) => superseded.push(g),
  });
  const first = loop.tick();
  await until(() => installs === 1);
  let pausedDone = false;
  const paused = loop.pause().then(() => (pausedDone = true));
  await settle(10);
  assert.equal(pausedDone, false, "pause waits for the repair in flight");
  release!();
  await paused;
  await first;
  await loop.tick();
  assert.equal(installs, 1, "no repair while paused");
  owner = { generation: 4, imdsPort: 8190 };
  loop.resume();
  await loop.tick();
  assert.deepEqual(superseded, [4]);
  assert.equal(installs, 1, "superseded: the successor's rules are left alone");
  await loop.tick();
  assert.equal(installs, 1);
  assert.equal(loop.active, false);
});

function ownerRole(state: HandoverState): OwnerRole & { events: string[] } {
  const events: string[] = [];
  return {
    events,
    state: () => state,
    pauseRepair: async () => {
      events.push("pause");
    },
    resumeRepair: () => events.push("resume"),
    stepDown: (g) => events.push(`step-down ${g}`),
  };
}

const state: HandoverState = {
  node: "node-a",
  generation: 2,
  slot: 0,
  tokenKey: Buffer.alloc(32, 7).toString("base64"),
  creds: [{ pod, response: answer("AKIAHELD"), requestedAtMs: 1, fetchedAtMs: 2 }],
};

/** A scratch directory's run/ (not created: the owner makes it root-only), removed after `body`. */
const inHandoverDir = (body: (dir: string) => Promise<void>) =>
  withTempDir("handover-", (tmp) => body(join(tmp, "run")));

test("hand-over over the unix socket: state, pause, took-over; root-only socket", () =>
  inHandoverDir(async (dir) => {
    const role = ownerRole(state);
    const clock = new ManualClock();
    const server = await HandoverServer.listen(dir, role, log, clock);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(join(dir, "agent.sock")).mode & 0o777, 0o600);
    const nobody = server.waitForSuccessor(20);
    await clock.advance(20);
    assert.equal(await nobody, false, "nobody connected");
    const coming = server.waitForSuccessor(5000);
    const p = await Predecessor.connect(dir, "node-a", 5000);
    assert.equal(await coming, true, "a SIGTERMed owner learns that its successor connected");
    assert.ok(p);
    assert.equal(p.state.generation, 2);
    assert.equal(p.state.creds[0]!.response.credentials.accessKeyId, "AKIAHELD");
    assert.ok(server.successorPending);
    const waited = server.waitForTakeOver(5000);
    await p.pause();
    await p.tookOver(3);
    assert.equal(await waited, true);
    assert.deepEqual(role.events, ["pause", "step-down 3"]);
    // the successor becomes the owner on the same path; the old one's close must leave it there
    const next = await HandoverServer.listen(dir, ownerRole({ ...state, generation: 3, slot: 1 }), log);
    try {
      await server.close();
      const third = await Predecessor.connect(dir, "node-a", 5000);
      third?.close();
      assert.equal(third?.state.generation, 3, "the next hand-over reaches the new owner");
    } finally {
      await next.close();
    }
  }));

test("a successor that leaves after pause gives the hook back; other nodes and nobody are refused", () =>
  inHandoverDir(async (dir) => {
    assert.equal(await Predecessor.connect(dir, "node-a", 1000), undefined, "nobody listening: cold start");
    const role = ownerRole(state);
    const server = await HandoverServer.listen(dir, role, log);
    await assert.rejects(Predecessor.connect(dir, "node-b", 1000));
    const p = await Predecessor.connect(dir, "node-a", 5000);
    await p!.pause();
    p!.close();
    await until(() => role.events.includes("resume"));
    assert.ok(!server.successorPending);
    assert.deepEqual(role.events, ["pause", "resume"]);
    await server.close();
  }));

test("hand-over waits end on the clock: no take-over in time, an idle successor cut, a silent owner given up", () =>
  inHandoverDir(async (dir) => {
    const clock = new ManualClock();
    const role = ownerRole(state);
    const server = await HandoverServer.listen(dir, role, log, clock);
    const p = await Predecessor.connect(dir, "node-a", 5000);
    assert.ok(p && server.successorPending);
    const waited = server.waitForTakeOver(3000);
    await clock.advance(2999);
    assert.equal(server.successorPending, true);
    await clock.advance(1);
    assert.equal(await waited, false, "the successor did not take over within 3 s");
    await clock.advance(HANDOVER_TIMEOUT_MS - 3000);
    await until(() => !server.successorPending);
    assert.deepEqual(role.events, [], "cut at the hand-over deadline, before it paused anything");
    p.close();
    await server.close();

    // an owner that accepts the connection and never answers
    const accepted: Socket[] = [];
    const silent = createServer((socket) => void accepted.push(socket));
    await new Promise<void>((resolve) => silent.listen(join(dir, "agent.sock"), resolve));
    try {
      const successorClock = new ManualClock();
      const connecting = Predecessor.connect(dir, "node-a", 1000, successorClock);
      const refused = assert.rejects(connecting, /no state within 1000 ms/);
      await untilTrue(() => successorClock.pending > 0, "waiting for the state");
      await successorClock.advance(999);
      assert.equal(successorClock.pending, 1, "still waiting at 999 ms");
      await successorClock.advance(1);
      await refused;
      // the successor that gave up closed its end: the owner is not left holding a pending successor
      assert.equal(accepted.length, 1);
      const ownerSide = accepted[0]!;
      const ended = await new Promise<boolean>((resolve) => {
        const gaveUp = setTimeout(() => resolve(false), 2000);
        ownerSide.once("end", () => {
          clearTimeout(gaveUp);
          resolve(true);
        });
        ownerSide.resume();
      });
      assert.ok(ended, "the owner's end of the connection saw the successor close it");
    } finally {
      for (const socket of accepted) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  }));

test("waitUntil: polls on the clock, true once the condition holds, false at the deadline", async () => {
  const clock = new ManualClock();
  let ready = false;
  const met = waitUntil(() => ready, 1000, 50, clock);
  await clock.advance(500);
  ready = true;
  await clock.advance(50);
  assert.equal(await met, true);
  ready = false;
  const missed = waitUntil(() => ready, 1000, 50, clock);
  await clock.advance(999);
  assert.equal(clock.pending, 1, "still polling before the deadline");
  await clock.advance(1);
  assert.equal(await missed, false);
  assert.equal(clock.pending, 0);
});

test("malformed hand-over states are refused", () => {
  const good = { ...state } as unknown as Record<string, unknown>;
  assert.equal(parseState(good, "node-a").creds.length, 1);
  assert.throws(() => parseState(good, "node-b"), /another node/);
  assert.throws(() => parseState({ ...good, generation: -1 }, "node-a"), /generation/);
  assert.throws(() => parseState({ ...good, slot: 2 }, "node-a"), /slot/);
  assert.throws(() => parseState({ ...good, tokenKey: "c2hvcnQ=" }, "node-a"), /token key/);
  assert.throws(() => parseState({ ...good, creds: [{ pod }] }, "node-a"), /malformed/);
  const entry = state.creds[0]!;
  assert.throws(
    () => parseState({ ...good, creds: [{ ...entry, acceptedTokens: [["not a digest", 1]] }] }, "node-a"),
    /malformed/,
  );
});
