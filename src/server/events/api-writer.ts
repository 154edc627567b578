// Writes Events through the apiserver (events.k8s.io/v1): create, and the series merge patch.
import { ApiClient, kubeConfigConnection } from "../../k8s/api-client.ts";
import type { KubeConfig } from "@kubernetes/client-node";
import type { EventObject, SeriesPatch } from "./event-object.ts";
import type { EventWriter } from "./recorder.ts";

/** Short: an Event nobody waits for must not hold a write slot for long. */
const WRITE_TIMEOUT_MS = 5_000;

export class ApiEventWriter implements EventWriter {
  private readonly api: ApiClient;

  constructor(kc: KubeConfig) {
    this.api = new ApiClient(kubeConfigConnection(kc), { timeoutMs: WRITE_TIMEOUT_MS });
  }

  async create(namespace: string, event: EventObject): Promise<void> {
    await this.api.json(
      "POST",
      `/apis/events.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/events`,
      event,
      {
        maxBytes: 64 * 1024,
      },
    );
  }

  async patch(namespace: string, name: string, patch: SeriesPatch): Promise<void> {
    await this.api.json(
      "PATCH",
      `/apis/events.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/events/${encodeURIComponent(name)}`,
      patch,
      { contentType: "application/merge-patch+json", maxBytes: 64 * 1024 },
    );
  }

  close(): void {
    this.api.close();
  }
}
