import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { eventObject, microTime, seriesPatch } from "../../../../src/server/events/event-object.ts";
import { credentialEvents } from "../../../../src/server/events/credential-events.ts";

const target = { apiVersion: "v1", kind: "Pod", namespace: "tenant-a", name: "web", uid: "u1" };

describe("Event objects", () => {
  it("keep within the API's limits: name, note, reporting instance", () => {
    const long = eventObject(
      { ...target, name: "x".repeat(253) },
      { type: "Warning", reason: "NoPolicy", action: "IssueCredentials", note: "é".repeat(2000) },
      "i".repeat(300),
      0,
    );
    assert.ok(long.metadata.name.length <= 253);
    assert.match(long.metadata.name, /^x+\.[0-9a-f]{16}$/);
    assert.ok(Buffer.byteLength(long.note) <= 1024);
    assert.ok(long.note.endsWith("..."));
    assert.equal(long.reportingInstance.length, 128);
  });

  it("times are MicroTime and the series patch carries count and last time", () => {
    assert.equal(microTime(Date.parse("2026-12-01T10:00:00.123Z")), "2026-12-01T10:00:00.123000Z");
    assert.deepEqual(seriesPatch(5, Date.parse("2026-12-01T10:00:00Z")), {
      series: { count: 5, lastObservedTime: "2026-12-01T10:00:00.000000Z" },
    });
  });

  it("a pod's denial names the pod, the code as reason and the refusal's message; a policy's names the AccessPolicy", () => {
    const recorded: unknown[] = [];
    const events = credentialEvents({ record: (t, s) => recorded.push({ t, s }) });
    events.podDenied(
      { namespace: "tenant-a", name: "web", uid: "u1" },
      "NoPolicy",
      "no AccessPolicy selects the pod",
    );
    events.policyRefused(
      { namespace: "tenant-a", name: "reader", uid: "u2", generation: 3 },
      "StsDenied",
      "refused",
    );
    assert.deepEqual(recorded, [
      {
        t: target,
        s: {
          type: "Warning",
          reason: "NoPolicy",
          action: "IssueCredentials",
          note: "AWS credentials refused (NoPolicy): no AccessPolicy selects the pod",
        },
      },
      {
        t: {
          apiVersion: "keycutter.dev/v1alpha1",
          kind: "AccessPolicy",
          namespace: "tenant-a",
          name: "reader",
          uid: "u2",
        },
        s: { type: "Warning", reason: "StsDenied", action: "IssueCredentials", note: "refused" },
      },
    ]);
  });
});
