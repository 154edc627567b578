// Self-managed TLS (the chart's default) rotating under load, end to end: the real apiserver with
// the chart's RBAC, two server replicas and an agent as real processes with the chart's command
// lines, the agent's CA bundle kept from the server's ConfigMap as the kubelet mounts it. With
// lifetimes of seconds (serving certificate 20 s, CA 40 s, renewal at half, the new CA 3 s in the
// bundle before it signs), the certificates rotate several times and the CA at least once while
// a pod keeps making the agent call the server: no failed call, the served certificate changed,
// no process restarted. Needs root (network namespaces, iptables); starts every part itself.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect } from "node:tls";
import { System, CONTAINER_CREDS_URL, type TestPod } from "./system.ts";
import { startWithTenants } from "./fixtures.ts";

const LIFETIMES = {
  certLifetimeSeconds: 20,
  caLifetimeSeconds: 40,
  renewAtFraction: 0.5,
  bundlePropagationSeconds: 3,
  syncIntervalSeconds: 1,
};
const RUN_MS = 55_000;

interface Served {
  leaf: string;
  issuer: string;
}

/** A new TLS connection to one replica, verified with the bundle agents have now. */
function handshake(host: string, port: number, ca: string): Promise<Served> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, ca, timeout: 3000 }, () => {
      const peer = socket.getPeerX509Certificate();
      socket.end();
      if (!peer) return reject(new Error("no peer certificate"));
      const issuer = splitPem(ca).find((c) => peer.checkIssued(new X509Certificate(c)));
      resolve({
        leaf: peer.fingerprint256,
        issuer: issuer ? new X509Certificate(issuer).fingerprint256 : "?",
      });
    });
    socket.on("error", reject);
    socket.on("timeout", () => socket.destroy(new Error("TLS handshake timed out")));
  });
}

const splitPem = (pem: string) =>
  pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];

describe(
  "e2e: self-managed TLS rotates with no failed agent call and no restart",
  { timeout: 240_000 },
  () => {
    const sys = new System({ nodes: ["node-a"], serverReplicas: 2, redis: false, selfManagedTls: LIFETIMES });
    let pod: TestPod;
    const figures: string[] = [];

    before(async () => {
      await startWithTenants(sys);
      pod = await sys.addPod("node-a", "tenant-a", "reader-1", { serviceAccount: "reader" });
    });
    after(async () => {
      for (const f of figures) console.log(`# ${f}`);
      await sys.stop();
    });

    it("rotates serving certificates and the CA while the agent keeps calling the server", async () => {
      const pids = sys.servers.map((s) => s.process.pid);
      const agentPid = sys.agents.get("node-a")!.process.pid;
      const leaves = new Set<string>();
      const issuers = new Set<string>();
      const failures: string[] = [];
      let agentCalls = 0;
      let handshakes = 0;
      const t0 = Date.now();
      const stopAt = t0 + RUN_MS;

      // the pod: container-credentials requests, each with a fresh token of its own, so that the
      // agent asks the server every time (it remembers a token it had reviewed)
      const podLoop = async () => {
        while (Date.now() < stopAt) {
          const token = await sys.podToken(pod);
          const r = await sys.curl(pod, CONTAINER_CREDS_URL, { headers: { Authorization: token } });
          agentCalls++;
          if (r.status !== 200)
            failures.push(`pod call at ${Date.now() - t0} ms: ${r.status} ${r.body.slice(0, 200)}`);
        }
      };
      // a client like the agent: new connections to each replica, verified with the bundle file
      const probeLoop = async () => {
        while (Date.now() < stopAt) {
          const ca = readFileSync(sys.caVolume!.file, "utf8");
          for (const s of sys.servers) {
            try {
              const served = await handshake(sys.net.gatewayIP, s.port, ca);
              handshakes++;
              leaves.add(served.leaf);
              issuers.add(served.issuer);
            } catch (e) {
              failures.push(`handshake with ${s.name} at ${Date.now() - t0} ms: ${(e as Error).message}`);
            }
          }
          await new Promise((r) => setTimeout(r, 250));
        }
      };
      await Promise.all([podLoop(), probeLoop()]);

      figures.push(
        `${agentCalls} agent calls and ${handshakes} handshakes in ${RUN_MS / 1000} s: ${leaves.size} serving certificates, ${issuers.size} CAs, ${sys.caVolume!.history.length} bundle versions, ${failures.length} failures`,
      );
      assert.deepEqual(failures, [], "no failed call, no failed handshake");
      assert.ok(agentCalls >= 20, `the pod kept calling (${agentCalls})`);
      assert.ok(leaves.size >= 4, `the served certificate changed (${leaves.size} seen)`);
      assert.ok(issuers.size >= 2 && !issuers.has("?"), `the CA rotated (${issuers.size} signing CAs seen)`);
      assert.deepEqual(
        sys.servers.map((s) => s.process.pid),
        pids,
        "no server restarted",
      );
      assert.ok(sys.servers.every((s) => s.process.running));
      assert.equal(sys.agents.get("node-a")!.process.pid, agentPid, "the agent did not restart");
      for (const s of sys.servers)
        assert.match(s.process.logs(), /serving certificate swapped in place/, `${s.name} swapped in place`);

      // the agent's own account: every fetch from the server succeeded
      const node = sys.agents.get("node-a")!.node;
      const metrics = await sys.net.exec(node.netns, "curl", ["-s", `http://${node.ip}:8182/metrics`]);
      const failedFetches = metrics.stdout
        .split("\n")
        .filter(
          (l) => l.startsWith("keycutter_agent_credential_fetches_total") && !l.includes('result="ok"'),
        );
      assert.deepEqual(
        failedFetches.filter((l) => !l.endsWith(" 0")),
        [],
        "no failed fetch from the server",
      );
      // and the CA key never left the Secret
      assert.doesNotMatch(sys.allLogs(), /PRIVATE KEY/);
    });
  },
);
