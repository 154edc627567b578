// Which TLS the API listener serves, from the configuration: the self-managed Secret
// (--tls-secret), files from a mounted Secret (--tls-cert/--tls-key: an existing Secret or
// cert-manager's), or none (--insecure-http).

import type { KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "../../common/logger.ts";
import type { SelfManagedTlsSetting, ServerConfig } from "../config.ts";
import { subjectNames } from "./certificates.ts";
import { checkTlsPlanSettings, type TlsPlanSettings } from "./plan.ts";
import { SelfManagedTls } from "./self-managed.ts";
import { fileServingTls, type ServingTls } from "./serving.ts";
import { TlsStore } from "./store.ts";

export type TlsConfig = Pick<
  ServerConfig,
  "insecureHttp" | "tlsCertFile" | "tlsKeyFile" | "tlsSecret" | "clock" | SelfManagedTlsSetting
>;

export function tlsPlanSettings(cfg: TlsConfig): TlsPlanSettings {
  return {
    leafLifetimeMs: cfg.tlsCertLifetimeSeconds * 1000,
    caLifetimeMs: cfg.tlsCaLifetimeSeconds * 1000,
    renewAtFraction: cfg.tlsRenewAtFraction,
    bundlePropagationMs: cfg.tlsBundlePropagationSeconds * 1000,
    names: subjectNames(cfg.tlsSans),
  };
}

export async function startServingTls(
  cfg: TlsConfig,
  kc: KubeConfig,
  log: Logger,
  isLeader: () => boolean,
): Promise<ServingTls | undefined> {
  if (cfg.insecureHttp) return undefined;
  if (cfg.tlsSecret) {
    if (cfg.tlsCertFile || cfg.tlsKeyFile)
      throw new Error("--tls-secret (self-managed) and --tls-cert/--tls-key exclude each other");
    const settings = tlsPlanSettings(cfg);
    const problem = checkTlsPlanSettings(settings);
    if (problem) throw new Error(`self-managed TLS: ${problem}`);
    const tls = new SelfManagedTls({
      store: new TlsStore(kc, {
        namespace: cfg.tlsNamespace,
        secretName: cfg.tlsSecret,
        bundleConfigMap: cfg.tlsCaConfigMap,
      }),
      settings,
      syncMs: cfg.tlsSyncSeconds * 1000,
      isLeader,
      ...(cfg.clock ? { clock: cfg.clock } : {}),
      log,
    });
    await tls.start();
    return tls;
  }
  if (!cfg.tlsCertFile || !cfg.tlsKeyFile)
    throw new Error(
      "TLS needs --tls-secret, or --tls-cert and --tls-key (or --insecure-http for development)",
    );
  return fileServingTls(cfg.tlsCertFile, cfg.tlsKeyFile, log);
}
