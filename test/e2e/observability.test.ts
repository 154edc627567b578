// What tenants and operators see, end to end (issue 17, items 4 and 6): the real server (the
// chart's command line, its RBAC) and agent with its hook, the real apiserver, moto as STS behind
// a pass-through proxy that notes STS's request ids, pods in network namespaces.
//  - An issuance's audit record names the access key id the pod received and moto's request id,
//    and is on the audit stream (stdout, the chart's default) and not in the application log.
//  - A refused pod gets a Warning Event with the refusal's code as reason, readable as the
//    events.k8s.io Event and as the core Event `kubectl describe pod` lists; a refusal tied to a
//    policy gets one on the AccessPolicy.
//  - A flood of denials costs a bounded number of Event writes (counted by watching the Events),
//    and the count reaches the Event's series.
// Needs root (network namespaces, iptables); starts every part itself.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { CoreV1Api } from "@kubernetes/client-node";
import { ApiClient, kubeConfigConnection } from "../../src/k8s/api-client.ts";
import { MOTO_ACCOUNT_ID, waitFor } from "../harness/index.ts";
import { post } from "../server/world.ts";
import { System, type TestPod } from "./system.ts";
import { accessPolicy, applyTenantPolicies, createTenantAws, BUCKET_B } from "./fixtures.ts";

interface EventItem {
  metadata: { name: string; namespace: string };
  reason: string;
  type: string;
  note: string;
  reportingController: string;
  regarding: { kind: string; name: string; uid: string };
  series?: { count: number };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe("e2e: audit stream and Kubernetes Events", () => {
  const sys = new System({ nodes: ["node-a"], serverReplicas: 1, redis: false, stsFaults: true });
  const stdout = () => sys.servers[0]!.process.output("stdout");
  const stderr = () => sys.servers[0]!.process.output("stderr");
  let api: ApiClient;
  let reader: TestPod;
  let stranger: TestPod;
  let misconfigured: TestPod;

  const events = async (namespace: string): Promise<EventItem[]> =>
    (await api.json<{ items: EventItem[] }>("GET", `/apis/events.k8s.io/v1/namespaces/${namespace}/events`))
      .items;

  before(async () => {
    await sys.start((m) => console.log(`# ${m}`));
    api = new ApiClient(kubeConfigConnection(sys.cluster.kc));
    await createTenantAws(sys);
    await applyTenantPolicies(sys);
    // a policy in tenant-b naming a role no RoleAllowance lets the namespace use
    await sys.apply({
      ...(accessPolicy(
        "tenant-b",
        "wrong-role",
        `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/platform-admin`,
        BUCKET_B,
        "misconfigured",
      ) as object),
    });
    reader = await sys.addPod("node-a", "tenant-a", "reader-1", { serviceAccount: "reader" });
    stranger = await sys.addPod("node-a", "tenant-b", "stranger", { serviceAccount: "nobody" });
    misconfigured = await sys.addPod("node-a", "tenant-b", "misconfigured", {
      serviceAccount: "misconfigured",
    });
  });
  after(async () => {
    api?.close();
    await sys.stop();
  });

  it("an issuance is audited on its own stream with the access key id and moto's request id", async () => {
    const got = await sys.imdsCredentials(reader);
    assert.equal(got.status, 200, got.body);
    const accessKeyId = got.creds!.AccessKeyId!;
    const line = await waitFor(
      "the issuance's audit record",
      async () =>
        stdout()
          .split("\n")
          .find((l) => l.includes(`"accessKeyId":"${accessKeyId}"`)),
      { timeoutMs: 10_000 },
    );
    const record = JSON.parse(line) as Record<string, unknown>;
    assert.equal(record.kind, "audit");
    assert.equal(record.schemaVersion, 1);
    assert.match(String(record.eventId), UUID);
    assert.equal(record.level, "info");
    assert.equal(record.decision, "allowed");
    assert.equal(record.source, "sts");
    assert.deepEqual(record.pod, { namespace: "tenant-a", name: "reader-1", uid: reader.uid });
    assert.ok(
      sys.stsProxy!.requestIds.includes(String(record.stsRequestId)),
      `${String(record.stsRequestId)} is one of moto's: ${sys.stsProxy!.requestIds.join(", ")}`,
    );
    // the audit stream has audit records only; the application log has none, and no secret anywhere
    const stdoutLines = stdout()
      .split("\n")
      .filter((l) => l.trim() !== "");
    assert.ok(stdoutLines.every((l) => (JSON.parse(l) as { kind?: string }).kind === "audit"));
    assert.ok(!stderr().includes('"kind":"audit"'), "no audit record in the application log");
    assert.ok(!stderr().includes(accessKeyId));
    assert.match(stderr(), /"level":"info".*"msg":"keycutter server listening"/);
    for (const secret of [got.creds!.SecretAccessKey!, got.creds!.Token!])
      assert.ok(!stdout().includes(secret) && !stderr().includes(secret));
  });

  it("a denied pod's Event says why, on the pod and readable by kubectl describe; a policy's refusal is on the AccessPolicy", async () => {
    const denied = await sys.imdsCredentials(stranger);
    assert.equal(denied.status, 404, denied.body);
    const onPod = await waitFor(
      "the stranger's Event",
      async () => (await events("tenant-b")).find((e) => e.regarding.uid === stranger.uid),
      { timeoutMs: 10_000 },
    );
    assert.equal(onPod.reason, "NoPolicy");
    assert.equal(onPod.type, "Warning");
    assert.equal(onPod.reportingController, "keycutter.dev/server");
    assert.equal(onPod.regarding.kind, "Pod");
    assert.match(onPod.note, /NoPolicy/);
    // what `kubectl describe pod` reads: core/v1 Events by involvedObject
    const core = sys.cluster.kc.makeApiClient(CoreV1Api);
    const described = await core.listNamespacedEvent({
      namespace: "tenant-b",
      fieldSelector: `involvedObject.uid=${stranger.uid}`,
    });
    assert.equal(described.items.length, 1);
    assert.equal(described.items[0]!.reason, "NoPolicy");

    const refused = await sys.imdsCredentials(misconfigured);
    assert.equal(refused.status, 404, refused.body);
    const onPolicy = await waitFor(
      "the AccessPolicy's Event",
      async () => (await events("tenant-b")).find((e) => e.regarding.kind === "AccessPolicy"),
      { timeoutMs: 10_000 },
    );
    assert.equal(onPolicy.regarding.name, "wrong-role");
    const onMisconfiguredPod = (await events("tenant-b")).find((e) => e.regarding.uid === misconfigured.uid);
    assert.equal(onMisconfiguredPod?.reason, "RoleNotAllowed");
    // nothing of tenant-a's in tenant-b's Events, nothing of tenant-b's in tenant-a's
    const inB = JSON.stringify(await events("tenant-b"));
    assert.ok(!inB.includes("tenant-a"), inB);
    assert.equal((await events("tenant-a")).length, 0);
  });

  it("a flood of denials makes a bounded number of Event writes, its count in the Event's series", async () => {
    const token = readFileSync(sys.agents.get("node-a")!.tokenFile, "utf8");
    const port = sys.servers[0]!.port;
    const writes: string[] = [];
    const stop = new AbortController();
    const watching = api
      .watch(
        "/apis/events.k8s.io/v1/namespaces/tenant-b/events?watch=true",
        (e) => {
          const { type, object } = e as { type: string; object: EventItem };
          if (type === "ADDED" || type === "MODIFIED") writes.push(`${type} ${object.metadata.name}`);
        },
        { signal: stop.signal, inactivityMs: 120_000 },
      )
      .catch(() => "closed");
    await new Promise((r) => setTimeout(r, 500));
    const seenBefore = writes.length; // the watch starts with what exists (ADDED)
    const denials = 400;
    const t0 = Date.now();
    for (let sent = 0; sent < denials; sent += 20) {
      const answers = await Promise.all(
        Array.from({ length: 20 }, () =>
          post(port, sys.pki.caFile, {
            token,
            body: { pod: { namespace: "tenant-b", name: stranger.name, uid: stranger.uid } },
          }),
        ),
      );
      assert.ok(
        answers.every((a) => a.body.code === "NoPolicy"),
        JSON.stringify(answers[0]),
      );
    }
    const floodMs = Date.now() - t0;
    // the series' count reaches the Event within one update interval (30 s)
    const counted = await waitFor(
      "the series count",
      async () => {
        const e = (await events("tenant-b")).find((x) => x.regarding.uid === stranger.uid);
        return (e?.series?.count ?? 0) >= denials ? e : undefined;
      },
      { timeoutMs: 45_000, intervalMs: 1000, onTimeout: () => sys.servers[0]!.process.tail() },
    );
    stop.abort();
    await watching;
    const floodWrites = writes.slice(seenBefore);
    console.log(
      `# ${denials} denials in ${floodMs} ms → ${floodWrites.length} Event write(s): ${floodWrites.join(", ")}`,
    );
    // the stranger's Event exists already: the flood may only patch its series, once per 30 s
    // interval (the flood and the wait for its count fit in two); the namespace's other Events
    // (the agent's retries of the misconfigured pod) at most as often
    const onStranger = floodWrites.filter((w) => w.includes(` ${stranger.name}.`));
    assert.ok(onStranger.length >= 1 && onStranger.length <= 2, floodWrites.join(", "));
    assert.ok(floodWrites.length <= 6, floodWrites.join(", "));
    assert.ok(
      floodWrites.every((w) => w.startsWith("MODIFIED")),
      "no new Event for a repeated denial",
    );
    assert.ok(counted.series!.count >= denials + 1);
    const metrics = await (await fetch(`http://127.0.0.1:${sys.servers[0]!.opsPort}/metrics`)).text();
    const aggregated = Number(
      /keycutter_server_events_total\{outcome="aggregated"\} (\d+)/.exec(metrics)?.[1] ?? 0,
    );
    assert.ok(aggregated >= denials - 3, metrics);
    // the request-duration histogram counted every one, by route and outcome
    const durations = (outcome: string) =>
      Number(
        new RegExp(
          `keycutter_server_request_duration_seconds_count\\{route="credentials",outcome="${outcome}"\\} (\\d+)`,
        ).exec(metrics)?.[1] ?? 0,
      );
    assert.ok(durations("NoPolicy") >= denials, metrics);
    assert.ok(durations("ok") >= 1, metrics);
    assert.match(
      metrics,
      /^keycutter_build_info\{component="server",version="[^"]+",nodejs_version="[^"]+"\} 1$/m,
    );
    assert.match(metrics, /^process_resident_memory_bytes /m);
  });
});
