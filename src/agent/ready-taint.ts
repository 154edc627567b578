// Startup taint: nodes can register with a NoSchedule/NoExecute taint (e.g.
// `keycutter.dev/agent-not-ready`) so that no pod lands before the agent and its hook are ready;
// the agent removes it from its own Node once ready. Needs `get` and `patch` on nodes.
import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig } from "@kubernetes/client-node";

/** Removes every taint with `key` from the node. Returns true when one was removed. */
export async function removeNodeTaint(kc: KubeConfig, nodeName: string, key: string): Promise<boolean> {
  const api = kc.makeApiClient(CoreV1Api);
  for (let attempt = 0; attempt < 5; attempt++) {
    const node = await api.readNode({ name: nodeName });
    const taints = node.spec?.taints ?? [];
    const keep = taints.filter((t) => t.key !== key);
    if (keep.length === taints.length) return false;
    try {
      // The `test` op makes this a compare-and-swap: a concurrent change makes it fail, and we retry.
      await api.patchNode(
        {
          name: nodeName,
          body: [
            { op: "test", path: "/metadata/resourceVersion", value: node.metadata?.resourceVersion },
            { op: "replace", path: "/spec/taints", value: keep },
          ],
        },
        setHeaderOptions("Content-Type", PatchStrategy.JsonPatch),
      );
      return true;
    } catch (err) {
      if (attempt === 4) throw err;
    }
  }
  return false;
}
