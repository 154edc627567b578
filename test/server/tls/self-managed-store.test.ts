// Self-managed TLS against the real apiserver (src/server/tls/store.ts, self-managed.ts): replicas
// starting at once agree on one CA and certificate through resourceVersions, the bundle is
// published, a Secret keycutter did not write is never overwritten.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { CoreV1Api } from "@kubernetes/client-node";
import { createLogger } from "../../../src/common/logger.ts";
import { subjectNames, signedBy, splitPemBundle } from "../../../src/server/tls/certificates.ts";
import { SelfManagedTls } from "../../../src/server/tls/self-managed.ts";
import { TlsStore } from "../../../src/server/tls/store.ts";
import { Kubelet, startCluster, type Cluster } from "../../harness/index.ts";

const NS = "kc-tls-store";
const SETTINGS = {
  leafLifetimeMs: 3_600_000,
  caLifetimeMs: 7_200_000,
  renewAtFraction: 2 / 3,
  bundlePropagationMs: 1000,
  names: subjectNames(["keycutter-server.kc-tls-store.svc", "10.0.0.1"]),
};

describe("self-managed TLS on the real apiserver", () => {
  let cluster: Cluster;
  const log = createLogger("test");
  log.level = "silent";

  before(async () => {
    cluster = await startCluster();
    await new Kubelet(cluster.kc).ensureNamespace(NS);
  });
  after(async () => cluster?.stop());

  const replica = (secretName: string) =>
    new SelfManagedTls({
      store: new TlsStore(cluster.kc, { namespace: NS, secretName, bundleConfigMap: `${secretName}-ca` }),
      settings: SETTINGS,
      syncMs: 3_600_000,
      isLeader: () => false,
      log,
    });

  it("five replicas starting at once serve one certificate, and the bundle verifies it", async () => {
    const replicas = Array.from({ length: 5 }, () => replica("race"));
    const served = await Promise.all(replicas.map((r) => r.start()));
    for (const r of replicas) r.stop();
    assert.equal(new Set(served.map((p) => p.cert)).size, 1, "every replica loaded the first write");
    const core = cluster.kc.makeApiClient(CoreV1Api);
    const cm = await core.readNamespacedConfigMap({ namespace: NS, name: "race-ca" });
    const bundle = splitPemBundle(cm.data!["ca.crt"]!);
    assert.equal(bundle.length, 1);
    assert.ok(signedBy(served[0]!.cert, bundle[0]!));
    assert.doesNotMatch(cm.data!["ca.crt"]!, /PRIVATE KEY/, "no key in the ConfigMap");
    const secret = await core.readNamespacedSecret({ namespace: NS, name: "race" });
    assert.equal(secret.metadata?.labels?.["app.kubernetes.io/managed-by"], "keycutter-server");
    assert.deepEqual(Object.keys(secret.data ?? {}).sort(), ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
  });

  it("a Secret of that name keycutter did not write: refused, left as it was", async () => {
    const core = cluster.kc.makeApiClient(CoreV1Api);
    await core.createNamespacedSecret({
      namespace: NS,
      body: { metadata: { name: "theirs" }, stringData: { "tls.crt": "someone else's" } },
    });
    await assert.rejects(replica("theirs").start(), /keycutter did not make it/);
    const after = await core.readNamespacedSecret({ namespace: NS, name: "theirs" });
    assert.equal(Buffer.from(after.data!["tls.crt"]!, "base64").toString(), "someone else's");
    assert.equal(after.data!["ca.key"], undefined);
  });
});
