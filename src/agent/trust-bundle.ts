// The CA bundle the agent verifies the server with, re-read when its file changes: the chart
// mounts it from a ConfigMap (self-managed TLS) or a Secret's ca.crt (cert-manager, an existing
// Secret), which the kubelet swaps in place. A changed bundle gets a new connection pool; open
// connections keep the verification they were made with, so a rotation fails no call.

import type { Agent as HttpsAgent } from "node:https";
import { readFileSync, statSync } from "node:fs";
import { KeycutterError } from "../api/errors.ts";
import { systemClock, type Clock } from "../common/clock.ts";

const CHECK_EVERY_MS = 1000;
const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

export type AgentFactory = (ca: Buffer) => HttpsAgent;

export class TrustBundle {
  private readonly path: string;
  private readonly makeAgent: AgentFactory;
  private stamp = "";
  private contents: Buffer | undefined;
  private current: HttpsAgent | undefined;
  // the pool before the last change: its sockets close as the server ends idle connections,
  // and it is destroyed at the next change (at most one retired pool)
  private retired: HttpsAgent | undefined;
  private checkedAt = Number.NEGATIVE_INFINITY;
  /** Times the bundle changed after the first load (tests, logs). */
  reloads = 0;
  private readonly clock: Pick<Clock, "now">;

  /** `clock`: how often the file is looked at. */
  constructor(path: string, makeAgent: AgentFactory, clock: Pick<Clock, "now"> = systemClock) {
    this.path = path;
    this.makeAgent = makeAgent;
    this.clock = clock;
  }

  /** The pool for the bundle as the file holds it now; refuses (fails closed) without a CA. */
  agent(nowMs = this.clock.now()): HttpsAgent {
    if (nowMs - this.checkedAt >= CHECK_EVERY_MS || !this.current) {
      this.checkedAt = nowMs;
      this.refresh();
    }
    if (!this.current)
      throw new KeycutterError(
        "Unavailable",
        `no CA bundle to verify the credential service with yet (${this.path})`,
      );
    return this.current;
  }

  private refresh(): void {
    let stamp: string;
    try {
      const st = statSync(this.path);
      stamp = `${st.ino}:${st.mtimeMs}:${st.size}`;
    } catch {
      // an optional ConfigMap volume is empty until the server published the bundle; a bundle
      // that disappears later keeps the one loaded (the kubelet swaps, it does not delete)
      return;
    }
    if (stamp === this.stamp) return;
    const contents = readFileSync(this.path);
    this.stamp = stamp;
    if (!PEM_CERT.test(contents.toString("latin1"))) return;
    if (this.contents?.equals(contents)) return;
    const first = this.contents === undefined;
    this.contents = contents;
    this.retired?.destroy();
    this.retired = this.current;
    this.current = this.makeAgent(contents);
    if (!first) this.reloads++;
  }

  close(): void {
    this.current?.destroy();
    this.retired?.destroy();
  }
}
