// The kubelet's part in a ConfigMap volume, for processes started here instead of in pods: one
// key of a ConfigMap kept in a file, replaced atomically (write, rename) when it changes, absent
// until the ConfigMap exists (an optional volume). The real kubelet refreshes within its sync
// period; this polls every intervalMs.
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";

export class ConfigMapVolume {
  private readonly api: CoreV1Api;
  private readonly where: { namespace: string; name: string; key: string };
  readonly file: string;
  private readonly intervalMs: number;
  private timer: NodeJS.Timeout | undefined;
  private last: string | undefined;
  /** Every content written, with its time (tests compare it with what servers served). */
  readonly history: { atMs: number; contents: string }[] = [];

  constructor(
    kc: KubeConfig,
    where: { namespace: string; name: string; key: string },
    file: string,
    intervalMs = 500,
  ) {
    this.where = where;
    this.file = file;
    this.intervalMs = intervalMs;
    this.api = kc.makeApiClient(CoreV1Api);
    mkdirSync(dirname(file), { recursive: true });
  }

  async syncOnce(): Promise<void> {
    let contents: string | undefined;
    try {
      const cm = await this.api.readNamespacedConfigMap({
        namespace: this.where.namespace,
        name: this.where.name,
      });
      contents = cm.data?.[this.where.key];
    } catch (e) {
      if ((e as { code?: number }).code !== 404) throw e;
    }
    if (contents === undefined || contents === this.last) return;
    const tmp = join(dirname(this.file), `.${Date.now()}.tmp`);
    writeFileSync(tmp, contents);
    renameSync(tmp, this.file);
    this.last = contents;
    this.history.push({ atMs: Date.now(), contents });
  }

  start(): this {
    const tick = () => {
      this.syncOnce()
        .catch(() => undefined)
        .finally(() => {
          if (this.timer) this.timer = setTimeout(tick, this.intervalMs);
        });
    };
    this.timer = setTimeout(tick, 0);
    return this;
  }

  stop(): void {
    const t = this.timer;
    this.timer = undefined;
    if (t) clearTimeout(t);
  }
}
