// The chart's own command lines, run on the image's contents (the compiled build started through
// bin/keycutter.js, as the image's entrypoint does): the server and the agent get exactly the args
// and environment the chart renders (Kubernetes' $(VAR) expansion done as the kubelet does it),
// under the chart's RBAC and service accounts, with the agent's token minted with the audience
// the chart's projected volume asks for. Only what a real cluster provides and this machine does
// not is substituted, each one named below: file paths of mounted tokens, the CA bundle ConfigMap
// (kept in a file as the kubelet does) and the host's CNI result cache, the
// in-cluster kubeconfig (--kubeconfig appended), the Service DNS name (the URL's host becomes the
// address the server is reachable at), and the image's iptables PATH directory. Then a pod behind
// the hook reads its tenant's S3 object with the unmodified AWS CLI, and the chart's uninstall
// command removes the hook.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BROKER_USER,
  ConfigMapVolume,
  Kubelet,
  ManagedProcess,
  MOTO_ACCOUNT_ID,
  NODE,
  PodNetwork,
  VENV_BIN,
  applyObjects,
  buildImageApp,
  freePort,
  startCluster,
  startMoto,
  waitFor,
  type Cluster,
  type Moto,
  type NodeNet,
} from "../harness/index.ts";
import { accessPolicy, roleAllowance } from "../e2e/fixtures.ts";
import { chartRbacObjects, findObject, isHook, renderChart, type K8sObject } from "./render.ts";

const NS = "keycutter-system";
const ROLE = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-a-reader`;
const BUCKET = "tenant-a-data";

interface Container {
  name: string;
  args: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
}
const containerOf = (o: K8sObject, name: string): Container => {
  const spec = (
    o as unknown as {
      spec: { template: { spec: { containers: Container[]; initContainers?: Container[] } } };
    }
  ).spec.template.spec;
  return [...(spec.initContainers ?? []), ...spec.containers].find((c) => c.name === name)!;
};

/** Kubernetes' $(VAR) expansion in args, from the container's resolved environment. */
const expand = (args: string[], env: Record<string, string>) =>
  args.map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v: string) => env[v] ?? m));

describe("the chart's command lines run the real system", { timeout: 300_000 }, () => {
  let cluster: Cluster;
  let moto: Moto;
  let net: PodNetwork;
  let kubelet: Kubelet;
  let caVolume: ConfigMapVolume;
  let dir: string;
  let cniStateDir: string;
  let objs: K8sObject[];
  let server: ManagedProcess;
  let agent: ManagedProcess;
  let node: NodeNet;
  let serverOps: number;
  let iptablesDirs: string;
  /** The image's entrypoint script, running the compiled build. */
  let keycutterBin: string;

  before(async () => {
    [cluster, moto, net] = await Promise.all([startCluster(), startMoto(), PodNetwork.create()]);
    kubelet = new Kubelet(cluster.kc);
    dir = mkdtempSync(join(tmpdir(), "kc-chart-system-"));
    // the image's /app: the compiled build (npm run build = tsc), bin/, package.json
    const app = join(dir, "app");
    keycutterBin = buildImageApp(app);
    const apiPort = await freePort("0.0.0.0");
    serverOps = await freePort("0.0.0.0");
    objs = renderChart(
      {
        clusterName: "chart-test",
        aws: { region: moto.region, stsEndpoint: moto.endpoint },
        // the chart's default TLS (self-managed); the address the server is reached at here, as a
        // value users set for any extra address
        server: { port: apiPort, opsPort: serverOps, tls: { extraIpAddresses: [net.gatewayIP] } },
        agent: { hook: { podInterfaces: ["cbr0"] } },
      },
      { namespace: NS },
    );

    // the chart's CRDs (templates, as helm install and upgrade apply them) and RBAC (with its
    // ServiceAccounts)
    await applyObjects(cluster.kc, objs.filter((o) => o.kind === "CustomResourceDefinition") as never);
    await kubelet.ensureNamespace(NS);
    await applyObjects(cluster.kc, chartRbacObjects(NS) as never);

    // AWS: the broker user (the server's own identity), a tenant role and bucket
    const broker = await moto.createUser(BROKER_USER, {
      Version: "2012-10-17",
      Statement: [
        {
          Effect: "Allow",
          Action: ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
          Resource: "*",
        },
      ],
    });
    await moto.createBucket(BUCKET, { "tenant-a/report.csv": "a,1\n" });
    await moto.createRole("tenant-a-reader", {
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Action: ["s3:GetObject"], Resource: [`arn:aws:s3:::${BUCKET}/*`] },
        { Effect: "Allow", Action: ["s3:ListBucket"], Resource: [`arn:aws:s3:::${BUCKET}`] },
      ],
    });
    await moto.enableAuth();

    // the agents' CA bundle: the ConfigMap the server publishes, in a file as the kubelet mounts it
    const svcHost = new URL(
      argOf(containerOf(findObject(objs, "DaemonSet", "keycutter-agent"), "agent").args, "--server-url"),
    ).hostname;
    caVolume = new ConfigMapVolume(
      cluster.kc,
      { namespace: NS, name: "keycutter-server-ca", key: "ca.crt" },
      join(dir, "server-ca", "ca.crt"),
    ).start();

    // ---- the server, as the Deployment runs it
    const dep = findObject(objs, "Deployment", "keycutter-server");
    const sc = containerOf(dep, "server");
    const serverToken = await kubelet.requestToken(NS, "keycutter-server", {
      audiences: [cluster.issuer],
      expirationSeconds: 3600,
    });
    const senv = { POD_NAME: "keycutter-server-0", POD_NAMESPACE: NS };
    const sargs = expand(sc.args, senv);
    server = new ManagedProcess(
      "server",
      NODE,
      [keycutterBin, ...sargs, `--kubeconfig=${cluster.kubeconfigFor("127.0.0.1", serverToken)}`],
      {
        env: {
          ...process.env,
          ...senv,
          AWS_ACCESS_KEY_ID: broker.accessKeyId,
          AWS_SECRET_ACCESS_KEY: broker.secretAccessKey,
        },
      },
    );
    await waitFor(
      "server ready",
      async () => {
        if (!server.running) throw new Error(`server exited:\n${server.logs()}`);
        return (await fetch(`http://127.0.0.1:${serverOps}/readyz`).catch(() => undefined))?.ok ?? false;
      },
      { timeoutMs: 30_000, onTimeout: () => server.logs() },
    );

    // ---- a node, and the agent as the DaemonSet runs it (hostNetwork = the node's namespace)
    // the runtime's CNI result cache the chart mounts from the host (agent.cniStateDir), here one
    // of this test's own that the harness writes as the runtime's libcni would
    cniStateDir = join(dir, "cni-results");
    node = await net.addNode("node-a", { cniStateDir });
    await kubelet.createNode("node-a", node.ip, node.podCIDR);
    const ds = findObject(objs, "DaemonSet", "keycutter-agent");
    const agentPod = await kubelet.createPod({
      namespace: NS,
      name: "keycutter-agent-node-a",
      nodeName: "node-a",
      serviceAccountName: "keycutter-agent",
      hostNetwork: true,
      podIP: node.ip,
      hostIP: node.ip,
    });
    const vol = (
      ds as unknown as {
        spec: {
          template: {
            spec: {
              volumes: {
                name: string;
                projected?: { sources: { serviceAccountToken?: { audience: string; path: string } }[] };
              }[];
            };
          };
        };
      }
    ).spec.template.spec.volumes.find((v) => v.name === "keycutter-token")!;
    const audience = vol.projected!.sources[0]!.serviceAccountToken!.audience;
    const bound = { podName: agentPod.metadata!.name!, podUID: agentPod.metadata!.uid! };
    const tokenFile = join(dir, "agent-token");
    writeFileSync(
      tokenFile,
      await kubelet.requestToken(NS, "keycutter-agent", { ...bound, audiences: [audience] }),
    );
    const apiToken = await kubelet.requestToken(NS, "keycutter-agent", {
      ...bound,
      audiences: [cluster.issuer],
    });

    // the image's iptables directories (deploy/Dockerfile), pointing at this machine's binaries
    iptablesDirs = join(dir, "lib");
    for (const mode of ["nft", "legacy"]) {
      mkdirSync(join(iptablesDirs, `iptables-${mode}`), { recursive: true });
      symlinkSync(`/usr/sbin/iptables-${mode}`, join(iptablesDirs, `iptables-${mode}`, "iptables"));
    }
    const ac = containerOf(ds, "agent");
    const aenv = containerEnv(ac, { NODE_NAME: "node-a", NODE_IP: node.ip });
    const aargs = expand(ac.args, aenv).map((a) =>
      a
        .replace("/var/run/secrets/keycutter/token", tokenFile)
        .replace("/etc/keycutter/ca/ca.crt", caVolume.file)
        .replace("/var/lib/cni/results", cniStateDir)
        .replace(`//${svcHost}:`, `//${net.gatewayIP}:`),
    );
    agent = net.spawn(
      node.netns,
      NODE,
      [keycutterBin, ...aargs, `--kubeconfig=${cluster.kubeconfigFor(net.gatewayIP, apiToken)}`],
      {
        name: "agent-node-a",
        env: { ...process.env, ...aenv },
      },
    );
    const opsPort = argOf(ac.args, "--ops-listen").split(":")[1];
    await waitFor(
      "agent ready",
      async () => {
        if (!agent.running) throw new Error(`agent exited:\n${agent.logs()}`);
        const r = await net.exec(node.netns, "curl", [
          "-s",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          `http://${node.ip}:${opsPort}/readyz`,
        ]);
        return r.stdout === "200";
      },
      { timeoutMs: 30_000, onTimeout: () => agent.logs() },
    );

    // /readyz can turn 200 while the hook's iptables commands are still running (reported)
    await agent.waitForLine(/iptables hook installed/, 30_000);

    // ---- the tenant's policies
    await kubelet.ensureNamespace("tenant-a");
    await applyObjects(cluster.kc, [
      roleAllowance(),
      accessPolicy("tenant-a", "readers", ROLE, BUCKET),
    ] as never);
  });

  after(async () => {
    caVolume?.stop();
    await agent?.stop();
    await server?.stop();
    await net?.destroy();
    await moto?.stop();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The container's env as the kubelet resolves it: values, fieldRefs given, $(VAR) inside values. */
  function containerEnv(c: Container, fields: Record<string, string>): Record<string, string> {
    const out: Record<string, string> = {};
    for (const e of c.env ?? []) {
      if (e.value !== undefined) out[e.name] = e.value;
      else if (fields[e.name] !== undefined) out[e.name] = fields[e.name]!;
    }
    // the image's iptables directories are under /usr/local/lib/keycutter; here under dir/lib
    if (out.PATH) out.PATH = out.PATH.replace("/usr/local/lib/keycutter", iptablesDirs);
    return out;
  }

  it("the agent installed the hook with the chart's chain, for pod traffic on cbr0", async () => {
    const r = await net.exec(node.netns, "iptables", ["-t", "nat", "-S", "KEYCUTTER"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /-A KEYCUTTER -d 169\.254\.169\.254\/32 -i cbr0 .* --to-destination [0-9.]+:8180/);
    assert.match(r.stdout, /169\.254\.170\.23\/32 -i cbr0 .* --to-destination [0-9.]+:8181/);
  });

  it("a pod with a policy reads its tenant's object with the AWS CLI through 169.254.169.254", async () => {
    const podNet = await net.addPod("node-a", "tenant-a-reader", undefined, {
      namespace: "tenant-a",
      name: "reader",
    });
    await kubelet.createPod({
      namespace: "tenant-a",
      name: "reader",
      nodeName: "node-a",
      serviceAccountName: "reader",
      podIP: podNet.ip,
      hostIP: node.ip,
    });
    const env = {
      PATH: `${VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin`,
      HOME: dir,
      AWS_DEFAULT_REGION: moto.region,
      AWS_ENDPOINT_URL: moto.endpointFor(net.gatewayIP),
      AWS_CONFIG_FILE: "/dev/null",
      AWS_SHARED_CREDENTIALS_FILE: "/dev/null",
    };
    const r = await net.exec(
      podNet.netns,
      join(VENV_BIN, "aws"),
      ["s3", "cp", `s3://${BUCKET}/tenant-a/report.csv`, "-"],
      {
        env,
        timeoutMs: 60_000,
      },
    );
    assert.equal(
      r.code,
      0,
      `${r.stderr}\n--- agent\n${agent.logs().slice(-3000)}\n--- server\n${server.logs().slice(-3000)}`,
    );
    assert.equal(r.stdout, "a,1\n");
    // the server audited the issuance (its audit log is stdout, as the chart sets it)
    assert.match(server.logs(), /"decision":"allowed"/);
  });

  it("a pod without a policy gets a 404, not credentials", async () => {
    const podNet = await net.addPod("node-a", "tenant-a-nobody", undefined, {
      namespace: "tenant-a",
      name: "nobody",
    });
    await kubelet.createPod({
      namespace: "tenant-a",
      name: "nobody",
      nodeName: "node-a",
      serviceAccountName: "nobody",
      podIP: podNet.ip,
      hostIP: node.ip,
    });
    // IMDSv2, which the chart requires by default
    const token = await net.exec(podNet.netns, "curl", [
      "-s",
      "-X",
      "PUT",
      "-H",
      "X-aws-ec2-metadata-token-ttl-seconds: 60",
      "http://169.254.169.254/latest/api/token",
    ]);
    assert.equal(token.code, 0, token.stderr);
    const get = (headers: string[]) =>
      net.exec(podNet.netns, "curl", [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        ...headers,
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
      ]);
    assert.equal((await get(["-H", `X-aws-ec2-metadata-token: ${token.stdout}`])).stdout, "404");
    assert.equal((await get([])).stdout, "401", "IMDSv1 refused");
  });

  it("the chart's CRDs, as applied, enforce their CEL rules", async () => {
    const reserved = accessPolicy("tenant-a", "reserved-tag", "arn:aws:iam::123456789012:role/x", "b") as {
      spec: Record<string, unknown>;
    };
    reserved.spec.sessionTags = { "kubernetes-namespace": "other" };
    await assert.rejects(applyObjects(cluster.kc, [reserved as never]), /tags are reserved/);
    const allowStatement = roleAllowance() as { metadata: { name: string }; spec: Record<string, unknown> };
    allowStatement.metadata.name = "allow-as-mandatory";
    allowStatement.spec.denyStatements = [{ Effect: "Allow", Action: "s3:*", Resource: "*" }];
    await assert.rejects(applyObjects(cluster.kc, [allowStatement as never]), /only Deny statements/);

    // the 2008-10-17 policy language (${aws:...} read as literal text) is refused by the schema
    const oldVersion = accessPolicy("tenant-a", "old-version", ROLE, BUCKET) as {
      spec: { sessionPolicy: { Version: string } };
    };
    oldVersion.spec.sessionPolicy.Version = "2008-10-17";
    await assert.rejects(applyObjects(cluster.kc, [oldVersion as never]), /Unsupported value: "2008-10-17"/);

    // session tag key patterns: ${namespace} is the only variable, tag key characters plus * and ?
    const tagKeys = (name: string, sessionTagKeys: string[]) => {
      const a = roleAllowance() as { metadata: { name: string }; spec: Record<string, unknown> };
      a.metadata.name = name;
      a.spec.namespaces = ["tag-key-test"]; // not tenant-a: every allowance that applies must permit a key
      a.spec.sessionTagKeys = sessionTagKeys;
      return a as never;
    };
    for (const bad of ["${pod.labels['team']}-*", "team{x}", "${namespace"]) {
      await assert.rejects(
        applyObjects(cluster.kc, [tagKeys("bad-tag-keys", [bad])]),
        /the only variable allowed is \$\{namespace\}/,
        bad,
      );
    }
    await applyObjects(cluster.kc, [
      tagKeys("good-tag-keys", ["${namespace}-*", "cost-center", "app:role/x?"]),
    ]);
  });

  it("helm test: the chart's test pod command (keycutter doctor) passes on the installed server and agent, and fails without the agent", async () => {
    const testPod = findObject(objs, "Pod", "keycutter-test") as unknown as {
      spec: { containers: Container[] };
    };
    const c = testPod.spec.containers[0]!;
    const podNet = await net.addPod("node-a", "helm-test", undefined, {
      namespace: NS,
      name: "keycutter-test",
    });
    const svcOps = new URL(argOf(c.args, "--server-ops-url")).host;
    // the kubelet's part: $(NODE_IP) from status.hostIP; the Service's name: the server's address here
    const args = expand(c.args, { NODE_IP: node.ip }).map((a) =>
      a.replace(`//${svcOps}`, `//${net.gatewayIP}:${serverOps}`),
    );
    const run = () => net.exec(podNet.netns, NODE, [keycutterBin, ...args], { env: { ...process.env } });
    const ok = await run();
    assert.equal(ok.code, 0, `${ok.stdout}${ok.stderr}`);
    assert.match(ok.stdout, /agent.*ready/);
    assert.match(ok.stdout, /server.*ready/);
    // the same check with the agent's ops port closed (nothing listening): the test fails, exit 3
    const down = await net.exec(
      podNet.netns,
      NODE,
      [keycutterBin, ...args.map((a) => a.replace(/^(--agent-ops-url=http:\/\/[^:]+):\d+$/, "$1:1"))],
      { env: { ...process.env } },
    );
    assert.equal(down.code, 3, `${down.stdout}${down.stderr}`);
    assert.match(down.stdout, /agent.*not reachable/);
  });

  it("uninstall: the chart's cleanup command removes every rule once the agent is gone", async () => {
    await agent.stop();
    // the agent keeps the hook when it stops (fail closed)
    assert.equal((await net.exec(node.netns, "iptables", ["-t", "nat", "-S", "KEYCUTTER"])).code, 0);
    const cleanup = findObject(objs.filter(isHook), "DaemonSet", "keycutter-hook-cleanup");
    const c = containerOf(cleanup, "uninstall-hook");
    const env = containerEnv(c, {});
    const r = await net.exec(node.netns, NODE, [keycutterBin, ...c.args], {
      env: { ...process.env, ...env },
    });
    assert.equal(r.code, 0, r.stderr);
    for (const [table, chain] of [
      ["nat", "KEYCUTTER"],
      ["filter", "KEYCUTTER-FC"],
    ]) {
      const s = await net.exec(node.netns, "iptables", ["-t", table!, "-S", chain!]);
      assert.notEqual(s.code, 0, `${table}/${chain} still exists`);
    }
    const all = await net.exec(node.netns, "iptables-save", []);
    assert.doesNotMatch(all.stdout, /keycutter|KEYCUTTER/);
  });
});

function argOf(args: string[], name: string): string {
  const a = args.find((x) => x.startsWith(`${name}=`));
  if (!a) throw new Error(`${name} missing in ${args.join(" ")}`);
  return a.slice(name.length + 1);
}
