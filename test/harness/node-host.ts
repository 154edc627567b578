/**
 * What a real test node leaves on the machine, found and removed: processes, mounts, network
 * namespaces and links, cgroups, CNI caches and iptables rules. test/harness/realnode.ts uses it
 * in teardown and its tests assert the scan comes back empty.
 */
import { execFile } from "node:child_process";
import {
  existsSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmdirSync,
  statSync,
  unlinkSync,
  writeFileSync,
  mkdirSync,
} from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

export async function run(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, {
      maxBuffer: 64 * 1024 * 1024,
      timeout: opts.timeoutMs ?? 120_000,
    });
    return stdout;
  } catch (err) {
    const failure = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(" ")}: ${failure.stderr?.trim() || failure.message}`, { cause: err });
  }
}

const CGROUP_ROOT = "/sys/fs/cgroup";

/** Every mounted cgroup hierarchy (v1 controllers, name=systemd, and the hybrid unified v2). */
export function cgroupHierarchies(): string[] {
  const out: string[] = [];
  for (const line of readFileSync("/proc/mounts", "utf8").split("\n")) {
    const [, mountPoint, fsType] = line.split(" ");
    if ((fsType === "cgroup" || fsType === "cgroup2") && mountPoint?.startsWith(CGROUP_ROOT))
      out.push(mountPoint);
  }
  return out;
}

/**
 * Creates cgroup `name` (e.g. /kc-node-ab12) in every v1 hierarchy, as the kubelet wants its
 * cgroupRoot to exist; cpuset needs its cpus and mems copied from the parent to take tasks.
 */
export function createCgroupRoot(name: string): void {
  for (const hierarchy of cgroupHierarchies()) {
    const dir = join(hierarchy, name);
    mkdirSync(dir, { recursive: true });
    if (existsSync(join(hierarchy, "cpuset.cpus"))) {
      for (const file of ["cpuset.cpus", "cpuset.mems"]) {
        writeFileSync(join(dir, file), readFileSync(join(hierarchy, file), "utf8").trim());
      }
    }
  }
}

function cgroupDirsDeepestFirst(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) out.push(...cgroupDirsDeepestFirst(join(dir, entry.name)));
  }
  out.push(dir);
  return out;
}

/** PIDs in cgroup `name` or below, in any hierarchy. */
export function cgroupPids(name: string): number[] {
  const pids = new Set<number>();
  for (const hierarchy of cgroupHierarchies()) {
    for (const dir of cgroupDirsDeepestFirst(join(hierarchy, name))) {
      const procs = join(dir, "cgroup.procs");
      if (!existsSync(procs)) continue;
      for (const pid of readFileSync(procs, "utf8").split("\n")) if (pid) pids.add(Number(pid));
    }
  }
  return [...pids];
}

/** Removes cgroup `name` and its children in every hierarchy (they must be empty of tasks). */
export function removeCgroupRoot(name: string): string[] {
  const failed: string[] = [];
  for (const hierarchy of cgroupHierarchies()) {
    for (const dir of cgroupDirsDeepestFirst(join(hierarchy, name))) {
      try {
        rmdirSync(dir);
      } catch (err) {
        failed.push(`${dir}: ${(err as Error).message}`);
      }
    }
  }
  return failed;
}

export function cgroupLeftovers(name: string): string[] {
  return cgroupHierarchies()
    .map((hierarchy) => join(hierarchy, name))
    .filter((dir) => existsSync(dir));
}

/** Mount points at or under `dir`, deepest first. */
export function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((line) => line.split(" ")[1]?.replace(/\\040/g, " "))
    .filter(
      (mountPoint): mountPoint is string =>
        !!mountPoint && (mountPoint === dir || mountPoint.startsWith(dir + "/")),
    )
    .sort((a, b) => b.length - a.length);
}

export async function unmountAll(dir: string): Promise<void> {
  for (const mountPoint of mountsUnder(dir)) {
    await run("umount", ["-l", mountPoint]).catch(() => undefined);
  }
}

/** Inode of a network namespace file (e.g. /run/netns/x), to recognise processes inside it. */
export function netnsInode(path: string): number {
  return statSync(path).ino;
}

function processNetnsInode(pid: string): number | undefined {
  try {
    const link = readlinkSync(`/proc/${pid}/ns/net`);
    const match = /net:\[(\d+)\]/.exec(link);
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

function processCmdline(pid: string): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ").trim();
  } catch {
    return "";
  }
}

export interface OwnedProcess {
  pid: number;
  cmdline: string;
  why: string;
}

/**
 * Processes this node started, however they were started: their command line names its
 * directory (containerd shims name its socket), they sit in its network namespace (the
 * kubelet, hostNetwork containers) or in its cgroups (every container).
 */
export function ownedProcesses(marks: {
  dir: string;
  netnsInode?: number;
  cgroupRoot: string;
}): OwnedProcess[] {
  const inCgroups = new Set(cgroupPids(marks.cgroupRoot));
  const out: OwnedProcess[] = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmdline = processCmdline(pid);
    if (!cmdline) continue; // kernel threads and exited ones
    let why = "";
    if (cmdline.includes(marks.dir)) why = "names the node's directory";
    else if (marks.netnsInode !== undefined && processNetnsInode(pid) === marks.netnsInode)
      why = "in the node's network namespace";
    else if (inCgroups.has(Number(pid))) why = "in the node's cgroups";
    if (why) out.push({ pid: Number(pid), cmdline: cmdline.slice(0, 200), why });
  }
  return out;
}

/** SIGKILLs the given processes by PID (all were started by this node) and waits until gone. */
export async function killProcesses(processes: OwnedProcess[], timeoutMs = 10_000): Promise<void> {
  for (const owned of processes) {
    try {
      process.kill(owned.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (
    Date.now() < deadline &&
    processes.some((owned) => existsSync(`/proc/${owned.pid}/cmdline`) && processCmdline(String(owned.pid)))
  ) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** `iptables-save` of the current namespace without counters, for before/after comparisons. */
export async function iptablesRules(): Promise<string[]> {
  const text = await run("iptables-save", []);
  return text
    .split("\n")
    .filter((line) => line && !line.startsWith("#"))
    .map((line) => line.replace(/\s*\[\d+:\d+\]$/, ""));
}

/** Files in a directory whose names start with a prefix (e.g. the CNI result cache of one network). */
export function filesWithPrefix(dir: string, prefix: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => name.startsWith(prefix))
    .map((name) => join(dir, name));
}

/** Symlinks in `dir` pointing under `target` (the kubelet's /var/log/containers links). */
export function symlinksInto(dir: string, target: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    try {
      if (readlinkSync(join(dir, name)).startsWith(target)) out.push(join(dir, name));
    } catch {
      /* not a link */
    }
  }
  return out;
}

export function removeFiles(paths: string[]): void {
  for (const path of paths) {
    try {
      unlinkSync(path);
    } catch {
      /* gone */
    }
  }
}

/** Machine-wide sysctls the kubelet sets at start (protectKernelDefaults: false), restored at teardown. */
export const KUBELET_KERNEL_TUNABLES = [
  "vm.overcommit_memory",
  "vm.panic_on_oom",
  "kernel.panic",
  "kernel.panic_on_oops",
  "kernel.keys.root_maxkeys",
  "kernel.keys.root_maxbytes",
];

function sysctlPath(key: string): string {
  return join("/proc/sys", ...key.split("."));
}

export function readSysctls(keys: string[]): Map<string, string> {
  return new Map(keys.map((key) => [key, readFileSync(sysctlPath(key), "utf8").trim()]));
}

export function writeSysctls(values: Map<string, string>): void {
  for (const [key, value] of values) {
    if (readFileSync(sysctlPath(key), "utf8").trim() !== value) writeFileSync(sysctlPath(key), value);
  }
}

/** Removes `dir` and its subdirectories, deepest first, where they are empty. */
export function removeEmptyDirs(dir: string): void {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) removeEmptyDirs(join(dir, entry.name));
  }
  try {
    rmdirSync(dir);
  } catch {
    /* not empty: something else (or a leftover the scan reports) is in it */
  }
}

/** Every path under `dir` (for a report of what is left there), bounded. */
export function listTree(dir: string, limit = 20): string[] {
  const out: string[] = [];
  const walk = (current: string): void => {
    for (const entry of readdirSync(current, { withFileTypes: true })) {
      if (out.length >= limit) return;
      out.push(join(current, entry.name));
      if (entry.isDirectory()) walk(join(current, entry.name));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out;
}
