// Startup taint: nodes can register with a NoSchedule/NoExecute taint (e.g.
// `keycutter.dev/agent-not-ready`) so that no pod lands before the agent and its hook are ready;
// the agent removes it from its own Node once ready. Needs `get` and `patch` on nodes.
import type { V1Node } from "@kubernetes/client-node";
import type { ApiClient } from "../k8s/api-client.ts";

/** Removes every taint with `key` from the node. Returns true when one was removed. */
export async function removeNodeTaint(api: ApiClient, nodeName: string, key: string): Promise<boolean> {
  const path = `/api/v1/nodes/${encodeURIComponent(nodeName)}`;
  for (let attempt = 0; attempt < 5; attempt++) {
    const node = await api.json<V1Node>("GET", path);
    const taints = node.spec?.taints ?? [];
    const keep = taints.filter((t) => t.key !== key);
    if (keep.length === taints.length) return false;
    try {
      // The `test` op makes this a compare-and-swap: a concurrent change makes it fail, and we retry.
      await api.json(
        "PATCH",
        path,
        [
          { op: "test", path: "/metadata/resourceVersion", value: node.metadata?.resourceVersion },
          { op: "replace", path: "/spec/taints", value: keep },
        ],
        { contentType: "application/json-patch+json" },
      );
      return true;
    } catch (err) {
      if (attempt === 4) throw err;
    }
  }
  return false;
}
