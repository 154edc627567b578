// The monitoring pack (issue 17, item 5): the alerts are checked and unit-tested by Prometheus's
// own promtool (built from the Go module proxy by scripts/setup-deploy-tools.sh), the docs list
// exactly those alerts, the chart renders them as a PrometheusRule and the dashboard as a
// ConfigMap only when asked, and every query of the dashboard and the alerts is valid PromQL
// (Prometheus's own lezer grammar) over metrics and labels the components' registries export.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { parser as promql } from "@prometheus-io/lezer-promql";
import type { Registry } from "prom-client";
import { CACHE, ROOT, versions } from "../harness/paths.ts";
import { IDLE_AGENT_GAUGES } from "../harness/agent-gauges.ts";
import { withTempDir } from "../harness/temp-dir.ts";
import { AgentMetrics } from "../../src/agent/metrics.ts";
import { createServerMetrics } from "../../src/server/metrics.ts";
import { VERSION } from "../../src/common/version.ts";
import { CHART_DIR, TEST_REQUIRED_VALUES, findObject, renderChart } from "./render.ts";

const ALERTS_FILE = join(CHART_DIR, "monitoring", "alerts.yaml");
const DASHBOARD_FILE = join(CHART_DIR, "monitoring", "dashboard.json");
const ALERT_TESTS_FILE = join(ROOT, "test", "deploy", "monitoring", "alerts.test.yaml");
/** Labels a scrape adds (ServiceMonitor, Prometheus), not the code. */
const SCRAPE_LABELS = new Set(["namespace", "pod", "node", "job", "instance", "service", "container", "le"]);

interface Rule {
  alert: string;
  expr: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}
interface RuleFile {
  groups: { name: string; rules: Rule[] }[];
}

function promtool(): string {
  const v = versions().PROMTOOL_VERSION;
  const bin = join(CACHE, "bin", `promtool-${v}`);
  if (!v || !existsSync(bin))
    throw new Error(
      `${bin} is missing: run scripts/setup.sh (scripts/setup-deploy-tools.sh builds promtool)`,
    );
  return bin;
}

function runPromtool(args: string[]): { status: number; out: string } {
  const r = spawnSync(promtool(), args, { encoding: "utf8", cwd: ROOT });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

const rules = (): Rule[] =>
  (parse(readFileSync(ALERTS_FILE, "utf8")) as RuleFile).groups.flatMap((g) => g.rules);

/** Every metric and label each component exports, histograms with their series suffixes. */
async function exported(): Promise<Map<string, Set<string>>> {
  const agent = new AgentMetrics(IDLE_AGENT_GAUGES);
  const registries: Registry[] = [createServerMetrics().registry, agent.registry];
  const names = new Map<string, Set<string>>();
  for (const registry of registries)
    for (const metric of registry.getMetricsAsArray()) {
      const { name, type, labelNames, get } = metric as unknown as {
        name: string;
        type: string;
        labelNames?: string[];
        get(): Promise<{ values: { labels: Record<string, unknown> }[] }>;
      };
      const labels = new Set(labelNames ?? []);
      const add = (n: string) => names.set(n, new Set([...(names.get(n) ?? []), ...labels]));
      add(name);
      if (type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) add(`${name}${suffix}`);
      // default metrics' own labels (e.g. nodejs_gc_duration_seconds{kind}), from their values
      for (const v of (await get.call(metric)).values)
        for (const l of Object.keys(v.labels)) names.get(name)?.add(l);
    }
  return names;
}

/** Metric names and label names of every selector of `expr`, after Grafana's variables. */
function selectors(expr: string): { metric: string; labels: string[] }[] {
  const query = expr.replaceAll("$__rate_interval", "5m");
  const tree = promql.parse(query);
  const found: { metric: string; labels: string[] }[] = [];
  let error = "";
  tree.iterate({
    enter: (node) => {
      if (node.type.isError) error = `syntax error at ${node.from} in ${query}`;
      if (node.name === "VectorSelector") {
        const text = query.slice(node.from, node.to);
        const metric = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(text)?.[0] ?? "";
        const labels = [...text.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"/g)].map((m) => m[1]!);
        found.push({ metric, labels });
      }
    },
  });
  assert.equal(error, "", error);
  return found;
}

async function assertOverExportedMetrics(exprs: string[]): Promise<Set<string>> {
  const known = await exported();
  const used = new Set<string>();
  for (const expr of exprs) {
    const found = selectors(expr);
    assert.ok(found.length > 0, `no selector in ${expr}`);
    for (const { metric, labels } of found) {
      assert.ok(known.has(metric), `${metric} is not exported by the server or the agent (${expr})`);
      used.add(metric);
      for (const label of labels)
        if (!SCRAPE_LABELS.has(label))
          assert.ok(known.get(metric)!.has(label), `${metric} has no label ${label} (${expr})`);
    }
  }
  return used;
}

describe("monitoring pack", () => {
  it("promtool check rules accepts the alerts", () => {
    const r = runPromtool(["check", "rules", ALERTS_FILE]);
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, new RegExp(`SUCCESS: ${rules().length} rules found`));
  });

  it("promtool test rules: each alert fires on its condition and stays quiet on a healthy system", () => {
    const r = runPromtool(["test", "rules", ALERT_TESTS_FILE]);
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, /SUCCESS/);
    // every alert has a case where it fires and one where it does not
    const tests = parse(readFileSync(ALERT_TESTS_FILE, "utf8")) as {
      tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
    };
    const cases = tests.tests.flatMap((t) => t.alert_rule_test);
    for (const { alert } of rules()) {
      assert.ok(
        cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0),
        `${alert} never fires`,
      );
      assert.ok(
        cases.some((c) => c.alertname === alert && c.exp_alerts.length === 0),
        `${alert} never quiet`,
      );
    }
  });

  it("a broken expression is refused by promtool (the check can fail)", () => {
    withTempDir("kc-rules-", (dir) => {
      const broken = join(dir, "broken.yaml");
      const rules = { groups: [{ name: "x", rules: [{ alert: "X", expr: "sum(rate(x[5m])" }] }] };
      writeFileSync(broken, stringify(rules));
      assert.notEqual(runPromtool(["check", "rules", broken]).status, 0);
    });
  });

  it("docs/OPERATIONS.md lists exactly the chart's alerts, with their expressions", () => {
    const ops = readFileSync(join(ROOT, "docs", "OPERATIONS.md"), "utf8");
    const section = ops.slice(ops.indexOf("Suggested alerts"), ops.indexOf("### Audit records"));
    const documented = [...section.matchAll(/^\|\s*`(Keycutter[A-Za-z]+)`[^|]*\|\s*`([^`]+)`\s*\|$/gm)].map(
      (m) => [m[1]!, m[2]!] as const,
    );
    assert.deepEqual(
      new Map(documented),
      new Map(rules().map((r) => [r.alert, r.expr] as const)),
      "the alerts table and monitoring/alerts.yaml differ",
    );
  });

  it("every alert and dashboard query is PromQL over metrics and labels the code exports", async () => {
    await assertOverExportedMetrics(rules().map((r) => r.expr));
    const dashboard = JSON.parse(readFileSync(DASHBOARD_FILE, "utf8")) as {
      panels: { type: string; title: string; targets?: { expr: string }[] }[];
    };
    const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    assert.ok(exprs.length >= 20, `${exprs.length} queries`);
    const used = await assertOverExportedMetrics(exprs);
    // the dashboard covers both components and the standard process metrics
    for (const m of [
      "keycutter_server_request_duration_seconds_bucket",
      "keycutter_agent_request_duration_seconds_bucket",
      "keycutter_agent_cache_lookups_total",
      "keycutter_server_cache_lookups_total",
      "keycutter_build_info",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag_p99_seconds",
    ])
      assert.ok(used.has(m), `the dashboard does not show ${m}`);
  });

  it("process and Node.js metrics are unprefixed, and keycutter_build_info is 1 with the version", async () => {
    for (const [component, registry] of [
      ["server", createServerMetrics().registry],
      [
        "agent",
        new AgentMetrics({
          podsKnown: () => 0,
          podsWaiting: () => 0,
          cacheEntries: () => 0,
          watchStale: () => false,
          serverReachable: () => true,
        }).registry,
      ],
    ] as const) {
      const text = await registry.metrics();
      assert.match(text, /^process_cpu_seconds_total /m);
      assert.match(text, /^process_resident_memory_bytes /m);
      assert.match(text, /^nodejs_eventloop_lag_p99_seconds /m);
      assert.doesNotMatch(text, /^keycutter_(server|agent)_(process|nodejs)_/m);
      assert.match(
        text,
        new RegExp(
          `^keycutter_build_info\\{component="${component}",version="${VERSION}",nodejs_version="${process.versions.node}"\\} 1$`,
          "m",
        ),
      );
    }
  });

  it("the chart renders the PrometheusRule and the dashboard ConfigMap only when asked, from these files", () => {
    const plain = renderChart(TEST_REQUIRED_VALUES);
    assert.ok(!plain.some((o) => o.kind === "PrometheusRule"));
    assert.ok(!plain.some((o) => o.kind === "ConfigMap" && o.metadata.name.endsWith("-dashboard")));
    const on = renderChart({
      ...TEST_REQUIRED_VALUES,
      prometheusRule: { enabled: true, labels: { release: "prometheus" } },
      grafanaDashboard: { enabled: true, namespace: "monitoring" },
    });
    const rule = findObject(on, "PrometheusRule", "keycutter");
    assert.equal(rule.metadata.labels?.release, "prometheus");
    assert.deepEqual(
      (rule.spec as RuleFile).groups,
      (parse(readFileSync(ALERTS_FILE, "utf8")) as RuleFile).groups,
    );
    // the rendered spec is itself a rules file promtool accepts
    withTempDir("kc-rules-", (dir) => {
      const rendered = join(dir, "rendered.yaml");
      writeFileSync(rendered, stringify(rule.spec));
      const r = runPromtool(["check", "rules", rendered]);
      assert.equal(r.status, 0, r.out);
    });
    const dashboard = findObject(on, "ConfigMap", "keycutter-dashboard");
    assert.equal(dashboard.metadata.namespace, "monitoring");
    assert.equal(dashboard.metadata.labels?.grafana_dashboard, "1");
    const data = dashboard.data as Record<string, string>;
    assert.deepEqual(JSON.parse(data["keycutter.json"]!), JSON.parse(readFileSync(DASHBOARD_FILE, "utf8")));
  });
});
