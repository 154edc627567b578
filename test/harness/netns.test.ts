// Proves the pod network is real: source addresses, iptables DNAT, and a clean teardown.
// Needs root (network namespaces, iptables).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { ManagedProcess, PodNetwork, NODE, type NodeNet, type PodNet } from "./index.ts";

// A tiny HTTP server that answers with the caller's address, run inside the node namespace.
const ECHO_SERVER = `
const http = require("node:http");
const [host, port] = [process.argv[1], Number(process.argv[2])];
http.createServer((req, res) => res.end(req.socket.remoteAddress + " " + req.socket.localPort))
  .listen(port, host, () => console.log("listening " + host + ":" + port));
`;

describe("pod network namespaces", () => {
  let net: PodNetwork;
  let node: NodeNet;
  let podA: PodNet;
  let podB: PodNet;

  before(async () => {
    net = await PodNetwork.create();
    node = await net.addNode("node-a");
    podA = await net.addPod("node-a", "pod-a");
    podB = await net.addPod("node-a", "pod-b");
    const srv = net.spawn(node.netns, NODE, ["-e", ECHO_SERVER, node.podGateway, "8099"]);
    await srv.waitForLine(/listening/);
  });
  after(async () => {
    await net?.destroy();
  });

  const curl = (pod: PodNet, url: string) =>
    net.exec(pod.netns, "curl", ["-sS", "--max-time", "2", url]).then((r) => r.stdout.trim());

  it("the node sees each pod's own source address", async () => {
    assert.equal(await curl(podA, `http://${node.podGateway}:8099/`), `${podA.ip} 8099`);
    assert.equal(await curl(podB, `http://${node.podGateway}:8099/`), `${podB.ip} 8099`);
    assert.notEqual(podA.ip, podB.ip);
  });

  it("an iptables DNAT rule in the node namespace sends 169.254.169.254:80 to the node's server", async () => {
    const before = await net.exec(podA.netns, "curl", ["-sS", "--max-time", "1", "http://169.254.169.254/"]);
    assert.notEqual(before.code, 0, "without the rule nothing answers at 169.254.169.254");
    const rule = ["-t", "nat", "-A", "PREROUTING", "-i", "cbr0", "-d", "169.254.169.254/32", "-p", "tcp"];
    const dnat = ["--dport", "80", "-j", "DNAT", "--to-destination", `${node.podGateway}:8099`];
    const add = await net.exec(node.netns, "iptables", [...rule, ...dnat]);
    assert.equal(add.code, 0, add.stderr);
    assert.equal(await curl(podA, "http://169.254.169.254/latest/meta-data/"), `${podA.ip} 8099`);
  });

  it("pods reach services in the root namespace with their own source address", async () => {
    const root = new ManagedProcess("root-echo", NODE, ["-e", ECHO_SERVER, net.gatewayIP, "8098"]);
    try {
      await root.waitForLine(/listening/);
      assert.equal(await curl(podA, `http://${net.gatewayIP}:8098/`), `${podA.ip} 8098`);
    } finally {
      await root.stop();
    }
  });

  it("teardown leaves no namespaces, links, routes, rules or processes behind", async () => {
    const other = await PodNetwork.create();
    const n = await other.addNode("node-x");
    await other.addPod("node-x", "p1");
    const proc = other.spawn(n.netns, "sleep", ["600"]);
    await other.exec(n.netns, "iptables", ["-t", "nat", "-N", "KC-TEST"]);
    assert.ok((await other.leftovers()).length > 0);
    await other.destroy();
    assert.deepEqual(await other.leftovers(), []);
    assert.equal(proc.running, false);
    // iptables rules lived in the node namespace, which is gone with it
    const ns = await net.exec(n.netns, "true", []);
    assert.notEqual(ns.code, 0);
  });
});
