// The server's own CA and serving certificate (`--tls-secret`): created by whichever replica
// comes first, loaded by all, rotated before expiry by the leader, following plan.ts one step at
// a time. Every replica re-reads the Secret every sync interval and swaps its serving
// certificate in place (ServingTls subscribers: tls.Server#setSecureContext) when it changed.

import { systemClock, type Clock, type TimerHandle } from "../../common/clock.ts";
import type { Logger } from "../../common/logger.ts";
import {
  bundleFingerprints,
  certFacts,
  issueServing,
  makeCa,
  signedBy,
  type KeyPairPem,
} from "./certificates.ts";
import {
  leafNotAfterMs,
  planTls,
  wantedBundle,
  type StoredTls,
  type TlsPlanSettings,
  type TlsStep,
} from "./plan.ts";
import type { ServingPair, ServingTls } from "./serving.ts";
import type { StoredBundle, StoredSecret, TlsMaterial, TlsStore } from "./store.ts";

export interface SelfManagedOptions {
  store: Pick<TlsStore, "readSecret" | "readBundle" | "writeSecret" | "writeBundle">;
  settings: TlsPlanSettings;
  /** How often every replica re-reads the Secret (and the leader plans). */
  syncMs: number;
  /** Rotation is the leader's; others only create when nothing exists and republish the bundle. */
  isLeader: () => boolean;
  /** Certificate times and the sync timer. */
  clock?: Clock;
  log: Logger;
  onRotated?: (what: "serving" | "ca") => void;
}

// a tick that acted plans again at once; a bounded number, so a step that keeps conflicting
// cannot spin
const MAX_STEPS_PER_TICK = 6;

function storedTls(secret: StoredSecret): StoredTls {
  const m = secret.material;
  return {
    ca: certFacts(m["ca.crt"]),
    leaf: certFacts(m["tls.crt"]),
    leafSignedByCa: signedBy(m["tls.crt"], m["ca.crt"]),
    ...(m["next-ca.crt"] ? { nextCa: certFacts(m["next-ca.crt"]) } : {}),
    ...(secret.nextCaPublishedAtMs !== undefined ? { nextCaPublishedAtMs: secret.nextCaPublishedAtMs } : {}),
    ...(m["previous-ca.crt"] ? { previousCa: certFacts(m["previous-ca.crt"]) } : {}),
  };
}

export class SelfManagedTls implements ServingTls {
  private readonly o: SelfManagedOptions;
  private readonly clock: Clock;
  private readonly now: () => number;
  private serving: ServingPair | undefined;
  private readonly listeners = new Set<(pair: ServingPair) => void>();
  private timer: TimerHandle | undefined;
  private stopped = false;
  private ticking: Promise<void> | undefined;

  constructor(o: SelfManagedOptions) {
    this.o = o;
    const clock = o.clock ?? systemClock;
    this.clock = clock;
    this.now = () => clock.now();
  }

  /** Loads (or creates) the certificates; the server listens only once this resolved. */
  async start(): Promise<ServingPair> {
    await this.tick();
    if (!this.serving) throw new Error("the self-managed TLS Secret could not be loaded or created");
    this.schedule();
    return this.serving;
  }

  current(): ServingPair {
    if (!this.serving) throw new Error("self-managed TLS not started");
    return this.serving;
  }

  subscribe(apply: (pair: ServingPair) => void): () => void {
    this.listeners.add(apply);
    return () => this.listeners.delete(apply);
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => {
      this.tick()
        .catch((e: unknown) =>
          this.o.log.warn({ err: e }, "self-managed TLS sync failed; serving the current certificate"),
        )
        .finally(() => this.schedule());
    }, this.o.syncMs);
    this.timer.unref?.();
  }

  /** One sync: read, plan, act (leader), load what is stored. Exposed for tests. */
  async tick(): Promise<void> {
    this.ticking ??= this.sync().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async sync(): Promise<void> {
    for (let i = 0; i < MAX_STEPS_PER_TICK; i++) {
      const [secret, bundle] = await Promise.all([this.o.store.readSecret(), this.o.store.readBundle()]);
      if (secret.stored) this.load(secret.stored.material);
      const stored = secret.stored ? storedTls(secret.stored) : undefined;
      const published = bundle ? bundleFingerprints(bundle.pem) : undefined;
      const step = planTls(stored, published, this.now(), this.o.settings);
      if (step.kind === "idle") return;
      if (!this.mayTake(step)) return;
      await this.take(step, secret.stored, secret.resourceVersion, bundle);
    }
  }

  private mayTake(step: TlsStep): boolean {
    if (this.o.isLeader()) return true;
    // without these no replica can serve or no agent can trust: any replica may do them, the
    // resourceVersion decides who wins
    return step.kind === "create" || step.kind === "publish-bundle" || step.kind === "mark-published";
  }

  private load(material: TlsMaterial): void {
    const pair = { cert: material["tls.crt"], key: material["tls.key"] };
    if (this.serving && this.serving.cert === pair.cert && this.serving.key === pair.key) return;
    const first = !this.serving;
    this.serving = pair;
    if (!first) {
      this.o.log.info(
        { notAfter: new Date(certFacts(pair.cert).notAfterMs).toISOString() },
        "serving certificate swapped in place",
      );
      for (const apply of this.listeners) apply(pair);
    }
  }

  private async fresh(ca?: KeyPairPem): Promise<TlsMaterial> {
    const now = this.now();
    const s = this.o.settings;
    const authority = ca ?? makeCa(now, s.caLifetimeMs, "keycutter-server-ca");
    const serving = issueServing(
      authority,
      s.names,
      now,
      leafNotAfterMs(now, certFacts(authority.cert), s.leafLifetimeMs),
    );
    return {
      "tls.crt": serving.cert,
      "tls.key": serving.key,
      "ca.crt": authority.cert,
      "ca.key": authority.key,
    };
  }

  private async take(
    step: TlsStep,
    secret: StoredSecret | undefined,
    resourceVersion: string | undefined,
    bundle: StoredBundle | undefined,
  ): Promise<void> {
    const log = this.o.log;
    const now = this.now();
    const s = this.o.settings;
    switch (step.kind) {
      case "create":
      case "replace-all": {
        const outcome = await this.o.store.writeSecret(
          await this.fresh(),
          undefined,
          resourceVersion || undefined,
        );
        log.info(
          { outcome, reason: step.kind === "replace-all" ? step.reason : "none stored" },
          "self-managed CA and serving certificate created",
        );
        return;
      }
      case "publish-bundle": {
        const stored = storedTls(secret!);
        const m = secret!.material;
        const pems = new Map<string, string>();
        for (const pem of [m["previous-ca.crt"], m["ca.crt"], m["next-ca.crt"]])
          if (pem) pems.set(certFacts(pem).fingerprint, pem);
        const pem = wantedBundle(stored, now)
          .map((c) => pems.get(c.fingerprint)!)
          .join("");
        const outcome = await this.o.store.writeBundle(pem, bundle?.resourceVersion);
        log.info({ outcome, cas: step.fingerprints.length }, "CA bundle for agents published");
        return;
      }
      case "mark-published": {
        await this.o.store.writeSecret(secret!.material, now, resourceVersion);
        log.info(
          { propagationMs: s.bundlePropagationMs },
          "next CA in the agents' bundle; waiting for it to propagate",
        );
        return;
      }
      case "prepare-next-ca": {
        const next = makeCa(now, s.caLifetimeMs, "keycutter-server-ca");
        const material: TlsMaterial = {
          ...secret!.material,
          "next-ca.crt": next.cert,
          "next-ca.key": next.key,
        };
        const outcome = await this.o.store.writeSecret(material, undefined, resourceVersion);
        log.info({ outcome }, "CA rotation: next CA made");
        return;
      }
      case "promote-next-ca": {
        const m = secret!.material;
        const fresh = await this.fresh({ cert: m["next-ca.crt"]!, key: m["next-ca.key"]! });
        const material: TlsMaterial = { ...fresh, "previous-ca.crt": m["ca.crt"] };
        const outcome = await this.o.store.writeSecret(material, undefined, resourceVersion);
        log.info({ outcome }, "CA rotation: serving from the next CA");
        if (outcome === "written") this.o.onRotated?.("ca");
        return;
      }
      case "renew-leaf": {
        const m = secret!.material;
        const fresh = await this.fresh({ cert: m["ca.crt"], key: m["ca.key"] });
        const material: TlsMaterial = { ...m, "tls.crt": fresh["tls.crt"], "tls.key": fresh["tls.key"] };
        const outcome = await this.o.store.writeSecret(
          material,
          secret!.nextCaPublishedAtMs,
          resourceVersion,
        );
        log.info({ outcome, reason: step.reason }, "serving certificate renewed");
        if (outcome === "written") this.o.onRotated?.("serving");
        return;
      }
      case "idle":
        return;
    }
  }
}
