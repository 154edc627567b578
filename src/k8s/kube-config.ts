// The official client's KubeConfig for the server and the CLI (the agent has its own, lighter
// loader: rest-config.ts). Kept apart from the server's composition root so that tools which only
// read the cluster (explain, validate, doctor) do not pull in the whole server.
import { KubeConfig } from "@kubernetes/client-node";

/**
 * The server's loading order: an explicit file; else in-cluster when running in a pod; else
 * $KUBECONFIG / ~/.kube/config. (The CLI follows kubectl's order instead: src/cli/kube-context.ts.)
 */
export function loadKubeConfig(path?: string): KubeConfig {
  const kc = new KubeConfig();
  if (path) kc.loadFromFile(path);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}
