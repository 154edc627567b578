// What the API listener serves: a certificate and key that may change while it runs. Two
// sources: files (`--tls-cert`/`--tls-key`, a mounted Secret the kubelet swaps in place, e.g.
// cert-manager's) and the self-managed Secret (self-managed.ts).

import { readFileSync, unwatchFile, watchFile } from "node:fs";
import type { Logger } from "../../common/logger.ts";

export interface ServingPair {
  cert: string;
  key: string;
}

export interface ServingTls {
  current(): ServingPair;
  /** `apply` is called with every new pair; the returned function unsubscribes. */
  subscribe(apply: (pair: ServingPair) => void): () => void;
  stop(): void;
}

const FILE_POLL_MS = 5000;

export function fileServingTls(certFile: string, keyFile: string, log: Logger): ServingTls {
  const read = (): ServingPair => ({
    cert: readFileSync(certFile, "utf8"),
    key: readFileSync(keyFile, "utf8"),
  });
  let pair = read();
  const listeners = new Set<(p: ServingPair) => void>();
  const reload = () => {
    try {
      const next = read();
      if (next.cert === pair.cert && next.key === pair.key) return;
      pair = next;
      for (const apply of listeners) apply(pair);
      log.info("TLS certificate reloaded");
    } catch (e) {
      log.warn({ err: e }, "TLS certificate reload failed; keeping the old one");
    }
  };
  watchFile(certFile, { interval: FILE_POLL_MS }, reload);
  watchFile(keyFile, { interval: FILE_POLL_MS }, reload);
  return {
    current: () => pair,
    subscribe(apply) {
      listeners.add(apply);
      return () => listeners.delete(apply);
    },
    stop() {
      unwatchFile(certFile, reload);
      unwatchFile(keyFile, reload);
    },
  };
}
