// Watches AccessPolicy (all namespaces) and RoleAllowance objects with informers and keeps them
// in memory, indexed by namespace. Restarts a failed watch with backoff; `synced` turns true
// after the first successful list of both kinds (the server's /readyz waits for it).

import {
  CustomObjectsApi,
  makeInformer,
  type Informer,
  type KubeConfig,
  type KubernetesObject,
  type ObjectCache,
} from "@kubernetes/client-node";
import { systemClock, type Timers } from "../../common/clock.ts";
import type { Logger } from "../../common/logger.ts";
import {
  ACCESS_POLICY_PLURAL,
  GROUP,
  ROLE_ALLOWANCE_PLURAL,
  VERSION,
  type AccessPolicy,
  type RoleAllowance,
} from "../../policy/types.ts";

type Inf<T extends KubernetesObject> = Informer<T> & ObjectCache<T>;

export class PolicyInformers {
  private readonly kc: KubeConfig;
  private readonly log: Logger;
  private readonly api: CustomObjectsApi;
  private policies: Inf<AccessPolicy & KubernetesObject> | undefined;
  private allowances: Inf<RoleAllowance & KubernetesObject> | undefined;
  private listedPolicies = false;
  private listedAllowances = false;
  private stopped = false;
  private readonly listeners = new Set<() => void>();
  private readonly timers: Timers;

  /** `timers`: the watch restart's backoff. */
  constructor(kc: KubeConfig, log: Logger, opts: { timers?: Timers } = {}) {
    this.kc = kc;
    this.log = log;
    this.timers = opts.timers ?? systemClock;
    this.api = kc.makeApiClient(CustomObjectsApi);
  }

  get synced(): boolean {
    return this.listedPolicies && this.listedAllowances;
  }

  /** Called (debounced by the caller) whenever any policy object changes. */
  onChange(fn: () => void): void {
    this.listeners.add(fn);
  }

  private changed = () => {
    for (const fn of this.listeners) fn();
  };

  async start(): Promise<void> {
    this.policies = this.run<AccessPolicy & KubernetesObject>(ACCESS_POLICY_PLURAL, () => {
      this.listedPolicies = true;
    });
    this.allowances = this.run<RoleAllowance & KubernetesObject>(ROLE_ALLOWANCE_PLURAL, () => {
      this.listedAllowances = true;
    });
    await Promise.all([this.policies.start(), this.allowances.start()]);
  }

  private run<T extends KubernetesObject>(plural: string, onListed: () => void): Inf<T> {
    const list = async () => {
      const res = (await this.api.listClusterCustomObject({ group: GROUP, version: VERSION, plural })) as {
        items: T[];
        metadata?: { resourceVersion?: string };
      };
      onListed();
      return res as never;
    };
    const inf = makeInformer<T>(this.kc, `/apis/${GROUP}/${VERSION}/${plural}`, list);
    inf.on("add", this.changed);
    inf.on("update", this.changed);
    inf.on("delete", this.changed);
    let delay = 500;
    inf.on("error", (err: unknown) => {
      if (this.stopped) return;
      this.log.warn({ plural, err: (err as Error)?.message }, "policy watch failed; restarting");
      this.timers
        .setTimeout(() => {
          if (!this.stopped) void inf.start().catch(() => undefined);
        }, delay)
        .unref?.();
      delay = Math.min(delay * 2, 10_000);
    });
    inf.on("connect", () => {
      delay = 500;
    });
    return inf;
  }

  accessPolicies(namespace?: string): AccessPolicy[] {
    if (!this.policies) return [];
    return [...(namespace === undefined ? this.policies.list() : this.policies.list(namespace))];
  }

  roleAllowances(): RoleAllowance[] {
    return this.allowances ? [...this.allowances.list()] : [];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([this.policies?.stop(), this.allowances?.stop()]);
  }
}
