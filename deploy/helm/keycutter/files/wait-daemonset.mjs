// Waits until every pod of a DaemonSet is ready (the hook-cleanup DaemonSet: its init container
// removed the iptables hook on that node). Runs in the keycutter image with plain Node: the
// in-cluster API address, CA (NODE_EXTRA_CA_CERTS) and service-account token.
import { readFileSync } from "node:fs";

const env = process.env;
const ns = env.NAMESPACE;
const name = env.DAEMONSET;
const host = env.KUBERNETES_SERVICE_HOST?.includes(":")
  ? `[${env.KUBERNETES_SERVICE_HOST}]`
  : env.KUBERNETES_SERVICE_HOST;
const url = `https://${host}:${env.KUBERNETES_SERVICE_PORT}/apis/apps/v1/namespaces/${ns}/daemonsets/${name}`;
const tokenFile = env.TOKEN_FILE ?? "/var/run/secrets/kubernetes.io/serviceaccount/token";
const deadline = Date.now() + Number(env.TIMEOUT_SECONDS ?? "240") * 1000;
let last = "";
for (;;) {
  let line;
  try {
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${readFileSync(tokenFile, "utf8").trim()}` },
    });
    if (res.ok) {
      const ds = await res.json();
      const s = ds.status ?? {};
      const desired = s.desiredNumberScheduled ?? 0;
      const ready = s.numberReady ?? 0;
      const observed = (s.observedGeneration ?? 0) >= (ds.metadata?.generation ?? 1);
      if (observed && ready >= desired) {
        console.log(`hook removed on ${ready} of ${desired} node(s)`);
        process.exit(0);
      }
      line = `waiting: ${ready} of ${desired} node(s) done`;
    } else {
      line = `GET ${ns}/${name}: HTTP ${res.status}`;
    }
  } catch (err) {
    line = `GET ${ns}/${name}: ${err.cause?.code ?? err.message}`;
  }
  if (line !== last) console.log(line);
  last = line;
  if (Date.now() > deadline) {
    console.error(`timed out: ${line}`);
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 2000));
}
