// deploy/Dockerfile: linted with hadolint (scripts/setup-deploy-tools.sh installs it), its key
// properties checked, and the image's contents rebuilt the way the Dockerfile does (tsc → dist,
// bin/, package.json) to prove that every command line the chart runs is accepted by exactly
// that build, that dist needs only production dependencies, and that the hook works with the
// capabilities the chart grants (NET_ADMIN for iptables-nft, plus NET_RAW for legacy).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { CACHE, NODE, ROOT, buildImageApp } from "../harness/index.ts";
import { containerArgs, findObject, renderChart, type K8sObject } from "./render.ts";

const DOCKERFILE = join(ROOT, "deploy", "Dockerfile");
const HADOLINT = join(CACHE, "venv-deploy-tools", "bin", "hadolint");

interface Instruction {
  cmd: string;
  args: string;
  stage: number;
}

/** Instructions with line continuations joined and comments dropped. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let stage = -1;
  let cur = "";
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (cur === "" && /^\s*(#|$)/.test(line)) continue;
    if (/^\s*#/.test(line)) continue;
    cur += (cur ? " " : "") + line.replace(/\\$/, "").trim();
    if (line.endsWith("\\")) continue;
    const m = /^(\w+)\s+(.*)$/.exec(cur);
    cur = "";
    if (!m) continue;
    const cmd = m[1]!.toUpperCase();
    if (cmd === "FROM") stage++;
    out.push({ cmd, args: m[2]!, stage });
  }
  return out;
}

function runHadolint(file: string): { code: number; out: string } {
  if (!existsSync(HADOLINT)) throw new Error(`${HADOLINT} missing: run scripts/setup.sh`);
  const r = spawnSync(HADOLINT, ["--no-color", file], { encoding: "utf8" });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe("deploy/Dockerfile", () => {
  const text = readFileSync(DOCKERFILE, "utf8");
  const ins = parseDockerfile(text);
  const last = Math.max(...ins.map((i) => i.stage));
  const runtime = ins.filter((i) => i.stage === last);

  it("passes hadolint", () => {
    const r = runHadolint(DOCKERFILE);
    assert.equal(r.code, 0, r.out);
  });

  it("hadolint is really linting (a bad Dockerfile fails)", () => {
    const dir = mkdtempSync(join(tmpdir(), "kc-hadolint-"));
    try {
      const bad = join(dir, "Dockerfile");
      writeFileSync(bad, "FROM node:latest\nRUN apt-get install curl\nCMD node app.js\n");
      const r = runHadolint(bad);
      assert.notEqual(r.code, 0);
      assert.match(r.out, /DL3007/); // latest tag
      assert.match(r.out, /DL3025/); // CMD not in JSON form
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("is multi-stage: tsc build via npm run build, production deps, Node 24 slim runtime", () => {
    assert.ok(last >= 2, "three stages");
    const arg = /ARG NODE_IMAGE=(\S+)/.exec(text);
    assert.match(arg?.[1] ?? "", /^node:24(\.\d+)*-[a-z]+-slim$/);
    for (const i of ins.filter((x) => x.cmd === "FROM")) assert.match(i.args, /^\$\{NODE_IMAGE\} AS \w+$/);
    assert.ok(ins.some((i) => i.stage < last && i.cmd === "RUN" && i.args.includes("npm run build")));
    assert.ok(ins.some((i) => i.stage < last && i.cmd === "RUN" && /npm ci --omit=dev/.test(i.args)));
  });

  it("the runtime stage copies only dist, production node_modules, package.json and bin", () => {
    const copies = runtime.filter((i) => i.cmd === "COPY").map((i) => i.args);
    assert.deepEqual(copies, [
      "--from=deps /src/node_modules ./node_modules",
      "--from=build /src/dist ./dist",
      "package.json ./",
      "bin ./bin",
    ]);
    assert.equal(runtime.filter((i) => i.cmd === "ADD").length, 0);
  });

  it("installs iptables and conntrack for the agent's hook, with the PATH directories the chart uses", () => {
    const run = runtime
      .filter((i) => i.cmd === "RUN")
      .map((i) => i.args)
      .join(" ");
    assert.match(run, /apt-get install -y --no-install-recommends iptables conntrack/);
    const objs = renderChart();
    const agentEnv = (
      findObject(objs, "DaemonSet", "keycutter-agent") as unknown as {
        spec: { template: { spec: { containers: { env: { name: string; value?: string }[] }[] } } };
      }
    ).spec.template.spec.containers[0]!.env;
    const dir = agentEnv.find((e) => e.name === "PATH")!.value!.split(":")[0]!;
    assert.ok(run.includes(`ln -s /usr/sbin/iptables-nft ${dir}/iptables`), dir);
    assert.ok(run.includes(`ln -s /usr/sbin/ip6tables-nft ${dir}/ip6tables`), dir);
    // a hand-over moves the DNAT in one iptables-restore transaction, of the same backend
    assert.ok(run.includes(`ln -s /usr/sbin/iptables-nft-restore ${dir}/iptables-restore`), dir);
    const legacy = renderChart({ agent: { hook: { iptablesMode: "legacy" } } });
    const ldir = (
      findObject(legacy, "DaemonSet", "keycutter-agent") as unknown as {
        spec: { template: { spec: { containers: { env: { name: string; value?: string }[] }[] } } };
      }
    ).spec.template.spec.containers[0]!.env.find((e) => e.name === "PATH")!.value!.split(":")[0]!;
    assert.ok(run.includes(`ln -s /usr/sbin/iptables-legacy ${ldir}/iptables`), ldir);
    assert.ok(run.includes(`ln -s /usr/sbin/ip6tables-legacy ${ldir}/ip6tables`), ldir);
    assert.ok(run.includes(`ln -s /usr/sbin/iptables-legacy-restore ${ldir}/iptables-restore`), ldir);
  });

  it("runs as a non-root user (the uid the chart's server runs as) with node bin/keycutter.js", () => {
    const user = runtime.filter((i) => i.cmd === "USER").at(-1)?.args;
    assert.equal(user, "10001:10001");
    assert.match(text, /useradd --system --uid 10001/);
    const dep = findObject(renderChart(), "Deployment", "keycutter-server") as unknown as {
      spec: { template: { spec: { securityContext: { runAsUser: number } } } };
    };
    assert.equal(dep.spec.template.spec.securityContext.runAsUser, 10001);
    const ep = runtime.find((i) => i.cmd === "ENTRYPOINT")?.args;
    assert.deepEqual(JSON.parse(ep ?? "null"), ["node", "/app/bin/keycutter.js"]);
    assert.ok(runtime.some((i) => i.cmd === "WORKDIR" && i.args === "/app"));
  });

  it(".dockerignore lets in exactly what the Dockerfile copies", () => {
    const ignore = readFileSync(join(ROOT, ".dockerignore"), "utf8")
      .split("\n")
      .filter((l) => l && !l.startsWith("#"));
    assert.equal(ignore[0], "*");
    const allowed = ignore
      .filter((l) => l.startsWith("!"))
      .map((l) => l.slice(1).replace(/\/$/, ""))
      .sort();
    const sources = ins
      .filter((i) => i.cmd === "COPY" && !i.args.startsWith("--from"))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1))
      .map((s) => s.replace(/\/$/, ""));
    assert.deepEqual([...new Set(sources)].sort(), allowed);
  });
});

describe("the image's contents run what the chart runs", () => {
  let app: string;

  before(() => {
    // what the Dockerfile's build stage does (npm run build = tsc -p tsconfig.build.json), into
    // a scratch /app; node_modules is linked (dependencies are checked separately below)
    app = mkdtempSync(join(tmpdir(), "kc-image-"));
    buildImageApp(app);
  });
  after(() => {
    if (app) rmSync(app, { recursive: true, force: true });
  });

  const keycutter = (args: string[], extra: { env?: NodeJS.ProcessEnv } = {}) =>
    spawnSync(NODE, [join(app, "bin", "keycutter.js"), ...args], {
      encoding: "utf8",
      env: extra.env ?? process.env,
    });

  it("dist/ imports only production dependencies and node: built-ins", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
      dependencies: Record<string, string>;
    };
    const deps = new Set(Object.keys(pkg.dependencies));
    const bad: string[] = [];
    const walk = (d: string): void => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith(".js")) {
          const src = readFileSync(p, "utf8");
          for (const m of src.matchAll(/(?:from\s+|import\s*\(\s*|^import\s+)["']([^"'.][^"']*)["']/gm)) {
            const spec = m[1]!;
            if (spec.startsWith("node:")) continue;
            const name = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]!;
            if (!deps.has(name)) bad.push(`${relative(app, p)}: ${spec}`);
          }
          // the compiled code must not reach back into .ts sources
          if (/from\s+["'][^"']+\.ts["']/.test(src)) bad.push(`${relative(app, p)}: imports .ts`);
        }
      }
    };
    walk(join(app, "dist"));
    assert.deepEqual(bad, []);
  });

  it("bin/keycutter.js runs the compiled CLI", () => {
    const r = keycutter(["--version"]);
    assert.equal(r.status, 0, r.stderr);
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
    assert.equal(r.stdout.trim(), pkg.version);
    assert.ok(existsSync(join(app, "dist", "cli", "main.js")));
  });

  it("bin/kubectl-keycutter runs the compiled CLI as kubectl runs a plugin (from PATH, executable)", () => {
    const r = spawnSync(join(app, "bin", "kubectl-keycutter"), ["--help"], {
      encoding: "utf8",
      env: { ...process.env, PATH: `${dirname(NODE)}:${process.env.PATH ?? ""}` },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Usage: kubectl keycutter /);
    assert.match(r.stdout, /\bdoctor\b/);
  });

  it("the compiled commands' lazy imports resolve in the build (server, explain, policy validate)", () => {
    for (const args of [
      ["server", "--kubeconfig", "/nonexistent/kubeconfig"],
      ["explain", "ns/pod", "--kubeconfig", "/nonexistent/kubeconfig"],
      ["policy", "validate", "/nonexistent/policy.yaml"],
      ["policy", "validate", "--server", "--kubeconfig", "/nonexistent/kubeconfig", "x.yaml"],
      [
        "doctor",
        "--no-hook",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--agent-ops-url",
        "http://127.0.0.1:9/nonexistent/",
      ],
    ]) {
      const r = keycutter(args);
      const out = `${r.stdout}${r.stderr}`;
      assert.doesNotMatch(out, /ERR_MODULE_NOT_FOUND|Cannot find module/, `${args.join(" ")}: ${out}`);
      // each got past its import and failed on the missing file, as it should
      assert.match(out, /\/nonexistent\//, `${args.join(" ")}: ${out}`);
    }
  });

  it("every flag the chart passes (all profiles) is a flag of that command in this build", () => {
    const profiles = readdirSync(join(ROOT, "test", "deploy", "profiles")).map((f) =>
      join(ROOT, "test", "deploy", "profiles", f),
    );
    const commands = new Map<string, Set<string>>();
    const add = (args: string[]) => {
      const words = args.filter((a) => !a.startsWith("-"));
      const cmd = words.slice(0, args[0] === "hook" ? 2 : 1).join(" ");
      const set = commands.get(cmd) ?? new Set<string>();
      for (const a of args) if (a.startsWith("--")) set.add(a.split("=")[0]!);
      commands.set(cmd, set);
    };
    for (const p of profiles) {
      const objs: K8sObject[] = renderChart({}, { valuesFiles: [p] });
      const byKind = (kind: string, name: string) =>
        objs.find((o) => o.kind === kind && o.metadata.name.endsWith(name));
      const dep = byKind("Deployment", "-server");
      const ds = byKind("DaemonSet", "-agent");
      const cleanup = byKind("DaemonSet", "-hook-cleanup");
      add(containerArgs(dep!, "server"));
      add(containerArgs(ds!, "agent"));
      if (cleanup) add(containerArgs(cleanup, "uninstall-hook"));
    }
    assert.deepEqual([...commands.keys()].sort(), ["agent", "hook uninstall", "server"]);
    const missing: string[] = [];
    for (const [cmd, flags] of commands) {
      const r = keycutter([...cmd.split(" "), "--help"]);
      assert.equal(r.status, 0, `${cmd} --help: ${r.stderr}`);
      for (const f of flags)
        if (!new RegExp(`(^|[\\s,])${f.replace(/[-]/g, "\\-")}([\\s,=<]|$)`, "m").test(r.stdout))
          missing.push(`${cmd} ${f}`);
    }
    assert.deepEqual(missing, [], "flags the chart passes but the CLI does not know");
  });

  it("the hook works with NET_ADMIN only (iptables-nft) and needs NET_RAW too with iptables-legacy", () => {
    const ns = `kcimg${process.pid}`;
    // the image's PATH layout (see the Dockerfile), pointing at this machine's binaries
    const lib = join(app, "lib");
    for (const mode of ["nft", "legacy"]) {
      mkdirSync(join(lib, `iptables-${mode}`), { recursive: true });
      symlinkSync(`/usr/sbin/iptables-${mode}`, join(lib, `iptables-${mode}`, "iptables"));
      symlinkSync(`/usr/sbin/ip6tables-${mode}`, join(lib, `iptables-${mode}`, "ip6tables"));
      symlinkSync(`/usr/sbin/iptables-${mode}-restore`, join(lib, `iptables-${mode}`, "iptables-restore"));
    }
    execFileSync("ip", ["netns", "add", ns]);
    try {
      const hook = (mode: string, caps: string, sub: string) => {
        const env = {
          ...process.env,
          PATH: `${join(lib, `iptables-${mode}`)}:/usr/sbin:/usr/bin:/sbin:/bin`,
        };
        return spawnSync(
          "ip",
          [
            "netns",
            "exec",
            ns,
            "setpriv",
            `--bounding-set=-all,${caps}`,
            "--inh-caps=-all",
            NODE,
            join(app, "bin", "keycutter.js"),
            "hook",
            sub,
            "--hook-chain=KCIMG",
            ...(sub === "uninstall" ? [] : ["--hook-pod-interface=veth+", "--hook-agent-ip=10.0.0.1"]),
          ],
          { encoding: "utf8", env },
        );
      };
      // IPv4 and IPv6 rules of one backend (the hook's IPv6 fail-closed chain included)
      const rulesOf = (mode: string) =>
        execFileSync("ip", ["netns", "exec", ns, `iptables-${mode}-save`], { encoding: "utf8" }) +
        execFileSync("ip", ["netns", "exec", ns, `ip6tables-${mode}-save`], { encoding: "utf8" });
      const v6Of = (mode: string) =>
        execFileSync("ip", ["netns", "exec", ns, `ip6tables-${mode}-save`], { encoding: "utf8" });

      for (const sub of ["init", "check", "uninstall"]) {
        const r = hook("nft", "+net_admin", sub);
        assert.equal(r.status, 0, `nft ${sub} with NET_ADMIN: ${r.stdout}${r.stderr}`);
        if (sub === "check") assert.match(v6Of("nft"), /-A KCIMG-FC -d fd00:ec2::254\/128/);
      }
      assert.doesNotMatch(rulesOf("nft"), /KCIMG/, "uninstall removed everything");

      const denied = hook("legacy", "+net_admin", "init");
      assert.notEqual(denied.status, 0, "legacy iptables without NET_RAW fails");
      for (const sub of ["init", "check", "uninstall"]) {
        const r = hook("legacy", "+net_admin,+net_raw", sub);
        assert.equal(r.status, 0, `legacy ${sub} with NET_ADMIN+NET_RAW: ${r.stdout}${r.stderr}`);
        if (sub === "check") assert.match(v6Of("legacy"), /-A KCIMG-FC -d fd00:ec2::254\/128/);
      }
      assert.doesNotMatch(rulesOf("legacy"), /KCIMG/);
    } finally {
      spawnSync("ip", ["netns", "del", ns]);
    }
  });
});
