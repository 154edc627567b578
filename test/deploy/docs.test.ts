// Runs the commands in docs/OPERATIONS.md that are marked `<!-- test:NAME -->` (the fenced block
// right after the marker) and checks their results, and checks that every metric the docs name
// exists in the code.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer, request } from "node:https";
import type { AddressInfo } from "node:net";
import { X509Certificate } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "yaml";
import { parser as promql } from "@prometheus-io/lezer-promql";
import { AssumeRoleCommand, STSClient } from "@aws-sdk/client-sts";
import { BROKER_USER, MOTO_ACCOUNT_ID, ROOT, startMoto, type Moto } from "../harness/index.ts";
import { CONTAINER_IP } from "../../src/agent/hook/iptables.ts";
import { loadKey } from "../../src/server/cache.ts";
import { findObject, helmBinary, parseObjects, renderChart, containerArgs } from "./render.ts";
import { CONTAINER_CREDENTIALS_PATH } from "../../src/agent/container-handler.ts";

const OPERATIONS = readFileSync(join(ROOT, "docs", "OPERATIONS.md"), "utf8");

/** Every TypeScript source file under src/, concatenated. */
function allSource(): string {
  return readdirSync(join(ROOT, "src"), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts"))
    .map((e) => readFileSync(join(e.parentPath, e.name), "utf8"))
    .join("\n");
}

/** The shell block after `<!-- test:name -->`, with the docs' indentation removed. */
function block(name: string): string {
  const m = new RegExp(`<!-- test:${name} -->\\s*\\n\\s*\`\`\`sh\\n([\\s\\S]*?)\\n\\s*\`\`\``).exec(
    OPERATIONS,
  );
  assert.ok(m, `docs/OPERATIONS.md has a block marked test:${name}`);
  const lines = m[1]!.split("\n");
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => /^ */.exec(l)![0].length));
  return lines.map((l) => l.slice(indent)).join("\n");
}

function runBlock(script: string, cwd: string, env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync("bash", ["-euo", "pipefail", "-c", script], { cwd, encoding: "utf8", env });
  assert.equal(r.status, 0, `${script}\n${r.stdout}${r.stderr}`);
  return r;
}

describe("docs/OPERATIONS.md commands", () => {
  it("test:tls makes a CA and a server certificate the agent accepts at the chart's server URL", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kc-docs-tls-"));
    try {
      runBlock(block("tls"), dir);
      const url = new URL(
        flagOf(
          containerArgs(findObject(renderChart(), "DaemonSet", "keycutter-agent"), "agent"),
          "--server-url",
        ),
      );
      const cert = new X509Certificate(readFileSync(join(dir, "tls.crt")));
      const ca = new X509Certificate(readFileSync(join(dir, "ca.crt")));
      assert.equal(cert.checkHost(url.hostname), url.hostname);
      assert.ok(cert.verify(ca.publicKey));
      // a real TLS handshake, verified the way the agent verifies (its CA file, the URL's name)
      const server = createServer(
        { key: readFileSync(join(dir, "tls.key")), cert: readFileSync(join(dir, "tls.crt")) },
        (_req, res) => {
          res.end("ok");
        },
      );
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      try {
        const port = (server.address() as AddressInfo).port;
        const body = await new Promise<string>((resolve, reject) => {
          const req = request(
            {
              host: "127.0.0.1",
              port,
              path: "/",
              servername: url.hostname,
              ca: readFileSync(join(dir, "ca.crt")),
            },
            (res) => {
              let s = "";
              res.on("data", (c: Buffer) => (s += c.toString()));
              res.on("end", () => resolve(s));
            },
          );
          req.on("error", reject);
          req.end();
        });
        assert.equal(body, "ok");
        // and a wrong name is refused
        await assert.rejects(
          new Promise((resolve, reject) => {
            const req = request(
              {
                host: "127.0.0.1",
                port,
                path: "/",
                servername: "other.example",
                ca: readFileSync(join(dir, "ca.crt")),
              },
              resolve,
            );
            req.on("error", reject);
            req.end();
          }),
          /altnames|does not match/i,
        );
      } finally {
        server.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("test:cache-key makes a key the server loads (32 bytes)", () => {
    const dir = mkdtempSync(join(tmpdir(), "kc-docs-key-"));
    try {
      runBlock(block("cache-key"), dir);
      assert.equal(loadKey(join(dir, "key")).length, 32);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("test:helm-template renders the chart", () => {
    const script = block("helm-template");
    assert.match(script, /^helm template /);
    const dir = mkdtempSync(join(tmpdir(), "kc-docs-helm-"));
    try {
      const r = runBlock(script.replace(/^helm /, `"${helmBinary()}" `), ROOT, {
        ...process.env,
        HELM_CACHE_HOME: join(dir, "c"),
        HELM_CONFIG_HOME: join(dir, "f"),
        HELM_DATA_HOME: join(dir, "d"),
      });
      const objs = parseObjects(r.stdout);
      assert.ok(findObject(objs, "Deployment", "keycutter-server"));
      assert.ok(findObject(objs, "DaemonSet", "keycutter-agent"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("every repository path named in the architecture, security, operations and comparison docs exists", () => {
    const missing: string[] = [];
    for (const f of ["ARCHITECTURE.md", "SECURITY.md", "OPERATIONS.md", "COMPARISON.md"]) {
      const text = readFileSync(join(ROOT, "docs", f), "utf8");
      for (const m of text.matchAll(/`((?:src|test|deploy|scripts|docs|bin)\/[^`\s]*)`/g)) {
        const path = m[1]!.replace(/\/?\*$/, "").replace(/\*\.yaml$/, "");
        if (!existsSync(join(ROOT, path))) missing.push(`${f}: ${m[1]}`);
      }
    }
    assert.deepEqual(missing, []);
  });

  it("test:pod-container-credentials uses the audience, address and path the chart and agent use", () => {
    const m = /<!-- test:pod-container-credentials -->\s*\n\s*```yaml\n([\s\S]*?)\n```/.exec(OPERATIONS);
    assert.ok(m, "the pod example");
    const pod = parse(m[1]!) as {
      spec: {
        containers: {
          env: { name: string; value: string }[];
          volumeMounts: { name: string; mountPath: string }[];
        }[];
        volumes: {
          name: string;
          projected: { sources: { serviceAccountToken: { audience: string; path: string } }[] };
        }[];
      };
    };
    const c = pod.spec.containers[0]!;
    const env = Object.fromEntries(c.env.map((e) => [e.name, e.value]));
    const server = containerArgs(findObject(renderChart(), "Deployment", "keycutter-server"), "server");
    const sat = pod.spec.volumes[0]!.projected.sources[0]!.serviceAccountToken;
    assert.equal(sat.audience, flagOf(server, "--pod-token-audience"));
    const mount = c.volumeMounts.find((v) => v.name === pod.spec.volumes[0]!.name)!;
    assert.equal(env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, `${mount.mountPath}/${sat.path}`);
    // the address the hook redirects, and the one path the agent's container listener serves
    const url = new URL(env.AWS_CONTAINER_CREDENTIALS_FULL_URI!);
    assert.equal(url.host, CONTAINER_IP);
    assert.equal(url.pathname, CONTAINER_CREDENTIALS_PATH, "the agent serves this path");
  });

  it("the suggested alerts are valid PromQL over metrics and labels the code defines", () => {
    const section = OPERATIONS.slice(
      OPERATIONS.indexOf("Suggested alerts"),
      OPERATIONS.indexOf("Audit records"),
    );
    const exprs = [...section.matchAll(/^\|[^|]+\|\s*`([^`]+)`\s*\|$/gm)].map((m) => m[1]!);
    assert.ok(exprs.length >= 6, `found ${exprs.length} alert expressions`);
    const src = allSource();
    const labels = new Map<string, Set<string>>();
    for (const m of src.matchAll(/name: "(keycutter_[a-z_]+)",[^}]*?labelNames: \[([^\]]*)\]/g))
      labels.set(m[1]!, new Set([...m[2]!.matchAll(/"([a-z_]+)"/g)].map((x) => x[1]!)));
    for (const q of exprs) {
      let error = false;
      promql.parse(q).iterate({
        enter: (n) => {
          if (n.type.isError) error = true;
        },
      });
      assert.equal(error, false, `not valid PromQL: ${q}`);
      for (const sel of q.matchAll(/(keycutter_[a-z_]+)\{([^}]*)\}/g)) {
        const metric = sel[1]!.replace(/_(bucket|sum|count)$/, "");
        for (const l of sel[2]!.matchAll(/([a-z_]+)\s*!?=~?/g))
          assert.ok(labels.get(metric)?.has(l[1]!), `${metric} has no label ${l[1]} (${q})`);
      }
    }
  });

  it("every keycutter_* metric named in docs/ exists in the code", () => {
    const src = allSource();
    const defined = new Set([...src.matchAll(/name: "(keycutter_[a-z_]+)"/g)].map((m) => m[1]!));
    assert.ok(defined.size > 10);
    // the upgrade notes' "Metrics renamed" may name the old names, and only there
    const renamedNote = /- \*\*Metrics renamed\*\*[\s\S]*?\n- /.exec(OPERATIONS)?.[0] ?? "";
    const renamed = new Set(
      [...renamedNote.matchAll(/\b(keycutter_(?:agent|server)_[a-z_]+)/g)]
        .map((m) => m[1]!)
        .filter((n) => !defined.has(n)),
    );
    const inRenamedNote = (f: string, at: number) =>
      f === "OPERATIONS.md" &&
      at >= OPERATIONS.indexOf(renamedNote) &&
      at < OPERATIONS.indexOf(renamedNote) + renamedNote.length;
    const missing: string[] = [];
    for (const f of readdirSync(join(ROOT, "docs")).filter((x) => x.endsWith(".md"))) {
      const text = readFileSync(join(ROOT, "docs", f), "utf8");
      for (const m of text.matchAll(/\b(keycutter_(?:agent|server)_[a-z_]+)/g)) {
        const name = m[1]!.replace(/_(bucket|sum|count)$/, "");
        if (!defined.has(name) && !(renamed.has(m[1]!) && inRenamedNote(f, m.index)))
          missing.push(`${f}: ${m[1]}`);
      }
    }
    assert.deepEqual(missing, []);
  });
});

function flagOf(args: string[], name: string): string {
  const a = args.find((x) => x.startsWith(`${name}=`));
  assert.ok(a, `${name} in ${args.join(" ")}`);
  return a.slice(name.length + 1);
}

/** The JSON block after `<!-- test:name -->` in docs/OPERATIONS.md. */
function jsonBlock(name: string): { Statement: Record<string, unknown>[] } {
  const m = new RegExp(`<!-- test:${name} -->\\s*\\n\\s*\`\`\`json\\n([\\s\\S]*?)\\n\\s*\`\`\``).exec(
    OPERATIONS,
  );
  assert.ok(m, `docs/OPERATIONS.md has a JSON block marked test:${name}`);
  return JSON.parse(m[1]!) as { Statement: Record<string, unknown>[] };
}

describe(
  "docs/OPERATIONS.md IAM policies, in moto's IAM and STS with authorization on",
  { timeout: 120_000 },
  () => {
    let moto: Moto;
    let server: { accessKeyId: string; secretAccessKey: string };
    const tenantRole = `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-a-reader`;
    // moto's broker is an IAM user where the docs name the server's IRSA role
    const serverPrincipal = `arn:aws:iam::${MOTO_ACCOUNT_ID}:user/${BROKER_USER}`;
    const withPrincipal = (doc: object) =>
      JSON.parse(
        JSON.stringify(doc).replaceAll(
          `arn:aws:iam::${MOTO_ACCOUNT_ID}:role/keycutter-server`,
          serverPrincipal,
        ),
      ) as object;

    before(async () => {
      moto = await startMoto();
      const boundary = jsonBlock("iam-boundary");
      assert.ok(boundary.Statement.some((s) => s.Effect === "Deny"));
      await moto.createRole("tenant-a-reader", boundary, withPrincipal(jsonBlock("iam-tenant-trust")));
      await moto.createRole("other-team", boundary, withPrincipal(jsonBlock("iam-tenant-trust")));
      await moto.createRole("tenant-z-other", boundary, jsonBlock("iam-tenant-trust"));
      server = await moto.createUser(BROKER_USER, jsonBlock("iam-server-permissions"));
      await moto.enableAuth();
    });
    after(async () => moto?.stop());

    const assume = (roleArn: string, namespace: string, sourceIdentity = "tenant-a.reader") =>
      new STSClient({ endpoint: moto.endpoint, region: moto.region, credentials: server }).send(
        new AssumeRoleCommand({
          RoleArn: roleArn,
          RoleSessionName: "tenant-a.reader",
          SourceIdentity: sourceIdentity,
          Tags: [
            { Key: "kubernetes-namespace", Value: namespace },
            { Key: "kubernetes-pod-name", Value: "reader" },
          ],
          DurationSeconds: 900,
        }),
      );

    it("the server's permission policy and the tenant role's trust policy let it assume the role with tags and a source identity", async () => {
      const res = await assume(tenantRole, "tenant-a");
      assert.match(res.Credentials!.AccessKeyId!, /^ASIA/);
      // (moto does not echo SourceIdentity; STS accepted the request that carries it)
    });

    it("the trust policy is what lets the server in: a role trusting another principal refuses it", async () => {
      await assert.rejects(
        assume(`arn:aws:iam::${MOTO_ACCOUNT_ID}:role/tenant-z-other`, "tenant-a"),
        /AccessDenied|not authorized/,
      );
    });

    it("the server's permission policy covers tenant-* roles only", async () => {
      await assert.rejects(
        assume(`arn:aws:iam::${MOTO_ACCOUNT_ID}:role/other-team`, "tenant-a"),
        /AccessDenied|not authorized/,
      );
    });
  },
);
