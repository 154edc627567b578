// The agent's own apiserver access (no official client): kubeconfig and in-cluster loading,
// checked against a real kube-apiserver (TLS with its CA and tls-server-name, bearer tokens),
// and the list + watch the pod watch is built on.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { ApiClient, type ApiError } from "../../src/k8s/api-client.ts";
import {
  KubeconfigError,
  inClusterConfig,
  kubeconfigFromFile,
  kubeconfigFromObject,
} from "../../src/k8s/rest-config.ts";
import { Kubelet, makeServingCert, startCluster, type Cluster } from "../harness/index.ts";

const dir = mkdtempSync(join(tmpdir(), "kc-rest-"));

function writeKubeconfig(name: string, doc: object): string {
  const p = join(dir, name);
  writeFileSync(p, JSON.stringify(doc)); // JSON is YAML
  return p;
}

function config(cluster: object, user: object): object {
  return {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster }],
    users: [{ name: "u", user }],
    contexts: [{ name: "ctx", context: { cluster: "c", user: "u" } }],
    "current-context": "ctx",
  };
}

describe("kubeconfig and in-cluster loading (no apiserver)", () => {
  it("reads CA and client certificate data, resolves relative paths against the file's directory", () => {
    writeFileSync(join(dir, "ca.pem"), "CA-PEM");
    writeFileSync(join(dir, "tok"), "file-token\n");
    const file = writeKubeconfig(
      "rel.yaml",
      config(
        { server: "https://api.example:6443", "certificate-authority": "ca.pem", "tls-server-name": "kube" },
        {
          tokenFile: "tok",
          "client-certificate-data": Buffer.from("CERT").toString("base64"),
          "client-key-data": Buffer.from("KEY").toString("base64"),
        },
      ),
    );
    const rc = kubeconfigFromFile(file);
    assert.equal(rc.server, "https://api.example:6443");
    const c = rc.connection();
    assert.deepEqual(c.tls, { ca: "CA-PEM", cert: "CERT", key: "KEY", servername: "kube" });
    assert.equal(c.headers.authorization, "Bearer file-token");
  });

  it("re-reads a token file after a minute (rotated service account tokens), keeps the last on a read error", () => {
    const tok = join(dir, "rotating");
    writeFileSync(tok, "one");
    const rc = kubeconfigFromObject(config({ server: "https://x:1" }, { tokenFile: tok }), dir);
    const t0 = 1_000_000;
    assert.equal(rc.connection(t0).headers.authorization, "Bearer one");
    writeFileSync(tok, "two");
    assert.equal(rc.connection(t0 + 30_000).headers.authorization, "Bearer one", "not before a minute");
    assert.equal(rc.connection(t0 + 61_000).headers.authorization, "Bearer two");
    rmSync(tok); // mid-rotation: the last good token is kept
    assert.equal(rc.connection(t0 + 130_000).headers.authorization, "Bearer two");
    const gone = join(dir, "gone");
    const rc2 = kubeconfigFromObject(config({ server: "https://x:1" }, { tokenFile: gone }), dir);
    assert.throws(() => rc2.connection(t0), KubeconfigError);
  });

  it("refuses what the agent does not support, and broken files, with clear errors", () => {
    const cases: Array<[object, RegExp]> = [
      [config({ server: "https://x:1" }, { exec: { command: "aws" } }), /uses exec/],
      [config({ server: "https://x:1" }, { "auth-provider": { name: "oidc" } }), /uses auth-provider/],
      [config({ server: "https://x:1" }, { username: "a", password: "b" }), /uses username/],
      [config({ server: "https://x:1" }, { "client-certificate-data": "Q0VSVA==" }), /go together/],
      [config({}, {}), /has no server/],
      [config({ server: "ftp://x" }, {}), /must be http/],
      [{ ...config({ server: "https://x:1" }, {}), "current-context": "other" }, /context "other" not found/],
      [config({ server: "https://x:1", "certificate-authority": "/nonexistent/ca" }, {}), /cannot read CA/],
    ];
    for (const [doc, re] of cases) assert.throws(() => kubeconfigFromObject(doc, dir), re);
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "clusters: [\n");
    assert.throws(() => kubeconfigFromFile(bad), /cannot read kubeconfig/);
  });

  it("in cluster: the service account's CA and token file; refuses to guess outside a cluster", () => {
    const sa = mkdtempSync(join(tmpdir(), "kc-sa-"));
    writeFileSync(join(sa, "ca.crt"), "SA-CA");
    writeFileSync(join(sa, "token"), "sa-token");
    const rc = inClusterConfig({ KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "443" }, sa);
    assert.equal(rc.server, "https://[fd00::1]:443");
    assert.deepEqual(rc.connection(), {
      headers: { authorization: "Bearer sa-token" },
      tls: { ca: "SA-CA" },
    });
    assert.throws(() => inClusterConfig({}, sa), /not running in a cluster/);
  });
});

describe("against a real kube-apiserver", () => {
  let cluster: Cluster;
  let kubelet: Kubelet;
  const clients: ApiClient[] = [];
  const client = (file: string): ApiClient => {
    const c = new ApiClient(kubeconfigFromFile(file), { timeoutMs: 5000 });
    clients.push(c);
    return c;
  };

  before(async () => {
    cluster = await startCluster();
    kubelet = new Kubelet(cluster.kc);
    await kubelet.ensureNamespace("rest");
  });
  after(async () => {
    for (const c of clients) c.close();
    await cluster?.stop();
  });

  it("authenticates with the kubeconfig's token over TLS verified by its CA", async () => {
    const api = client(cluster.kubeconfigFor("127.0.0.1"));
    const ns = await api.json<{ metadata: { name: string } }>("GET", "/api/v1/namespaces/rest");
    assert.equal(ns.metadata.name, "rest");
    // a token the apiserver does not know: 401, never anonymous success
    const anon = client(cluster.kubeconfigFor("127.0.0.1", "not-a-token"));
    await assert.rejects(anon.json("GET", "/api/v1/namespaces/rest"), (e) => (e as ApiError).code === 401);
  });

  it("fails closed on a CA that did not sign the apiserver's certificate", async () => {
    const good = cluster.kubeconfigFor("127.0.0.1");
    const text = readFileSync(good, "utf8").replace(
      /certificate-authority: .*/,
      "certificate-authority: other-ca.pem",
    );
    // a CA of its own (a throw-away PKI), not the one that signed the apiserver's certificate
    writeFileSync(
      join(dirname(good), "other-ca.pem"),
      readFileSync((await makeServingCert(["127.0.0.1"])).caFile),
    );
    const file = join(dirname(good), `wrong-ca-${basename(good)}`);
    writeFileSync(file, text);
    await assert.rejects(
      client(file).json("GET", "/api/v1/namespaces/rest"),
      /certificate|self.signed|verify/i,
    );
  });

  it("watch: sees a pod created after it opened, ends with 'stopped' when aborted", async () => {
    const api = client(cluster.kubeconfigFor("127.0.0.1"));
    const list = await api.json<{ metadata: { resourceVersion: string } }>(
      "GET",
      "/api/v1/namespaces/rest/pods",
    );
    const abort = new AbortController();
    const seen: string[] = [];
    let opened = false;
    const done = api.watch(
      `/api/v1/namespaces/rest/pods?watch=true&resourceVersion=${list.metadata.resourceVersion}`,
      (ev) => {
        const e = ev as { type: string; object: { metadata: { name: string } } };
        seen.push(`${e.type} ${e.object.metadata.name}`);
        if (seen.includes("ADDED w1")) abort.abort();
      },
      { signal: abort.signal, inactivityMs: 20_000, onOpen: () => (opened = true) },
    );
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(opened, "the watch opened");
    await kubelet.createPod({ namespace: "rest", name: "w1", nodeName: "n1" });
    assert.equal(await done, "stopped");
    assert.deepEqual(seen, ["ADDED w1"]);
  });

  it("watch: a refused watch rejects with the apiserver's status", async () => {
    const api = client(cluster.kubeconfigFor("127.0.0.1", "not-a-token"));
    await assert.rejects(
      api.watch("/api/v1/pods?watch=true", () => undefined, {
        signal: new AbortController().signal,
        inactivityMs: 5000,
      }),
      (e) => (e as ApiError).code === 401,
    );
  });
});
