// The pure parts of test/harness/node-lifecycle.ts, which the real node's lifecycle suite reports
// its figures with: a wrong count there would pass a broken node test.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  AddressWatch,
  diffSnapshots,
  normaliseIptablesSave,
  parsePollSamples,
  reuseFigures,
  serviceRoutedToEndpoints,
} from "./node-lifecycle.ts";
import { withTempDir } from "./temp-dir.ts";

test("AddressWatch follows host-local's files: allocation, release, reuse by another container", () => {
  let now = 1000;
  withTempDir("kc-ipam-", (dir) => {
    const network = join(dir, "kc-net");
    mkdirSync(network);
    writeFileSync(join(network, "last_reserved_ip.0"), "10.0.0.3");
    writeFileSync(join(network, "10.0.0.2"), "c1\r\neth0");
    const watch = new AddressWatch(dir, 60_000, () => now);
    watch.stop();
    now = 1500;
    rmSync(join(network, "10.0.0.2"));
    watch.scan();
    now = 1600;
    writeFileSync(join(network, "10.0.0.2"), "c2\r\neth0");
    writeFileSync(join(network, "10.0.0.3"), "c3\r\neth0");
    watch.scan();
    now = 1700;
    // the same address handed straight to another container between two scans
    writeFileSync(join(network, "10.0.0.3"), "c4\r\neth0");
    watch.scan();
    assert.deepEqual(
      watch.holdings.map((held) => [held.ip, held.containerId, held.from, held.to]),
      [
        ["10.0.0.2", "c1", 1000, 1500],
        ["10.0.0.2", "c2", 1600, undefined],
        ["10.0.0.3", "c3", 1600, 1700],
        ["10.0.0.3", "c4", 1700, undefined],
      ],
    );
    assert.deepEqual(reuseFigures(watch.holdings), { reuses: 2, addresses: 2, shortestGapMs: 0 });
  });
});

test("iptables snapshots ignore counters and order, and name what was added or removed", () => {
  const before = normaliseIptablesSave(
    "ipv4",
    "# Generated\n*nat\n:PREROUTING ACCEPT [5:300]\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j X\nCOMMIT\n",
  );
  const same = normaliseIptablesSave(
    "ipv4",
    "*nat\n:PREROUTING ACCEPT [0:0]\n-A KUBE-SERVICES -j X\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n",
  );
  assert.deepEqual(diffSnapshots(before, same), []);
  const changed = normaliseIptablesSave(
    "ipv4",
    "*nat\n:PREROUTING ACCEPT [0:0]\n:KEYCUTTER - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n",
  );
  assert.deepEqual(diffSnapshots(before, changed), [
    "+ [ipv4 nat] :KEYCUTTER - [0:0]",
    "- [ipv4 nat] -A KUBE-SERVICES -j X",
  ]);
});

test("a Service counts as programmed only once kube-proxy routes each port to an endpoint", () => {
  const dns = "kube-system/kube-dns";
  const unseen = normaliseIptablesSave("ipv4", "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n");
  const noEndpoints = normaliseIptablesSave(
    "ipv4",
    `*filter\n-A KUBE-SERVICES -d 10.0.0.10/32 -p udp -m comment --comment "${dns}:dns has no endpoints" -j REJECT\nCOMMIT\n`,
  );
  // as kube-proxy wrote them in a CI run whose snapshot was taken before it had seen the Service
  const udp = [
    `-A KUBE-SERVICES -d 10.0.0.10/32 -p udp -m comment --comment "${dns}:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU`,
    `-A KUBE-SEP-S5KMAF22V5XHNNFY -p udp -m comment --comment "${dns}:dns" -m udp -j DNAT --to-destination 10.128.0.2:1053`,
  ];
  const tcp = [
    `-A KUBE-SERVICES -d 10.0.0.10/32 -p tcp -m comment --comment "${dns}:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4`,
    `-A KUBE-SEP-R5GF6IOGXY7ZVCO2 -p tcp -m comment --comment "${dns}:dns-tcp" -m tcp -j DNAT --to-destination 10.128.0.2:1053`,
  ];
  const nat = (lines: string[]) => normaliseIptablesSave("ipv4", `*nat\n${lines.join("\n")}\nCOMMIT\n`);
  assert.equal(serviceRoutedToEndpoints(unseen, dns, ["dns", "dns-tcp"]), false);
  assert.equal(serviceRoutedToEndpoints(noEndpoints, dns, ["dns", "dns-tcp"]), false);
  assert.equal(serviceRoutedToEndpoints(nat(udp), dns, ["dns", "dns-tcp"]), false, "one port of two");
  assert.equal(serviceRoutedToEndpoints(nat([udp[0]!, tcp[0]!]), dns, ["dns", "dns-tcp"]), false, "no DNAT");
  assert.equal(serviceRoutedToEndpoints(nat([...udp, ...tcp]), dns, ["dns", "dns-tcp"]), true);
});

test("poll samples: one per JSON line, cut lines and other output skipped", () => {
  const samples = parsePollSamples(
    [
      '{"t": 1.5, "err": "http 503"}',
      "Traceback (most recent call last):",
      '{"t": 2.25, "role": "r", "key": "k", "arn": "a"}',
      '{"t": 3',
    ].join("\n"),
  );
  assert.deepEqual(samples, [
    { at: 1500, role: undefined, key: undefined, arn: undefined, err: "http 503" },
    { at: 2250, role: "r", key: "k", arn: "a", err: undefined },
  ]);
});
