import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { EventObject, SeriesPatch } from "../../../../src/server/events/event-object.ts";
import {
  EventRecorder,
  type EventOutcome,
  type EventWriter,
} from "../../../../src/server/events/recorder.ts";
import { ManualClock } from "../../../harness/manual-clock.ts";

/** Records every write; `hold` keeps writes pending until released. */
class RecordingWriter implements EventWriter {
  readonly created: { namespace: string; event: EventObject }[] = [];
  readonly patched: { namespace: string; name: string; patch: SeriesPatch }[] = [];
  hold = false;
  private readonly held: Array<() => void> = [];
  private gate(): Promise<void> {
    if (!this.hold) return Promise.resolve();
    return new Promise((resolve) => this.held.push(resolve));
  }
  release(): void {
    this.hold = false;
    for (const resolve of this.held.splice(0)) resolve();
  }
  async create(namespace: string, event: EventObject): Promise<void> {
    await this.gate();
    this.created.push({ namespace, event });
  }
  async patch(namespace: string, name: string, patch: SeriesPatch): Promise<void> {
    await this.gate();
    this.patched.push({ namespace, name, patch });
  }
}

const pod = (namespace: string, name: string) => ({
  apiVersion: "v1",
  kind: "Pod",
  namespace,
  name,
  uid: `uid-${namespace}-${name}`,
});
const denial = {
  type: "Warning" as const,
  reason: "NoPolicy",
  action: "IssueCredentials",
  note: "no policy",
};

function setup(opts: Partial<ConstructorParameters<typeof EventRecorder>[0]> = {}) {
  const clock = new ManualClock(Date.parse("2026-12-01T10:00:00Z"));
  const writer = new RecordingWriter();
  const outcomes = new Map<EventOutcome, number>();
  const recorder = new EventRecorder({
    writer,
    reportingInstance: "server-0",
    clock,
    onOutcome: (o) => outcomes.set(o, (outcomes.get(o) ?? 0) + 1),
    ...opts,
  });
  return {
    writer,
    recorder,
    outcomes,
    clock,
    advance: (ms: number) => clock.advance(ms),
    count: (o: EventOutcome) => outcomes.get(o) ?? 0,
  };
}

describe("EventRecorder", () => {
  it("writes an Event for the first denial and folds repeats into its series, one patch per interval", async () => {
    const { writer, recorder, advance, count } = setup({ seriesUpdateMs: 30_000 });
    for (let i = 0; i < 1000; i++) recorder.record(pod("tenant-a", "web"), denial);
    await recorder.idle();
    assert.equal(writer.created.length, 1);
    const { namespace, event } = writer.created[0]!;
    assert.equal(namespace, "tenant-a");
    assert.equal(event.metadata.namespace, "tenant-a");
    assert.equal(event.reason, "NoPolicy");
    assert.equal(event.type, "Warning");
    assert.equal(event.reportingController, "keycutter.dev/server");
    assert.equal(event.reportingInstance, "server-0");
    assert.deepEqual(event.regarding, pod("tenant-a", "web"));
    assert.match(event.eventTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    assert.equal(count("aggregated"), 999);

    // nothing more until the interval has passed, then one patch carrying the whole count
    recorder.flush();
    await recorder.idle();
    assert.equal(writer.patched.length, 0);
    await advance(30_000);
    recorder.flush();
    await recorder.idle();
    assert.equal(writer.patched.length, 1);
    assert.equal(writer.patched[0]!.name, event.metadata.name);
    assert.equal(writer.patched[0]!.patch.series.count, 1000);
    // an idle series writes nothing further
    await advance(30_000);
    recorder.flush();
    await recorder.idle();
    assert.equal(writer.patched.length, 1);
  });

  it("once started, flushes on its clock every flushIntervalMs; close leaves no timer", async () => {
    const { writer, recorder, clock, advance } = setup({ seriesUpdateMs: 30_000, flushIntervalMs: 5_000 });
    for (let i = 0; i < 10; i++) recorder.record(pod("tenant-a", "web"), denial);
    await recorder.idle();
    recorder.start();
    await advance(25_000);
    await recorder.idle();
    assert.equal(writer.patched.length, 0, "five flushes, the series not yet due");
    await advance(5_000);
    await recorder.idle();
    assert.equal(writer.patched.length, 1, "the flush at 30 s wrote the count without a call to flush()");
    assert.equal(writer.patched[0]!.patch.series.count, 10);
    recorder.close();
    assert.equal(clock.pending, 0);
  });

  it("a flood over ten minutes costs a bounded number of writes", async () => {
    const { writer, recorder, advance } = setup({ seriesUpdateMs: 30_000 });
    for (let second = 0; second < 600; second++) {
      for (let i = 0; i < 50; i++) recorder.record(pod("tenant-a", "web"), denial);
      await advance(1000);
      if (second % 10 === 0) recorder.flush();
      await recorder.idle();
    }
    await advance(30_000);
    recorder.flush();
    await recorder.idle();
    const writes = writer.created.length + writer.patched.length;
    // one creation, then at most one patch per 30 s: 1 + 630/30
    assert.ok(writes <= 22, `${writes} writes for 30000 denials`);
    assert.equal(writer.created.length, 1);
    // the last patch carries every denial
    assert.equal(writer.patched.at(-1)!.patch.series.count, 600 * 50);
  });

  it("a repeat after the series window starts a new Event", async () => {
    const { writer, recorder, advance } = setup({ seriesWindowMs: 360_000 });
    recorder.record(pod("tenant-a", "web"), denial);
    await recorder.idle();
    await advance(360_001);
    recorder.record(pod("tenant-a", "web"), denial);
    await recorder.idle();
    assert.equal(writer.created.length, 2);
    assert.notEqual(writer.created[0]!.event.metadata.name, writer.created[1]!.event.metadata.name);
  });

  it("record() returns at once while the apiserver does not answer, and drops beyond the queue bound", () => {
    const { writer, recorder, count } = setup({ maxQueued: 8, maxInFlight: 2, namespaceWriteBurst: 1000 });
    writer.hold = true;
    const t0 = performance.now();
    for (let i = 0; i < 100; i++) recorder.record(pod("tenant-a", `web-${i}`), denial);
    assert.ok(performance.now() - t0 < 200);
    assert.equal(count("dropped"), 92);
    writer.release();
  });

  it("memory stays bounded under a flood of distinct pods", async () => {
    const { recorder } = setup({ maxSeries: 100, namespaceWriteBurst: 1_000_000, maxQueued: 1_000_000 });
    for (let i = 0; i < 5000; i++) recorder.record(pod(`ns-${i % 50}`, `p-${i}`), denial);
    await recorder.idle();
    assert.ok(recorder.size <= 100);
  });

  it("one namespace's flood does not spend another namespace's write budget", async () => {
    const { writer, recorder, count } = setup({ namespaceWriteRate: 1, namespaceWriteBurst: 10 });
    for (let i = 0; i < 500; i++) recorder.record(pod("noisy", `p-${i}`), denial);
    recorder.record(pod("quiet", "web"), denial);
    await recorder.idle();
    assert.equal(writer.created.filter((c) => c.namespace === "noisy").length, 10);
    assert.equal(writer.created.filter((c) => c.namespace === "quiet").length, 1);
    assert.equal(count("dropped"), 490);
  });

  it("a failed write is counted and the next occurrence tries again", async () => {
    let fail = true;
    const writes: string[] = [];
    const outcomes: EventOutcome[] = [];
    const recorder = new EventRecorder({
      reportingInstance: "s",
      writer: {
        create: async (_ns, event) => {
          writes.push(event.metadata.name);
          if (fail) throw new Error("forbidden");
        },
        patch: async () => undefined,
      },
      onOutcome: (o) => outcomes.push(o),
    });
    recorder.record(pod("a", "p"), denial);
    await recorder.idle();
    fail = false;
    recorder.record(pod("a", "p"), denial);
    await recorder.idle();
    assert.deepEqual(outcomes, ["failed", "created"]);
    assert.equal(writes.length, 2);
  });
});
