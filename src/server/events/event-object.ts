// The events.k8s.io/v1 Event objects the server writes, and the series patch that folds repeats
// of one into it (the shape client-go's events recorder writes). Pure: names, times and lengths
// follow the API's validation, so a write is never refused for its form.

import { randomBytes } from "node:crypto";

/** The object an event is about (a Pod, an AccessPolicy): always in the event's namespace. */
export interface EventTarget {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  uid: string;
}

export interface EventSpec {
  type: "Normal" | "Warning";
  /** UpperCamelCase, e.g. an error code (NoPolicy). */
  reason: string;
  /** What the server was doing, UpperCamelCase. */
  action: string;
  /** Human-readable; only what the target's namespace may read. */
  note: string;
}

export interface EventObject {
  apiVersion: "events.k8s.io/v1";
  kind: "Event";
  metadata: { name: string; namespace: string };
  eventTime: string;
  reportingController: string;
  reportingInstance: string;
  action: string;
  reason: string;
  type: string;
  note: string;
  regarding: EventTarget;
}

export interface SeriesPatch {
  series: { count: number; lastObservedTime: string };
}

/** The API's limits (k8s.io/kubernetes pkg/apis/core/validation, events v1). */
const MAX_NOTE_BYTES = 1024;
const MAX_FIELD = 128;
const MAX_NAME = 253;

export const REPORTING_CONTROLLER = "keycutter.dev/server";

/** RFC 3339 with microseconds (metav1.MicroTime), as eventTime and lastObservedTime require. */
export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/Z$/, "000Z");
}

function truncateBytes(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  let cut = text.slice(0, maxBytes);
  while (Buffer.byteLength(cut) > maxBytes - 3) cut = cut.slice(0, -1);
  return `${cut}...`;
}

export function eventObject(
  target: EventTarget,
  spec: EventSpec,
  reportingInstance: string,
  nowMs: number,
  suffix: string = randomBytes(8).toString("hex"),
): EventObject {
  return {
    apiVersion: "events.k8s.io/v1",
    kind: "Event",
    metadata: {
      name: `${target.name.slice(0, MAX_NAME - suffix.length - 1)}.${suffix}`,
      namespace: target.namespace,
    },
    eventTime: microTime(nowMs),
    reportingController: REPORTING_CONTROLLER,
    reportingInstance: reportingInstance.slice(0, MAX_FIELD),
    action: spec.action.slice(0, MAX_FIELD),
    reason: spec.reason.slice(0, MAX_FIELD),
    type: spec.type,
    note: truncateBytes(spec.note, MAX_NOTE_BYTES),
    regarding: { ...target },
  };
}

export function seriesPatch(count: number, lastObservedMs: number): SeriesPatch {
  return { series: { count, lastObservedTime: microTime(lastObservedMs) } };
}
