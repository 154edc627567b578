// Writes unrelated objects so that etcd's revision moves on without touching a node's pods.
import { CoreV1Api } from "@kubernetes/client-node";
import type { System } from "./system.ts";

export class ConfigMap {
  private sys: System;
  constructor(sys: System) {
    this.sys = sys;
  }
  async churn(n: number): Promise<void> {
    const core = this.sys.cluster.kc.makeApiClient(CoreV1Api);
    await this.sys.kubelet.ensureNamespace("churn");
    for (let i = 0; i < n; i++) {
      await core.createNamespacedConfigMap({
        namespace: "churn",
        body: { metadata: { generateName: "churn-" }, data: { i: String(i) } },
      });
    }
  }
}
