// Every security invariant of DESIGN.md §3, end to end, against the assembled system.
// Needs root (network namespaces, iptables); starts every part itself.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { request } from "node:https";
import { CustomObjectsApi } from "@kubernetes/client-node";
import { startFakeImds, NODE_ACCESS_KEY, type FakeImds } from "../harness/fake-imds.ts";
import { MOTO_ACCOUNT_ID, NODE, waitFor } from "../harness/index.ts";
import { System, IMDS, CONTAINER_CREDS_URL, type TestPod } from "./system.ts";
import { ROLE_A, BUCKET_A, accessPolicy, applyTenantPolicies, createTenantAws } from "./fixtures.ts";

const ROLE_A_WRITER = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-a-writer`;

/** Every secret handed out during the suite, to scan logs and metrics for. */
const issuedSecrets = new Set<string>();
function remember(creds?: Record<string, string>): void {
  if (creds?.SecretAccessKey) issuedSecrets.add(creds.SecretAccessKey);
  if (creds?.Token) issuedSecrets.add(creds.Token);
}

describe("e2e: security invariants (DESIGN.md §3)", () => {
  const sys = new System({ nodes: ["node-a", "node-b"], serverReplicas: 2 });
  let a1: TestPod, b1: TestPod, a2: TestPod, writer: TestPod, nobody: TestPod;
  let fakeImds: FakeImds;

  const creds = async (p: TestPod) => {
    const r = await sys.imdsCredentials(p);
    remember(r.creds);
    return r;
  };

  /** POST /v1/credentials straight to a server replica, as a (possibly compromised) agent would. */
  const askServer = (token: string, body: unknown) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const replica = sys.servers.find((s) => s.process.running)!;
      const req = request(
        {
          host: "127.0.0.1",
          port: replica.port,
          path: "/v1/credentials",
          method: "POST",
          ca: readFileSync(sys.pki.caFile),
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        },
        (res) => {
          let data = "";
          res.on("data", (d) => (data += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: data }));
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify(body));
    });

  before(async () => {
    await sys.start((m) => console.log(`# ${m}`));
    await createTenantAws(sys);
    await sys.moto.createRole("tenant-a-writer", {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: ["s3:PutObject"], Resource: [`arn:aws:s3:::${BUCKET_A}/*`] }],
    });
    await sys.moto.enableAuth();
    await applyTenantPolicies(sys);
    await sys.apply(accessPolicy("tenant-a", "writers", ROLE_A_WRITER, BUCKET_A, "writer"));
    fakeImds = await startFakeImds(sys.net, sys.agents.get("node-a")!.node.netns);
    a1 = await sys.addPod("node-a", "tenant-a", "reader-1", { serviceAccount: "reader" });
    b1 = await sys.addPod("node-a", "tenant-b", "reader-1", { serviceAccount: "reader" });
    writer = await sys.addPod("node-a", "tenant-a", "writer-1", { serviceAccount: "writer" });
    a2 = await sys.addPod("node-b", "tenant-a", "reader-2", { serviceAccount: "reader" });
    nobody = await sys.addPod("node-a", "tenant-a", "nobody", { serviceAccount: "nobody" });
  });
  after(async () => {
    await fakeImds?.stop();
    await sys.stop();
  });

  describe("1. a pod never receives credentials derived from another pod's policy", () => {
    it("two tenants on one node: each gets its own role, never the other's", async () => {
      const ra = await creds(a1);
      const rb = await creds(b1);
      assert.equal(ra.status, 200, ra.body);
      assert.equal(rb.status, 200, rb.body);
      assert.notEqual(ra.creds!.AccessKeyId, rb.creds!.AccessKeyId);
      const roleA = await sys.curl(a1, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      const roleB = await sys.curl(b1, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      assert.equal(roleA.body, "tenant-a-reader");
      assert.equal(roleB.body, "tenant-b-reader");
      // asking for the other tenant's role by name gets nothing
      const cross = await sys.curl(a1, `${IMDS}/latest/meta-data/iam/security-credentials/tenant-b-reader`);
      assert.equal(cross.status, 404);
    });

    it("same tenant, different service accounts: different policies, roles and sessions", async () => {
      const rr = await creds(a1);
      const rw = await creds(writer);
      assert.equal(rw.status, 200, rw.body);
      assert.notEqual(rr.creds!.AccessKeyId, rw.creds!.AccessKeyId);
      const role = await sys.curl(writer, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      assert.equal(role.body, "tenant-a-writer");
      const put = await sys.aws(writer, [
        "s3api",
        "put-object",
        "--bucket",
        BUCKET_A,
        "--key",
        "tenant-a/new.txt",
      ]);
      assert.equal(put.code, 0, put.stderr);
      const readerPut = await sys.aws(a1, [
        "s3api",
        "put-object",
        "--bucket",
        BUCKET_A,
        "--key",
        "tenant-a/no.txt",
      ]);
      assert.notEqual(readerPut.code, 0, "the reader's credentials do not carry the writer's role");
    });

    it("the container-credentials endpoint answers with the caller's own pod only", async () => {
      const tokA = await sys.podToken(a1);
      const own = await sys.curl(a1, CONTAINER_CREDS_URL, { headers: { Authorization: tokA } });
      assert.equal(own.status, 200, own.body);
      const doc = JSON.parse(own.body) as Record<string, string>;
      remember({ SecretAccessKey: doc.SecretAccessKey!, Token: doc.Token! });
      // pod B presents pod A's token: refused, and nothing of A's is served
      const stolen = await sys.curl(b1, CONTAINER_CREDS_URL, { headers: { Authorization: tokA } });
      assert.ok(stolen.status >= 400 && stolen.status < 500, `${stolen.status} ${stolen.body}`);
      assert.ok(!stolen.body.includes(doc.AccessKeyId!));
    });

    it("an IMDSv2 token obtained by one pod is refused from another", async () => {
      const tok = await sys.curl(a1, `${IMDS}/latest/api/token`, {
        method: "PUT",
        headers: { "X-aws-ec2-metadata-token-ttl-seconds": "300" },
      });
      assert.equal(tok.status, 200);
      const r = await sys.curl(b1, `${IMDS}/latest/meta-data/iam/security-credentials/`, {
        headers: { "X-aws-ec2-metadata-token": tok.body },
      });
      assert.equal(r.status, 401);
    });
  });

  describe("2. an agent authenticated as node N never receives credentials for a pod not bound to N", () => {
    it("node-a's agent token, used directly against the server for a pod on node-b: 403 and an audit record", async () => {
      const token = readFileSync(sys.agents.get("node-a")!.tokenFile, "utf8");
      const own = await askServer(token, { pod: { namespace: a1.namespace, name: a1.name, uid: a1.uid } });
      assert.equal(own.status, 200, "positive control: its own node's pod");
      const doc = JSON.parse(own.body) as { credentials: { secretAccessKey: string; sessionToken: string } };
      issuedSecrets.add(doc.credentials.secretAccessKey);
      issuedSecrets.add(doc.credentials.sessionToken);

      const other = await askServer(token, { pod: { namespace: a2.namespace, name: a2.name, uid: a2.uid } });
      assert.equal(other.status, 403, other.body);
      assert.equal((JSON.parse(other.body) as { code: string }).code, "PodNotOnNode");
      assert.ok(!other.body.includes("secretAccessKey"));
      await waitFor("audit record of the refusal", async () =>
        sys.servers.some((s) =>
          s.process
            .logs()
            .split("\n")
            .some(
              (l) =>
                l.includes('"kind":"audit"') &&
                l.includes('"denied"') &&
                l.includes(a2.uid) &&
                l.includes("node-a"),
            ),
        ),
      );
    });

    it("a pod's own token (not an agent's) is refused by the server", async () => {
      const podTok = await sys.kubelet.requestToken(a1.namespace, a1.serviceAccount, {
        podName: a1.name,
        podUID: a1.uid,
        audiences: ["keycutter"],
      });
      const r = await askServer(podTok, { pod: { namespace: a1.namespace, name: a1.name, uid: a1.uid } });
      assert.ok(r.status === 401 || r.status === 403, `${r.status} ${r.body}`);
    });

    it("a wrong pod UID (a pod that was replaced) is refused", async () => {
      const token = readFileSync(sys.agents.get("node-a")!.tokenFile, "utf8");
      const r = await askServer(token, {
        pod: { namespace: a1.namespace, name: a1.name, uid: "00000000-0000-0000-0000-000000000000" },
      });
      assert.ok(r.status >= 400 && r.status < 500, `${r.status} ${r.body}`);
    });
  });

  describe("3. a deleted pod's credentials are never served again, even to a new pod with its IP", () => {
    it("new pod of another tenant on the reused IP gets its own credentials", async () => {
      const old = await sys.addPod("node-a", "tenant-a", "short-lived", { serviceAccount: "reader" });
      const before_ = await creds(old);
      assert.equal(before_.status, 200, before_.body);
      await sys.deletePod(old, { keepNetwork: true });
      const gone = await sys.imdsCredentials(old);
      assert.notEqual(gone.status, 200, "deleted pod: no credentials");
      // a new pod of tenant B gets the same address (same network namespace, as a reused IP)
      const kubeletPod = await sys.kubelet.createPod({
        namespace: "tenant-b",
        name: "newcomer",
        nodeName: "node-a",
        serviceAccountName: "reader",
        podIP: old.net.ip,
      });
      sys.net.cniAttach(old.net, { namespace: "tenant-b", name: "newcomer", uid: kubeletPod.metadata!.uid! });
      const newcomer: TestPod = {
        ...old,
        namespace: "tenant-b",
        name: "newcomer",
        uid: kubeletPod.metadata!.uid!,
      };
      const after_ = await waitFor("the new pod's credentials", async () => {
        const r = await creds(newcomer);
        return r.status === 200 ? r : false;
      });
      assert.notEqual(after_.creds!.AccessKeyId, before_.creds!.AccessKeyId);
      const role = await sys.curl(newcomer, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      assert.equal(role.body, "tenant-b-reader");
      await sys.deletePod(newcomer);
    });

    it("new pod with no policy on the reused IP gets nothing", async () => {
      const old = await sys.addPod("node-a", "tenant-a", "short-lived-2", { serviceAccount: "reader" });
      assert.equal((await creds(old)).status, 200);
      await sys.deletePod(old, { keepNetwork: true });
      const p = await sys.kubelet.createPod({
        namespace: "tenant-a",
        name: "no-policy-newcomer",
        nodeName: "node-a",
        serviceAccountName: "nobody",
        podIP: old.net.ip,
      });
      sys.net.cniAttach(old.net, {
        namespace: "tenant-a",
        name: "no-policy-newcomer",
        uid: p.metadata!.uid!,
      });
      const newcomer: TestPod = {
        ...old,
        name: "no-policy-newcomer",
        serviceAccount: "nobody",
        uid: p.metadata!.uid!,
      };
      await new Promise((r) => setTimeout(r, 500));
      const r = await sys.imdsCredentials(newcomer);
      assert.equal(r.status, 404, r.body);
      await sys.deletePod(newcomer);
    });
  });

  describe("4. no policy, invalid policy, unknown pod: no credentials and a clear error", () => {
    it("no policy: 404 from IMDS", async () => {
      const r = await sys.imdsCredentials(nobody);
      assert.equal(r.status, 404);
    });

    it("invalid policy (unknown template variable): no credentials, and its status says why", async () => {
      await sys.kubelet.ensureNamespace("tenant-c");
      const bad = accessPolicy("tenant-c", "broken", ROLE_A.replace("tenant-a", "tenant-c"), "c-bucket") as {
        spec: { sessionPolicy: { Statement: Array<{ Resource: string[] }> } };
      };
      bad.spec.sessionPolicy.Statement[0]!.Resource = ["arn:aws:s3:::c-bucket/${pod.labels['missing']}/*"];
      await sys.apply(bad);
      const p = await sys.addPod("node-a", "tenant-c", "c1", { serviceAccount: "reader" });
      const r = await sys.imdsCredentials(p);
      assert.notEqual(r.status, 200);
      assert.ok(!r.body.includes("AccessKeyId"));
      const custom = sys.cluster.kc.makeApiClient(CustomObjectsApi);
      const cond = await waitFor("the broken policy's Ready=False condition", async () => {
        const obj = (await custom.getNamespacedCustomObject({
          group: "keycutter.dev",
          version: "v1alpha1",
          namespace: "tenant-c",
          plural: "accesspolicies",
          name: "broken",
        })) as {
          status?: { conditions?: Array<{ type: string; status: string; reason: string; message: string }> };
        };
        const ready = obj.status?.conditions?.find((c) => c.type === "Ready");
        return ready?.status === "False" ? ready : false;
      });
      assert.match(`${cond.reason} ${cond.message}`, /missing|template|label/i);
    });

    it("unknown pod (an address the apiserver does not know): 404, never a default role", async () => {
      const stranger = await sys.net.addPod("node-a", "stranger");
      const t0 = Date.now();
      const r = await sys.curl(stranger, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      assert.equal(r.status, 404, r.body);
      assert.ok(Date.now() - t0 < 3000, "answers within the SDKs' patience");
      await sys.net.removePod(stranger);
    });
  });

  describe("5. pods cannot reach the real IMDS; node credentials are never served to pods", () => {
    const neverNode = (body: string) => assert.ok(!body.includes(NODE_ACCESS_KEY), "node credentials leaked");

    it("with the agent up: the metadata address is the agent, on every path and version", async () => {
      for (const path of [
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/node-role",
        "/latest/meta-data/instance-id",
        "/latest/user-data",
        "/",
      ]) {
        const r = await sys.curl(a1, `${IMDS}${path}`);
        neverNode(r.body);
        assert.ok(!r.body.startsWith("NODE-IMDS"), `${path} reached the real IMDS`);
      }
    });

    it("other ports of the metadata address are refused", async () => {
      for (const port of [81, 443, 8080]) {
        const r = await sys.curl(a1, `http://169.254.169.254:${port}/latest/meta-data/`, { timeoutS: 2 });
        assert.equal(r.status, 0, `port ${port} answered`);
        neverNode(r.body);
      }
    });

    it("a hostNetwork pod is refused by the agent", async () => {
      const agent = sys.agents.get("node-a")!;
      await sys.kubelet.createPod({
        namespace: "tenant-a",
        name: "host-net",
        nodeName: "node-a",
        serviceAccountName: "reader",
        hostNetwork: true,
        podIP: agent.node.ip,
      });
      // from the node's own network (where a hostNetwork pod lives), asking the agent directly
      const r = await sys.net.exec(agent.node.netns, "curl", [
        "-s",
        "-w",
        "\n%{http_code}",
        "--interface",
        agent.node.ip,
        `http://${agent.node.ip}:8180/latest/meta-data/iam/security-credentials/`,
      ]);
      const status = Number(r.stdout.split("\n").pop());
      assert.ok(status === 403 || status === 404, r.stdout);
      neverNode(r.stdout);
      await sys.kubelet.deletePod("tenant-a", "host-net");
    });

    it("with the agent down: connection refused, never the real IMDS", async () => {
      await sys.stopAgent("node-a");
      try {
        for (const url of [`${IMDS}/latest/meta-data/iam/security-credentials/`, CONTAINER_CREDS_URL]) {
          const r = await sys.curl(a1, url, { timeoutS: 2 });
          assert.equal(r.status, 0, `${url} answered with the agent down: ${r.body}`);
          neverNode(r.body);
        }
        const cli = await sys.aws(a1, ["s3", "ls", `s3://${BUCKET_A}`]);
        assert.notEqual(cli.code, 0);
        neverNode(cli.stdout + cli.stderr);
      } finally {
        await sys.restartAgent("node-a");
      }
      const back = await creds(a1);
      assert.equal(back.status, 200, "served again once the agent is back");
    });
  });

  describe("7. hostile input to every endpoint gets a 4xx and changes nothing", () => {
    it("a hostile pass against agent and server endpoints leaves every outcome as it was", async () => {
      const beforeA = await sys.curl(a1, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      const agent = sys.agents.get("node-a")!;
      const replica = sys.servers[0]!;
      const targets = [
        { netns: a1.net.netns, host: "169.254.169.254", port: 80, name: "agent IMDS via the hook" },
        {
          netns: a1.net.netns,
          host: "169.254.170.23",
          port: 80,
          name: "agent container credentials via the hook",
        },
        { netns: agent.node.netns, host: agent.node.ip, port: agent.opsPort, name: "agent ops" },
        {
          netns: agent.node.netns,
          host: sys.net.gatewayIP,
          port: replica.port,
          name: "server API (TLS)",
          tls: true,
        },
        { netns: agent.node.netns, host: sys.net.gatewayIP, port: replica.opsPort, name: "server ops" },
      ];
      for (const t of targets) {
        const r = await sys.net.exec(
          t.netns,
          NODE,
          [
            new URL("./hostile-client.ts", import.meta.url).pathname,
            t.host,
            String(t.port),
            t.tls ? "tls" : "plain",
          ],
          { timeoutMs: 120_000 },
        );
        assert.equal(r.code, 0, `${t.name}: ${r.stderr}\n${r.stdout}`);
        const report = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
          sent: number;
          server5xx: string[];
        };
        assert.ok(report.sent > 20, `${t.name}: hostile requests sent`);
        assert.deepEqual(report.server5xx, [], `${t.name}: answered hostile input with 5xx`);
      }
      for (const s of sys.servers) assert.ok(s.process.running, `${s.name} survived`);
      for (const a of sys.agents.values()) assert.ok(a.process.running, `agent on ${a.node.name} survived`);
      const afterA = await sys.curl(a1, `${IMDS}/latest/meta-data/iam/security-credentials/`);
      assert.equal(afterA.body, beforeA.body);
      assert.equal((await creds(a1)).status, 200);
      assert.equal((await sys.imdsCredentials(nobody)).status, 404);
    });
  });

  describe("6. no secret appears in logs, metrics, audit records or error messages", () => {
    it("scans everything the system printed and every metrics endpoint for the secrets it issued", async () => {
      assert.ok(issuedSecrets.size >= 6, `secrets collected: ${issuedSecrets.size}`);
      const texts: Array<[string, string]> = [];
      for (const s of sys.servers) {
        texts.push([`${s.name} logs+audit`, s.process.logs()]);
        texts.push([
          `${s.name} metrics`,
          await (await fetch(`http://127.0.0.1:${s.opsPort}/metrics`)).text(),
        ]);
      }
      for (const a of sys.agents.values()) {
        texts.push([`agent ${a.node.name} logs`, a.process.logs()]);
        const m = await sys.net.exec(a.node.netns, "curl", [
          "-s",
          `http://${a.node.ip}:${a.opsPort}/metrics`,
        ]);
        assert.ok(m.stdout.length > 100, "agent metrics scraped");
        texts.push([`agent ${a.node.name} metrics`, m.stdout]);
      }
      const tokens = [readFileSync(sys.agents.get("node-a")!.tokenFile, "utf8")];
      for (const [where, text] of texts) {
        for (const secret of [...issuedSecrets, ...tokens]) {
          assert.ok(!text.includes(secret), `a secret (${secret.slice(0, 4)}…) appears in ${where}`);
        }
      }
    });
  });
});
