// Lease-based leader election (coordination.k8s.io/v1), the client-go algorithm in small:
// acquire when the Lease is absent, ours, or has not changed for leaseDurationSeconds; renew
// every retryPeriod; give up leadership when renewals fail for renewDeadline. Optimistic
// concurrency (resourceVersion) makes concurrent takeovers safe: the loser gets 409 Conflict.
// Used only for the status-writing loop: serving never waits for it.
//
// Expiry is judged on this process's own clock, as client-go does: renewTime was written with the
// holder's clock, and comparing it with ours lets skew decide (a holder whose clock runs behind
// looks dead and is deposed while it renews; one whose clock runs ahead is never replaced after
// it dies). So we remember when we last saw the Lease record change, locally, and call the lease
// expired only once leaseDurationSeconds have passed on our clock since then.

import { CoordinationV1Api, V1MicroTime, type KubeConfig, type V1Lease } from "@kubernetes/client-node";
import { systemClock, type Clock, type TimerHandle } from "../../common/clock.ts";
import type { Logger } from "../../common/logger.ts";

/** The Lease calls the elector makes; the official client's, or a unit test's in-memory Lease. */
export type LeaseApi = Pick<
  CoordinationV1Api,
  "readNamespacedLease" | "createNamespacedLease" | "replaceNamespacedLease"
>;

export interface LeaderElectorOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationSeconds?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  onStoppedLeading: () => void;
  /** Lease expiry, renew deadline and the retry timer; tests move a manual clock. */
  clock?: Clock;
  /** Default: the official client on `kc`. */
  api?: LeaseApi;
}

/** What identifies one version of the Lease record: any change of it is a sign of life. */
function recordOf(lease: V1Lease): string {
  const spec = lease.spec ?? {};
  return JSON.stringify([
    lease.metadata?.resourceVersion ?? "",
    spec.holderIdentity ?? "",
    spec.renewTime ? new Date(spec.renewTime).toISOString() : "",
  ]);
}

export class LeaderElector {
  private readonly api: LeaseApi;
  private readonly log: Logger;
  private readonly o: Required<Omit<LeaderElectorOptions, "api">>;
  private timer: TimerHandle | undefined;
  private leading = false;
  private lastRenew = 0;
  /** The Lease record last seen, and when (our clock) it was first seen. */
  private observedRecord = "";
  private observedAt = 0;
  private stopped = false;
  private running: Promise<void> | undefined;

  constructor(kc: KubeConfig, log: Logger, opts: LeaderElectorOptions) {
    const { api, ...rest } = opts;
    this.api = api ?? kc.makeApiClient(CoordinationV1Api);
    this.log = log;
    this.o = {
      leaseDurationSeconds: 15,
      renewDeadlineMs: 10_000,
      retryPeriodMs: 2_000,
      clock: systemClock,
      ...rest,
    };
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.stopped = false;
    const loop = () => {
      if (this.stopped) return;
      this.running = this.tick().finally(() => {
        this.running = undefined;
        if (!this.stopped) this.timer = this.o.clock.setTimeout(loop, this.o.retryPeriodMs);
      });
    };
    loop();
  }

  private setLeading(v: boolean): void {
    if (v === this.leading) return;
    this.leading = v;
    this.log.info(
      { lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity },
      v ? "became leader" : "lost leadership",
    );
    if (v) this.o.onStartedLeading();
    else this.o.onStoppedLeading();
  }

  async tick(): Promise<void> {
    try {
      const ok = await this.tryAcquireOrRenew();
      if (ok) {
        this.lastRenew = this.o.clock.now();
        this.setLeading(true);
      } else this.setLeading(false);
    } catch (e) {
      this.log.debug({ err: (e as Error).message }, "lease update failed");
      if (this.leading && this.o.clock.now() - this.lastRenew > this.o.renewDeadlineMs)
        this.setLeading(false);
    }
  }

  private observe(lease: V1Lease): void {
    const record = recordOf(lease);
    if (record === this.observedRecord) return;
    this.observedRecord = record;
    this.observedAt = this.o.clock.now();
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity, leaseDurationSeconds } = this.o;
    const now = new V1MicroTime(this.o.clock.now());
    let lease: V1Lease | undefined;
    try {
      lease = await this.api.readNamespacedLease({ namespace, name });
    } catch (e) {
      if ((e as { code?: number }).code !== 404) throw e;
    }
    if (!lease) {
      try {
        const created = await this.api.createNamespacedLease({
          namespace,
          body: {
            metadata: { name, namespace },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds,
              acquireTime: now,
              renewTime: now,
              leaseTransitions: 0,
            },
          },
        });
        this.observe(created);
        return true;
      } catch (e) {
        if ((e as { code?: number }).code === 409) return false;
        throw e;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    this.observe(lease);
    const expired =
      this.observedAt + (spec.leaseDurationSeconds ?? leaseDurationSeconds) * 1000 <= this.o.clock.now();
    if (holder !== identity && holder !== "" && !expired) return false;
    const body: V1Lease = {
      ...lease,
      spec: {
        ...spec,
        holderIdentity: identity,
        leaseDurationSeconds,
        renewTime: now,
        ...(holder !== identity
          ? { acquireTime: now, leaseTransitions: (spec.leaseTransitions ?? 0) + 1 }
          : {}),
      },
    };
    try {
      this.observe(await this.api.replaceNamespacedLease({ namespace, name, body }));
      return true;
    } catch (e) {
      if ((e as { code?: number }).code === 409) return false;
      throw e;
    }
  }

  /** Stops campaigning; a leader releases the Lease so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.o.clock.clearTimeout(this.timer);
    await this.running;
    if (this.leading) {
      try {
        const { namespace, name } = this.o;
        const lease = await this.api.readNamespacedLease({ namespace, name });
        if (lease.spec?.holderIdentity === this.o.identity) {
          await this.api.replaceNamespacedLease({
            namespace,
            name,
            body: { ...lease, spec: { ...lease.spec, holderIdentity: "", leaseDurationSeconds: 1 } },
          });
        }
      } catch (e) {
        this.log.debug({ err: (e as Error).message }, "lease release failed");
      }
      this.setLeading(false);
    }
  }
}
