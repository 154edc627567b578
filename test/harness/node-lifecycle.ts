/**
 * Helpers for the real node's lifecycle suite (test/node/lifecycle.test.ts): a watch on the CNI's
 * address allocations, pods that poll their credentials from their first instant, and
 * iptables snapshots to compare before and after (the stand-in real IMDS is node-workloads.ts').
 */
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { jsonLines } from "./node-workloads.ts";
import type { RealNode } from "./realnode.ts";

/** One address as host-local handed it out: to which container, from when until when (ms). */
export interface AddressHolding {
  ip: string;
  containerId: string;
  from: number;
  to: number | undefined;
}

/**
 * Follows host-local's allocations (its data dir holds one file per allocated address, named by
 * the address and naming the container) by listing the directory every `intervalMs`: the
 * moments an address was allocated and released, as the CNI plugin itself records them, to
 * within one interval.
 */
export class AddressWatch {
  readonly holdings: AddressHolding[] = [];
  private readonly current = new Map<string, AddressHolding>();
  private readonly timer: NodeJS.Timeout;
  private readonly ipamDir: string;
  private readonly now: () => number;

  constructor(ipamDir: string, intervalMs = 50, now: () => number = Date.now) {
    this.ipamDir = ipamDir;
    this.now = now;
    this.scan();
    this.timer = setInterval(() => this.scan(), intervalMs);
  }

  scan(): void {
    const at = this.now();
    const seen = new Map<string, string>();
    for (const network of existsSync(this.ipamDir) ? readdirSync(this.ipamDir) : []) {
      const dir = join(this.ipamDir, network);
      for (const name of readdirSync(dir)) {
        if (!/^\d+\.\d+\.\d+\.\d+$/.test(name)) continue;
        try {
          seen.set(name, readFileSync(join(dir, name), "utf8").split(/\r?\n/)[0]!.trim());
        } catch {
          // released between the listing and the read
        }
      }
    }
    for (const [ip, holding] of this.current) {
      if (seen.get(ip) !== holding.containerId) {
        holding.to = at;
        this.current.delete(ip);
      }
    }
    for (const [ip, containerId] of seen) {
      if (this.current.has(ip)) continue;
      const holding: AddressHolding = { ip, containerId, from: at, to: undefined };
      this.current.set(ip, holding);
      this.holdings.push(holding);
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

export interface ReuseFigures {
  /** Allocations of an address that an earlier container had held. */
  reuses: number;
  /** Distinct addresses handed out. */
  addresses: number;
  /** Shortest time from one container's release of an address to the next one's allocation (ms). */
  shortestGapMs: number | undefined;
}

export function reuseFigures(holdings: AddressHolding[]): ReuseFigures {
  const byIp = new Map<string, AddressHolding[]>();
  for (const holding of holdings) byIp.set(holding.ip, [...(byIp.get(holding.ip) ?? []), holding]);
  let reuses = 0;
  let shortestGapMs: number | undefined;
  for (const list of byIp.values()) {
    const ordered = [...list].sort((first, second) => first.from - second.from);
    for (let index = 1; index < ordered.length; index++) {
      reuses++;
      const released = ordered[index - 1]!.to;
      if (released === undefined) continue;
      const gap = ordered[index]!.from - released;
      shortestGapMs = shortestGapMs === undefined ? gap : Math.min(shortestGapMs, gap);
    }
  }
  return { reuses, addresses: byIp.size, shortestGapMs };
}

/**
 * A workload that asks the IMDS for credentials every POLL_INTERVAL seconds from its first
 * instant (urllib: no boto3 import before the first call), and asks STS once per new key whose
 * session it is. One JSON line per poll: the role and session it got, or the error; the key only
 * as a hash prefix (a key ID is not to be logged).
 */
export const POLLER_SCRIPT = `
import hashlib, json, os, sys, time, urllib.error, urllib.request
BASE = "http://169.254.169.254"
interval = float(os.environ.get("POLL_INTERVAL", "0.2"))
sessions = {}
def call(method, path, headers):
    req = urllib.request.Request(BASE + path, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=2) as res:
        return res.read().decode()
def session_of(creds):
    import boto3
    sts = boto3.client("sts", aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["Token"])
    return sts.get_caller_identity()["Arn"]
while True:
    record = {"t": round(time.time(), 3)}
    try:
        token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        headers = {"X-aws-ec2-metadata-token": token}
        role = call("GET", "/latest/meta-data/iam/security-credentials/", headers).strip()
        creds = json.loads(call("GET", "/latest/meta-data/iam/security-credentials/" + role, headers))
        key = hashlib.sha256(creds["AccessKeyId"].encode()).hexdigest()[:12]
        if key not in sessions:
            try:
                sessions[key] = session_of(creds)
            except Exception as err:
                sessions[key] = "sts error: " + type(err).__name__
        record.update(role=role, key=key, arn=sessions[key])
    except urllib.error.HTTPError as err:
        record["err"] = "http %d" % err.code
    except Exception as err:
        record["err"] = (type(err).__name__ + ": " + str(err))[:120]
    print(json.dumps(record), flush=True)
    time.sleep(interval)
`;

export interface PollSample {
  /** Epoch milliseconds. */
  at: number;
  role?: string;
  key?: string;
  arn?: string;
  err?: string;
}

export function parsePollSamples(log: string): PollSample[] {
  return jsonLines<{ t: number; role?: string; key?: string; arn?: string; err?: string }>(log).map(
    (parsed) => ({
      at: Math.round(parsed.t * 1000),
      role: parsed.role,
      key: parsed.key,
      arn: parsed.arn,
      err: parsed.err,
    }),
  );
}

export interface PollerOptions {
  namespace: string;
  name: string;
  image: string;
  serviceAccount: string;
  env: Record<string, string>;
  tolerations?: object[];
  intervalSeconds?: number;
}

/** A pod running POLLER_SCRIPT in the aws-clients image (python3, boto3). */
export function pollerPod(opts: PollerOptions): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: opts.name, namespace: opts.namespace, labels: { "keycutter-test": "poller" } },
    spec: {
      serviceAccountName: opts.serviceAccount,
      restartPolicy: "Never",
      terminationGracePeriodSeconds: 0,
      tolerations: opts.tolerations,
      containers: [
        {
          name: "poll",
          image: opts.image,
          imagePullPolicy: "Never",
          command: ["python3", "-u", "-c", POLLER_SCRIPT],
          env: Object.entries({ ...opts.env, POLL_INTERVAL: String(opts.intervalSeconds ?? 0.2) }).map(
            ([name, value]) => ({ name, value }),
          ),
        },
      ],
    },
  };
}

/** The node namespace's iptables-save and ip6tables-save, one set of rule lines per table. */
export type RuleSnapshot = Map<string, Set<string>>;

/**
 * Normalised for comparing two snapshots: comments and COMMIT dropped, chain counters zeroed,
 * `-c` counters removed; kept per table as a set (the order of kube-proxy's Service rules
 * follows its map iteration).
 */
export function normaliseIptablesSave(family: string, text: string): RuleSnapshot {
  const snapshot: RuleSnapshot = new Map();
  let table = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line === "COMMIT") continue;
    if (line.startsWith("*")) {
      table = `${family} ${line.slice(1)}`;
      if (!snapshot.has(table)) snapshot.set(table, new Set());
      continue;
    }
    const normalised = line.replace(/\[\d+:\d+\]/g, "[0:0]").replace(/ -c \d+ \d+/g, "");
    snapshot.get(table)?.add(normalised);
  }
  return snapshot;
}

export async function iptablesSnapshot(node: RealNode): Promise<RuleSnapshot> {
  const snapshot: RuleSnapshot = new Map();
  for (const [family, command] of [
    ["ipv4", "iptables-save"],
    ["ipv6", "ip6tables-save"],
  ] as const) {
    const saved = await node.execInNode(command, []);
    if (saved.code !== 0) throw new Error(`${command} in the node: ${saved.stderr}`);
    for (const [table, rules] of normaliseIptablesSave(family, saved.stdout)) snapshot.set(table, rules);
  }
  return snapshot;
}

/**
 * Whether kube-proxy has programmed every port of a Service through to endpoints: for each
 * `namespace/service:port`, a cluster-IP rule jumping to its KUBE-SVC chain and a DNAT to an
 * endpoint. The absence of "has no endpoints" alone is not enough: before kube-proxy has seen the
 * Service at all there is neither, and its rules then appear after a snapshot taken as settled.
 */
export function serviceRoutedToEndpoints(snapshot: RuleSnapshot, service: string, ports: string[]): boolean {
  const rules = [...snapshot.values()].flatMap((table) => [...table]);
  if (rules.some((rule) => rule.includes(`"${service}:`) && rule.includes("has no endpoints"))) return false;
  return ports.every(
    (port) =>
      rules.some((rule) => rule.includes(`"${service}:${port} cluster IP"`) && / -j KUBE-SVC-/.test(rule)) &&
      rules.some((rule) => rule.includes(`"${service}:${port}"`) && / -j DNAT /.test(rule)),
  );
}

/** Lines in `after` and not `before` (+) and the reverse (-), per table; empty when equal. */
export function diffSnapshots(before: RuleSnapshot, after: RuleSnapshot): string[] {
  const out: string[] = [];
  for (const table of new Set([...before.keys(), ...after.keys()])) {
    const was = before.get(table) ?? new Set<string>();
    const now = after.get(table) ?? new Set<string>();
    for (const line of now) if (!was.has(line)) out.push(`+ [${table}] ${line}`);
    for (const line of was) if (!now.has(line)) out.push(`- [${table}] ${line}`);
  }
  return out;
}
