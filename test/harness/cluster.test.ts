// Proves the apiserver is real: CRDs, RBAC enforcement, pod-bound tokens and TokenReview.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { ApiextensionsV1Api, CoreV1Api, CustomObjectsApi, KubeConfig } from "@kubernetes/client-node";
import { Kubelet, startCluster, kubeconfigYaml, waitFor, type Cluster } from "./index.ts";

describe("etcd + kube-apiserver", () => {
  let cluster: Cluster;
  let kubelet: Kubelet;

  before(async () => {
    cluster = await startCluster();
    kubelet = new Kubelet(cluster.kc);
  });
  after(async () => cluster?.stop());

  it("serves a CRD and objects of it", async () => {
    const ext = cluster.kc.makeApiClient(ApiextensionsV1Api);
    await ext.createCustomResourceDefinition({
      body: {
        metadata: { name: "widgets.example.test" },
        spec: {
          group: "example.test",
          scope: "Namespaced",
          names: { plural: "widgets", singular: "widget", kind: "Widget" },
          versions: [
            {
              name: "v1",
              served: true,
              storage: true,
              schema: {
                openAPIV3Schema: {
                  type: "object",
                  properties: {
                    spec: { type: "object", properties: { size: { type: "integer", minimum: 1 } } },
                  },
                },
              },
            },
          ],
        },
      },
    });
    await kubelet.ensureNamespace("crd-test");
    const custom = cluster.kc.makeApiClient(CustomObjectsApi);
    const create = () =>
      custom.createNamespacedCustomObject({
        group: "example.test",
        version: "v1",
        namespace: "crd-test",
        plural: "widgets",
        body: { apiVersion: "example.test/v1", kind: "Widget", metadata: { name: "w1" }, spec: { size: 3 } },
      });
    // the CRD takes a moment to be served
    for (let i = 0; ; i++) {
      try {
        await create();
        break;
      } catch (err) {
        if (i > 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const got = (await custom.getNamespacedCustomObject({
      group: "example.test",
      version: "v1",
      namespace: "crd-test",
      plural: "widgets",
      name: "w1",
    })) as { spec: { size: number } };
    assert.equal(got.spec.size, 3);
    await assert.rejects(
      custom.createNamespacedCustomObject({
        group: "example.test",
        version: "v1",
        namespace: "crd-test",
        plural: "widgets",
        body: { apiVersion: "example.test/v1", kind: "Widget", metadata: { name: "w2" }, spec: { size: 0 } },
      }),
      (err: { code?: number }) => err.code === 422,
      "the schema's minimum is enforced by the apiserver",
    );
  });

  it("RBAC denies a service account without a role, and allows it once bound", async () => {
    await kubelet.createNode("node-rbac", "10.9.9.9");
    const pod = await kubelet.createPod({
      namespace: "rbac-test",
      name: "p",
      nodeName: "node-rbac",
      serviceAccountName: "nobody",
      podIP: "10.9.9.10",
    });
    const token = await kubelet.requestToken("rbac-test", "nobody", {
      podName: "p",
      podUID: pod.metadata!.uid!,
      audiences: [cluster.issuer],
    });
    const kc = new KubeConfig();
    kc.loadFromString(kubeconfigYaml(cluster.server, cluster.caFile, token));
    const asSA = kc.makeApiClient(CoreV1Api);
    await assert.rejects(
      asSA.listNamespacedPod({ namespace: "rbac-test" }),
      (err: { code?: number }) => err.code === 403,
    );

    const rbac = await import("@kubernetes/client-node").then((m) =>
      cluster.kc.makeApiClient(m.RbacAuthorizationV1Api),
    );
    await rbac.createNamespacedRole({
      namespace: "rbac-test",
      body: {
        metadata: { name: "pod-reader" },
        rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["list"] }],
      },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: "rbac-test",
      body: {
        metadata: { name: "nobody-reads" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "pod-reader" },
        subjects: [{ kind: "ServiceAccount", name: "nobody", namespace: "rbac-test" }],
      },
    });
    let list;
    for (let i = 0; i < 50 && !list; i++) {
      list = await asSA.listNamespacedPod({ namespace: "rbac-test" }).catch(() => undefined);
      if (!list) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(list?.items.length, 1);
  });

  it("a pod-bound token passes TokenReview with the pod and node in extra, and fails once the pod is gone", async () => {
    await kubelet.createNode("node-tr", "10.9.9.1");
    const pod = await kubelet.createPod({
      namespace: "tr-test",
      name: "worker",
      nodeName: "node-tr",
      serviceAccountName: "app",
      podIP: "10.9.9.2",
      hostIP: "10.9.9.1",
    });
    assert.equal(pod.status?.podIP, "10.9.9.2");
    assert.equal(pod.status?.phase, "Running");
    const token = await kubelet.requestToken("tr-test", "app", {
      podName: "worker",
      podUID: pod.metadata!.uid!,
      audiences: ["keycutter"],
    });
    const ok = await kubelet.reviewToken(token, ["keycutter"]);
    assert.equal(ok.authenticated, true);
    assert.equal(ok.user?.username, "system:serviceaccount:tr-test:app");
    assert.deepEqual(ok.user?.extra?.["authentication.kubernetes.io/pod-name"], ["worker"]);
    assert.deepEqual(ok.user?.extra?.["authentication.kubernetes.io/pod-uid"], [pod.metadata!.uid!]);
    assert.deepEqual(ok.user?.extra?.["authentication.kubernetes.io/node-name"], ["node-tr"]);

    const wrongAudience = await kubelet.reviewToken(token, ["someone-else"]);
    assert.notEqual(wrongAudience.authenticated, true);

    await kubelet.terminatePod("tr-test", "worker");
    const terminating = await cluster.kc
      .makeApiClient(CoreV1Api)
      .readNamespacedPod({ namespace: "tr-test", name: "worker" });
    assert.ok(terminating.metadata?.deletionTimestamp, "a graceful delete leaves the pod terminating");

    await kubelet.deletePod("tr-test", "worker");
    // The apiserver caches successful token authentications for 10 s, so a deleted pod's token
    // still passes TokenReview for a while: keycutter must check the live pod itself.
    const gone = await waitFor(
      "token of the deleted pod to be rejected",
      async () => {
        const r = await kubelet.reviewToken(token, ["keycutter"]);
        return r.authenticated ? false : r;
      },
      { timeoutMs: 15_000, intervalMs: 500 },
    );
    assert.match(gone.error ?? "", /invalidated|not found|invalid/);
  });

  it("can restart the apiserver and keep its data", async () => {
    await kubelet.ensureNamespace("survives-restart");
    await cluster.restartApiserver();
    const ns = await cluster.kc.makeApiClient(CoreV1Api).readNamespace({ name: "survives-restart" });
    assert.equal(ns.metadata?.name, "survives-restart");
  });
});
